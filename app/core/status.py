"""Status words, as enums used everywhere (never a bare string).

Both are ``str`` enums: they compare equal to, and store as, their values.
"""
from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    """A job's life: queued -> running -> done | error | aborted | interrupted;
    a job on a dataset still building starts as waiting (-> queued | error)."""

    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    ABORTED = "aborted"
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        """True once the job will not change again by itself."""
        return self not in (JobStatus.WAITING, JobStatus.QUEUED, JobStatus.RUNNING)


class DatasetStatus(str, enum.Enum):
    """A dataset's life: queued -> running -> done | error."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


class RunOutcome(str, enum.Enum):
    """How a contained runner says its run ended (``result.json``'s status)."""

    DONE = "done"
    ABORTED = "aborted"
    ERROR = "error"
