"""Hand jobs to workers and watch them run.

``run_job(ctx, job_id)`` runs one queued job to its end: claims it in the
store, starts ``app.contained.train`` in the sandbox from the newest complete
snapshot when resuming, copies its output into the capped train.log, turns
the runner's files into store updates, passes aborts on, and always records
a final state (outcome.py says which). The ``local``
queue (supervisor.py) calls it for queued jobs in submission order; the
celery queue's task (celery_app.py) calls the same function.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from app.core.jsonl import JsonlTail
from app.core import tracebacks
from app.core.joblog import CappedLog
from app.core.status import JobStatus
from app.core.workspace import (
    ABORT_FILE, CONTROL_DIR, METRICS_FILE, PROGRESS_FILE, RESULT_FILE, RESUME_FILE, RUN_FILE,
    Workspace, snapshot_name)
from app.services.layers import environments as layer_env
from app.services.runtime import sandbox
from app.services.context import Context
from app.store import now_iso
from app.worker import quota
from app.worker.outcome import classify

SUPERSEDED = "superseded"   # run_job's answer when another run took the job over
HEARTBEAT_STALE_SECONDS = 30.0
WATCH_SECONDS = 0.5
# After the process ends, its pipe closes as soon as the sandbox is gone;
# longer only if something it started outlives it (possible without bwrap).
PUMP_DRAIN_SECONDS = 10.0
CONTEXT_BYTES = 1 << 20   # the end of the log searched for what killed a run


def worker_name() -> str:
    """This worker process as jobs record it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(ctx: Context, job_id: str, worker: str | None = None) -> int | None:
    """Take a queued job; the new run generation, or None if another won."""
    return ctx.store.claim_job(job_id, worker or worker_name(), started_at=now_iso(), finished_at=None,
                               error=None, heartbeat_at=time.time())


class RunTail(JsonlTail):
    """The runner's metrics.jsonl followed incrementally (app.core.jsonl);
    with ``run``, records another run generation wrote are skipped. (A
    near-copy of JsonlTail lived here on 5 noisy benchmark runs; 20
    interleaved rounds of `python -m bench train_speed` settled it: see the
    bench's reader comparison.)"""

    def __init__(self, path: Path, run: int | None = None) -> None:
        super().__init__(path)
        self.run = run

    def keep(self, run: int | None) -> bool:
        """Records of this run generation (and untagged ones)."""
        return self.run is None or run is None or run == self.run


def _fold(job: dict, records: list[dict]) -> dict:
    """Store fields from new metric records (latest value per series)."""
    metrics = dict(job.get("metrics") or {})
    snapshots = list(job.get("snapshots") or [])
    for rec in records:
        kind = rec.pop("type", None)
        if kind in ("train", "val"):
            metrics[kind] = {k: v for k, v in rec.items() if k not in ("iteration", "epoch")}
        elif kind == "snapshot" and isinstance(rec.get("iteration"), int):
            if all(s["iteration"] != rec["iteration"] for s in snapshots):
                snapshots.append({"iteration": rec["iteration"], "epoch": rec.get("epoch")})
    return {"metrics": metrics, "snapshots": snapshots}


def _read_progress(path: Path) -> dict:
    """The trainer's progress.json (written by user-reachable code: read
    capped, through app.core.untrusted), or {}."""
    try:
        p = json.loads(Workspace.read_capped(path, 1 << 16))
    except (OSError, ValueError):
        return {}
    return p if isinstance(p, dict) else {}


def _number(p: dict, key: str) -> float | None:
    v = p.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _progress(p: dict) -> dict:
    """The job-row fields a progress.json gives, typed."""
    keys = {"iteration": int, "progress": float, "eta_seconds": float, "epoch": float}
    return {k: kind(v) for k, kind in keys.items() if (v := _number(p, k)) is not None}


def _abort_grace(base: float, p: dict) -> float:
    """Seconds an aborted run gets to reach its next iteration's end and
    snapshot: ``base`` (ABORT_GRACE_SECONDS), or three of its iterations when
    they are slower (``p``, its progress.json, says how fast it went)."""
    rate = _number(p, "iterations_per_second")
    return max(base, 3.0 / rate) if rate and rate > 0 else base


def _resume_point(out: Path, wanted: int | None) -> int | None:
    """The snapshot to resume from: ``wanted`` if it is complete, else the
    newest complete one before it (a torn pair is never restored)."""
    if not wanted:
        return None
    complete = [it for it in Workspace.complete_snapshots(out) if it <= wanted]
    return max(complete, default=None)


def run_job(ctx: Context, job_id: str, device: str = "cpu", gpu_index: int | None = None,
            shutdown: threading.Event | None = None, worker: str | None = None) -> str:
    """Run a queued job to its end; return its final status. When
    ``shutdown`` is set the job is stopped with a snapshot and left
    ``interrupted`` (resumable) rather than aborted. ``worker`` is the name
    the job records (default ``host:pid``; a Celery worker's node name)."""
    run = _claim(ctx, job_id, worker)
    if run is None:
        return "skipped"
    ws, store = ctx.ws, ctx.store
    out, inp = ws.output_dir(job_id), ws.input_dir(job_id)
    control = ws.job_dir(job_id) / CONTROL_DIR
    final, error = JobStatus.ERROR.value, None
    log = proc = pump = None
    try:
        control.mkdir(exist_ok=True)
        (control / ABORT_FILE).unlink(missing_ok=True)
        # The fence the training process checks every iteration: once another
        # run's generation is written here, a stale one stops writing.
        Workspace.write_json(control / RUN_FILE, {"run": run})
        job = store.get_job(job_id)
        store.update_job(job_id, device=device)
        # The worker owns train.log: the runner's output comes through a pipe.
        log = CappedLog(*ws.log_paths(job_id), ctx.cfg.log_max_bytes)
        start_at = _resume_point(out, job.get("resume_from"))
        if job.get("resume_from") and start_at != job["resume_from"]:
            log.note(f"snapshot {job['resume_from']} is incomplete; resuming from "
                     f"{start_at if start_at is not None else 'the start'}")
        if start_at is not None:
            Workspace.write_json(control / RESUME_FILE,
                                 {"solverstate": snapshot_name(start_at, ".solverstate")})
        else:
            (control / RESUME_FILE).unlink(missing_ok=True)
        for stale in (RESULT_FILE, PROGRESS_FILE):
            (out / stale).unlink(missing_ok=True)
        spec, limits = _spec(ctx, job, device, gpu_index, inp, out, control)
        t0 = time.monotonic()
        proc = sandbox.start(spec, ctx.containment, limits, subprocess.PIPE, subprocess.STDOUT)
        # Users read this log: no host path in it (their job directory reads <job>).
        pump = log.pump(proc.stdout, tracebacks.scrubber({str(ws.job_dir(job_id)): "<job>", str(ws.root): "<jobs>"}))
        final, error = _watch(ctx, job_id, run, proc, limits, t0, out, control, shutdown, log, pump)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or proc is not None:
            raise
        # The jobs volume filled up before the trainer started: this run left
        # nothing to resume from and the job is not at fault, so it goes back
        # to the queue rather than ending in an error without a reason (the
        # local supervisor starts nothing while the volume is full).
        log_note = "no space left on the jobs volume before training started; queued again"
        if store.update_job(job_id, expect_status=[JobStatus.RUNNING.value], expect_run=run,
                            status=JobStatus.QUEUED.value, finished_at=None, error=None):
            from app.services.runtime import broker as queue
            queue.enqueue_job(ctx, store.get_job(job_id))
            print(f"job {job_id}: {log_note}", flush=True)
        final = SUPERSEDED       # written here: nothing more for the finally below
    finally:
        if proc is not None:
            if proc.poll() is None:
                sandbox.kill(proc)
            sandbox.wait(proc, sandbox.Limits(), time.monotonic())   # gives the sandbox uid back
        if pump is not None:
            pump.join(PUMP_DRAIN_SECONDS)
        if log is not None and (pump is None or not pump.is_alive()):
            log.close()
        if final != SUPERSEDED:
            store.update_job(job_id, expect_status=[JobStatus.RUNNING.value], expect_run=run, status=final,
                             finished_at=now_iso(), error=error, heartbeat_at=time.time())
    return final


def _spec(ctx: Context, job: dict, device: str, gpu_index: int | None, inp: Path, out: Path,
          control: Path) -> tuple[sandbox.Spec, sandbox.Limits]:
    """What the training process may see, and its limits."""
    ds_dir = ctx.ws.dataset_dir(job["dataset"]) if job.get("dataset") else None
    env = {"LAYERBENCH_DEVICE": device, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}
    devices: list[str] = []
    if gpu_index is not None:
        # The job sees exactly one GPU: CUDA numbering and device nodes alike.
        from app.services.runtime.gpus import device_nodes
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
        devices = device_nodes(gpu_index)
    spec = sandbox.Spec([ctx.cfg.caffe_python, "-m", "app.contained.train", str(inp), str(out), str(control)],
                        read_only=[inp, control] + ([ds_dir] if ds_dir else []), writable=[out],
                        env=env, cwd=out, devices=devices)
    layer_env.mount(spec, ctx.cfg)   # administrator-added packages, read-only
    limits = sandbox.Limits(wall_seconds=ctx.cfg.train_timeout,
                            cpu_seconds=ctx.cfg.train_timeout * 4,
                            address_space=ctx.cfg.memory_limit_bytes,
                            memory_bytes=ctx.cfg.memory_limit_bytes)
    return spec, limits


def _watch(ctx: Context, job_id: str, run: int, proc: subprocess.Popen, limits: sandbox.Limits,
           t0: float, out: Path, control: Path, shutdown: threading.Event | None,
           log: CappedLog, pump: threading.Thread) -> tuple[str, dict | None]:
    store, tail = ctx.store, RunTail(out / METRICS_FILE, run)
    tail.offset = Workspace.file_size(out / METRICS_FILE)  # resume: skip old records
    # The trainer writes progress every 0.5 s: watching faster only takes CPU
    # from the training it watches. Not tied to WORKER_POLL_SECONDS (a slow
    # queue poll must not make a job's end slow to notice), and each sleep
    # ends the moment the trainer exits.
    poll = WATCH_SECONDS
    aborting, abort_at = False, float("inf")
    disk = quota.Watcher(out, ctx.cfg.job_disk_mb)
    free_seen: list[tuple[float, int]] = []    # (when, MiB free) of the last DISK_WINDOW_S
    while True:
        done = proc.poll() is not None
        _sample_free(free_seen, out)
        job = store.get_job(job_id)
        if job is None:          # deleted while running: stop it, record nothing
            sandbox.kill(proc)
            return JobStatus.ABORTED.value, None
        fields = _fold(job, tail.records())
        progress = _read_progress(out / PROGRESS_FILE)
        fields.update(_progress(progress))
        if not store.update_job(job_id, expect_run=run, heartbeat_at=time.time(), **fields):
            # Another run owns the job now (this worker was presumed dead):
            # stop ours at once and record nothing more.
            sandbox.kill(proc)
            log.note(f"run {run} was superseded by run {job['run']}; stopped")
            return SUPERSEDED, None
        stopping = shutdown is not None and shutdown.is_set()
        if (job["abort_requested"] or stopping) and not aborting:
            aborting, abort_at = True, time.monotonic()
            Workspace.write_atomic(control / ABORT_FILE, b"1")
            if ctx.containment != "bwrap":
                _signal(proc)
        if done:
            break
        grace = _abort_grace(ctx.cfg.abort_grace_seconds, progress)
        if aborting and time.monotonic() - abort_at > grace:
            # The trainer looks for the abort between iterations: a layer that
            # never returns would hold the job (and a delete) until the wall
            # clock. Killed now, it ends aborted with its last complete snapshot.
            sandbox.kill(proc)
            log.note(f"the run did not stop within {grace:g} s of the abort (a layer that does not return?); killed")
            abort_at = float("inf")   # killed once; the next look sees it gone
            continue
        if disk.over():   # what user code writes is bounded too, not only the time it takes
            sandbox.kill(proc)
            return JobStatus.INTERRUPTED.value, disk.error()
        if time.monotonic() - t0 > limits.wall_seconds:
            sandbox.kill(proc)
            return JobStatus.ERROR.value, {"stage": "train", "message":
                                           f"Training exceeded the time limit of {limits.wall_seconds:g} s."}
        sandbox.wait_exit(proc, poll)
    # Everything the process printed is in the log once the pipe has closed.
    pump.join(PUMP_DRAIN_SECONDS)
    if getattr(proc, "lost", False):
        # The root launcher died under the run: the server's fault, never the job's.
        return JobStatus.INTERRUPTED.value, {"stage": "worker", "message": "The sandbox launcher stopped while "
                                             "the job trained; resume it to continue from its last snapshot."}
    status, error = classify(_result(out), proc.returncode, aborting,
                             log.tail(CONTEXT_BYTES).decode("utf-8", "replace"),
                             ctx.cfg.memory_limit_mb, _sample_free(free_seen, out),
                             sandbox.oom_killed(proc))
    if status == JobStatus.ABORTED.value and shutdown is not None and shutdown.is_set() \
            and not (ctx.store.get_job(job_id) or {}).get("abort_requested"):
        return JobStatus.INTERRUPTED.value, {"stage": "worker", "message": "The worker was shut down; "
                                             "resume the job to continue from its last snapshot."}
    if status != JobStatus.DONE.value and error:
        try:
            log.note(f"the job ends {status}: {error.get('message')}")
        except OSError:
            pass   # a full disk: the store still gets the reason
    return status, error


DISK_WINDOW_S = 10.0


def _sample_free(seen: list[tuple[float, int]], out: Path) -> int | None:
    """Record the jobs volume's free MiB now; the lowest of the last
    DISK_WINDOW_S. A run that failed writing a snapshot on a full volume is
    judged by it (outcome.classify): space freed by the time the run's end
    is classified (the chaos soak's fill ended meanwhile, a temporary file
    removed) must not turn "the disk was full" into the job's own error."""
    now, free = time.monotonic(), _free_mb(out)
    if free is not None:
        seen.append((now, free))
    seen[:] = [(t, f) for t, f in seen if now - t <= DISK_WINDOW_S]
    return min((f for _, f in seen), default=free)


def _free_mb(path: Path) -> int | None:
    """Free space on the volume holding ``path``, in MiB."""
    try:
        return shutil.disk_usage(path).free >> 20
    except OSError:
        return None


def _signal(proc: subprocess.Popen) -> None:
    import signal
    sandbox.signal_group(proc, signal.SIGTERM)


def _result(out: Path) -> dict | None:
    """The runner's result.json, or None when it wrote none (or nonsense)."""
    try:
        result = json.loads(Workspace.read_capped(out / RESULT_FILE, 1 << 20))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def recover(ctx: Context, stale_after: float | None = None) -> list[str]:
    """Running jobs whose worker is gone. With ``stale_after`` None, every
    running job (a fresh local supervisor owns all: the service restarted).
    There, with AUTO_RESUME on (the default), each is queued again from its
    newest complete snapshot, as a handed-over job is in celery mode (no
    snapshot: from the beginning, under auto_retry's cap), and a job its
    owner had asked to stop ends aborted; otherwise (or with a stale_after)
    they are marked interrupted."""
    changed = []
    if stale_after is None and ctx.cfg.auto_resume:
        from app.worker import heartbeat
        for job in ctx.store.list_jobs(status=JobStatus.RUNNING.value):
            if job["abort_requested"] and ctx.store.update_job(
                    job["id"], expect_status=[JobStatus.RUNNING.value], status=JobStatus.ABORTED.value,
                    finished_at=now_iso()):
                changed.append(job["id"])
        changed += heartbeat.hand_over_stale(ctx, -1e12, restarted=True)
    for job in ctx.store.list_jobs(status=JobStatus.RUNNING.value):
        beat = job.get("heartbeat_at") or 0
        if stale_after is None or time.time() - beat > stale_after:
            if ctx.store.update_job(job["id"], expect_status=[JobStatus.RUNNING.value],
                                    status=JobStatus.INTERRUPTED.value, finished_at=now_iso(),
                                    error={"stage": "worker", "message": "The worker running this job "
                                           "stopped; resume it to continue from the last snapshot."}):
                changed.append(job["id"])
    if stale_after is None:
        for ds in ctx.store.list_datasets(status="running"):
            ctx.store.upsert_dataset(ds["id"], status="error",
                                     error="The worker stopped while building this dataset; upload it again.")
            ctx.ws.delete(ctx.ws.dataset_dir(ds["id"]) / "build")
        from app.services.jobs import waiting
        waiting.release_stale(ctx)   # jobs waiting on a build that ended meanwhile
    return changed
