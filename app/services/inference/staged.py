"""A staged inference request answered by a warm process: what a Celery
inference node does with a request the web staged for it
(app.services.inference.celery_offload), so that a node, like the web host
in the local queue, loads a model once and answers every later request
from the warm process (app.services.inference.warm_pool).

The request is the one the cold runners take (``files.json`` and the images
in the request's scratch dir, a ``visualize`` flag); the answer is written
in the cold runners' form (``result.json``, ``visualizations.json`` +
``vis_k.png``, ``mask_k.png`` + ``overlay_k.png``), from a reply that
app.services.inference.warm_reply checked: the web reads it back as it
reads a cold run's, and cannot tell the two apart but by speed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from app.core.errors import InvalidPythonLayer, ServiceError
from app.core.workspace import RESULT_FILE, Workspace
from app.services.context import Context
from app.services.inference import cold
from app.services.inference import warm_pool
from app.services.inference import warm_reply

CLASSIFY, SEGMENT = "app.contained.infer", "app.contained.segment"
VISUALIZE_FLAG, VISUALS_FILE = "visualize", "visualizations.json"   # app.contained.infer's names


def enabled_on_node(cfg) -> bool:
    """Whether a Celery inference node answers from warm processes
    (``INFER_WARM`` > 0; the same setting as the web host's)."""
    return cfg.infer_warm > 0


def run(ctx: Context, job: dict, runner: str, model: Path, work: Path) -> None:
    """Answer the request staged in ``work`` for ``runner`` with the job's
    warm process for ``model``; write the cold runner's files into ``work``.
    A layer's failure is written as the cold runner reports one; a process
    that could not answer at all leaves the reason in the runner's log and
    no result (the web then says the run stopped without one)."""
    names = json.loads(Workspace.read_capped(work / "files.json", 1 << 20))
    servers = [str(server) for server, _ in names]
    if any(not re.fullmatch(r"img_\d+", s) for s in servers):
        raise ValueError("a staged image name the web does not write")
    shown = [str(original) for _, original in names]
    blobs = [Workspace.read_capped(work / s, cold.MAX_IMAGE_BYTES) for s in servers]
    key = warm_pool.key_for(ctx, job, _iteration(model), model) + (None,)
    try:
        if runner == SEGMENT:
            result = _segment(ctx, job, model, key, work, shown, blobs)
        elif runner == CLASSIFY:
            result = _classify(ctx, job, model, key, work, shown, blobs)
        else:
            raise ValueError(runner)
    except ServiceError as exc:
        detail = exc.details[0] if exc.details else {}
        if not isinstance(exc, InvalidPythonLayer) or "traceback" not in detail:
            # No process answered (it died, hung or garbled, or none was
            # free): no result, the reason where a cold run's output goes.
            (work / (runner.rsplit(".", 1)[1] + ".log")).write_text(f"{exc.message}\n{detail.get('log_tail', '')}")
            return
        # A layer raised: reported as the cold runner reports it.
        result = {"ok": False, "message": detail.get("message"), "traceback": detail.get("traceback")}
    Workspace.write_json(work / RESULT_FILE, result)


def _iteration(model: Path) -> int | None:
    found = re.search(r"_iter_(\d+)\.caffemodel$", model.name)
    return int(found.group(1)) if found else None


def _classify(ctx: Context, job: dict, model: Path, key: tuple, work: Path, shown: list[str],
              blobs: list[bytes]) -> dict:
    visualize = (work / VISUALIZE_FLAG).exists()
    header = {"images": shown, "visualize": visualize, "probabilities": True}
    predictions, visuals = warm_pool.request(
        ctx, job, model, key, header, blobs, lambda reply, got: warm_reply.checked(reply, got, shown, True))
    if visuals:
        records = []
        for k, v in enumerate(visuals):
            (work / f"vis_{k}.png").write_bytes(v["png"])
            records.append({**{f: v[f] for f in v if f != "png"}, "picture": f"vis_{k}.png"})
        Workspace.write_json(work / VISUALS_FILE, records)
    return {"ok": True, "predictions": predictions}


def _segment(ctx: Context, job: dict, model: Path, key: tuple, work: Path, shown: list[str],
             blobs: list[bytes]) -> dict:
    predictions = warm_pool.request(
        ctx, job, model, key, {"images": shown}, blobs,
        lambda reply, got: warm_reply.checked_segmentation(reply, got, shown))
    out = []
    for k, p in enumerate(predictions):
        if "error" in p:
            out.append(p)
            continue
        (work / f"mask_{k}.png").write_bytes(p.pop("mask_png"))
        (work / f"overlay_{k}.png").write_bytes(p.pop("overlay_png"))
        out.append(dict(p, mask=f"mask_{k}.png", overlay=f"overlay_{k}.png"))
    return {"ok": True, "predictions": out}
