"""The per-job disk quota (``LAYERBENCH_JOB_DISK_MB``): while a job trains,
the worker measures what its output directory takes on disk; past the quota
the run is killed and the job ends ``interrupted`` with "disk quota of N MB
reached" (app.worker.runner hooks ``Watcher`` into its watch loop).

What is counted: the blocks each file, directory and link really holds on
disk (``st_blocks * 512`` from ``lstat``), not the sizes files claim. The
quota protects the jobs volume, and only allocated blocks take space from
it: a sparse file of 10 GB with one written byte costs 4 KiB and must not
kill a job, while every byte really written is in the count. A file
hard-linked several times in the directory is counted once. A quota of 0
turns the watch off.

How it is measured: ``app.core.untrusted.disk_usage``, the one way the host
reads what a sandbox wrote: ``os.scandir`` on descriptors, each
subdirectory opened relative to its parent with ``O_NOFOLLOW``, entries
``stat``-ed without following links (user code may swap a directory for a
link to anywhere while the walk runs; the walk then neither follows it nor
measures the host), descriptors held only along one branch. A tree deeper
than ``untrusted.MAX_DEPTH`` cannot be measured with bounded descriptors and
counts as over the quota (no training writes such a tree; a hiding place
must not exist). The walk runs at most every ``CHECK_EVERY_S`` and takes no
more than about ``1 / WALK_SHARE_DIVISOR`` of the watcher's time, however
many entries user code creates.
"""
from __future__ import annotations

import time
from pathlib import Path

from app.core import untrusted

CHECK_EVERY_S = 2.0
WALK_SHARE_DIVISOR = 20     # next walk after at least 20x the last walk's duration
UNMEASURABLE = 1 << 62      # what a tree deeper than untrusted.MAX_DEPTH counts as


def usage(directory: Path, stop_at: int | None = None) -> int:
    """Bytes allocated on disk to everything beneath ``directory`` (see the
    module docstring), never following a link; the walk stops as soon as the
    count passes ``stop_at``. 0 when the directory is missing; ``UNMEASURABLE``
    for a tree too deep to walk."""
    try:
        return untrusted.disk_usage(directory, stop_at=stop_at)
    except untrusted.Refused:
        return UNMEASURABLE


class Watcher:
    """The quota of one run: ``over()`` in the watch loop, ``error()`` for
    the job's record once it is."""

    def __init__(self, directory: Path, limit_mb: int, every: float = CHECK_EVERY_S) -> None:
        self.directory, self.limit_mb, self.every = Path(directory), int(limit_mb), every
        self.used = 0
        self._due = 0.0      # the first call measures (a resumed job may already be over)

    def over(self) -> bool:
        """Whether the output directory takes more than the quota; measured
        only when due (between walks, the last answer: False)."""
        now = time.monotonic()
        if self.limit_mb <= 0 or now < self._due:
            return False
        limit = self.limit_mb << 20
        self.used = usage(self.directory, stop_at=limit)
        took = time.monotonic() - now
        # A tree of millions of entries makes each walk slow: walk less often
        # rather than take the CPU from the training it watches.
        self._due = time.monotonic() + max(self.every, took * WALK_SHARE_DIVISOR)
        return self.used > limit

    def error(self) -> dict:
        """The job's error once ``over()`` said so."""
        return {"stage": "train", "message": f"Stopped: disk quota of {self.limit_mb} MB reached (the job's "
                "output directory may take at most that much disk; LAYERBENCH_JOB_DISK_MB)."}
