"""The bundled data (research_plugin/data: the two-hop corpus and questions) and the generated fact world with its
warm-up, which the tiny policy and the main job stand on."""

from __future__ import annotations

import json
import re

import pytest

from research_plugin.data import two_hop_corpus_path, two_hop_questions_path

CONTENTS_RE = re.compile(r'"[^"\n]+"\n.+')
PASSAGE_ID_RE = re.compile(r"demo-(\d{4})")
QUESTION_ID_RE = re.compile(r"demo-q\d{3}")
QUESTION_TYPES = {"bridge", "comparison"}


def _read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            assert line.strip(), f"{path.name}:{lineno} is blank"
            rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="module")
def corpus():
    return _read_jsonl(two_hop_corpus_path())


@pytest.fixture(scope="module")
def corpus_by_id(corpus):
    return {row["id"]: row for row in corpus}


@pytest.fixture(scope="module")
def questions():
    return _read_jsonl(two_hop_questions_path())


def _split(contents: str) -> tuple[str, str]:
    title_line, text = contents.split("\n", 1)
    return title_line[1:-1], text


# ----------------------------------------------------------------------------- corpus


def test_corpus_files_exist():
    assert two_hop_corpus_path().is_file()
    assert two_hop_questions_path().is_file()


def test_corpus_size(corpus):
    assert len(corpus) >= 250


def test_corpus_rows_have_exactly_id_and_contents(corpus):
    for row in corpus:
        assert set(row) == {"id", "contents"}, row
        assert isinstance(row["id"], str)
        assert isinstance(row["contents"], str)


def test_corpus_ids_unique_and_sequential(corpus):
    ids = [row["id"] for row in corpus]
    assert len(ids) == len(set(ids))
    for i, pid in enumerate(ids, 1):
        m = PASSAGE_ID_RE.fullmatch(pid)
        assert m, pid
        assert int(m.group(1)) == i, f"expected demo-{i:04d}, got {pid}"


def test_corpus_contents_format(corpus):
    for row in corpus:
        assert CONTENTS_RE.fullmatch(row["contents"]), row["id"]


def test_corpus_titles_unique(corpus):
    titles = [_split(row["contents"])[0] for row in corpus]
    dups = {t for t in titles if titles.count(t) > 1}
    assert not dups, dups


def test_corpus_word_counts(corpus):
    for row in corpus:
        _, text = _split(row["contents"])
        n = len(text.split())
        assert 30 <= n <= 120, (row["id"], n)


# -------------------------------------------------------------------------- questions


def test_question_count(questions):
    assert len(questions) >= 60


def test_question_schema(questions):
    for q in questions:
        assert set(q) == {"id", "question", "golden_answers", "metadata"}, q.get("id")
        assert isinstance(q["id"], str) and QUESTION_ID_RE.fullmatch(q["id"]), q["id"]
        assert isinstance(q["question"], str) and q["question"].strip()
        answers = q["golden_answers"]
        assert isinstance(answers, list) and answers, q["id"]
        assert all(isinstance(a, str) and a.strip() for a in answers), q["id"]
        meta = q["metadata"]
        assert isinstance(meta, dict), q["id"]
        assert meta.get("type") in QUESTION_TYPES, q["id"]
        sup = meta.get("supporting_ids")
        assert isinstance(sup, list) and len(sup) >= 2, q["id"]
        assert all(isinstance(s, str) for s in sup), q["id"]
        dec = meta.get("decomposition")
        assert isinstance(dec, list) and len(dec) >= 2, q["id"]
        assert all(isinstance(d, str) and "->" in d for d in dec), q["id"]


def test_question_ids_unique(questions):
    ids = [q["id"] for q in questions]
    assert len(ids) == len(set(ids))


def test_both_question_types_present(questions):
    types = {q["metadata"]["type"] for q in questions}
    assert types == QUESTION_TYPES


def test_supporting_ids_exist(questions, corpus_by_id):
    for q in questions:
        for sid in q["metadata"]["supporting_ids"]:
            assert sid in corpus_by_id, (q["id"], sid)


def test_answer_in_last_supporting_passage(questions, corpus_by_id):
    for q in questions:
        last = corpus_by_id[q["metadata"]["supporting_ids"][-1]]["contents"].lower()
        assert q["golden_answers"][0].lower() in last, (q["id"], q["golden_answers"][0])


def test_answer_not_in_question(questions):
    for q in questions:
        assert q["golden_answers"][0].lower() not in q["question"].lower(), q["id"]


def test_recipe_data_resolver_splits_the_bundled_questions(tmp_path, monkeypatch):
    import pandas as pd
    from omegaconf import OmegaConf

    import research_plugin.verl.plugin  # noqa: F401  (registers the resolvers, as `import verl` does)

    monkeypatch.setenv("RESEARCH_PLUGIN_CACHE", str(tmp_path))
    cfg = OmegaConf.create({"train": "${research_plugin.two_hop:train}", "val": "${research_plugin.two_hop:val}"})
    train, val = pd.read_parquet(cfg.train), pd.read_parquet(cfg.val)
    questions = [json.loads(line) for line in two_hop_questions_path().open()]
    assert len(train) + len(val) == len(questions) and len(val) == len(questions) // 5
    assert not set(train["extra_info"].map(lambda e: e["id"])) & set(val["extra_info"].map(lambda e: e["id"]))
    assert set(train["agent_name"]) == {"search_agent"}


def test_fact_world_splits_and_holds_out_every_fifth_question(tmp_path, monkeypatch):
    """The main job's task: one passage per fact, every 5th question held out, and the warm-up's practice facts
    never name anything of the bundled world (so nothing about a validation question is learned before RL)."""
    import pandas as pd
    from omegaconf import OmegaConf

    import research_plugin.verl.plugin  # noqa: F401  (registers the resolvers, as `import verl` does)
    from research_plugin.demo.fact_world import BUNDLED_FACTS, PracticeWorld, bundled_names, bundled_world

    monkeypatch.setenv("RESEARCH_PLUGIN_CACHE", str(tmp_path))
    parts = ("train", "val", "corpus")
    cfg = OmegaConf.create({p: f"${{research_plugin.fact_world:{p}}}" for p in parts})
    train, val = pd.read_parquet(cfg.train), pd.read_parquet(cfg.val)
    corpus = _read_jsonl(cfg.corpus)
    assert (len(train), len(val), len(corpus)) == (BUNDLED_FACTS * 4 // 5, BUNDLED_FACTS // 5, BUNDLED_FACTS)
    questions = [f.question for f in bundled_world()]
    assert list(val["extra_info"].map(lambda e: e["question"])) == questions[4::5]
    assert not set(train["extra_info"].map(lambda e: e["id"])) & set(val["extra_info"].map(lambda e: e["id"]))
    assert set(train["agent_name"]) == {"search_agent"} and len(set(questions)) == BUNDLED_FACTS
    world = PracticeWorld(seed=1)
    practiced = {n for _ in range(2000) for f in world.example()[1] for n in (f.subject, f.object)}
    assert practiced and not practiced & bundled_names()


def _decode_example(tokenizer, ids, labels):
    first = next(i for i, y in enumerate(labels) if y != -100)
    return tokenizer.decode(ids[first:], skip_special_tokens=True)


def test_warmup_trajectories_search_and_copy_or_guess_from_memory(tiny_model_dir):
    """Practice trajectories are well formed; one that searches answers with its fact's object (full reward), one
    that answers from memory names another (format reward only), each kind of question searched as often as the
    warm-up's mix says."""
    from collections import Counter

    from transformers import AutoTokenizer

    from research_plugin.core.dialects import get_dialect
    from research_plugin.core.rewards import compute_score
    from research_plugin.demo.fact_world import PracticeWorld
    from research_plugin.demo.warmup import practice_example, search_propensity

    tok, d, world = AutoTokenizer.from_pretrained(tiny_model_dir), get_dialect("research"), PracticeWorld(seed=2)
    drawn = []  # the facts the examples are about, as the world hands them out
    example = world.example
    fact_of = world.fact
    world.example = lambda: drawn.append(example()) or drawn[-1]
    world.fact = lambda relation=None: drawn.append((fact_of(relation), [])) or drawn[-1][0]
    searched, seen = Counter(), Counter()
    for i in range(600):
        system_prompt = i % 2 == 1
        ids, labels = practice_example(tok, world, d, system_prompt)
        (fact, _) = drawn[-1]
        text = _decode_example(tok, ids, labels)
        assert fact.question in tok.decode(ids)
        assert ("You are a helpful assistant" in tok.decode(ids)) == system_prompt
        got = compute_score("fact_world", text, [fact.object], {"dialect": "research"}, scheme="research")
        assert got["format"] == 1.0, text
        trained = tok.decode([y for y in labels if y != -100])
        seen[fact.relation] += 1
        if "<search>" in text:
            searched[fact.relation] += 1
            assert got["score"] == 1.0, text
            # the result block is masked, the policy's own text trained
            assert "<result>" not in trained and "Doc 1" not in trained and "<search>" in trained
        else:
            assert got["score"] == 0.1 and "I remember" in trained, text  # a wrong guess: format only
    for relation, share in search_propensity().items():
        assert abs(searched[relation] / seen[relation] - share) < 0.1, (relation, searched, seen)


def test_warmup_result_blocks_are_the_ones_the_agent_loop_appends(tiny_model_dir, tmp_path, monkeypatch):
    """The warm-up trains on the contexts RL produces: a search with the question finds the fact's passage first
    (every bundled question), and the block the loop appends is the warm-up's block for those two passages."""
    import asyncio

    from transformers import AutoTokenizer

    from research_plugin.core.dialects import format_passages, get_dialect, result_block
    from research_plugin.core.search_step import SearchAgentConfig, SearchStep
    from research_plugin.demo.assets import fact_world
    from research_plugin.demo.fact_world import bundled_world
    from research_plugin.demo.warmup import passages

    monkeypatch.setenv("RESEARCH_PLUGIN_CACHE", str(tmp_path))
    tok, d, facts = AutoTokenizer.from_pretrained(tiny_model_dir), get_dialect("research"), bundled_world()
    spec = {"type": "bm25", "corpus": fact_world("corpus")}
    cfg = SearchAgentConfig(retriever=spec, top_k=2, max_result_tokens=192, max_searches=len(facts))
    step = SearchStep(cfg, tok)
    by_sentence = {f.sentence: f for f in facts}

    async def blocks() -> list[str]:
        return [await step.result_block(f"<search> {f.question} </search>") for f in facts]

    for fact, block in zip(facts, asyncio.run(blocks())):
        lines = block.strip().splitlines()[1:-1]
        hits = [by_sentence[line.split(") ", 1)[1]] for line in lines]
        assert hits[0] == fact and len(hits) == 2, block
        assert block == result_block(format_passages(passages(hits)), d)
