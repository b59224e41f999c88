"""Classifying images with a trained job: its warm contained process
(app.services.inference.warm_pool) or one cold contained run (app.services.inference.cold)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO

from app.core.errors import Conflict, InvalidRequest, PayloadTooLarge
from app.core.workspace import Workspace
from app.services.inference import cold as inference
from app.services.layers import environments as layer_env
from app.services.inference import warm_pool as warm
from app.services.inference import warm_reply
from app.services.context import Context


def classify(ctx: Context, job: dict, images: list[tuple[IO[bytes], str]], iteration: int | None,
             probabilities: bool = False, visualize: bool = False, caller: dict | None = None) -> dict:
    """{"predictions": [{"filename", "top": [{"label", "probability"}]}], "snapshot": N}; with
    ``probabilities`` each prediction also lists every class's probability (label order); with
    ``visualize``, "visualizations" holds, for the first image, per layer its activations and
    weights: {"name", "type", "shape", "mean", "stddev", "histogram", "png" (bytes)}."""
    if not job.get("dataset"):
        raise Conflict("This job has no dataset, so its images and labels are unknown.")
    if not images:
        raise InvalidRequest("Upload one or more images as 'image'.",
                       [{"field": "image", "message": "required"}])
    if len(images) > inference.MAX_IMAGES:
        raise PayloadTooLarge(f"At most {inference.MAX_IMAGES} images at once.")
    iteration, model = inference.snapshot_model(ctx, job, iteration)
    if warm.enabled(ctx.cfg):
        # A warm process keeps state between requests: one that served
        # someone else's images (an admin's) must never answer its owner, so
        # callers other than the owner get their own.
        who = None if caller is None or caller.get("name") == job.get("owner") else caller.get("name")
        out = _classify_warm(ctx, job, iteration, model, images, probabilities, visualize, who)
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
                Workspace.save_stream(work / f"img_{k}", stream, inference.MAX_IMAGE_BYTES)
            except ValueError:
                raise PayloadTooLarge(f"{filename[:80]} is larger than 20 MiB.") from None
            names.append([f"img_{k}", Workspace.display_name(filename, f"image{k}")])
        Workspace.write_json(work / "files.json", names)
        if visualize:
            (work / "visualize").touch()    # app.contained.infer VISUALIZE_FLAG
        result = inference.run_contained(ctx, job, "app.contained.infer", model, work, "Inference")
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
                   probabilities: bool, visualize: bool, who: str | None) -> dict:
    # The job's warm process (app.services.inference.warm_pool): the images go as bytes
    # over its pipe, nothing is staged on disk.
    names, blobs = [], []
    for k, (stream, filename) in enumerate(images):
        data = _read_upload(stream)
        if data is None:
            raise PayloadTooLarge(f"{filename[:80]} is larger than 20 MiB.")
        names.append(Workspace.display_name(filename, f"image{k}"))
        blobs.append(data)
    header = {"images": names, "visualize": bool(visualize), "probabilities": bool(probabilities)}
    predictions, visuals = warm.request(ctx, job, model, warm.key_for(ctx, job, iteration, model) + (who,), header, blobs,
                                        lambda reply, got: warm_reply.checked(reply, got, names, probabilities))
    out = {"predictions": predictions, "snapshot": iteration}
    if visualize:
        out["visualizations"] = visuals
    return out


def _read_upload(stream: IO[bytes]) -> bytes | None:
    """An uploaded image's bytes, or None when it is larger than inference.MAX_IMAGE_BYTES."""
    chunks, total = [], 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
        if total > inference.MAX_IMAGE_BYTES:
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
