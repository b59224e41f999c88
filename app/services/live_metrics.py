"""The job page's live metrics feed: the job's metrics.jsonl read
incrementally for the event stream, fenced like ``job_files.metrics``.

A client that applies the records it gets, in order, ends with exactly the
series ``job_files.metrics`` computes from the whole file:

* ``train`` / ``val`` / ``lr``: append the point;
* ``restarted``: clear every series (the lost run's points are not history);
* ``resumed`` with an integer ``iteration`` N: drop every point whose
  ``iteration`` is greater than N (training went back to that snapshot).

Records of an older run written after a later run has written (a lost run's
late writes) are left out here, since the client cannot tell them apart once
the ``run`` tag is stripped. Each call reads only the bytes appended since the
previous one: an open job page never makes the server re-read the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from app.core.workspace import Workspace

# As job_files.metrics and the runner's own tail: nothing past 64 MiB.
MAX_BYTES = 64 << 20


class MetricsFeed:
    """Incremental, run-fenced reader of one job's metrics.jsonl (no links)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.buf, self.latest = path, 0, b"", 0

    def records(self) -> list[dict]:
        """The complete records appended since the last call, in file order,
        without their ``run`` tag; superseded runs' records left out."""
        if self.offset >= MAX_BYTES:
            return []
        try:
            chunk = Workspace.read_capped(self.path, min(1 << 20, MAX_BYTES - self.offset), self.offset)
        except OSError:
            return []
        self.offset += len(chunk)
        self.buf += chunk
        # A line still being written stays in ``buf`` until its newline comes.
        *complete, self.buf = self.buf.split(b"\n")
        out = []
        for raw in complete:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            run = rec.pop("run", None)
            # The same fencing as job_files.metrics: once a later run has
            # written, an earlier one's records are not history.
            if isinstance(run, int):
                if run < self.latest:
                    continue
                self.latest = run
            out.append(rec)
        return out
