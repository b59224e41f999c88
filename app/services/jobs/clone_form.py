"""The new-job form filled in from a job: the job page's Clone (as DIGITS's
Clone: the form opens with everything the job was made with, to change
before Validate or Create; the API's clone endpoint still queues at once).

``prefill`` gives the form's fields as text (the network as the job's
uploaded prototxt, for the form's text box) and what the form cannot hold:
the job's Python layer files and uploaded starting weights, which stay on the
server. The form names the job in its ``clone_from`` field; ``carried`` puts
those files into the posted upload wherever the form brought none of its own
(a file chosen in the form replaces the job's)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Iterator

from app.core import untrusted
from app.core.workspace import LAYER_FILE, NETWORK_FILE, WEIGHTS_FILE
from app.services.jobs import lifecycle as jobs
from app.services.layers import files as layer_files
from app.services.context import Context
from app.services.jobs.submission import Upload

FIELD = "clone_from"   # the form's field naming the job whose files it carries

# Form fields taken from the job's parameters as they were parsed.
_PARAMS = ("train_epochs", "max_iter", "batch_size", "iter_size", "val_interval", "snapshot_interval",
           "learning_rate", "gamma", "power", "stepsize", "stepvalues", "random_seed", "crop_size",
           "solver_type", "lr_policy", "use_mean", "device", "group_name")
# Parameters the form has no field for (API or solver file): carried as they were.
_API_ONLY = ("momentum", "weight_decay", "stepsize_percent", "stepvalues_percent")


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _start_fields(start: dict | None) -> dict[str, str]:
    # Where the job's weights came from, as the form's fields say it; an
    # uploaded .caffemodel is carried instead (``carried``).
    if not isinstance(start, dict):
        return {}
    if start.get("kind") == "previous" and start.get("job"):
        snap = start.get("epoch") if start.get("epoch") is not None else start.get("iteration")
        return {"previous_job": str(start["job"]), "previous_snapshot": _text(snap) if snap is not None else "-1"}
    if start.get("kind") == "pretrained" and start.get("id"):
        return {"pretrained_model": str(start["id"])}
    return {}


def prefill(c: Context, job_id: str, user: dict) -> tuple[dict[str, str], dict]:
    """(the form's fields, the source) for a clone of ``job_id`` (not_found
    unless ``user`` may see it). The source: {"id", "name", "network_filename",
    "layer_files": [names], "weights": name or None}, what the page tells the
    user it carries."""
    job = jobs.get(c, job_id, user)
    params = job.get("params") or {}
    inp = c.ws.input_dir(job["id"])
    fields = {k: _text(params[k]) for k in _PARAMS if params.get(k) is not None}
    fields.update(name=f"{job['name']} (clone)", dataset=job.get("dataset") or "", standard_network="",
                  network_text=untrusted.read_all(inp / NETWORK_FILE, 8 << 20).decode("utf-8", "replace"),
                  gradient_check=params.get("gradient_check") or "warn",
                  # Check boxes: "y" ticks one, "" leaves it clear.
                  shuffle="y" if params.get("shuffle") else "", auto_retry="" if params.get("auto_retry") is False
                  else "y", previous_snapshot="-1")
    fields.update(_start_fields(params.get("start_weights")))
    names = [rel for rel, _data in layer_files.read_all(inp)]
    original = (job.get("python_layer") or {}).get("original_filename")
    if names and original:
        names[0] = original   # the main file, as its owner named it
    weights = None
    start = params.get("start_weights")
    if isinstance(start, dict) and start.get("kind") == "upload" and untrusted.size_of(inp / WEIGHTS_FILE):
        weights = start.get("filename") or WEIGHTS_FILE
    return fields, {"id": job["id"], "name": job["name"],
                    "network_filename": params.get("network_filename") or NETWORK_FILE,
                    "layer_files": names, "weights": weights}


@contextlib.contextmanager
def carried(c: Context, upload: Upload, job_id: str, user: dict) -> Iterator[Upload]:
    """``upload`` (the form as posted) completed from ``job_id``'s files
    (not_found unless ``user`` may see it): its Python layer files when the
    form chose none, its uploaded starting weights when the form names no
    start of its own, its network's file name when the form's text is that
    network unchanged, and the parameters the form has no field for. Open
    files are closed on leaving."""
    job = jobs.get(c, job_id, user)
    params = job.get("params") or {}
    inp = c.ws.input_dir(job["id"])
    changes: dict = {}
    fields = dict(upload.fields)
    if upload.layer_stream is None and not upload.layer_files:
        several, main = layer_files.carry(inp, job.get("python_layer"))
        if several:
            changes["layer_files"] = several
            if not (fields.get(layer_files.MAIN_FIELD) or "").strip():
                fields[layer_files.MAIN_FIELD] = main
        elif untrusted.size_of(inp / LAYER_FILE):
            changes["layer_stream"] = io.BytesIO(untrusted.read_all(inp / LAYER_FILE, 8 << 20))
            changes["layer_filename"] = (job.get("python_layer") or {}).get("original_filename") or LAYER_FILE
    for k in _API_ONLY:
        if params.get(k) is not None and not (fields.get(k) or "").strip():
            fields[k] = _text(params[k])
    text = upload.network_text
    if text is not None and upload.network_filename == NETWORK_FILE and params.get("network_filename"):
        mine = untrusted.read_all(inp / NETWORK_FILE, 8 << 20)
        if (text.encode() if isinstance(text, str) else text).replace(b"\r\n", b"\n") == mine.replace(b"\r\n", b"\n"):
            changes["network_filename"] = params["network_filename"]
    start = params.get("start_weights")
    with contextlib.ExitStack() as stack:
        if (isinstance(start, dict) and start.get("kind") == "upload" and upload.weights_stream is None
                and not any((fields.get(k) or "").strip() for k in ("previous_job", "pretrained_model"))
                and untrusted.size_of(inp / WEIGHTS_FILE)):
            changes["weights_stream"] = stack.enter_context(untrusted.open_file(inp / WEIGHTS_FILE))
            changes["weights_filename"] = start.get("filename") or WEIGHTS_FILE
        yield replace(upload, fields=fields, **changes)
