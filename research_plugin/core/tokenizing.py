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
tokenised whole, as before. :func:`kept_ids` keeps whole texts' ids by a key its caller chooses (a result block
by its passages: the samples of a question that get the same ones).

:func:`decode` and :func:`encode_lines` call the Rust tokenizer directly when the Hugging Face wrapper would add
nothing but overhead (its ``encode``/``decode`` unchanged by the tokenizer class, no clean-up of tokenization
spaces); that too is checked on the probes first.
"""

from __future__ import annotations

import re
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

LINES_KEPT = 16384
"""Lines whose token ids are kept, per tokenizer and process (a few MiB: a step of 1,280 trajectories retrieves
~20,000 passage lines over all the agent-loop workers)."""
BLOCKS_KEPT = 1024
"""Whole texts whose ids :func:`kept_ids` keeps, per tokenizer and process."""

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
    """What was found out about one tokenizer, and the ids kept for it (lines, whole texts)."""

    encode: Any
    decode: Any
    by_lines: bool
    lines: OrderedDict = field(default_factory=OrderedDict)
    blocks: OrderedDict = field(default_factory=OrderedDict)


def _kept(table: OrderedDict, key: Any, make: Callable[[Any], Sequence[int]], size: int) -> array:
    """``table[key]``, made by ``make(key)`` on a miss; the ``size`` most recently used are kept."""
    ids = table.get(key)
    if ids is None:
        ids = table[key] = array("i", make(key))
        while len(table) > size:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return ids


_checked: weakref.WeakKeyDictionary[Any, _Tokenizer] = weakref.WeakKeyDictionary()


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


def _check(tokenizer: Any) -> _Tokenizer:
    found = _checked.get(tokenizer)
    if found is not None:
        return found
    encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    fast = _fast_paths(tokenizer)
    if fast is not None and all(fast[0](p) == (ids := encode(p)) and fast[1](ids) == decode(ids) for p in PROBES):
        encode, decode = fast
    by_lines = all(encode(p) == [i for line in _LINE_START.split(p) for i in encode(line)] for p in PROBES)
    found = _checked[tokenizer] = _Tokenizer(encode, decode, by_lines)
    return found


def splits_at_lines(tokenizer: Any) -> bool:
    """Whether :func:`encode_lines` tokenises ``tokenizer``'s texts a line at a time (see the module docstring)."""
    return _check(tokenizer).by_lines


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """``tokenizer.decode(ids, skip_special_tokens=False)``, without the wrapper's overhead where it adds nothing."""
    return _check(tokenizer).decode(ids)


def encode_lines(tokenizer: Any, text: str) -> list[int]:
    """``tokenizer.encode(text, add_special_tokens=False)``, from the kept ids of its lines where the tokenizer
    allows it."""
    tok = _check(tokenizer)
    if not tok.by_lines:
        return list(tok.encode(text))
    ids = array("i")
    for line in _LINE_START.split(text):
        ids += _kept(tok.lines, line, tok.encode, LINES_KEPT)
    return ids.tolist()


def kept_ids(tokenizer: Any, key: Any, make: Callable[[], Sequence[int]]) -> list[int]:
    """The ids of a text its caller names by ``key`` (a result block by its passages and cut), made by ``make()``
    when not among the last :data:`BLOCKS_KEPT` kept for ``tokenizer`` in this process: the samples of one question
    that get the same passages, as GRPO's often do, join and cut them once."""
    return _kept(_check(tokenizer).blocks, key, lambda _: make(), BLOCKS_KEPT).tolist()
