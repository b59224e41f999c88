"""The local queue: a supervisor on this machine that runs queued jobs (one
per GPU, a few on the CPU) and dataset builds, recovering at start."""
from __future__ import annotations

import shutil
import socket
import threading
import time

from app.services.jobs import fairshare
from app.services.runtime import doorbell
from app.services.context import Context
from app.worker.runner import recover, run_job
from app.core.status import JobStatus
from app.store import now_iso

START_MIN_FREE = 1 << 20    # bytes the jobs volume needs before a queued job starts (inputs, logs)


def recover_dead_worker(ctx: Context, pid: int, reason: str) -> list[str]:
    """Mark the running jobs of the worker process ``pid`` (on this host),
    known to be dead, interrupted with ``reason``; return their ids.

    ``recover`` does this for every running job when a worker starts, or for
    jobs whose heartbeat went stale; the process that saw the worker die
    knows which jobs it held and why, and need not wait for either.
    """
    name = f"{socket.gethostname()}:{pid}"   # runner.worker_name() in that process
    changed = []
    for job in ctx.store.list_jobs(status=JobStatus.RUNNING.value):
        if job.get("worker") != name:
            continue
        # The same compare-and-set as every state change: a job that ended
        # meanwhile keeps its own final state.
        if ctx.store.update_job(job["id"], expect_status=[JobStatus.RUNNING.value],
                                status=JobStatus.INTERRUPTED.value, finished_at=now_iso(),
                                heartbeat_at=time.time(), error={"stage": "worker", "message": reason}):
            changed.append(job["id"])
    return changed


class Allocator:
    """Which device a job may run on now: one job per GPU, ``cpu_slots``
    jobs on the CPU. ``pick`` returns ("gpu", index), ("cpu", None) or None
    (wait)."""

    def __init__(self, gpu_indices: list[int], cpu_slots: int) -> None:
        self.gpus, self.cpu_slots = list(gpu_indices), max(1, cpu_slots)   # what this host offers
        self.free_gpus, self.cpu_free = list(gpu_indices), self.cpu_slots

    def pick(self, device: str) -> tuple[str, int | None] | None:
        """Reserve a device for a job asking for ``device`` (auto|cpu|gpu|gpu:N)."""
        if device.startswith("gpu:"):
            want = int(device[4:])
            if want in self.free_gpus:
                self.free_gpus.remove(want)
                return "gpu", want
            return None
        if device in ("gpu", "auto") and self.free_gpus:
            return "gpu", self.free_gpus.pop(0)
        if device in ("cpu", "auto") and self.cpu_free > 0:
            self.cpu_free -= 1
            return "cpu", None
        return None

    def release(self, kind: str, index: int | None) -> None:
        """Give a device back."""
        if kind == "gpu":
            self.free_gpus.append(index)
            self.free_gpus.sort()
        else:
            self.cpu_free += 1


class LocalSupervisor:
    """Runs queued jobs on this machine in fair-share order: one per GPU
    (when Caffe has CUDA), ``cpu_slots`` on the CPU; a job waiting for a
    busy device lets later jobs that can run go first."""

    def __init__(self, ctx: Context, cpu_slots: int = 1, gpu_indices: list[int] | None = None) -> None:
        self.ctx = ctx
        self.alloc = Allocator(gpu_indices or [], cpu_slots)
        self.threads: dict[str, threading.Thread] = {}
        self.dataset_thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def tick(self) -> None:
        """Start queued jobs while a device is free, in fair-share order
        (app.services.jobs.fairshare), and the oldest queued dataset build when
        none is running."""
        self._datasets()
        self.threads = {j: t for j, t in self.threads.items() if t.is_alive()}
        queued = [j for j in self.ctx.store.list_jobs(status=JobStatus.QUEUED.value) if j["id"] not in self.threads]
        for job in [j for j in queued if j["abort_requested"]]:
            self.ctx.store.update_job(job["id"], expect_status=[JobStatus.QUEUED.value],
                                      status=JobStatus.ABORTED.value, finished_at=now_iso())
        queued = [j for j in queued if not j["abort_requested"]]
        if not queued or self._volume_full():
            return
        limit = self.ctx.cfg.user_max_running
        state = self.ctx.store.share_state(j["owner"] for j in queued)
        started = True
        while started and queued and not self.stopping.is_set():
            started = False
            for job in fairshare.order(queued, state, limit):
                running, _ = state[job["owner"]]
                if limit and running >= limit:
                    break        # only held jobs are left
                slot = self.alloc.pick((job.get("params") or {}).get("device", "auto"))
                if slot is None:
                    continue     # its device is busy: a later job that can run goes first
                t = threading.Thread(target=self._run, args=(job["id"], slot), daemon=True)
                self.threads[job["id"]] = t
                t.start()
                queued.remove(job)
                # Counted as running from now on, before its thread claims it.
                state[job["owner"]] = (running + 1, "~" + now_iso())
                started = True
                break

    def _volume_full(self) -> bool:
        """Whether the jobs volume has no room to start a job in (under
        START_MIN_FREE bytes): a job started now would fail before training,
        so the queue waits for space instead (run_job puts back one that
        raced a filling volume)."""
        try:
            return shutil.disk_usage(self.ctx.ws.root).free < START_MIN_FREE
        except OSError:
            return False

    def _datasets(self) -> None:
        if self.dataset_thread is not None and self.dataset_thread.is_alive():
            return
        queued = self.ctx.store.list_datasets(status="queued")
        if queued and not self.stopping.is_set():
            from app.services.datasets.lifecycle import build
            self.dataset_thread = threading.Thread(target=build, args=(self.ctx, queued[-1]["id"]), daemon=True)
            self.dataset_thread.start()

    def _run(self, job_id: str, slot: tuple[str, int | None]) -> None:
        kind, index = slot
        try:
            run_job(self.ctx, job_id, device="cpu" if kind == "cpu" else f"gpu:{index}",
                    gpu_index=index, shutdown=self.stopping)
        finally:
            self.alloc.release(kind, index)
            doorbell.ring(self.ctx.cfg)      # a slot is free: the next job need not wait for the poll

    def stop(self) -> None:
        """Stop (from a signal handler too): running jobs stop with a
        snapshot, and the wait for the next ring ends now, not a poll later."""
        self.stopping.set()
        doorbell.ring(self.ctx.cfg)

    def serve_forever(self) -> None:
        """Recover, then look at the store whenever the doorbell rings (a
        submit, a resume, a run that ended: app.services.runtime.doorbell)
        and at least every ``WORKER_POLL_SECONDS``, until ``stopping`` is set."""
        recover(self.ctx)
        bell = doorbell.Bell(self.ctx.cfg)
        self.bell_path = bell.path
        try:
            while not self.stopping.is_set():
                self.tick()
                bell.wait(self.ctx.cfg.worker_poll_seconds)
        finally:
            bell.close()
        for t in self.threads.values():
            t.join(timeout=30)


def for_this_host(ctx: Context, slots: int | None = None) -> LocalSupervisor:
    """The local supervisor `flask worker` runs: one slot per GPU this host's
    Caffe can use, ``slots`` (default WORKER_CONCURRENCY, else 1) on the CPU."""
    from app.services.runtime import gpus
    from app.services.runtime.caffe_info import caffe_info
    found = [g["index"] for g in gpus.detect()] if caffe_info(ctx.cfg.caffe_python).get("gpu_build") else []
    return LocalSupervisor(ctx, cpu_slots=slots or ctx.cfg.worker_concurrency or 1, gpu_indices=found)
