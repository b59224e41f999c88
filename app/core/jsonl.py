"""Incremental reading of a JSON-lines file another process appends to (a
run's metrics.jsonl): the worker's watch loop and the live event stream
both follow one while it grows, and neither may re-read it whole."""
from __future__ import annotations

import json
from pathlib import Path

from app.core.workspace import Workspace

# As job_files.metrics reads it: nothing past 64 MiB.
MAX_BYTES = 64 << 20


class JsonlTail:
    """Each ``records()`` call returns the complete records appended since the
    last one, in file order and without their ``run`` tag, those ``keep``
    refuses left out. A line still being written waits for its newline;
    the file is never followed through a link; reading stops at MAX_BYTES."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.buf = path, 0, b""

    def keep(self, run: int | None) -> bool:
        """Whether a record its writer tagged with ``run`` counts (all, here)."""
        return True

    def records(self) -> list[dict]:
        if self.offset >= MAX_BYTES:
            return []
        try:
            chunk = Workspace.read_capped(self.path, min(1 << 20, MAX_BYTES - self.offset), self.offset)
        except OSError:
            return []
        self.offset += len(chunk)
        self.buf += chunk
        *complete, self.buf = self.buf.split(b"\n")
        out = []
        for raw in complete:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and self.keep(rec.pop("run", None)):
                out.append(rec)
        return out
