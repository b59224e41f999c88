"""Contained runs counted in the process that ran them (issue 27).

``layerbench_sandbox_runs_total`` has two sources. Training runs and dataset
builds are counted from the store (app.services.operations.metrics), exact
across processes and hosts. Every other contained run leaves no record in
the store (a validate-only call, a cold or warm inference request, a
segmentation, a read of server files by ``app.contained.gather``, a read of
an uploaded ``.caffemodel``, a layer environment's pip install, the
start-up self-test, a job's own validation too): those are counted here, by
the process that ran them, in a ``prometheus_client`` counter that lives in
that process (or in the multiprocess files of a gunicorn master or a Celery
worker host, when the process set that up before the first count).

``/metrics`` (web) and a Celery worker's metrics port merge these samples
into the same ``layerbench_sandbox_runs_total`` family.
"""
from __future__ import annotations

import threading

# Not the exported name: the exposition merges these samples into
# layerbench_sandbox_runs_total together with the store's.
NAME = "layerbench_sandbox_runs_process"
KINDS_FROM_STORE = frozenset({"train", "build_dataset"})
_counter = None
_lock = threading.Lock()


def _get():
    global _counter
    with _lock:
        if _counter is None:
            # Made at the first count, not at import: by then a gunicorn
            # worker or Celery node has chosen multiprocess mode (the value
            # class is read when a metric is created).
            from prometheus_client import Counter
            _counter = Counter(NAME, "Contained runs of this process by runner and outcome",
                               ["kind", "outcome"], registry=None)
        return _counter


def count(kind: str, outcome: str) -> None:
    """One contained run of ``kind`` ended with ``outcome``. Training runs
    and dataset builds are counted here only by a Celery worker host (its
    own metrics port); the web's ``/metrics`` takes those two kinds from the
    store and leaves this process's out (``KINDS_FROM_STORE``): never twice."""
    _get().labels(kind, outcome).inc()


def kind_of(argv: list[str]) -> str:
    """The runner a contained argv runs: ``validate`` for
    ``python -m app.contained.validate ...``; ``other`` otherwise."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m" and argv[i + 1].startswith("app.contained."):
            return argv[i + 1].rsplit(".", 1)[1]
    return "other"


def outcome_of(returncode: int | None, timed_out: bool, oom: bool) -> str:
    """How a run ended, as a label value: ok, error, timeout or oom."""
    if timed_out:
        return "timeout"
    if oom:
        return "oom"
    return "ok" if returncode == 0 else "error"


def collector():
    """This process's counter, to register in an in-memory registry."""
    return _get()
