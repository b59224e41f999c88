"""The celery queue, working side: a Celery worker for this host.

``python -m app.worker.celery_app [-n NAME] [--gpus 0,1|none]`` (``make
worker``) starts one. It runs one job per GPU it offers (a CPU-only worker:
``WORKER_CONCURRENCY`` jobs, default 1) in threads of one process: each job's
training runs in its own sandboxed process anyway (runner.run_job, the very
function the local queue calls), and threads share the allocator that hands
each job its GPU. Its queues are what it offers (``queues_for``); the broker
settings, each with its reason, are ``app.services.queue.settings``.
Beside it, a side node (``start_side_node``) takes this host's share of
inference requests and dataset builds, which must not wait behind training.

Liveness and hand-over of dead workers' jobs: app.worker.heartbeat. Every
setting comes from the same ``LAYERBENCH_*`` environment as the web
(database URL, jobs directory on shared storage, broker URL).
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from celery import Celery, signals

from app.core import config
from app.core.status import JobStatus
from app.core.workspace import Workspace
from app.services import inference, offload, queue
from app.services.context import Context
from app.store import Store, now_iso
from app.worker.heartbeat import Heartbeat
from app.worker.runner import run_job
from app.worker.supervisor import Allocator

CFG = config.load()
app = Celery("layerbench", set_as_current=True)
app.conf.update(queue.settings(CFG))

# Per worker process: set up by main() before the Celery worker starts.
STATE: dict = {"ctx": None, "node": None, "alloc": None}
RUNNING: set[str] = set()
SHUTDOWN = threading.Event()      # set on the worker's warm shutdown (SIGTERM)
_alloc_lock = threading.Lock()


# What each host's side node (start_side_node) consumes: work that must not
# wait behind training, as it does not wait in the local queue either.
SIDE_QUEUES = (offload.INFER_QUEUE, queue.DATASET_QUEUE)


def queues_for(gpus: list[int]) -> list[str]:
    """The Celery queues a worker offering ``gpus`` consumes (see
    ``queue.job_queue``): a GPU host takes ``gpu``, ``gpu.N`` for each GPU
    it has, and ``auto``; a CPU-only host ``cpu`` and ``auto``. (Dataset
    builds and inference go to the host's side node: ``SIDE_QUEUES``.)"""
    own = ["gpu", *[f"gpu.{i}" for i in gpus]] if gpus else ["cpu"]
    return [*own, "auto"]


def context() -> Context:
    """This process's store, workspace and containment (made once)."""
    if STATE["ctx"] is None:
        from app.services import sandbox
        store = Store(str(CFG["DATABASE_URL"]))
        store.create_schema()
        STATE["ctx"] = Context(cfg=CFG, store=store, ws=Workspace(CFG["JOBS_DIR"]),
                               containment=sandbox.mode(str(CFG["SANDBOX"])))
    return STATE["ctx"]


@app.task(name=queue.TASK_JOB, bind=True)
def run_job_task(self, job_id: str) -> str:
    """Run one queued job here (a duplicate or stale message: 'skipped')."""
    ctx = context()
    job = ctx.store.get_job(job_id)
    if job is None or job["status"] != JobStatus.QUEUED.value:
        return "skipped"
    if job["abort_requested"]:
        ctx.store.update_job(job_id, expect_status=[JobStatus.QUEUED.value],
                             status=JobStatus.ABORTED.value, finished_at=now_iso())
        return JobStatus.ABORTED.value
    with _alloc_lock:
        slot = STATE["alloc"].pick(str((job.get("params") or {}).get("device") or "auto"))
    if slot is None:
        # gpu:N whose GPU another job here holds: back to the queue shortly.
        raise self.retry(countdown=1, max_retries=None)
    kind, index = slot
    RUNNING.add(job_id)
    try:
        final = run_job(ctx, job_id, device="cpu" if kind == "cpu" else f"gpu:{index}", gpu_index=index,
                        shutdown=SHUTDOWN, worker=STATE["node"])
        if final == JobStatus.INTERRUPTED.value and SHUTDOWN.is_set():
            _requeue_after_shutdown(ctx, job_id)
        return final
    finally:
        RUNNING.discard(job_id)
        with _alloc_lock:
            STATE["alloc"].release(kind, index)


def _requeue_after_shutdown(ctx: Context, job_id: str) -> None:
    """A job this worker stopped because it is shutting down goes back on the
    queue to resume from its snapshot on another worker (the history says so)."""
    snaps = Workspace.complete_snapshots(ctx.ws.output_dir(job_id))
    if snaps and ctx.store.update_job(job_id, expect_status=[JobStatus.INTERRUPTED.value],
                                      status=JobStatus.QUEUED.value, resume_from=max(snaps),
                                      error=None, finished_at=None):
        queue.enqueue_job(ctx, ctx.store.get_job(job_id))


@app.task(name=queue.TASK_DATASET)
def build_dataset_task(ds_id: str) -> str:
    """Build one queued dataset here (the build's own claim skips duplicates)."""
    from app.services.datasets import build
    return build(context(), ds_id, worker=STATE["node"])


@app.task(name=offload.TASK_INFER, acks_late=False)
def infer_task(body: dict) -> str:
    """Run one inference request here and wake the web request waiting on
    it (app.services.offload). Acknowledged when it starts, unlike a job: a
    request whose node dies mid-run is not run again for a web request that
    has given up on it."""
    ctx = context()
    record = {"worker": STATE["node"], "timed_out": False}
    try:
        job = ctx.store.get_job(str(body["job"]))
        if job is None:
            raise LookupError("the job no longer exists")
        record["timed_out"] = inference.run_sandboxed(
            ctx, job, offload.check_runner(str(body["runner"])), offload.resolve(ctx, str(body["model"])),
            offload.resolve(ctx, str(body["work"])))
    except Exception as exc:     # reported to the waiting request as the service's fault
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        offload.reply(ctx, str(body["token"]), record)
    return "error" if "error" in record else "ok"


@signals.worker_shutting_down.connect
def _on_shutdown(**_kw) -> None:
    # Warm shutdown waits for running tasks: make them stop now, with a
    # snapshot, instead of after hours of training.
    SHUTDOWN.set()


def offered_gpus(spec: str | None) -> list[int]:
    """GPUs this worker offers: ``spec`` "0,1" or "none"; by default every
    GPU found, when this pycaffe is a CUDA build."""
    if spec:
        return [] if spec.strip().lower() in ("none", "cpu", "") else \
            sorted({int(x) for x in spec.split(",") if x.strip()})
    from app.services import gpus
    from app.services.caffe_info import caffe_info
    if not caffe_info(str(CFG["CAFFE_PYTHON"])).get("gpu_build"):
        return []
    return [g["index"] for g in gpus.detect()]


def main(argv: list[str] | None = None) -> None:
    """Start this host's worker (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m app.worker.celery_app")
    p.add_argument("-n", "--name", default=CFG["WORKER_NAME"] or f"layerbench@{socket.gethostname()}",
                   help="Celery node name, NAME@HOST (default $LAYERBENCH_WORKER_NAME or layerbench@<hostname>)")
    p.add_argument("--gpus", default=CFG["WORKER_GPUS"], help="GPUs offered: 0,1 or none (default: all found)")
    p.add_argument("--loglevel", default="INFO")
    # The side node main() starts beside this host's worker (see
    # start_side_node); its value is the worker it serves.
    p.add_argument("--side-for", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side_for:
        STATE["node"] = args.side_for      # replies name the host's worker, as the Workers page does
        context()
        # One thread more than the inference requests it takes at once, so
        # one dataset build (minutes) leaves them theirs.
        threads = max(1, int(CFG["INFER_CONCURRENCY"])) + 1
        app.worker_main(["worker", "-n", args.name, "-P", "threads", "-c", str(threads),
                         "-Q", ",".join(SIDE_QUEUES), "-l", args.loglevel, "--without-mingle", "--without-gossip"])
        return
    gpus = offered_gpus(args.gpus)
    slots = len(gpus) or int(CFG["WORKER_CONCURRENCY"]) or 1
    ctx = context()
    STATE.update(node=args.name, alloc=Allocator(gpus, 0 if gpus else slots))
    host = args.name.partition("@")[2] or socket.gethostname()
    beat = Heartbeat(ctx, args.name, host, gpus, slots, RUNNING)
    beat.beat()          # listed before it takes its first job
    beat.start()
    print(f"worker {args.name}: GPUs {gpus}, {slots} slot(s), queues {queues_for(gpus)}, "
          f"containment {ctx.containment}", file=sys.stderr, flush=True)
    side = SideNode(args.name, args.loglevel)
    side.start()
    try:
        app.worker_main(["worker", "-n", args.name, "-P", "threads", "-c", str(slots),
                         "-Q", ",".join(queues_for(gpus)), "-l", args.loglevel,
                         # Mingle and gossip only slow the start: liveness is in the store.
                         "--without-mingle", "--without-gossip"])
    finally:
        beat.stop.set()
        side.stop(float(CFG["VALIDATE_TIMEOUT"]) * 2 + 10)
        beat.join(10)


class SideNode(threading.Thread):
    """Keeps this host's side node running: started with the worker, and
    started again when it exits on its own (killed, out of memory), at most
    every RESTART_EVERY_S so a node that cannot start does not spin."""

    RESTART_EVERY_S = 5.0

    def __init__(self, worker: str, loglevel: str) -> None:
        super().__init__(name="layerbench-side-node", daemon=True)
        self.worker, self.loglevel = worker, loglevel
        self.stopping = threading.Event()
        self.proc = start_side_node(worker, loglevel)
        self.started = time.monotonic()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            if self.proc.poll() is not None and time.monotonic() - self.started >= self.RESTART_EVERY_S:
                print(f"side node of {self.worker} exited ({self.proc.returncode}); starting it again",
                      file=sys.stderr, flush=True)
                self.proc = start_side_node(self.worker, self.loglevel)
                self.started = time.monotonic()

    def stop(self, timeout: float) -> None:
        """A warm shutdown: a request or build it runs finishes (within ``timeout``)."""
        self.stopping.set()
        self.join(5)
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_side_node(name: str, loglevel: str) -> subprocess.Popen:
    """This host's side node: a second Celery worker process consuming
    ``SIDE_QUEUES`` (inference requests, dataset builds) with
    INFER_CONCURRENCY + 1 threads. A separate node because a Celery worker
    has one pool for all its queues: sharing the training slots, a request
    or a build would wait behind days of training. It gets SIGTERM when this
    process dies, even by SIGKILL (no orphans)."""
    base, _, host = name.partition("@")
    def die_with_parent() -> None:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    node = f"{base}-side@{host}" if host else f"{base}-side"
    return subprocess.Popen([sys.executable, "-m", "app.worker.celery_app", "-n", node, "--loglevel", loglevel,
                             "--side-for", name], cwd=Path(__file__).resolve().parents[2],
                            preexec_fn=die_with_parent)


if __name__ == "__main__":
    main()
