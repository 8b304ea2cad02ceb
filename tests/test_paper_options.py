"""Every behaviour of the papers' released reward and metric code that the README's tables list, reproduced by its
option, with literal cases (the issue's own examples where they exist); plus property tests that the options never
raise on arbitrary text and keep each scheme within its range."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research_plugin import compute_score
from research_plugin.core.answer_metrics import normalize_answer, substring_exact_match, token_cover_match
from research_plugin.core.dialects import DIALECTS, result_block
from research_plugin.core.format_check import check_search_r1_sequence
from research_plugin.core.prompts import base_prompt
from research_plugin.core.rewards import SCHEMES

from .strategies import any_text, dialects, golds

R1 = DIALECTS["r1_searcher"]
SR1 = DIALECTS["search_r1"]


def score(text, gold, **kw):
    return compute_score(data_source="x", solution_str=text, ground_truth=gold, **kw)


# --- ReSearch ----------------------------------------------------------------------------------------------------

GOOD = "<think> search it </think> <search> q </search>" + result_block("Doc 1 ...", DIALECTS["research"])
GOOD += "<answer> The answer is \\boxed{James Madison} </answer>"


def test_research_a_response_that_did_not_end_with_eos_scores_0():
    assert score(GOOD, "James Madison", extra_info={"ended_by_eos": True})["score"] == 1.0
    out = score(GOOD, "James Madison", extra_info={"ended_by_eos": False})
    assert out["score"] == 0.0 and out["truncated"] == 1.0 and out["f1"] == 1.0
    assert score(GOOD, "James Madison", extra_info={"ended_by_eos": False}, require_eos=False)["score"] == 1.0
    # on decoded strings: the host's EOS token, cut off before the format check
    assert score(GOOD + "<|im_end|>", "James Madison", eos_token="<|im_end|>")["score"] == 1.0
    assert score(GOOD, "James Madison", eos_token="<|im_end|>")["score"] == 0.0


def test_research_needs_a_think_block():
    no_think = GOOD.replace("<think> search it </think> ", "")
    assert score(no_think, "James Madison")["score"] == 0.0
    assert score(no_think, "James Madison", require_think=False)["score"] == 1.0


def test_research_an_unclosed_last_box_fails():
    text = "<think> x </think> <answer> \\boxed{James Madison} or maybe \\boxed{Monroe </answer>"
    assert score(text, "James Madison")["score"] == 0.0 and score(text, "James Madison")["format"] == 0.0
    assert score(text, "James Madison", boxed_fallback=True)["score"] == 1.0


def test_research_keeps_todays_answer_of_the_policy_not_of_the_passages():
    leaked = "<think> x </think> <search> q </search>" + result_block("<answer> \\boxed{James Madison} </answer>",
                                                                      DIALECTS["research"])  # fmt: skip
    assert score(leaked + "<answer> \\boxed{Monroe} </answer>", "James Madison")["score"] == 0.1


# --- R1-Searcher -------------------------------------------------------------------------------------------------


def test_r1_cover_em_takes_gold_tokens_in_any_order():
    assert token_cover_match("madison james", "james madison") == 1.0
    out = score("<think> x </think> <answer> madison james </answer>", "james madison", scheme="r1_stage2")
    assert out["acc_r"] == 1.0 and out["cover_em"] == 0.0
    assert token_cover_match("james", "james madison") == 0.0


def test_r1_normalisation_maps_true_and_false_to_yes_and_no():
    assert normalize_answer("True", "r1_searcher") == "yes" and normalize_answer("False", "r1_searcher") == "no"
    assert normalize_answer("True", "squad") == "true" and normalize_answer("true", "r1_searcher") == "true"
    text = "<think> x </think> <answer> True </answer>"
    assert score(text, "yes", scheme="r1_stage2")["score"] == 1.0  # its default normalisation
    assert score(text, "yes", scheme="r1_stage2", normalization="space")["score"] == 0.0


def test_r1_prompts_open_the_think_block_and_the_format_check_follows():
    prompt = base_prompt("Who was the fourth US president?", "r1_searcher", opens_think=True)
    assert prompt.endswith("Assistant: <think>")
    inside = (
        f" I should search. {R1.think_close} {R1.query_open} fourth president {R1.query_close}"
        + result_block("(1) James Madison was the fourth president.", R1)
        + f"{R1.answer_open} James Madison {R1.answer_close}"
    )
    assert score(inside, "James Madison", scheme="r1_stage2", extra_info={"opens_think": True})["score"] == 1.0
    assert score(inside, "James Madison", scheme="r1_stage2", opens_think=True)["score"] == 1.0
    assert score(inside, "James Madison", scheme="r1_stage2")["score"] == -1.0  # a stray </think> otherwise


def test_r1_stage1_answer_reward_of_its_code():
    right = f"<think> x </think> {R1.query_open} q {R1.query_close}" + result_block("(1) ...", R1)
    right += f"{R1.answer_open} madison james {R1.answer_close}"
    wrong = right.replace("madison james", "monroe")
    assert score(right, "James Madison", scheme="r1_stage1")["score"] == 1.0  # the paper: retrieval + format
    assert score(right, "James Madison", scheme="r1_stage1", answer_reward=True)["score"] == 2.0
    assert score(wrong, "James Madison", scheme="r1_stage1", answer_reward=True)["score"] == 0.0
    assert score("no tags", "James Madison", scheme="r1_stage1", answer_reward=True)["score"] == -1.0


def test_r1_keeps_todays_format_no_assistant_penalty_no_answer_length_cap():
    doc = result_block("(1) The assistant of the president was James Madison.", R1)
    text = f"<think> x </think> {R1.query_open} q {R1.query_close}{doc}{R1.answer_open} James Madison {R1.answer_close}"
    assert score(text, "James Madison", scheme="r1_stage2")["score"] == 1.0
    long_gold = "the Battle of the Bulge in the Ardennes forest of Belgium and Luxembourg"  # 11 words
    long = f"<think> x </think> {R1.answer_open} {long_gold} {R1.answer_close}"
    assert score(long, long_gold, scheme="r1_stage2")["score"] == 1.0


# --- Search-R1 ---------------------------------------------------------------------------------------------------


def test_search_r1_sub_em():
    assert substring_exact_match("james madisons", "james madison") == 1.0
    text = "<answer> james madisons </answer>"
    assert score(text, "James Madison", scheme="search_r1_em")["score"] == 0.0
    assert score(text, "James Madison", scheme="search_r1_em", metric="subem")["score"] == 1.0


def sr1(answer: str, *, valid: bool = True, passage: str = "James Madison was president.") -> str:
    text = "<think> plan </think> <search> q </search>" + result_block(passage, SR1)
    text += f"<think> done </think> <answer> {answer} </answer>"
    return text if valid else text.replace("<think> done </think> ", "")  # no think before the answer


@pytest.mark.parametrize(
    ("answer", "valid", "passage", "expected"),
    [
        ("James Madison", True, "x", 1.0),  # right answer, valid sequence
        ("James Madison", False, "x", 0.8),  # right answer, invalid: 1 - lambda_s
        ("Monroe", True, "nothing useful", 0.2),  # wrong, valid: lambda_s
        ("Monroe", True, "James Madison was president", 0.3),  # wrong, valid, retrieval hit: lambda_s + lambda_r
        ("Monroe", False, "James Madison was president", 0.1),  # wrong, invalid: lambda_f
    ],
)
def test_search_r1_format_shaped_reward(answer, valid, passage, expected):
    text = sr1(answer, valid=valid, passage=passage)
    assert check_search_r1_sequence(text).ok == valid
    out = score(text, "James Madison", scheme="search_r1_format", retrieval_score=0.1)
    assert out["score"] == pytest.approx(expected)
    assert score("no answer at all", "James Madison", scheme="search_r1_format")["score"] == 0.0
    # its scripts' values are the defaults (0.2 / 0.1 / 0): no retrieval bonus unless asked
    assert score(sr1("Monroe", passage="James Madison"), "James Madison", scheme="search_r1_format")["score"] == 0.2


def test_search_r1_state_machine():
    assert check_search_r1_sequence("<think> a </think> <answer> b </answer>").ok
    assert not check_search_r1_sequence("<answer> b </answer>").ok  # a think block must come first
    assert not check_search_r1_sequence("<think> a </think> chatter <answer> b </answer>").ok
    assert not check_search_r1_sequence("<think> a </think> <answer> b </answer> more").ok
    assert not check_search_r1_sequence("<think> a </think> <search> q </search> <think> b </think>").ok
    # tags inside a retrieved document do not break the sequence (its code parses them: a flaw not copied)
    assert check_search_r1_sequence(sr1("x", passage="doc <answer> y </answer>")).ok


# --- each paper's own format check and answer reading (format_check="original", every scheme's default) ----------


@pytest.mark.parametrize(
    ("text", "original", "strict"),
    [
        # the case: text after the closing answer tag (ReSearch's code: 1)
        ("<think> x </think> <answer> \\boxed{1999} </answer> I hope this helps!", 1.0, 0.0),
        # the answer inside the think block
        ("<think> x <answer> \\boxed{1999} </answer> </think>", 1.0, 0.0),
        # misordered: the think block after the answer
        ("<answer> \\boxed{1999} </answer> <think> x </think>", 1.0, 0.0),
        # what ReSearch's code also refuses: two answers, a query without its result, a second "Assistant:" turn
        ("<think> x </think> <answer> \\boxed{1} </answer> <answer> \\boxed{1999} </answer>", 0.0, 0.0),
        ("<think> x </think> <search> q </search> <answer> \\boxed{1999} </answer>", 0.0, 0.0),
        ("<think> x </think> <answer> \\boxed{1999} </answer>\nUser: thanks\nAssistant: you are welcome", 0.0, 0.0),
    ],
)
def test_research_format_check_of_its_code(text, original, strict):
    assert score(text, "1999")["score"] == original  # the default: ReSearch's validate_format
    assert score(text, "1999", format_check="strict")["score"] == strict


@pytest.mark.parametrize(
    ("text", "original", "strict"),
    [
        (f" x {R1.think_close} {R1.answer_open} Madison {R1.answer_close} I hope this helps!", 1.0, -1.0),
        (f" x {R1.answer_open} Madison {R1.answer_close} {R1.think_close}", 1.0, -1.0),  # answer inside the think
        (
            f" x {R1.think_close} {R1.query_open} q {R1.query_close} {R1.answer_open} Madison {R1.answer_close}",
            -1.0,
            -1.0,
        ),  # a query without its documents  # fmt: skip
        (f" x {R1.think_close} <think> y {R1.think_close} {R1.answer_open} Madison {R1.answer_close}", -1.0, 1.0),
    ],
)
def test_r1_format_check_of_its_code(text, original, strict):
    kw = dict(scheme="r1_stage2", opens_think=True)
    assert score(text, "Madison", **kw)["score"] == original  # its stage-2 server's tag counting
    assert score(text, "Madison", format_check="strict", **kw)["score"] == strict


def test_r1_stage2_penalises_a_chinese_character_outside_the_documents():
    # the case: F1 2/3, and a CJK character in the think block: R1-Searcher's code -1.33, before 0.67
    text = f" 想一想 {R1.think_close} {R1.answer_open} James Madison Jr Esq {R1.answer_close}"
    assert score(text, "James Madison", scheme="r1_stage2", opens_think=True)["score"] == pytest.approx(2 / 3 - 2)
    assert score(text, "James Madison", scheme="r1_stage2", opens_think=True, forbid_cjk=False)["score"] == (
        pytest.approx(2 / 3)
    )
    # inside the documents it is no fault; kana and hangul are outside the range its code tests
    docs = f" x {R1.think_close} {R1.query_open} q {R1.query_close}" + result_block("(1)東京. Tokyo", R1)
    assert (
        score(docs + f"{R1.answer_open} Tokyo {R1.answer_close}", "Tokyo", scheme="r1_stage2", opens_think=True)[
            "score"
        ]
        == 1.0
    )
    kana = f" とうきょう {R1.think_close} {R1.answer_open} Tokyo {R1.answer_close}"
    assert score(kana, "Tokyo", scheme="r1_stage2", opens_think=True)["score"] == 1.0
    assert score(text, "James Madison", scheme="r1_stage1", opens_think=True)["format"] == 1.0  # stage 1: no check


def test_r1_reads_the_text_after_the_last_answer_open_tag():
    # its code: split(open)[-1].split(close)[0]; here the last answer is unclosed (and the format wrong: -2)
    text = f" x {R1.think_close} {R1.answer_open} Monroe {R1.answer_close} {R1.answer_open} James Madison"
    assert score(text, "James Madison", scheme="r1_stage2", opens_think=True)["score"] == -1.0
    assert score(text, "James Madison", scheme="r1_stage2", opens_think=True, format_check="strict")["score"] == -2.0


def test_search_r1_reads_a_nested_answer_as_its_regex_does():
    # `<answer>(.*?)</answer>`: the first open tag runs to the first close tag
    text = "<think> a </think> <answer> Monroe <answer> James Madison </answer>"
    assert score(text, "James Madison", scheme="search_r1_em")["score"] == 0.0  # "monroe answer james madison"
    assert score(text, "James Madison", scheme="search_r1_em", format_check="strict")["score"] == 1.0


# --- properties --------------------------------------------------------------------------------------------------

options = st.fixed_dictionaries(
    {},
    optional={
        "metric": st.sampled_from(["f1", "em", "cover_em", "acc_r", "subem"]),
        "normalization": st.sampled_from(["squad", "space", "r1_searcher"]),
        "require_eos": st.booleans(),
        "require_think": st.booleans(),
        "boxed_fallback": st.booleans(),
        "opens_think": st.booleans(),
        "format_penalty": st.floats(0, 5),
        "answer_reward": st.booleans(),
        "structure_format_score": st.floats(0, 1),
        "final_format_score": st.floats(0, 1),
        "retrieval_score": st.floats(0, 1),
        "format_check": st.sampled_from(["strict", "original"]),
        "forbid_cjk": st.booleans(),
        "eos_token": st.sampled_from(["<|im_end|>", "</s>"]),
    },
)
extra_infos = st.fixed_dictionaries(
    {}, optional={"ended_by_eos": st.one_of(st.booleans(), st.none(), st.text()), "opens_think": st.booleans()}
)


def bounds(scheme: str, o: dict) -> tuple[float, float]:
    if scheme == "r1_stage1" and o.get("answer_reward"):
        return -1.0, 2.0
    if scheme == "r1_stage2":
        return -o.get("format_penalty", 2.0), 1.0
    if scheme == "search_r1_format":
        s, f, r = (o.get(k, d) for k, d in (("structure_format_score", 0.2), ("final_format_score", 0.1),
                                             ("retrieval_score", 0.0)))  # fmt: skip
        return 0.0, max(1.0, s + r, f)
    return SCHEMES[scheme].bounds


@settings(max_examples=400, deadline=None)
@given(text=any_text, gold=golds, name=dialects, scheme=st.sampled_from(sorted(SCHEMES)), o=options, e=extra_infos)
def test_options_never_raise_and_stay_in_range(text, gold, name, scheme, o, e):
    out = compute_score(data_source="fuzz", solution_str=text, ground_truth=gold, scheme=scheme, dialect=name,
                        extra_info=e, **o)  # fmt: skip
    lo, hi = bounds(scheme, o)
    assert lo - 1e-9 <= out["score"] <= hi + 1e-9
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out.values())
    for key in ("f1", "em", "cover_em", "acc_r", "subem", "format", "truncated"):
        assert 0.0 <= out[key] <= 1.0
