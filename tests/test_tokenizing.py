"""Result blocks tokenised a line at a time give exactly the ids of the whole text, for the tokenizers that allow it
(the shipped policy's byte-level BPE), and a tokenizer that does not is tokenised whole."""

from __future__ import annotations

import random

import pytest

from research_plugin.core import tokenizing
from research_plugin.core.dialects import DIALECTS, format_passages, get_dialect, result_block
from research_plugin.demo.fact_world import bundled_world
from research_plugin.retrieval.base import Passage


@pytest.fixture(scope="module")
def policy_tokenizer():
    from transformers import AutoTokenizer

    from research_plugin.demo.policy import shipped_policy

    return AutoTokenizer.from_pretrained(shipped_policy())


def _blocks(seed: int, n: int):
    """Result blocks as the search step renders them, from the bundled world's passages, in every dialect, some
    cut mid-word the way ``max_result_tokens`` cuts them; plus odd text (unicode, blank lines, trailing spaces)."""
    rng = random.Random(seed)
    facts = bundled_world()
    odd = ["Zürich café «x» 東京 🙂", "  two spaces", "", "tab\there", "ends with space ", "'s", "42", "(x)"]
    for i in range(n):
        passages = [Passage(f"p{j}", f.subject, f.sentence) for j, f in enumerate(rng.sample(facts, rng.randint(1, 5)))]
        if i % 3 == 0:
            passages.append(Passage("odd", rng.choice(odd), " ".join(rng.choices(odd, k=4))))
        dialect = get_dialect(rng.choice(sorted(DIALECTS)))
        body = format_passages(passages, dialect)
        if i % 4 == 0:
            body = body[: rng.randint(1, len(body))] + " ..."
        yield result_block(body, dialect)
        yield body


def test_the_policys_tokenizer_tokenises_result_blocks_a_line_at_a_time_with_the_same_ids(policy_tokenizer):
    tok = policy_tokenizer
    assert tokenizing.splits_at_lines(tok)
    for text in _blocks(seed=0, n=300):
        whole = tok.encode(text, add_special_tokens=False)
        assert tokenizing.encode_lines(tok, text) == whole, repr(text)
        assert tokenizing.encode_lines(tok, text) == whole  # again, from the kept lines
        assert tokenizing.decode(tok, whole) == tok.decode(whole, skip_special_tokens=False)


def test_the_kept_lines_are_bounded(policy_tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizing, "LINES_KEPT", 10)
    tok = policy_tokenizer
    for i in range(50):
        text = f"Doc 1 (Title: T{i}) line {i}\nDoc 2 (Title: U{i}) other {i}\n"
        assert tokenizing.encode_lines(tok, text) == tok.encode(text, add_special_tokens=False)
    assert len(tokenizing._check(tok).lines) <= 10


def _metaspace_tokenizer():
    """A SentencePiece-style tokenizer (Llama 2, Mistral): it marks the start of every text it is given, so a line
    tokenised on its own differs from the same line inside a block."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    texts = [b for b in _blocks(seed=1, n=50)]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_a_tokenizer_that_marks_each_texts_start_is_tokenised_whole():
    tok = _metaspace_tokenizer()
    text = "\n\n<result>\nDoc 1 (Title: A) alpha\nDoc 2 (Title: B) beta\n</result>\n\n"
    by_line = [i for line in tokenizing._LINE_START.split(text) for i in tok.encode(line, add_special_tokens=False)]
    assert by_line != tok.encode(text, add_special_tokens=False)  # the probe has something to catch
    assert not tokenizing.splits_at_lines(tok)
    for text in _blocks(seed=2, n=40):
        assert tokenizing.encode_lines(tok, text) == tok.encode(text, add_special_tokens=False)
