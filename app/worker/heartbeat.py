"""Liveness across hosts, for the celery queue.

Two heartbeats, both in the store (the one thing every host shares):

* a job's: ``jobs.heartbeat_at``, written by the runner's watch loop every
  0.5 s while its process lives (runner._watch);
* a worker's: its row in ``workers``, written by ``Heartbeat`` below every
  ``HEARTBEAT_SECONDS``, with its host, GPUs and current jobs (what /healthz
  and the Workers page list).

Every worker also looks after the others: a running job whose heartbeat is
older than ``HANDOVER_SECONDS`` has lost its worker (killed, host down,
partitioned), so it is put back on the queue to resume from its last complete
snapshot on whichever worker takes it, or marked ``interrupted`` with the
reason when it has none. The hand-over is a compare-and-set on the job's run
generation and stale heartbeat, so exactly one of the workers noticing does
it, and a run that was only slow is fenced (runner: "superseded") rather
than duplicated.
"""
from __future__ import annotations

import os
import threading
import time

from app.core.status import JobStatus
from app.core.workspace import Workspace
from app.services import queue
from app.services.context import Context
from app.store import now_iso

REDISPATCH_EVERY_S = 2.0   # how often lost queue messages are looked for


def hand_over_stale(ctx: Context, stale_after: float) -> list[str]:
    """Hand over every running job whose heartbeat is older than
    ``stale_after`` seconds (see the module docstring); their ids."""
    now = time.time()
    cutoff = now - stale_after
    moved = []
    for job in ctx.store.list_jobs(status=JobStatus.RUNNING.value):
        beat = job.get("heartbeat_at") or 0
        if beat >= cutoff:
            continue
        who = job.get("worker") or "unknown"
        snaps = Workspace.complete_snapshots(ctx.ws.output_dir(job["id"]))
        if snaps:
            point = max(snaps)
            ok = ctx.store.hand_over_job(
                job["id"], int(job["run"]), cutoff,
                f"handed over: worker {who} stopped heart-beating {now - beat:.0f} s ago; "
                f"resuming from snapshot {point} on another worker",
                status=JobStatus.QUEUED.value, resume_from=point, error=None, finished_at=None)
            if ok:
                queue.enqueue_job(ctx, ctx.store.get_job(job["id"]) or job)
        else:
            reason = (f"The worker running this job ({who}) stopped heart-beating before the first "
                      "snapshot; submit it again (or clone it) to start over.")
            ok = ctx.store.hand_over_job(
                job["id"], int(job["run"]), cutoff, reason, status=JobStatus.INTERRUPTED.value,
                finished_at=now_iso(), error={"stage": "worker", "message": reason})
        if ok:
            moved.append(job["id"])
    return moved


class Heartbeat(threading.Thread):
    """A worker's heartbeat thread: its row in the store, the hand-over of
    dead workers' jobs, and re-sending lost queue messages."""

    def __init__(self, ctx: Context, name: str, host: str, gpus: list[int], slots: int,
                 running: set[str]) -> None:
        super().__init__(name="layerbench-heartbeat", daemon=True)
        self.ctx, self.node, self.host, self.gpus, self.slots = ctx, name, host, gpus, slots
        self.running = running          # job ids this worker runs now (the tasks keep it)
        self.stop = threading.Event()
        self.started_at = now_iso()

    def beat(self) -> None:
        """Write this worker's row once."""
        self.ctx.store.beat_worker(self.node, host=self.host, pid=os.getpid(), gpus=self.gpus,
                                   slots=self.slots, jobs=sorted(self.running),
                                   started_at=self.started_at, heartbeat_at=time.time())

    def run(self) -> None:
        every = float(self.ctx.cfg["HEARTBEAT_SECONDS"])
        last_dispatch = 0.0
        while not self.stop.is_set():
            try:
                self.beat()
                hand_over_stale(self.ctx, float(self.ctx.cfg["HANDOVER_SECONDS"]))
                if time.monotonic() - last_dispatch >= REDISPATCH_EVERY_S:
                    last_dispatch = time.monotonic()
                    queue.redispatch(self.ctx)
            except Exception as exc:   # a store or broker outage: beat again next time
                print(f"heartbeat: {exc!r}", flush=True)
            self.stop.wait(every)
        try:
            self.ctx.store.delete_worker(self.node)
        except Exception:
            pass
