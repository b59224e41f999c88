"""Liveness across hosts, for the celery queue.

Three heartbeats, all in the store (the one thing every host shares):

* a job's: ``jobs.heartbeat_at``, written by the runner's watch loop every
  0.5 s while its process lives (runner._watch);
* a dataset build's: ``datasets.build_heartbeat_at``, written every second
  by its build (app.services.datasets.lifecycle.build), fenced by its token;
* a worker's: its row in ``workers``, written by ``Heartbeat`` below every
  ``HEARTBEAT_SECONDS``, with its host, GPUs and current jobs (what /healthz
  and the Workers page list).

Every worker also looks after the others: a running job whose heartbeat is
older than ``HANDOVER_SECONDS`` has lost its worker (killed, host down,
partitioned), so it is put back on the queue to resume from its last complete
snapshot on whichever worker takes it. One with no snapshot yet starts again
from the beginning when its owner left ``auto_retry`` on (the default; at
most ``MAX_AUTO_RETRIES`` times), else it is marked ``interrupted`` with the
reason. The hand-over is a compare-and-set on the job's run generation and
stale heartbeat, so exactly one of the workers noticing does it, and a run
that was only slow is fenced (runner: "superseded") rather than duplicated.
"""
from __future__ import annotations

import logging
import json
import os
import threading
import time
from pathlib import Path

from app.core import untrusted
from app.core.status import JobStatus
from app.core.workspace import METRICS_FILE, Workspace
from app.services.runtime import broker as queue
from app.services.context import Context
from app.store import now_iso

log = logging.getLogger(__name__)

REDISPATCH_EVERY_S = 2.0   # how often lost queue messages are looked for
# Automatic restarts from the beginning of a job lost before its first
# snapshot. Capped because a job that keeps losing its worker (one that
# takes its host down: out of memory, a driver crash) must not loop forever
# taking worker after worker; past the cap it ends interrupted, with why.
MAX_AUTO_RETRIES = 2
RESTART_NOTE = "restarting from the beginning"   # marks the automatic restarts in the history


def auto_retry(job: dict) -> bool:
    """Whether the owner left automatic retry on (jobs from before the
    option have no such param: on, like the default)."""
    return (job.get("params") or {}).get("auto_retry", True) is not False


def restarts(events: list[dict]) -> int:
    """How many automatic restarts a job's history records."""
    return sum(1 for e in events
               if e.get("status") == JobStatus.QUEUED.value and RESTART_NOTE in (e.get("message") or ""))


def hand_over_stale(ctx: Context, stale_after: float, restarted: bool = False) -> list[str]:
    """Hand over every running job whose heartbeat is older than
    ``stale_after`` seconds (see the module docstring); their ids.
    ``restarted``: the whole service died and started again (the local
    queue's worker recovering at start): every running job is lost, and the
    history says the service restarted rather than naming a worker."""
    now = time.time()
    cutoff = now - stale_after
    moved = []
    for job in ctx.store.list_jobs(status=JobStatus.RUNNING.value):
        beat = job.get("heartbeat_at") or 0
        if beat >= cutoff:
            continue
        who = job.get("worker") or "unknown"
        lost = ("the service restarted while it ran" if restarted else
                f"handed over: worker {who} stopped heart-beating {now - beat:.0f} s ago")
        snaps = Workspace.complete_snapshots(ctx.ws.output_dir(job["id"]))
        if snaps:
            point = max(snaps)
            ok = ctx.store.hand_over_job(
                job["id"], int(job["run"]), cutoff,
                f"{lost}; resuming from snapshot {point}" + ("" if restarted else " on another worker"),
                status=JobStatus.QUEUED.value, resume_from=point, error=None, finished_at=None)
            if ok:
                queue.enqueue_job(ctx, ctx.store.get_job(job["id"]) or job)
        else:
            ok = _restart_or_interrupt(ctx, job, lost, cutoff, "" if restarted else " on another worker")
        if ok:
            moved.append(job["id"])
    return moved


def _restart_or_interrupt(ctx: Context, job: dict, lost: str, cutoff: float, where: str) -> bool:
    """A lost job without a complete snapshot: queued to start from the
    beginning (auto_retry on, under the cap), else interrupted with the
    reason; whether this worker's compare-and-set won."""
    done = restarts(ctx.store.job_events(job["id"]))
    if auto_retry(job) and done < MAX_AUTO_RETRIES:
        # What a fresh run expects of its row (as when it was submitted):
        # no resume point and nothing of the lost run's progress. Files the
        # lost run left are safe to keep: a torn snapshot is replaced by the
        # next one of its iteration, an unfinished shuffled copy is never
        # used, the runner drops the old progress/result files, and train.log
        # keeps the lost run's lines as history (resumes append there too).
        ok = ctx.store.hand_over_job(
            job["id"], int(job["run"]), cutoff,
            f"{lost} before the first snapshot; "
            f"{RESTART_NOTE}{where} (automatic retry {done + 1} of {MAX_AUTO_RETRIES})",
            status=JobStatus.QUEUED.value, resume_from=None, error=None, finished_at=None,
            iteration=0, progress=0.0, epoch=0.0, eta_seconds=None, metrics={}, snapshots=[])
        if ok:
            _mark_restart(ctx.ws.output_dir(job["id"]), int(job["run"]) + 1)
            queue.enqueue_job(ctx, ctx.store.get_job(job["id"]) or job)
        return ok
    why = "automatic retry is off" if not auto_retry(job) else \
        f"it was already restarted {done} times (automatic retries stop there)"
    reason = (f"The job was lost before the first snapshot ({lost.removeprefix('handed over: ')}), "
              f"and {why}; submit it again (or clone it) to start over.")
    return ctx.store.hand_over_job(
        job["id"], int(job["run"]), cutoff, reason, status=JobStatus.INTERRUPTED.value,
        finished_at=now_iso(), error={"stage": "worker", "message": reason})


def _mark_restart(out: Path, next_run: int) -> None:
    """Append a ``restarted`` record to the job's metrics.jsonl: the lost
    run's points end there (job_files.metrics drops them), so the restarted run's
    iterations are not charted twice. Tagged with the run that will claim
    the job next, so a late write of the lost run counts as superseded.
    The file is in the sandbox's output directory: never through a link or
    into a FIFO, and never created (no file: nothing to end)."""
    try:
        fd = untrusted.open_append(out / METRICS_FILE)
    except OSError:
        return
    try:
        os.write(fd, (json.dumps({"type": "restarted", "run": next_run}) + "\n").encode())
    except OSError:
        pass   # the marker is for charts only; the restart itself has happened
    finally:
        os.close(fd)


def hand_over_stale_builds(ctx: Context, stale_after: float) -> list[str]:
    """Dataset builds whose heartbeat (datasets.build writes it) is older
    than ``stale_after`` seconds lost their worker: queued again to build
    from the upload, which a dead build never got to remove (at most
    ``MAX_AUTO_RETRIES`` times, then ``error`` with why, its upload and
    half-made build removed). Their ids."""
    import shutil
    from app.core.status import DatasetStatus
    now = time.time()
    moved = []
    for ds in ctx.store.list_datasets(status=DatasetStatus.RUNNING.value):
        beat = ds.get("build_heartbeat_at") or 0.0     # none: claimed before these columns existed
        if beat >= now - stale_after:
            continue
        who = ds.get("build_worker") or "unknown"
        handovers = [*(ds.get("handovers") or []),
                     {"worker": who, "at": now_iso(), "stale_s": round(now - beat) if beat else None}]
        again = len(handovers) <= MAX_AUTO_RETRIES
        error = None if again else (
            f"The worker building this dataset ({who}) stopped heart-beating, after {len(handovers) - 1} "
            "earlier restarts of the build; upload it again.")
        fields = {"status": DatasetStatus.QUEUED.value, "info": dict(ds.get("info") or {}, progress=0.0)} \
            if again else {"status": DatasetStatus.ERROR.value, "error": error}
        # One compare-and-set on the run's token and its stale heartbeat,
        # writing the hand-over record with the move: exactly one worker
        # noticing moves it, a run that beat meanwhile keeps it, and the
        # cleared token fences every later write of the run handed over.
        if not ctx.store.hand_over_dataset_build(ds["id"], ds.get("build_token"), now - stale_after,
                                                 handovers=handovers, **fields):
            continue
        if again:
            queue.enqueue_dataset(ctx, ds["id"])
        else:
            root = ctx.ws.dataset_dir(ds["id"])
            for part in ("upload", "build"):        # up to GBs on shared storage, of no more use
                shutil.rmtree(root / part, ignore_errors=True)
            from app.services.jobs import waiting
            waiting.release(ctx, ds["id"])      # jobs waiting on it end, with the reason
        moved.append(ds["id"])
    return moved


class Heartbeat(threading.Thread):
    """A worker's heartbeat thread: its row in the store, the hand-over of
    dead workers' jobs, and re-sending lost queue messages."""

    def __init__(self, ctx: Context, name: str, host: str, gpus: list[int], slots: int,
                 running: set[str], name_lock=None) -> None:
        super().__init__(name="layerbench-heartbeat", daemon=True)
        self.ctx, self.node, self.host, self.gpus, self.slots = ctx, name, host, gpus, slots
        self.name_lock = name_lock      # app.worker.identity.NameLock: refreshed with every beat
        self.running = running          # job ids this worker runs now (the tasks keep it)
        self.stop = threading.Event()
        self.started_at = now_iso()

    def beat(self) -> None:
        """Write this worker's row once."""
        self.ctx.store.beat_worker(self.node, host=self.host, pid=os.getpid(), gpus=self.gpus,
                                   slots=self.slots, jobs=sorted(self.running),
                                   started_at=self.started_at, heartbeat_at=time.time())

    def run(self) -> None:
        every = self.ctx.cfg.heartbeat_seconds
        last_dispatch = 0.0
        while not self.stop.is_set():
            if self.name_lock is not None:
                self.name_lock.refresh()   # never raises: a broker outage must not stop the beat below
            try:
                self.beat()
                hand_over_stale(self.ctx, self.ctx.cfg.handover_seconds)
                hand_over_stale_builds(self.ctx, self.ctx.cfg.handover_seconds)
                if time.monotonic() - last_dispatch >= REDISPATCH_EVERY_S:
                    last_dispatch = time.monotonic()
                    queue.redispatch(self.ctx)
            except Exception as exc:   # a store or broker outage: beat again next time
                log.warning("heartbeat failed (%r); beating again in %s s", exc, every)
            self.stop.wait(every)
        try:
            self.ctx.store.delete_worker(self.node)
        except Exception as exc:   # its row goes stale and is shown as lost
            log.warning("could not remove worker %s from the store: %r", self.node, exc)
