"""The per-row results file: one JSON object per line, appended as rows finish, so a run that dies keeps what it
finished; a rerun loads it and skips those rows. A torn last line (a kill mid-write) is dropped and redone."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RowStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished rows by key (a key written twice keeps its last record); unreadable lines are reported."""
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    rows[record["key"]] = record
                except (ValueError, KeyError, TypeError) as e:
                    logger.warning("%s line %d is unreadable (%s); its row will be run again", self.path, n, e)
        return rows

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished row, flushed to the OS before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")  # after a torn line, start a fresh one
            f.write(line)
            f.flush()

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file with ``records`` atomically (temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-rows-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
