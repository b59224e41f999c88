"""Inference service: run app.infer contained on a finished job's snapshot."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO

from app.core import tracebacks
from app.services import layer_env, sandbox, warm_reply
from app.services.context import Context
from app.core.errors import ServiceError
from app.core.workspace import RESULT_FILE, Workspace

MAX_IMAGES = 100
MAX_IMAGE_BYTES = 20 << 20


def snapshot_model(ctx: Context, job: dict, iteration: int | None) -> tuple[int, Path]:
    """(iteration, caffemodel) to use: the given iteration or the latest; 409 if none."""
    models = {it: snap.caffemodel for it, snap in
              Workspace.complete_snapshots(ctx.ws.output_dir(job["id"])).items()}
    if not models:
        raise ServiceError("conflict", "This job has no snapshot yet to classify with.")
    if iteration is None:
        iteration = max(models)
    if iteration not in models:
        raise ServiceError("invalid_request", f"No snapshot at iteration {iteration}.",
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
    spec = sandbox.Spec([str(ctx.cfg["CAFFE_PYTHON"]), "-m", runner, str(inp), str(model), str(ds), str(work)],
                        read_only=[inp, ctx.ws.output_dir(job["id"]), ds], writable=[work], cwd=work)
    return layer_env.mount(spec, ctx.cfg)   # administrator-added packages, read-only


def layer_error(result: dict) -> ServiceError:
    """A runner's report that the job's code failed, as the upload's fault."""
    return ServiceError("invalid_python_layer", f"Inference failed: {result.get('message')}",
                        [{"field": "python_layer", "file": "digits_python_layers.py",
                          "message": result.get("message"), "traceback": result.get("traceback")}])


def run_limits(cfg) -> sandbox.Limits:
    """An inference run's limits (the same on the web host and a worker)."""
    return sandbox.Limits(wall_seconds=float(cfg["VALIDATE_TIMEOUT"]) * 2,
                          address_space=int(cfg["MEMORY_LIMIT_MB"]) << 20,
                          memory_bytes=int(cfg["MEMORY_LIMIT_MB"]) << 20)


def _log_path(runner: str, work: Path) -> Path:
    return work / (runner.rsplit(".", 1)[1] + ".log")


def run_contained(ctx: Context, job: dict, runner: str, model: Path, work: Path, what: str) -> dict:
    """Run an inference runner contained, here (local queue) or on a worker
    (celery queue: app.services.offload), and return its result.json once
    it says ok (with "worker": who ran it, when a worker did); otherwise the
    error (a Python layer's failure is the upload's fault, a runner that
    left no result is the server's)."""
    from app.services import offload, queue
    worker = None
    if queue.celery_mode(ctx.cfg):
        record = offload.run_on_worker(ctx, job["id"], runner, model, work,
                                       run_limits(ctx.cfg).wall_seconds, what)
        timed_out, worker = bool(record.get("timed_out")), record.get("worker")
        if record.get("gone"):
            raise ServiceError("not_found", "The job was deleted meanwhile.")
        if record.get("error"):     # its details are in that worker's log, not for the client
            raise ServiceError("internal_error", f"{what} could not run on worker {worker} "
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
        raise ServiceError("internal_error", f"{what} stopped without a result"
                           + (" (time limit)." if timed_out else "."), [{"log_tail": tail}]) from None
    if not result.get("ok"):
        raise layer_error(result)
    return dict(result, worker=worker) if worker else result


def classify(ctx: Context, job: dict, images: list[tuple[IO[bytes], str]], iteration: int | None,
             probabilities: bool = False, visualize: bool = False) -> dict:
    """{"predictions": [{"filename", "top": [{"label", "probability"}]}], "snapshot": N}; with
    ``probabilities`` each prediction also lists every class's probability (label order); with
    ``visualize``, "visualizations" holds, for the first image, per layer its activations and
    weights: {"name", "type", "shape", "mean", "stddev", "histogram", "png" (bytes)}."""
    if not job.get("dataset"):
        raise ServiceError("conflict", "This job has no dataset, so its images and labels are unknown.")
    if not images:
        raise ServiceError("invalid_request", "Upload one or more images as 'image'.",
                       [{"field": "image", "message": "required"}])
    if len(images) > MAX_IMAGES:
        raise ServiceError("payload_too_large", f"At most {MAX_IMAGES} images at once.")
    iteration, model = snapshot_model(ctx, job, iteration)
    from app.services import warm
    if warm.enabled(ctx.cfg):
        out = _classify_warm(ctx, job, iteration, model, images, probabilities, visualize)
    else:
        out = _classify_cold(ctx, job, iteration, model, images, probabilities, visualize)
    changed = layer_env.job_warnings(ctx.cfg, job)   # other packages than at validation
    return dict(out, warnings=changed) if changed else out


def _classify_cold(ctx: Context, job: dict, iteration: int, model: Path, images: list[tuple[IO[bytes], str]],
                   probabilities: bool, visualize: bool) -> dict:
    # One contained run for this request: the images staged as files.
    work = ctx.ws.scratch_dir()
    try:
        names = []
        for k, (stream, filename) in enumerate(images):
            try:
                Workspace.save_stream(work / f"img_{k}", stream, MAX_IMAGE_BYTES)
            except ValueError:
                raise ServiceError("payload_too_large", f"{filename[:80]} is larger than 20 MiB.") from None
            names.append([f"img_{k}", Workspace.display_name(filename, f"image{k}")])
        Workspace.write_json(work / "files.json", names)
        if visualize:
            (work / "visualize").touch()    # app.contained.infer VISUALIZE_FLAG
        result = run_contained(ctx, job, "app.contained.infer", model, work, "Inference")
        if not probabilities:
            for p in result["predictions"]:
                p.pop("probabilities", None)
        out = {"predictions": result["predictions"], "snapshot": iteration}
        if result.get("worker"):
            out["worker"] = result["worker"]      # the celery worker that ran it
        if visualize:
            out["visualizations"] = _visualizations(work)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _classify_warm(ctx: Context, job: dict, iteration: int, model: Path, images: list[tuple[IO[bytes], str]],
                   probabilities: bool, visualize: bool) -> dict:
    # The job's warm process (app.services.warm): the images go as bytes
    # over its pipe, nothing is staged on disk.
    from app.services import warm
    names, blobs = [], []
    for k, (stream, filename) in enumerate(images):
        data = _read_upload(stream)
        if data is None:
            raise ServiceError("payload_too_large", f"{filename[:80]} is larger than 20 MiB.")
        names.append(Workspace.display_name(filename, f"image{k}"))
        blobs.append(data)
    header = {"images": names, "visualize": bool(visualize), "probabilities": bool(probabilities)}
    predictions, visuals = warm.request(ctx, job, model, warm.key_for(ctx, job, iteration, model), header, blobs,
                                        lambda reply, got: warm_reply.checked(reply, got, names, probabilities))
    out = {"predictions": predictions, "snapshot": iteration}
    if visualize:
        out["visualizations"] = visuals
    return out


def _read_upload(stream: IO[bytes]) -> bytes | None:
    """An uploaded image's bytes, or None when it is larger than MAX_IMAGE_BYTES."""
    chunks, total = [], 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
        if total > MAX_IMAGE_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _visualizations(work: Path) -> list[dict]:
    # What the contained runner wrote (hostile code ran there): size-capped,
    # only its own picture names, each picture read back as bytes.
    import re
    try:
        records = json.loads(Workspace.read_capped(work / "visualizations.json", 4 << 20))
    except (OSError, ValueError):
        return []
    out, budget = [], 32 << 20
    for rec in records if isinstance(records, list) else []:
        name = rec.get("picture") if isinstance(rec, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"vis_\d+\.png", name):
            continue
        try:
            data = Workspace.read_capped(work / name, 4 << 20)
        except OSError:
            continue
        budget -= len(data)
        if budget < 0:
            break
        out.append({k: rec.get(k) for k in ("name", "type", "shape", "mean", "stddev", "histogram")} | {"png": data})
    return out
