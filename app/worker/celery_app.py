"""The celery queue, working side: a Celery worker for this host.

``python -m app.worker.celery_app [-n NAME] [--gpus 0,1|none]`` (``make
worker``) starts one. It runs one job per GPU it offers (a CPU-only worker:
``WORKER_CONCURRENCY`` jobs, default 1) in threads of one process: each job's
training runs in its own sandboxed process anyway (runner.run_job, the very
function the local queue calls), and threads share the allocator that hands
each job its GPU. Its queues are what it offers (``queues_for``); the broker
settings, each with its reason, are ``app.services.runtime.broker.settings``.
Beside it, side nodes (app.worker.side_nodes) take this host's share of
inference requests and dataset builds, which must not wait behind training.

Liveness and hand-over of dead workers' jobs: app.worker.heartbeat. Every
setting comes from the same ``LAYERBENCH_*`` environment as the web
(database URL, jobs directory on shared storage, broker URL).
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading

from celery import Celery, signals

from app.core import config
from app.core.status import JobStatus
from app.core.workspace import Workspace
from app.services.inference import cold as inference
from app.services.inference import celery_offload as offload
from app.services.inference import staged
from app.services.runtime import broker as queue
from app.services.runtime import run_counts
from app.services.context import Context
from app.services.jobs import fairshare
from app.store import Store, now_iso
from app.worker import identity, metrics_port, side_nodes
from app.worker.heartbeat import Heartbeat
from app.worker.runner import run_job
from app.worker.supervisor import Allocator

log = logging.getLogger(__name__)
CFG = config.load()
app = Celery("layerbench", set_as_current=True)
app.conf.update(queue.settings(CFG))

# Per worker process: set up by main() before the Celery worker starts.
STATE: dict = {"ctx": None, "node": None, "alloc": None}
RUNNING: set[str] = set()
SHUTDOWN = threading.Event()      # set on the worker's warm shutdown (SIGTERM)
_alloc_lock = threading.Lock()


def queues_for(gpus: list[int]) -> list[str]:
    """The Celery queues a worker offering ``gpus`` consumes (see
    ``queue.job_queue``): a GPU host takes ``gpu``, ``gpu.N`` for each GPU
    it has, and ``auto``; a CPU-only host ``cpu`` and ``auto``. (Dataset
    builds and inference go to the host's side nodes: app.worker.side_nodes.)"""
    own = ["gpu", *[f"gpu.{i}" for i in gpus]] if gpus else ["cpu"]
    return [*own, "auto"]


def context() -> Context:
    """This process's store, workspace and containment (made once)."""
    if STATE["ctx"] is None:
        from app.services.runtime import sandbox
        store = Store(CFG.database_url)
        store.create_schema()
        STATE["ctx"] = Context(cfg=CFG, store=store, ws=Workspace(CFG.jobs_dir),
                               containment=sandbox.mode(CFG.sandbox))
    return STATE["ctx"]


@app.task(name=queue.TASK_JOB, bind=True)
def run_job_task(self, job_id: str) -> str:
    """A doorbell for the queue of ``job_id``'s device: run the queued job
    of that queue that fair share puts first now (``fair_picks``), which is
    often another than ``job_id``; 'skipped' when none is left to run.

    Why a doorbell, not "run this job": Redis hands a queue's messages out
    in the order they were sent, so one user's 32 queued jobs would hold a
    later user's single job for hours. Choosing when a slot is free, from the
    store, gives the local supervisor's order (fewest running jobs first,
    then longest since their last start) across all workers, with no
    dispatcher to keep alive and nothing per user in the broker. Nothing is
    lost: every queued job has its own message in its device's queue and
    each message starts at most one job of that queue, so there are never
    fewer messages than jobs waiting there; a message that finds only jobs
    held by USER_MAX_RUNNING comes back in 2 s."""
    ctx = context()
    job = ctx.store.get_job(job_id)
    if job is None:
        return "skipped"      # deleted while queued: its message goes with it
    if job["status"] == JobStatus.QUEUED.value and job["abort_requested"]:
        ctx.store.update_job(job_id, expect_status=[JobStatus.QUEUED.value],
                             status=JobStatus.ABORTED.value, finished_at=now_iso())
        return JobStatus.ABORTED.value
    device = str((job.get("params") or {}).get("device") or "auto")
    with _alloc_lock:
        slot = STATE["alloc"].pick(device)
    if slot is None:
        # gpu:N whose GPU another job here holds: back to the queue shortly.
        raise self.retry(countdown=1, max_retries=None)
    kind, index = slot
    try:
        for pick in fair_picks(ctx, device):
            RUNNING.add(pick)
            try:
                final = run_job(ctx, pick, device="cpu" if kind == "cpu" else f"gpu:{index}", gpu_index=index,
                                shutdown=SHUTDOWN, worker=STATE["node"])
            finally:
                RUNNING.discard(pick)
            if final == "skipped":
                continue      # another worker claimed it first: the next in order
            run_counts.count("train", final)     # this host's metrics port (app.worker.metrics_port)
            if final == JobStatus.INTERRUPTED.value and SHUTDOWN.is_set():
                _requeue_after_shutdown(ctx, pick)
            return final
    finally:
        with _alloc_lock:
            STATE["alloc"].release(kind, index)
    now = ctx.store.get_job(job_id)
    if now is not None and now["status"] == JobStatus.QUEUED.value and not now["abort_requested"]:
        raise self.retry(countdown=2, max_retries=None)     # held by USER_MAX_RUNNING: ring again
    return "skipped"


def fair_picks(ctx: Context, device: str) -> list[str]:
    """Queued jobs of ``device``'s Celery queue that may start now, in fair
    share order (app.services.jobs.fairshare: priority, fewest running jobs
    of their user across the cluster, longest since that user's last start,
    submission order), leaving out jobs whose abort is requested (their own
    message ends them) and jobs held by USER_MAX_RUNNING."""
    want = queue.job_queue(device)
    queued = [j for j in ctx.store.list_jobs(status=JobStatus.QUEUED.value) if not j["abort_requested"]
              and queue.job_queue(str((j.get("params") or {}).get("device") or "auto")) == want]
    if not queued:
        return []
    state = ctx.store.share_state(j["owner"] for j in queued)
    return [j["id"] for j in fairshare.runnable(queued, state, ctx.cfg.user_max_running)]


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
    from app.services.datasets.lifecycle import build
    status = build(context(), ds_id, worker=STATE["node"])
    if status != "skipped":
        run_counts.count("build_dataset", status)     # this host's metrics port (app.worker.metrics_port)
    return status


@app.task(name=offload.TASK_INFER)
def infer_task(body: dict) -> str:
    """Run one inference request here, if the web still waits for it, and
    wake the request with the outcome (app.services.inference.celery_offload). Acknowledged
    when it ends, like a job, so a node busy with requests reserves no more
    (other hosts' nodes take them); a redelivered one has expired or is
    already claimed, so it never runs twice or for nobody."""
    ctx = context()
    token = str(body.get("token"))
    if not offload.take(ctx, token, STATE["node"]):
        return "given up"
    record = {"worker": STATE["node"], "timed_out": False}
    try:
        job, runner, model, work, wall = offload.check_request(ctx, body)
        if staged.enabled_on_node(ctx.cfg):     # the job's warm process here answers it
            staged.run(ctx, job, runner, model, work)
        else:
            record["timed_out"] = inference.run_sandboxed(ctx, job, runner, model, work, wall_seconds=wall)
    except LookupError:
        record.update(error="the job was deleted", gone=True)
    except Exception as exc:     # the service's fault; the details stay in this node's log
        log.error("inference request %s: %r", token, exc)
        record["error"] = type(exc).__name__
    finally:
        offload.reply(ctx, token, record)
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
    from app.services.runtime import gpus
    from app.services.runtime.caffe_info import caffe_info
    if not caffe_info(CFG.caffe_python).get("gpu_build"):
        return []
    return [g["index"] for g in gpus.detect()]


def main(argv: list[str] | None = None) -> None:
    """Start this host's worker (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m app.worker.celery_app")
    p.add_argument("-n", "--name", default=CFG.worker_name,
                   help="Celery node name, NAME@HOST, unique in the cluster (default $LAYERBENCH_WORKER_NAME, "
                        "else a fresh layerbench-<hex>@<hostname>; app.worker.identity)")
    p.add_argument("--gpus", default=CFG.worker_gpus, help="GPUs offered: 0,1 or none (default: all found)")
    p.add_argument("--loglevel", default="INFO")
    # A side node (app.worker.side_nodes) started by this host's worker.
    p.add_argument("--side-for", default=None, help=argparse.SUPPRESS)
    p.add_argument("--role", choices=side_nodes.ROLES, default="infer", help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side_for:
        side_nodes.die_with_parent(args.parent_pid)
        STATE["node"] = args.side_for      # replies name the host's worker, as the Workers page does
        context()
        app.worker_main(["worker", "-n", args.name, "-P", "threads", "-c", str(side_nodes.threads(args.role, CFG)),
                         "-Q", side_nodes.role_queue(args.role)[0], "-l", args.loglevel,
                         "--without-mingle", "--without-gossip"])
        return
    try:
        # First of all, before the name is claimed or a side node started:
        # a worker whose metrics port is taken stops here, having changed
        # nothing (and the side nodes must inherit the multiprocess dir).
        port = metrics_port.open_port(CFG, lambda: (STATE["ctx"], STATE["node"], RUNNING))
    except metrics_port.PortTaken as exc:
        logging.basicConfig()
        log.error("not starting: %s", exc)
        sys.exit(2)
    try:
        # Before anything else: a second worker under a live one's name must
        # not even write its heartbeat row (it would hide the first's death).
        name_lock = identity.claim(CFG, args.name)
    except identity.NameTaken as exc:
        logging.basicConfig()
        log.error("not starting: %s", exc)
        if port is not None:
            port.close()
        sys.exit(2)
    args.name = name_lock.name
    gpus = offered_gpus(args.gpus)
    slots = len(gpus) or CFG.worker_concurrency or 1
    ctx = context()
    STATE.update(node=args.name, alloc=Allocator(gpus, 0 if gpus else slots))
    host = args.name.partition("@")[2] or socket.gethostname()
    beat = Heartbeat(ctx, args.name, host, gpus, slots, RUNNING, name_lock=name_lock)
    beat.beat()          # listed before it takes its first job
    beat.start()
    print(f"worker {args.name}: GPUs {gpus}, {slots} slot(s), queues {queues_for(gpus)}, "
          f"containment {ctx.containment}"
          + (f", metrics on http://{port.address}:{port.port}/metrics" if port else ""), file=sys.stderr, flush=True)
    sides = [side_nodes.SideNode(args.name, role, args.loglevel) for role in side_nodes.ROLES]
    for side in sides:
        side.start()
    try:
        app.worker_main(["worker", "-n", args.name, "-P", "threads", "-c", str(slots),
                         "-Q", ",".join(queues_for(gpus)), "-l", args.loglevel,
                         # Mingle and gossip only slow the start: liveness is in the store.
                         "--without-mingle", "--without-gossip"])
    finally:
        beat.stop.set()
        for side in sides:
            side.stop()
        for side in sides:
            # An inference request finishes (a client waits for it); a build
            # gets 30 s, then its node is killed and another host's builds it
            # again (its heartbeat stops: app.worker.heartbeat).
            side.wait(30.0 if side.role == "datasets" else CFG.validate_timeout * 2 + 10)
        beat.join(10)
        try:
            name_lock.release()
        except Exception as exc:    # the broker is away: the name frees itself after its TTL
            log.warning("could not release worker name %s: %r", args.name, exc)
        if port is not None:
            port.close()


if __name__ == "__main__":
    main()
