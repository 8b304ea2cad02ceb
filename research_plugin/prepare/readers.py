"""Input containers: jsonl, a JSON array, csv/tsv and parquet, read record by record with their locations.

A reader yields ``(location, record)`` pairs; ``record`` is the decoded object, or a :class:`Unreadable`
when that one line cannot be decoded (the caller counts it as a bad row and goes on). A file that cannot be
read at all (a JSON array broken in the middle, a missing file) raises :class:`InputError`. Progress shows on
a terminal (tqdm, by bytes or rows).
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

CONTAINERS = ("jsonl", "json", "csv", "tsv", "parquet")


class InputError(ValueError):
    """An input file that cannot be read as a whole."""


@dataclass(frozen=True)
class Unreadable:
    """A line that is not a JSON object, with the reason."""

    reason: str


def detect_container(path: Path) -> str:
    """``csv``/``tsv``/``parquet`` by suffix, else ``json`` (a top-level array) or ``jsonl`` by the first byte."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        return suffix[1:]
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"[") else "jsonl"


def read_records(path: Path, container: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` for every record of ``path``; locations read ``line N``, ``record N`` or ``row N``."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    container = container or detect_container(path)
    if container not in CONTAINERS:
        raise InputError(f"unknown container {container!r}; known: {list(CONTAINERS)}")
    yield from _READERS[container](path)


def _progress(path: Path, **kwargs) -> tqdm:
    return tqdm(desc=path.name, unit="B", unit_scale=True, disable=None, leave=False, **kwargs)


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f, _progress(path, total=path.stat().st_size) as bar:
        for n, raw in enumerate(f, 1):
            bar.update(len(raw))
            line = raw.decode("utf-8", "replace").strip().lstrip("\ufeff")
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record = Unreadable(f"invalid JSON ({e.msg}, column {e.colno})")
            yield f"line {n}", record


_SPACE = re.compile(r"\s*")


def _json_array(path: Path) -> Iterator[tuple[str, Any]]:
    """The elements of a top-level JSON array, decoded one at a time (the file's text stays the only big object)."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()

    def broken(pos: int, what: str) -> InputError:
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        return InputError(f"{path}: not a JSON array: {what} at line {line}, column {column}")

    pos = _SPACE.match(text).end()
    if text[pos : pos + 1] != "[":
        raise broken(pos, "expected '['")
    pos = _SPACE.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        return
    line, line_pos = 1, 0
    with _progress(path, total=len(text)) as bar:
        for n in itertools.count(1):
            try:
                record, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise broken(e.pos, e.msg) from None
            line += text.count("\n", line_pos, pos)
            line_pos = pos
            yield f"record {n} (line {line})", record
            bar.update(end - bar.n)
            pos = _SPACE.match(text, end).end()
            sep = text[pos : pos + 1]
            if sep == "]":
                break
            if sep != ",":
                raise broken(pos, "expected ',' or ']'")
            pos = _SPACE.match(text, pos + 1).end()


def _delimited(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in tqdm(reader, desc=path.name, unit="row", disable=None, leave=False):
            if None in row:  # more cells than header names
                yield f"line {reader.line_num}", Unreadable(f"{len(row[None])} more cell(s) than the header")
            else:
                yield f"line {reader.line_num}", row


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a broken file
        raise InputError(f"{path}: not a parquet file ({e})") from None
    n = 0
    with tqdm(desc=path.name, unit="row", total=file.metadata.num_rows, disable=None, leave=False) as bar:
        for batch in file.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                n += 1
                yield f"row {n}", record
            bar.update(batch.num_rows)


_READERS = {
    "jsonl": _jsonl,
    "json": _json_array,
    "csv": lambda p: _delimited(p, ","),
    "tsv": lambda p: _delimited(p, "\t"),
    "parquet": _parquet,
}
