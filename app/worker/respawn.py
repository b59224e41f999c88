"""Keep the local worker process alive: `serve` restarts it when it dies.

A worker can die without any say in it (the OOM killer, a SIGKILL, a crash in
native code). The web keeps serving meanwhile; the process that started the
worker is the one that sees it die, at once and with the cause, so it records
why (``supervisor.recover_dead_worker``) and starts a new one.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Callable

log = logging.getLogger(__name__)

# Restart delays: doubling from FIRST to MAX while the worker keeps dying
# young, so a worker that cannot start (a broken database, say) is retried
# without spinning; back to FIRST once one has lived STABLE_AFTER seconds.
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0


def describe_exit(returncode: int) -> str:
    """How a child ended, in words: 'killed by signal 9 (SIGKILL)' or
    'exited with status 1' (``returncode`` as ``Popen.returncode`` gives it)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"killed by signal {-returncode}"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


class Respawner:
    """One child process, started again after each death.

    ``check()`` is meant to be called often (every fraction of a second) by
    the owner's loop: it notices a death once, calls ``on_death(pid,
    returncode, delay)`` and starts the next child when ``delay`` has passed.
    """

    def __init__(self, argv: list[str], on_death: Callable[[int, int, float], None],
                 first_delay: float = FIRST_DELAY_S, max_delay: float = MAX_DELAY_S,
                 stable_after: float = STABLE_AFTER_S, popen_args: dict | None = None) -> None:
        self.argv, self.on_death = argv, on_death
        self.popen_args = popen_args or {}   # e.g. user/group/env: the child drops to the service user
        self.first_delay, self.max_delay, self.stable_after = first_delay, max_delay, stable_after
        self.delay = first_delay
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None   # set while a dead child waits for its successor
        self.restarts = 0

    def start(self) -> None:
        """Start the child now."""
        self.restart_at = None
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.argv, **self.popen_args)
        except OSError as exc:
            # Not starting is one more death: retried with the same backoff.
            log.error("could not start %s: %s", self.argv[:4], exc)
            self.proc = None
            self._schedule(lived=0.0)

    def check(self) -> None:
        """Notice a death (once) and restart the child when its delay is over."""
        if self.restart_at is None and self.proc is not None and self.proc.poll() is not None:
            delay = self._schedule(lived=time.monotonic() - self.started_at)
            self.on_death(self.proc.pid, self.proc.returncode, delay)
        if self.restart_at is not None and time.monotonic() >= self.restart_at:
            self.restarts += 1
            self.start()

    def _schedule(self, lived: float) -> float:
        if lived >= self.stable_after:
            self.delay = self.first_delay
        delay = self.delay
        self.restart_at = time.monotonic() + delay
        self.delay = min(self.delay * 2, self.max_delay)
        return delay

    def running(self) -> subprocess.Popen | None:
        """The live child, if there is one (for shutdown)."""
        return self.proc if self.proc is not None and self.proc.poll() is None else None
