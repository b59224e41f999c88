"""Segmentation inference: run app.contained.segment contained on a finished
job's snapshot; images come one by one or in bulk as an archive."""
from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath
from typing import IO

from app.core.archives import ArchiveError, members
from app.core.errors import Conflict, InvalidRequest, PayloadTooLarge
from app.core.workspace import Workspace
from app.services.inference import cold as inference
from app.services.inference import warm_pool as warm
from app.services.inference import warm_reply
from app.services.context import Context

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def dataset_type(ctx: Context, job: dict) -> str:
    """``segmentation`` or ``classification``: the type of the job's dataset."""
    ds = ctx.store.get_dataset(job["dataset"]) if job.get("dataset") else None
    return ((ds or {}).get("info") or {}).get("type") or "classification"


def _stage(work: Path, images: list[tuple[IO[bytes], str]], archive: IO[bytes] | None) -> list[list[str]]:
    # Every upload saved under a server name; an archive's images join them
    # (read with the shared archive rules: capped, no links, no `..`).
    names: list[list[str]] = []
    for stream, filename in images:
        k = len(names)
        try:
            Workspace.save_stream(work / f"img_{k}", stream, inference.MAX_IMAGE_BYTES)
        except ValueError:
            raise PayloadTooLarge(f"{filename[:80]} is larger than 20 MiB.") from None
        names.append([f"img_{k}", Workspace.display_name(filename, f"image{k}")])
    if archive is not None:
        try:
            Workspace.save_stream(work / "archive", archive, inference.MAX_IMAGE_BYTES * 5)
            for path, data in members(str(work / "archive"), inference.MAX_IMAGES * 4, inference.MAX_IMAGE_BYTES * 5):
                if PurePosixPath(path).suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    continue
                k = len(names)
                if k >= inference.MAX_IMAGES:
                    break
                (work / f"img_{k}").write_bytes(data)
                names.append([f"img_{k}", Workspace.display_name(str(path), f"image{k}")])
        except ValueError:
            raise PayloadTooLarge("The archive is larger than 100 MiB.") from None
        except ArchiveError as exc:
            raise InvalidRequest(f"The archive cannot be used: {exc}",
                               [{"field": "archive", "message": str(exc)}]) from None
    return names


def segment(ctx: Context, job: dict, images: list[tuple[IO[bytes], str]], iteration: int | None,
            archive: IO[bytes] | None = None, caller: dict | None = None) -> dict:
    """{"predictions": [{"filename", "shape", "classes": [{"label", "color", "share"}],
    "mask_png": bytes, "overlay_png": bytes}], "snapshot": N}: the predicted
    mask per image (a palette PNG of class indices) and the image with the
    mask tinted over it in the dataset's class colours. Computed by the
    job's warm process where there is one (app.services.inference.warm_pool,
    as classification), else by one cold contained run."""
    if dataset_type(ctx, job) != "segmentation":
        raise Conflict("This job was not trained on a segmentation dataset.")
    if not images and archive is None:
        raise InvalidRequest("Upload one or more images as 'image' or an 'archive' of them.",
                           [{"field": "image", "message": "required"}])
    if len(images) > inference.MAX_IMAGES:
        raise PayloadTooLarge(f"At most {inference.MAX_IMAGES} images at once.")
    iteration, model = inference.snapshot_model(ctx, job, iteration)
    work = ctx.ws.scratch_dir()
    try:
        names = _stage(work, images, archive)
        if not names:
            raise InvalidRequest("The archive holds no images.",
                               [{"field": "archive", "message": "no image files"}])
        (work / "archive").unlink(missing_ok=True)
        if warm.enabled(ctx.cfg):
            # The staged images (the host's own files) go as bytes over the
            # warm process's pipe; a caller other than the owner gets a
            # process of their own (app.services.inference.classify).
            blobs = [Workspace.read_capped(work / server, inference.MAX_IMAGE_BYTES) for server, _ in names]
            shown = [original for _, original in names]
            who = None if caller is None or caller.get("name") == job.get("owner") else caller.get("name")
            predictions = warm.request(ctx, job, model, warm.key_for(ctx, job, iteration, model) + (who,),
                                       {"images": shown}, blobs,
                                       lambda reply, got: warm_reply.checked_segmentation(reply, got, shown))
            return {"predictions": predictions, "snapshot": iteration}
        Workspace.write_json(work / "files.json", names)
        result = inference.run_contained(ctx, job, "app.contained.segment", model, work, "Segmentation")
        out = {"predictions": [_read_back(work, p) for p in result.get("predictions") or []],
               "snapshot": iteration}
        return dict(out, worker=result["worker"]) if result.get("worker") else out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_back(work: Path, p: dict) -> dict:
    # What the contained runner wrote (hostile code ran there): only its own
    # picture names, size-capped, plain values.
    if not isinstance(p, dict):
        return {"filename": "?", "error": "no result"}
    out = {"filename": str(p.get("filename"))[:200]}
    if p.get("error"):
        return dict(out, error=str(p["error"])[:300])
    for key in ("mask", "overlay"):
        name = p.get(key)
        if not isinstance(name, str) or not re.fullmatch(rf"{key}_\d+\.png", name):
            return dict(out, error="no picture")
        try:
            out[f"{key}_png"] = Workspace.read_capped(work / name, 8 << 20)
        except OSError:
            return dict(out, error="no picture")
    out["shape"] = [int(v) for v in (p.get("shape") or [])[:2]]
    out["classes"] = [{"label": str(c.get("label"))[:100], "share": float(c.get("share", 0)),
                       "color": [int(v) for v in (c.get("color") or [128, 128, 128])[:3]]}
                      for c in (p.get("classes") or [])[:256] if isinstance(c, dict)]
    return out
