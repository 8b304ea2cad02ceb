"""The policy's tokenizer on the agent's hot path: decoding the end of a generated segment, and tokenising result
blocks a line at a time with every line's ids kept.

Each search appends a result block of several hundred tokens, and tokenising it is most of what the agent side
spends per search (about 0.8 us a token with a Hugging Face fast tokenizer). Its lines are passages that come back
again: in the other samples of a question, in later searches and steps, and in the same block cut to
``max_result_tokens``. :func:`encode_lines` tokenises the lines of a text one by one, keeping each line's ids
(:data:`LINES_KEPT` per tokenizer and process), and joins them. For byte-level BPE tokenizers whose pre-tokenizer
never joins a line break to a visible character after it (the split patterns of GPT-2, Llama 3 and Qwen), a line
break ends a pre-token, BPE never merges across it, and the joined ids are exactly the ids of the whole text.
Whether a tokenizer is one of them is checked once per tokenizer, on probe texts that break the rule for others
(a SentencePiece tokenizer marks the start of every text it is given); one that fails any probe gets its texts
tokenised whole, as before.

Both functions call the Rust tokenizer directly when the Hugging Face wrapper would add nothing but overhead (its
``encode``/``decode`` unchanged by the tokenizer class, no clean-up of tokenization spaces); that too is checked on
the probes first.
"""

from __future__ import annotations

import re
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LINES_KEPT = 16384
"""Lines whose token ids are kept, per tokenizer and process (a few MiB: a step of 1,280 trajectories retrieves
~20,000 passage lines over all the agent-loop workers)."""

_LINE_START = re.compile(r"(?<=\n)(?=[!-~])")
"""Where :func:`encode_lines` cuts: after a line break, before a visible ASCII character."""

PROBES = (
    "\n\n<result>\nDoc 1 (Title: Ada Lovelace) Ada Lovelace (1815-1852) wrote the first program.\n"
    "Doc 2 (Title: 1815) Year 1815: 12 events, 3 wars.\nDoc 3 (Title: X) ends with a digit 42\n</result>\n\n",
    '\n\n<information>Doc 1(Title: "Paris") Paris is the capital.\nDoc 2(Title: Seine) It\'s a river!\n'
    "</information>\n\n",
    "(1)Zürich. Straße, café, naïve - «quotes» — 東京 and 北京; emoji 🙂.\n(2)Line two ends in spaces  \n"
    "(3)Tabs\tinside\t.\n\n(4)After a blank line\n<|im_end|>\n<|endoftext|>x\n",
    "a\nb\n\nc\n \nd\n\t\ne\n'\n's\n.\n?!\n(\n)\n[x]\n{y}\n\\boxed{z}\n#\n$5\n100%\n",
)
"""Texts whose line-by-line tokenisation must equal their whole tokenisation (and the fast paths the wrapper's)."""


@dataclass
class _Tokenizer:
    """What was found out about one tokenizer, and the ids of the lines it tokenised."""

    encode: Any
    decode: Any
    by_lines: bool
    lines: OrderedDict = field(default_factory=OrderedDict)


_checked: weakref.WeakKeyDictionary[Any, _Tokenizer] = weakref.WeakKeyDictionary()


def _wrapper_encode(tokenizer: Any):
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


def _wrapper_decode(tokenizer: Any):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def _fast_paths(tokenizer: Any) -> tuple[Any, Any] | None:
    """The Rust tokenizer's own encode and decode, where the wrapper's are only those plus overhead."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cls = type(tokenizer)
    plain = (
        getattr(cls.encode, "__module__", "") == "transformers.tokenization_utils_base"
        and getattr(cls.decode, "__module__", "") == "transformers.tokenization_utils_base"
        and getattr(getattr(cls, "_decode", None), "__module__", "").startswith("transformers.tokenization_utils_")
    )
    if backend is None or not plain or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return None
    encode = lambda text: backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    decode = lambda ids: backend.decode(ids, skip_special_tokens=False)  # noqa: E731
    return encode, decode


def _split(text: str) -> list[str]:
    return _LINE_START.split(text)


def _check(tokenizer: Any) -> _Tokenizer:
    found = _checked.get(tokenizer)
    if found is not None:
        return found
    encode, decode = _wrapper_encode(tokenizer), _wrapper_decode(tokenizer)
    fast = _fast_paths(tokenizer)
    if fast is not None and all(fast[0](p) == (ids := encode(p)) and fast[1](ids) == decode(ids) for p in PROBES):
        encode, decode = fast
    by_lines = all(encode(p) == [i for line in _split(p) for i in encode(line)] for p in PROBES)
    found = _checked[tokenizer] = _Tokenizer(encode, decode, by_lines)
    return found


def splits_at_lines(tokenizer: Any) -> bool:
    """Whether :func:`encode_lines` tokenises ``tokenizer``'s texts a line at a time (see the module docstring)."""
    return _check(tokenizer).by_lines


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """``tokenizer.decode(ids, skip_special_tokens=False)``, without the wrapper's overhead where it adds nothing."""
    return _check(tokenizer).decode(ids)


def encode(tokenizer: Any, text: str) -> list[int]:
    """``tokenizer.encode(text, add_special_tokens=False)``, without the wrapper's overhead where it adds nothing."""
    return list(_check(tokenizer).encode(text))


def encode_lines(tokenizer: Any, text: str) -> list[int]:
    """The ids :func:`encode` gives ``text``, from the kept ids of its lines where the tokenizer allows it."""
    tok = _check(tokenizer)
    if not tok.by_lines:
        return list(tok.encode(text))
    ids = array("i")
    kept = tok.lines
    for line in _split(text):
        line_ids = kept.get(line)
        if line_ids is None:
            line_ids = kept[line] = array("i", tok.encode(line))
            while len(kept) > LINES_KEPT:
                kept.popitem(last=False)
        else:
            kept.move_to_end(line)
        ids += line_ids
    return ids.tolist()
