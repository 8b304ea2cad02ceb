"""Hypothesis strategies shared by the parser and reward tests: any text, text made of the dialects' tags and their
fragments, gold answers in every accepted shape, dialect names."""

from __future__ import annotations

from hypothesis import strategies as st

from research_plugin.core.dialects import DIALECTS

_TAGS = sorted(
    {
        t
        for x in DIALECTS.values()
        for t in (
            x.query_open,
            x.query_close,
            x.result_open,
            x.result_close,
            x.answer_open,
            x.answer_close,
            x.think_open,
            x.think_close,
        )
    }
)
_FRAGMENTS = _TAGS + [t[: len(t) // 2] for t in _TAGS] + ["<", ">", "</", "|", "\\boxed{", "{", "}", " ", "\n"]
adversarial = st.lists(
    st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6), st.sampled_from(["yes", "no", "the", "Paris"])),
    max_size=40,
).map("".join)
any_text = st.one_of(st.text(), adversarial)
golds = st.one_of(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3), st.just({"target": ["Paris"]}))
dialects = st.sampled_from(sorted(DIALECTS))
