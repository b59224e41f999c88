"""Inference service: run app.infer contained on a finished job's snapshot."""
from __future__ import annotations

import json

from pathlib import Path

from app.core import tracebacks
from app.services.layers import environments as layer_env
from app.services.runtime import sandbox
from app.services.context import Context
from app.core.errors import Conflict, InvalidPythonLayer, InvalidRequest, NotFound, ServerFault, ServiceError
from app.core.workspace import RESULT_FILE, Workspace
from app.core.config import Settings

MAX_IMAGES = 100
MAX_IMAGE_BYTES = 20 << 20

def snapshot_model(ctx: Context, job: dict, iteration: int | None) -> tuple[int, Path]:
    """(iteration, caffemodel) to use: the given iteration or the latest; 409 if none."""
    models = {it: snap.caffemodel for it, snap in
              Workspace.complete_snapshots(ctx.ws.output_dir(job["id"])).items()}
    if not models:
        raise Conflict("This job has no snapshot yet to classify with.")
    if iteration is None:
        iteration = max(models)
    if iteration not in models:
        raise InvalidRequest(f"No snapshot at iteration {iteration}.",
                       [{"field": "snapshot", "message": "available: " + ", ".join(map(str, sorted(models)))}])
    return iteration, models[iteration]

def run_sandboxed(ctx: Context, job: dict, runner: str, model: Path, work: Path,
                  wall_seconds: float | None = None) -> bool:
    """Run an inference runner (``app.contained.infer`` or ``.segment``) in
    the sandbox on this host, on the images staged in ``work`` with
    ``model``: the job's inputs, outputs and dataset read-only, ``work``
    writable, the administrator-added packages mounted; its output goes to
    ``work/<runner>.log``, within ``wall_seconds`` (default: ``run_limits``;
    a worker gets the web's, which is what the web waits for). Whether it
    ran out of time."""
    spec = sandbox_spec(ctx, job, runner, model, work)
    with open(_log_path(runner, work), "wb") as log:
        limits = run_limits(ctx.cfg)
        if wall_seconds:
            limits.wall_seconds = float(wall_seconds)
        code = sandbox.run(spec, ctx.containment, limits, log, log)
    return bool(code.timed_out)

def sandbox_spec(ctx: Context, job: dict, runner: str, model: Path, work: Path) -> sandbox.Spec:
    """What an inference runner sees (cold or warm alike): the job's inputs,
    outputs and dataset read-only, ``work`` writable, the administrator-added
    packages mounted; its argv ``-m runner INPUT MODEL DATASET WORK``."""
    ds = ctx.ws.dataset_dir(job["dataset"])
    inp = ctx.ws.input_dir(job["id"])
    spec = sandbox.Spec([ctx.cfg.caffe_python, "-m", runner, str(inp), str(model), str(ds), str(work)],
                        read_only=[inp, ctx.ws.output_dir(job["id"]), ds], writable=[work], cwd=work)
    return layer_env.mount(spec, ctx.cfg)   # administrator-added packages, read-only

def layer_error(result: dict) -> ServiceError:
    """A runner's report that the job's code failed, as the upload's fault."""
    return InvalidPythonLayer(f"Inference failed: {result.get('message')}",
                        [{"field": "python_layer", "file": "digits_python_layers.py",
                          "message": result.get("message"), "traceback": result.get("traceback")}])

def run_limits(cfg: Settings) -> sandbox.Limits:
    """An inference run's limits (the same on the web host and a worker)."""
    return sandbox.Limits(wall_seconds=cfg.validate_timeout * 2,
                          address_space=cfg.memory_limit_bytes,
                          memory_bytes=cfg.memory_limit_bytes)

def _log_path(runner: str, work: Path) -> Path:
    return work / (runner.rsplit(".", 1)[1] + ".log")

def run_contained(ctx: Context, job: dict, runner: str, model: Path, work: Path, what: str) -> dict:
    """Run an inference runner contained, here (local queue) or on a worker
    (celery queue: app.services.inference.celery_offload), and return its result.json once
    it says ok (with "worker": who ran it, when a worker did); otherwise the
    error (a Python layer's failure is the upload's fault, a runner that
    left no result is the server's)."""
    from app.services.inference import celery_offload as offload
    from app.services.runtime import broker as queue
    worker = None
    if queue.celery_mode(ctx.cfg):
        record = offload.run_on_worker(ctx, job["id"], runner, model, work,
                                       run_limits(ctx.cfg).wall_seconds, what)
        timed_out, worker = bool(record.get("timed_out")), record.get("worker")
        if record.get("gone"):
            raise NotFound("The job was deleted meanwhile.")
        if record.get("error"):     # its details are in that worker's log, not for the client
            raise ServerFault(f"{what} could not run on worker {worker} "
                               f"({str(record['error'])[:80]}); see that worker's log.")
    else:
        timed_out = run_sandboxed(ctx, job, runner, model, work)
    inp = ctx.ws.input_dir(job["id"])
    log_path = _log_path(runner, work)
    try:
        result = json.loads(Workspace.read_capped(work / RESULT_FILE, 8 << 20))
    except (OSError, ValueError):
        tail = Workspace.read_capped(log_path, 1 << 20).decode("utf-8", "replace")[-3000:]
        tail = tracebacks.scrub(tail, inp, {str(ctx.ws.root): "<jobs>"})   # no host paths
        raise ServerFault(f"{what} stopped without a result"
                           + (" (time limit)." if timed_out else "."), [{"log_tail": tail}]) from None
    if not result.get("ok"):
        raise layer_error(result)
    return dict(result, worker=worker) if worker else result
