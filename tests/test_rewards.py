import numpy as np
import pytest

from research_plugin import compute_score
from research_plugin.core.dialects import DIALECTS, result_block
from research_plugin.core.rewards import SCHEMES

RESEARCH = DIALECTS["research"]
R1 = DIALECTS["r1_searcher"]
SEARCH_R1 = DIALECTS["search_r1"]


def response(d, ans="Eiffel Tower", searches=1, well_formed=True):
    body = f"The final answer is \\boxed{{{ans}}}" if d.boxed else ans
    text = f"{d.think_open} Let me search. {d.think_close}"
    for i in range(searches):
        text += f"{d.query_open} query {i} {d.query_close}" + result_block("Doc 1 (Title: Paris) ...", d)
    text += f"{d.answer_open} {body} {d.answer_close}"
    return text if well_formed else f"{d.answer_open} draft {d.answer_close} " + text  # two answers: every check fails


def score(text, gold, **kw):
    return compute_score(data_source="hotpotqa", solution_str=text, ground_truth=gold, **kw)


def test_research_scheme():
    assert score(response(RESEARCH), "Eiffel Tower")["score"] == 1.0
    # "the eiffel tower in paris" vs "eiffel tower": P=2/4, R=1 -> F1=2/3
    assert score(response(RESEARCH, "the Eiffel Tower in Paris"), "Eiffel Tower")["score"] == pytest.approx(2 / 3)
    assert score(response(RESEARCH, "London"), "Eiffel Tower")["score"] == 0.1  # right format, F1 = 0
    assert score(response(RESEARCH, well_formed=False), "Eiffel Tower")["score"] == 0.0  # wrong format
    no_box = "<answer> Eiffel Tower </answer>"
    assert score(no_box, "Eiffel Tower") == pytest.approx(
        {
            "score": 0.0,
            "f1": 0.0,
            "em": 0.0,
            "cover_em": 0.0,
            "acc_r": 0.0,
            "subem": 0.0,
            "format": 0.0,
            "retrieval_hit": 0.0,
            "truncated": 0.0,
            "num_searches": 0,
            "num_failed_searches": 0.0,
            "retrieved_tokens": 0.0,
            "retrieval_s": 0.0,
        }
    )


def test_r1_stage1():
    kw = dict(scheme="r1_stage1")
    assert score(response(R1, "wrong"), "x", **kw)["score"] == 1.0  # searched + format, answer ignored
    assert score(response(R1, searches=0), "x", **kw)["score"] == 0.5
    assert score(response(R1, well_formed=False), "x", **kw)["score"] == 0.5
    assert score(response(R1, searches=0, well_formed=False), "x", **kw)["score"] == 0.0
    # the agent loop's own count wins over the text
    assert score(response(R1, searches=0), "x", extra_info={"num_searches": 2}, **kw)["score"] == 1.0
    assert score(response(R1), "x", extra_info={"num_searches": 0}, **kw)["score"] == 0.5


def test_r1_stage2():
    kw = dict(scheme="r1_stage2")
    assert score(response(R1), "Eiffel Tower", **kw)["score"] == 1.0
    # "eiffel tower paris" vs "eiffel tower": P=2/3, R=1 -> F1=0.8
    assert score(response(R1, "Eiffel Tower, Paris"), "Eiffel Tower", **kw)["score"] == pytest.approx(0.8)
    # F1 = 1, minus the default penalty of 2
    assert score(response(R1, well_formed=False), "Eiffel Tower", **kw)["score"] == -1.0
    assert score(response(R1, "Paris"), "Eiffel Tower", **kw)["score"] == 0.0
    assert score(response(R1, "Paris", well_formed=False), "x", format_penalty=0.5, **kw)["score"] == -0.5
    long_answer = response(R1, "the Eiffel Tower in Paris")
    assert score(long_answer, "Eiffel Tower", metric="em", **kw)["score"] == 0.0
    assert score(long_answer, "Eiffel Tower", metric="cover_em", **kw)["score"] == 1.0


def test_r1_stage2_normalization():
    # "space" (default for r1): "U.S.B." -> "u s b", so "USB" does not match; "squad": both "usb"
    text = response(R1, "USB")
    assert score(text, "U.S.B.", scheme="r1_stage2")["score"] == 0.0
    assert score(text, "U.S.B.", scheme="r1_stage2", normalization="squad")["score"] == 1.0
    assert score(response(RESEARCH, "USB"), "U.S.B.", normalization="space")["score"] == 0.1


def test_search_r1_em():
    kw = dict(scheme="search_r1_em")
    assert score(response(SEARCH_R1), "eiffel tower", **kw)["score"] == 1.0
    assert score(response(SEARCH_R1, well_formed=False), "eiffel tower", **kw)["score"] == 1.0  # no format
    assert score(response(SEARCH_R1, "the Eiffel Tower in Paris"), "Eiffel Tower", **kw)["score"] == 0.0
    assert score("no answer tags at all", "x", **kw)["score"] == 0.0


def test_answer_inside_results_is_ignored():
    leaked = "<search> q </search>" + result_block("<answer> Eiffel Tower </answer>", SEARCH_R1)
    out = score(leaked, "Eiffel Tower", scheme="search_r1_em")
    assert out["score"] == 0.0 and out["num_searches"] == 1


def test_dialect_resolution():
    r1_text = response(R1)
    # scheme default (research) cannot read r1 tags
    assert score(r1_text, "Eiffel Tower")["format"] == 0.0
    assert score(r1_text, "Eiffel Tower", extra_info={"dialect": "r1_searcher"})["f1"] == 1.0
    # explicit argument beats extra_info
    out = score(response(SEARCH_R1), "Eiffel Tower", dialect="search_r1", extra_info={"dialect": "r1_searcher"})
    assert out["format"] == 1.0 and out["em"] == 1.0
    assert score(response(SEARCH_R1), "Eiffel Tower", dialect=SEARCH_R1)["format"] == 1.0
    # r1 schemes default to the r1_searcher dialect, search_r1_em to search_r1
    assert score(r1_text, "Eiffel Tower", scheme="r1_stage2")["format"] == 1.0
    assert score(response(SEARCH_R1), "Eiffel Tower", scheme="search_r1_em")["em"] == 1.0
    # its format is Search-R1's state machine, which wants a think block between the information and the answer
    assert score(response(SEARCH_R1), "Eiffel Tower", scheme="search_r1_em")["format"] == 0.0
    assert score(response(SEARCH_R1), "Eiffel Tower", scheme="search_r1_em", format_check="strict")["format"] == 1.0
    with pytest.raises(ValueError, match="unknown dialect"):
        score(r1_text, "x", dialect="nope")


@pytest.mark.parametrize(
    "gold",
    [
        "Eiffel Tower",
        ["Paris", "Eiffel Tower"],
        ("Eiffel Tower",),
        np.array(["Paris", "Eiffel Tower"], dtype=object),
        {"target": np.array(["Eiffel Tower"], dtype=object)},
        {"target": ["Eiffel Tower"]},
    ],
)
def test_ground_truth_shapes(gold):
    out = score(response(RESEARCH), gold)
    assert out["score"] == out["em"] == out["f1"] == out["cover_em"] == 1.0


@pytest.mark.parametrize("gold", [[], np.array([], dtype=object), None, {"target": []}])
def test_empty_ground_truth(gold):
    out = score(response(RESEARCH), gold)
    assert out["f1"] == out["em"] == 0.0 and out["score"] == 0.1


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_all_values_numeric(scheme):
    extra = {
        "num_searches": np.int64(3),
        "num_failed_searches": 1,
        "retrieved_tokens": np.int32(512),
        "retrieval_s": 0.25,
        "dialect": None,
        "index": 7,
    }
    out = score(response(RESEARCH), ["Eiffel Tower"], extra_info=extra, scheme=scheme, dialect="research")
    assert {"score", "f1", "em", "cover_em", "format", "num_searches"} <= out.keys()
    assert "pred" not in out
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out.values())
    assert isinstance(out["num_searches"], int) and out["num_searches"] == 3
    assert (out["num_failed_searches"], out["retrieved_tokens"], out["retrieval_s"]) == (1, 512, 0.25)


def test_bad_extra_info_values_fall_back():
    out = score(response(RESEARCH, searches=2), "x", extra_info={"num_searches": None, "retrieval_s": "n/a"})
    assert out["num_searches"] == 2 and out["retrieval_s"] == 0.0
    assert score(response(RESEARCH), "x", extra_info={"num_searches": float("nan")})["num_searches"] == 1


def test_verl_call_shape():
    # verl passes keyword arguments, possibly extra ones the scheme does not use
    out = compute_score(
        data_source="nq",
        solution_str=response(RESEARCH),
        ground_truth=np.array(["Eiffel Tower"]),
        extra_info={"num_turns": 3},
        reward_router_address=None,
    )
    assert out["score"] == 1.0


@pytest.mark.parametrize("solution", [None, 42, b"<answer>x</answer>", "", "<answer>", "\\boxed{"])
def test_malformed_solution_does_not_raise(solution):
    assert score(solution, "x")["score"] == 0.0


def test_bad_options():
    with pytest.raises(ValueError, match="research.*search_r1_em.*search_r1_format"):
        score("x", "x", scheme="nope")
    with pytest.raises(ValueError, match="metric"):
        score("x", "x", scheme="r1_stage2", metric="bleu")
    with pytest.raises(ValueError, match="normalization"):
        score("x", "x", normalization="lower")


def test_a_rows_scheme_is_used_when_the_reward_names_none():
    """verl's reward gets a prepared row's ``extra_info``: its scheme scores when ``reward_kwargs`` sets none
    (OpenRLHF's agent does the same), and an explicit scheme wins."""
    bad = "no tags at all"
    assert compute_score("x", bad, ["y"], extra_info={"scheme": "r1_stage2"})["score"] == -2.0
    assert compute_score("x", bad, ["y"], extra_info={})["score"] == 0.0  # research
    assert compute_score("x", bad, ["y"], extra_info={"scheme": "r1_stage2"}, scheme="research")["score"] == 0.0
