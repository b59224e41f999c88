"""Where a job's starting weights come from (fine-tuning, DIGITS's
"previous network" and "pretrained model" methods).

``stage`` runs before the upload is prepared: it copies the chosen weights to
the new job's ``input/weights.caffemodel`` (the validator proves they fit the
net, the runner copies them in by layer name) and, for a previous job, fills
in what the client left out from that job: its network, its Python layer
file and its dataset, as DIGITS does.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from app.caffe.solver import snapshot_epoch
from app.core import untrusted
from app.core.errors import InvalidRequest, ServiceError
from app.core.workspace import LAYER_FILE, NETWORK_FILE, WEIGHTS_FILE, Snapshot, Workspace
from app.services.layers import files as layer_files
from app.services.jobs import pretrained
from app.services.access import may_see
from app.services.context import Context
from app.services.jobs.submission import Upload

SOURCES = ("previous_job", "pretrained_model", "weights")


def _bad(field: str, message: str, hint: str) -> ServiceError:
    return InvalidRequest(message, [{"field": field, "message": hint}])


def snapshot_epochs(c: Context, job: dict) -> dict[int, float | None]:
    """A job's complete snapshots: iteration -> epoch (None without epochs)."""
    params = job.get("params") or {}
    snaps = Workspace.complete_snapshots(c.ws.output_dir(job["id"]))
    return {it: snapshot_epoch(it, max_iter=job.get("max_iter"), train_epochs=params.get("train_epochs"),
                               iters_per_epoch=params.get("iters_per_epoch")) for it in sorted(snaps)}


def _choose_snapshot(c: Context, job: dict, raw: float | None) -> Snapshot:
    snaps = Workspace.complete_snapshots(c.ws.output_dir(job["id"]))
    if not snaps:
        raise _bad("previous_job", f"Job {job['id']} has no snapshot to start from.", "no snapshot")
    if raw is None or raw == -1:
        return snaps[max(snaps)]
    epochs = snapshot_epochs(c, job)
    # DIGITS names a snapshot by its epoch; without epochs, by iteration.
    for it, ep in epochs.items():
        if (ep is not None and abs(ep - raw) < 1e-3) or (ep is None and it == raw):
            return snaps[it]
    shown = ", ".join(f"{ep:g}" if ep is not None else str(it) for it, ep in epochs.items())
    raise _bad("previous_snapshot", f"Job {job['id']} has no snapshot at epoch {raw:g} (it has: {shown}; "
               "-1 is the last).", "unknown snapshot")


def stage(c: Context, upload: Upload, user: dict, input_dir: Path) -> tuple[Upload, dict | None]:
    """Copy the starting weights into ``input_dir`` and complete the upload
    from a previous job; returns the upload to prepare and where the weights
    came from (None: a fresh start)."""
    fields = upload.fields
    chosen = [s for s in SOURCES if (s == "weights" and upload.weights_stream is not None)
              or (s != "weights" and (fields.get(s) or "").strip())]
    if len(chosen) > 1:
        raise _bad(chosen[1], "Start from one of: a previous job, a pretrained model or an uploaded "
                   f".caffemodel (got {' and '.join(chosen)}).", "choose one")
    if not chosen:
        return upload, None
    dest = input_dir / WEIGHTS_FILE
    if chosen[0] == "weights":
        size, sha = pretrained.save_upload(c, upload.weights_stream, dest)
        return upload, {"kind": "upload", "filename": Workspace.display_name(upload.weights_filename,
                                                                              WEIGHTS_FILE),
                        "size": size, "sha256": sha}
    if chosen[0] == "pretrained_model":
        meta = pretrained.get(c, fields["pretrained_model"].strip(), user)
        with untrusted.open_file(pretrained.weights_path(c, meta), max_size=pretrained.weights_limit(c.cfg)) as fh:
            untrusted.copy_fd(fh, dest)
        return upload, {"kind": "pretrained", "id": meta["id"], "name": meta["name"], "sha256": meta["sha256"]}
    job_id = fields["previous_job"].strip()
    job = c.store.get_job(job_id)
    if not may_see(user, job):
        raise _bad("previous_job", f"Job '{job_id[:80]}' does not exist.", "unknown job")
    raw = (fields.get("previous_snapshot") or "").strip()
    try:
        wanted = float(raw) if raw else None
    except ValueError:
        raise _bad("previous_snapshot", f"'{raw[:20]}' is not an epoch number.", "an epoch, or -1") from None
    snap = _choose_snapshot(c, job, wanted)
    # Copied from the descriptor that was checked (regular, one link, the
    # size its marker records): the previous job's code may still be
    # swapping files in its output directory.
    try:
        with Workspace.open_snapshot(snap) as fh:
            untrusted.copy_fd(fh, dest)
    except untrusted.Refused:
        raise _bad("previous_snapshot", f"Job {job['id']}'s snapshot at iteration {snap.iteration} changed "
                   "while it was read; it cannot be used.", "snapshot not usable") from None
    it = snap.iteration
    return _from_previous(c, job, upload), {"kind": "previous", "job": job["id"], "iteration": it,
                                            "epoch": snapshot_epochs(c, job).get(it)}


def _from_previous(c: Context, job: dict, upload: Upload) -> Upload:
    """The upload with the previous job's network, layer file and dataset
    wherever the client sent none (the layer file is read into memory: it is
    capped at MAX_LAYER_FILE_KB)."""
    inp = c.ws.input_dir(job["id"])
    changes: dict = {}
    if upload.network_text is None or not str(upload.network_text).strip():
        changes["network_text"] = untrusted.read_all(inp / NETWORK_FILE, 8 << 20)
        changes["network_filename"] = (job.get("params") or {}).get("network_filename") or NETWORK_FILE
    carried, main = layer_files.carry(inp, job.get("python_layer"))   # several files: helpers too
    if upload.layer_stream is None and not upload.layer_files and carried:
        changes["layer_files"] = carried
        changes["fields"] = {layer_files.MAIN_FIELD: main, **upload.fields}
    elif upload.layer_stream is None and not upload.layer_files and untrusted.size_of(inp / LAYER_FILE):
        changes["layer_stream"] = io.BytesIO(untrusted.read_all(inp / LAYER_FILE, 8 << 20))
        changes["layer_filename"] = (job.get("python_layer") or {}).get("original_filename") or LAYER_FILE
    if not (upload.fields.get("dataset") or "").strip() and job.get("dataset"):
        changes["fields"] = {**changes.get("fields", upload.fields), "dataset": job["dataset"]}
    return replace(upload, **changes)
