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

from app.core.jsonl import JsonlTail


class MetricsFeed(JsonlTail):
    """Incremental, run-fenced reader of one job's metrics.jsonl: the
    records of ``records()`` (app.core.jsonl), a superseded run's left out."""

    latest = 0

    def keep(self, run: int | None) -> bool:
        # The same fencing as job_files.metrics: once a later run has
        # written, an earlier one's records are not history.
        if isinstance(run, int):
            if run < self.latest:
                return False
            self.latest = run
        return True
