"""DIGITS's textfile datasets (``method=textfile``): a list of ``path label``
lines per split and a labels file (one class name a line, the line's index
the label), as DIGITS's form takes them: uploaded (``textfile_train_images``,
``textfile_val_images``, ``textfile_test_images``, ``textfile_labels_file``)
or, with ``textfile_use_local_files``, server paths under the data roots
(``textfile_local_train_images`` ... ``textfile_local_labels_file``).
A list's absolute paths must lie inside the asking user's data roots;
relative ones are read from ``textfile_<split>_folder`` (a server folder
under the roots).

The host checks what the request itself carries (an uploaded list's paths
are only resolved and stat()ed, app.services.runtime.data_roots) and never
reads a server file: a server-path list, and every image, is read by the
dataset builder in the sandbox, with the roots bound read-only, which
checks the same rule there.
"""
from __future__ import annotations

import re

from app.core.errors import InvalidRequest
from app.services.context import Context
from app.services.runtime import data_roots

SPLITS = ("train", "val", "test")
LINE = re.compile(r"(.+?)\s+(\d+)\s*$")     # DIGITS's create_db: "[/]path/to/file.jpg 123"
MAX_LIST_BYTES = 64 << 20


def _bad(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, [{"field": field, "message": message}])


def _on(form: dict, name: str) -> bool:
    return str(form.get(name) or "").strip().lower() in ("1", "true", "y", "yes", "on")


def wanted(form: dict) -> bool:
    """Whether the request asks for a textfile dataset."""
    return str(form.get("method") or "").strip().lower() == "textfile"


def sources(ctx: Context, form: dict, uploads: dict[str, bytes], owner: str) -> dict:
    """The textfile parameters of a request (``form``: its fields,
    ``uploads``: its uploaded files' bytes by field): {"labels": ...,
    "splits": {split: {"list": ..., "folder": path | None}}, "shuffle": bool},
    where a list or the labels is {"upload": bytes} or {"server": real path};
    400 naming the field for anything that cannot apply (no data roots:
    naming LAYERBENCH_DATA_ROOTS)."""
    if not data_roots.configured(ctx.cfg):
        field = "textfile_local_train_images" if _on(form, "textfile_use_local_files") else "method"
        raise _bad(field, f"{field}: a textfile dataset names images on this server, and this server reads none "
                   "(the administrator set no data roots, LAYERBENCH_DATA_ROOTS): upload the images as a zip or "
                   "tar.gz (one sub-folder per class) instead.")
    local = _on(form, "textfile_use_local_files")
    labels = _source(ctx, form, uploads, owner, "labels_file", local)
    if labels is None:
        raise _bad(_name("labels_file", local), "The labels file (one class name a line) is required.")
    names = None
    if "upload" in labels:
        names = [line.strip() for line in labels["upload"].decode("utf-8", "replace").splitlines() if line.strip()]
        if len(names) < 2:
            raise _bad(_name("labels_file", local), "The labels file must name at least two classes.")
    splits = {}
    for split in SPLITS:
        if split != "train" and not _on(form, f"textfile_use_{split}"):
            continue
        listed = _source(ctx, form, uploads, owner, f"{split}_images", local)
        if listed is None:
            raise _bad(_name(f"{split}_images", local), f"The {split} image list is required.")
        raw_folder = str(form.get(f"textfile_{split}_folder") or "").strip()
        folder = str(data_roots.resolve(ctx, raw_folder, owner, f"textfile_{split}_folder")) if raw_folder else None
        if "upload" in listed:
            _check_lines(ctx, listed["upload"], owner, split, folder, names, ctx.cfg.dataset_max_files)
        splits[split] = {"list": listed, "folder": folder}
    # DIGITS's textfile_shuffle defaults to on: the lists' order is not the DBs'.
    shuffle = str(form.get("textfile_shuffle", "y")).strip().lower() not in ("0", "false", "n", "no", "off", "")
    return {"labels": labels, "splits": splits, "shuffle": shuffle}


def _name(what: str, local: bool) -> str:
    return f"textfile_local_{what}" if local else f"textfile_{what}"


def _source(ctx: Context, form: dict, uploads: dict[str, bytes], owner: str, what: str, local: bool) -> dict | None:
    field = _name(what, local)
    if local:
        raw = str(form.get(field) or "").strip()
        return {"server": str(data_roots.resolve(ctx, raw, owner, field, kind="file"))} if raw else None
    blob = uploads.get(field)
    if blob is None:
        return None
    if len(blob) > MAX_LIST_BYTES:
        raise _bad(field, f"{field} is larger than {MAX_LIST_BYTES >> 20} MB.")
    return {"upload": blob}


def _check_lines(ctx: Context, blob: bytes, owner: str, split: str, folder: str | None, names: list[str] | None,
                 max_lines: int) -> None:
    """An uploaded list: every line ``path label``, labels known, absolute
    paths inside the roots (resolved, never opened), relative ones only with
    the split's folder."""
    field = f"textfile_{split}_images"
    count = 0
    for number, line in enumerate(blob.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        match = LINE.match(line.strip())
        if match is None:
            raise _bad(field, f"{field} line {number}: expected 'path label' (DIGITS's format).")
        path, label = match.group(1), int(match.group(2))
        if names is not None and label >= len(names):
            raise _bad(field, f"{field} line {number}: label {label} is not a line of the labels file "
                       f"({len(names)} classes).")
        if path.startswith("/"):
            data_roots.resolve(ctx, path, owner, field, kind="file", lenient=True)
        elif folder is None:
            raise _bad(f"textfile_{split}_folder", f"{field} line {number}: the relative path '{path[:200]}' "
                       f"needs textfile_{split}_folder (the server folder it lies in).")
        else:   # "../x" must not lead out of the roots either
            data_roots.resolve(ctx, f"{folder}/{path}", owner, field, kind="file", lenient=True)
        count += 1
        if count > max_lines:
            raise _bad(field, f"{field} lists more than {max_lines} images.")
    if not count:
        raise _bad(field, f"{field} lists no image.")
