"""Classify a list of images (DIGITS's "classify many" and "top N"): the
list names images as "path [label]" lines, the images come in an uploaded
zip or tar archive, or are read from the server's data roots (in the
sandbox: app.services.runtime.data_roots). Runs through
``inference.classify`` (contained, the job's own Python layers) in batches,
and scores the ground truth where the lines give one: accuracy and a
confusion matrix."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import IO

from app.core.errors import InvalidRequest, PayloadTooLarge
from app.services.inference import classify as classification
from app.services.runtime import data_roots
from app.services.inference import cold as inference
from app.services.context import Context

MAX_LINES = 1000


def parse_list(text: bytes) -> list[tuple[str, str | None]]:
    """(path, label or None) per non-empty line; 400 beyond MAX_LINES."""
    out = []
    for line in text.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line:
            continue
        path, _, label = line.rpartition(" ") if " " in line else (line, "", "")
        if label and not label.lstrip("-").isdigit():
            path, label = line, ""      # a path with spaces and no label
        out.append((path.strip(), label or None))
    if not out:
        raise InvalidRequest("The image list is empty.",
                           [{"field": "image_list", "message": "one 'path [label]' per line"}])
    if len(out) > MAX_LINES:
        raise PayloadTooLarge(f"At most {MAX_LINES} images at once.")
    return out


def _members(archive: IO[bytes]) -> dict[str, bytes]:
    data = archive.read()       # bounded by the request size limit
    files: dict[str, bytes] = {}
    budget = 256 << 20    # what an archive may unpack to here (zip bombs)
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.file_size <= inference.MAX_IMAGE_BYTES:
                        budget -= info.file_size
                        if budget < 0:
                            break
                        files[info.filename] = zf.read(info)
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
                for m in tf:
                    if m.isfile() and m.size <= inference.MAX_IMAGE_BYTES:
                        budget -= m.size
                        if budget < 0:
                            break
                        files[m.name] = tf.extractfile(m).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError):
        raise InvalidRequest("The image archive is not a readable zip or tar file.",
                           [{"field": "image_archive", "message": "zip, tar, tar.gz"}]) from None
    return {name.lstrip("./").lstrip("/"): blob for name, blob in files.items()}


def _match(path: str, members: dict[str, bytes]) -> str | None:
    # DIGITS lists held server paths (absolute, or relative to a folder): the
    # archive member whose path is the longest tail of the listed path.
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    for k in range(len(parts)):
        name = "/".join(parts[k:])
        if name in members:
            return name
    return None


def _key(path: str) -> str:
    # What _match tries first for a listed path.
    return "/".join(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))


def _server_members(c: Context, lines: list[tuple[str, str | None]], folder: str | None,
                    user: str) -> dict[str, bytes]:
    """The listed images read from the server (app.services.runtime.data_roots):
    absolute paths, or paths relative to ``folder``, inside ``user``'s data
    roots (400 naming the roots otherwise), read in the sandbox; keyed as
    ``_match`` looks them up. A file that cannot be read is left out."""
    base = data_roots.resolve(c, folder, user, "image_folder") if folder else None
    real: list[Path] = []
    for path, _ in lines:
        if not path.startswith("/") and base is None:
            raise InvalidRequest(f"'{path[:200]}' is a relative path: name the folder it is in "
                               "(image_folder), or upload the images in image_archive.",
                               [{"field": "image_folder", "message": "required for relative paths"}])
        full = path if path.startswith("/") else str(base / path)
        real.append(data_roots.resolve(c, full, user, "image_list", kind="file", lenient=True))
    read = data_roots.fetch(c, user, real, inference.MAX_IMAGE_BYTES, 256 << 20)
    return {_key(path): read[i] for i, (path, _) in enumerate(lines) if i in read}


def classify_list(c: Context, job: dict, image_list: bytes, archive: IO[bytes] | None,
                  iteration: int | None, folder: str | None = None, user: str | None = None) -> dict:
    """{"images": [{"path", "truth", "top": [...], "probabilities": [...]} or
    {"path", "error"}], "labels": [...], "snapshot": N, "accuracy": {"top1", "top5"}
    or None, "confusion": [[...]] or None}. The images come from ``archive``,
    or, without one, from the server (``folder`` and the list's paths under
    ``user``'s data roots) where the administrator set data roots."""
    lines = parse_list(image_list)
    if archive is None and not data_roots.configured(c.cfg):
        raise InvalidRequest("Upload the images as a zip or tar archive in image_archive "
                           "(server folders are not read).", [{"field": "image_archive", "message": "required"}])
    if archive is not None:
        members, missing = _members(archive), "not in the uploaded archive"
    else:
        members = _server_members(c, lines, folder, user or "")
        missing = "cannot be read (missing, not a regular file, larger than 20 MiB, or not readable by the sandbox)"
    found = [(path, truth, _match(path, members)) for path, truth in lines]
    todo = [(path, name) for path, _, name in found if name is not None]
    results: dict[str, dict] = {}
    snapshot = None
    for start in range(0, len(todo), inference.MAX_IMAGES):
        batch = todo[start:start + inference.MAX_IMAGES]
        out = classification.classify(c, job, [(io.BytesIO(members[name]), f"img{start + k}.png")
                                          for k, (_, name) in enumerate(batch)], iteration, probabilities=True)
        snapshot = out["snapshot"]
        iteration = snapshot   # one snapshot for every batch
        for (path, _), pred in zip(batch, out["predictions"]):
            results[path] = pred
    labels = _labels(c, job)
    images = []
    for path, truth, name in found:
        pred = results.get(path) if name else None
        row = {"path": path, "truth": int(truth) if truth is not None else None}
        if pred is None:
            row["error"] = missing
        elif pred.get("error"):
            row["error"] = pred["error"]
        else:
            row.update(top=pred["top"], probabilities=pred.get("probabilities") or [])
        images.append(row)
    return dict(images=images, labels=labels, snapshot=snapshot, **_score(images, labels))


def _labels(c: Context, job: dict) -> list[str]:
    ds = c.store.get_dataset(job["dataset"]) if job.get("dataset") else None
    return list(((ds or {}).get("info") or {}).get("labels") or [])


def _score(images: list[dict], labels: list[str]) -> dict:
    # Only lines whose label is a valid class index count (DIGITS ignored the rest).
    n = len(labels)
    scored = [r for r in images if "top" in r and r["truth"] is not None and 0 <= r["truth"] < n]
    if not scored:
        return {"accuracy": None, "confusion": None}
    confusion = [[0] * n for _ in range(n)]
    top1 = top5 = 0
    for r in scored:
        names = [t["label"] for t in r["top"]]
        truth = labels[r["truth"]]
        top1 += names[:1] == [truth]
        top5 += truth in names[:5]
        if names and names[0] in labels:
            confusion[r["truth"]][labels.index(names[0])] += 1
    return {"accuracy": {"top1": round(100.0 * top1 / len(scored), 2), "top5": round(100.0 * top5 / len(scored), 2),
                         "count": len(scored)}, "confusion": confusion}


def top_images(result: dict, per_class: int) -> list[dict]:
    """DIGITS's "top N": per class, the ``per_class`` images most confidently
    that class: [{"label", "images": [{"path", "probability"}]}]."""
    out = []
    for k, label in enumerate(result["labels"]):
        ranked = sorted((r for r in result["images"] if len(r.get("probabilities") or []) > k),
                        key=lambda r: -r["probabilities"][k])[:per_class]
        out.append({"label": label, "images": [{"path": r["path"], "probability": r["probabilities"][k]}
                                               for r in ranked]})
    return out
