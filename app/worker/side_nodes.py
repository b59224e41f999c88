"""Each worker host's side nodes, for the celery queue: Celery worker
processes beside the training worker for work that must not wait behind
training (it does not in the local queue either). A Celery worker has one
pool for all its queues, so each kind of side work gets its own node:

* ``infer``: inference requests (app.services.inference.celery_offload), INFER_CONCURRENCY
  at once;
* ``datasets``: dataset builds, one at a time per host (a build takes
  minutes and the CPU; other hosts' nodes take the next one).

The training worker (app.worker.celery_app.main) starts them, restarts one
that exits on its own, and stops them on its way out; each also dies with
it, even when it is SIGKILLed (no orphans).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from app.core.config import Settings

log = logging.getLogger(__name__)

ROLES = ("infer", "datasets")
ROOT = Path(__file__).resolve().parents[2]


def role_queue(role: str) -> tuple[str, str]:
    """(Celery queue, pool size setting's attribute) of a side node's ``role``."""
    from app.services.inference import celery_offload as offload
    from app.services.runtime import broker as queue
    return {"infer": (offload.INFER_QUEUE, "infer_concurrency"),
            "datasets": (queue.DATASET_QUEUE, "")}[role]


def threads(role: str, cfg: Settings) -> int:
    """How many requests or builds a side node runs at once."""
    setting = role_queue(role)[1]
    return max(1, getattr(cfg, setting)) if setting else 1


def node_name(worker: str, role: str) -> str:
    """A side node's Celery name: ``<name>-<role>@<host>`` of its worker's."""
    base, _, host = worker.partition("@")
    return f"{base}-{role}@{host}" if host else f"{base}-{role}"


def die_with_parent(parent_pid: int) -> None:
    """In a side node: get SIGTERM when the worker that started it dies
    (PR_SET_PDEATHSIG), and exit now if it already has. Called at the
    start of the node's main, not in a preexec_fn: the worker has threads,
    and code between fork and exec in a threaded process can deadlock."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        sys.exit(0)


def spawn(worker: str, role: str, loglevel: str) -> subprocess.Popen:
    """Start the ``role`` side node of ``worker`` (this process)."""
    return subprocess.Popen([sys.executable, "-m", "app.worker.celery_app", "-n", node_name(worker, role),
                             "--loglevel", loglevel, "--side-for", worker, "--role", role,
                             "--parent-pid", str(os.getpid())], cwd=ROOT)


class SideNode(threading.Thread):
    """Keeps one side node running: started at once, started again when it
    exits on its own (killed, out of memory), at most every RESTART_EVERY_S
    so a node that cannot start does not spin."""

    RESTART_EVERY_S = 5.0

    def __init__(self, worker: str, role: str, loglevel: str) -> None:
        super().__init__(name=f"layerbench-side-{role}", daemon=True)
        self.worker, self.role, self.loglevel = worker, role, loglevel
        self.stopping = threading.Event()
        self.proc = spawn(worker, role, loglevel)
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            if self.proc.poll() is not None and time.monotonic() - self.started >= self.RESTART_EVERY_S:
                log.warning("%s node of %s exited (%s); starting it again", self.role, self.worker, self.proc.returncode)
                self.proc = spawn(self.worker, self.role, self.loglevel)
                self.started = time.monotonic()

    def stop(self) -> None:
        """Ask for a warm shutdown (a request or build it runs finishes)."""
        self.stopping.set()
        self.join(5)
        self.proc.terminate()

    def wait(self, timeout: float) -> None:
        """Wait for it to end after ``stop``; killed after ``timeout``."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
