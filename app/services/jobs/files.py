"""A job's files as the views serve them: the validation report, the
network, metrics for the charts, the log, input files and the model
download (streamed from disk, never a model in memory)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO

from app.caffe import portable
from app.core import joblog, layer_code, untrusted
from app.core.errors import NotFound
from app.core.workspace import (
    DEPLOY_FILE, LAYER_FILE, LAYER_PY2_ORIGINAL, METRICS_FILE, NETWORK_FILE, REPORT_FILE, SOLVER_FILE,
    TRAIN_VAL_FILE, VALIDATION_DIR, Workspace)
from app.services.jobs import digits_keys
from app.services.context import Context
from app.services.jobs.lifecycle import to_json

README_FILE = "README.txt"


def validation_report(c: Context, job: dict) -> dict | None:
    """The report the job's validation wrote, or None."""
    try:
        return json.loads(Workspace.read_capped(c.ws.job_dir(job["id"]) / VALIDATION_DIR / REPORT_FILE,
                                                8 << 20))
    except (OSError, ValueError):
        return None



def network_text(c: Context, job: dict) -> str:
    """The job's train_val prototxt (every stage but deploy)."""
    return untrusted.read_text(c.ws.input_dir(job["id"]) / TRAIN_VAL_FILE, 8 << 20)




def metrics(c: Context, job: dict, kinds: tuple[str, ...] = ("train", "val", "lr")) -> dict:
    """Every recorded point: {"train": [...], "val": [...], "lr": [...]}
    (``kinds``: which record types; "clock" gives wall times by iteration)."""
    out: dict[str, list] = {k: [] for k in kinds}
    path = c.ws.output_dir(job["id"]) / METRICS_FILE
    try:
        raw = Workspace.read_capped(path, 64 << 20)
    except OSError:
        return out
    latest = 0
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        kind = rec.pop("type", None) if isinstance(rec, dict) else None
        # Once a later run has written, what an earlier (superseded) run
        # still wrote is not part of the job's history.
        run = rec.pop("run", None) if isinstance(rec, dict) else None
        if isinstance(run, int):
            if run < latest:
                continue
            latest = run
        if kind == "restarted":
            # A run lost before its first snapshot started again from the
            # beginning (app.worker.heartbeat): its points are not history.
            for series in out.values():
                series.clear()
        if kind == "resumed" and isinstance(rec.get("iteration"), int):
            # Training went back to this snapshot: what came after it before
            # is superseded by what follows now (no iteration counted twice).
            for series in out.values():
                series[:] = [r for r in series if not (isinstance(r.get("iteration"), (int, float))
                                                       and r["iteration"] > rec["iteration"])]
        if kind in out:
            out[kind].append(rec)
    return out


def log(c: Context, job: dict, offset: int, limit: int = 1 << 20) -> tuple[bytes, int, int]:
    """(data from ``offset``, offset to ask for next, log size). Offsets count
    output bytes; a capped log's dropped middle comes back as one marker line."""
    return joblog.read(*c.ws.log_paths(job["id"]), offset, limit)


def download(c: Context, job: dict, fmt: str = "tar.gz", digits_names: bool = False) -> IO[bytes]:
    """The job's model archive (API.md) in ``fmt`` (DOWNLOAD_FORMATS), as an
    open anonymous temporary file positioned at its start (the caller
    streams and closes it). Every member comes from a descriptor
    app.core.untrusted opened and checked, never from a path reopened: a
    link, FIFO or hard link planted by user code is left out, a snapshot
    whose size differs from its marker is not taken. Paths inside the
    prototxts are rewritten relative to the archive (no server path leaks).
    As DIGITS's tools read it: deploy.prototxt declares ``input`` +
    ``input_shape``, mean.binaryproto has num/channels/height/width, and
    info.json carries DIGITS's keys; ``digits_names`` (the DIGITS route):
    the uploaded network is original.prototxt, as in DIGITS's archives."""
    if fmt not in DOWNLOAD_FORMATS:
        raise NotFound("Unknown download format; use " + ", ".join(DOWNLOAD_FORMATS) + ".")
    inp, out = c.ws.input_dir(job["id"]), c.ws.output_dir(job["id"])
    cap = c.cfg.max_download_file_bytes
    # Built on disk beside the job (never a model in memory), unlinked at
    # once: nothing is left behind and nothing can be swapped under it.
    tmp = tempfile.TemporaryFile(dir=c.ws.job_dir(job["id"]))
    try:
        with untrusted.Archive(tmp, fmt) as arc:
            orig = Path((job.get("params") or {}).get("network_filename") or NETWORK_FILE).name
            if digits_names:
                orig = digits_keys.ORIGINAL_FILE
            orig = orig if orig not in (TRAIN_VAL_FILE, DEPLOY_FILE, SOLVER_FILE, README_FILE) else f"original_{orig}"
            arc.add_file(inp / NETWORK_FILE, orig, max_size=8 << 20)
            for name in (TRAIN_VAL_FILE, SOLVER_FILE):
                try:
                    text = untrusted.read_all(inp / name, 8 << 20).decode("utf-8", "replace")
                except OSError:
                    continue
                arc.add_bytes(portable.relative_paths(text, name).encode(), name)
            try:
                deploy = untrusted.read_all(inp / DEPLOY_FILE, 8 << 20).decode("utf-8", "replace")
                arc.add_bytes(portable.digits_deploy(deploy).encode(), DEPLOY_FILE)
            except OSError:
                pass
            arc.add_file(inp / LAYER_FILE, LAYER_FILE, max_size=8 << 20)
            for rel in layer_code.files(inp)[1:]:   # helper modules beside the layer file
                arc.add_file(inp / rel, rel, max_size=8 << 20)
            snaps = Workspace.complete_snapshots(out)      # never a truncated model
            latest = None
            for it in sorted(snaps, reverse=True):
                try:
                    fh = Workspace.open_snapshot(snaps[it])
                except OSError:
                    continue     # swapped or torn since it was listed: an older one
                with fh:
                    if os.fstat(fh.fileno()).st_size > cap:
                        continue
                    arc.add_open(fh, snaps[it].caffemodel.name)
                latest = snaps[it].caffemodel
                break
            if job.get("dataset"):
                ds = c.ws.dataset_dir(job["dataset"])
                arc.add_file(ds / "labels.txt", digits_keys.LABELS_FILE, max_size=64 << 20)
                try:
                    mean = untrusted.read_all(ds / "mean.binaryproto", 256 << 20)
                    arc.add_bytes(portable.digits_mean(mean), digits_keys.MEAN_FILE)
                except OSError:
                    pass
            info = dict(to_json(job), **digits_keys.model_keys(c, job), framework="caffe",
                        snapshot=latest.name if latest else None)
            info["network file"] = orig
            if latest is not None:
                info["snapshot file"] = latest.name
            arc.add_bytes(json.dumps(info, indent=1).encode(), "info.json")
            arc.add_bytes(portable.README.encode(), README_FILE)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp


INPUT_FILES = (NETWORK_FILE, TRAIN_VAL_FILE, DEPLOY_FILE, SOLVER_FILE, LAYER_FILE, LAYER_PY2_ORIGINAL)


def python2_diff(c: Context, job: dict) -> str | None:
    """The unified diff of a converted Python 2 layer file, as uploaded →
    as run; None when the job's layer was not converted."""
    from app.caffe.py2convert import unified_diff
    if not (job.get("params") or {}).get("python2_converted"):
        return None
    inp = c.ws.input_dir(job["id"])
    try:
        original, converted = (Workspace.read_capped(inp / name, 8 << 20).decode("utf-8", "replace")
                               for name in (LAYER_PY2_ORIGINAL, LAYER_FILE))
    except OSError:
        return None
    return unified_diff(original, converted, LAYER_FILE)


def input_file(c: Context, job: dict, name: str) -> bytes:
    """One of the job's input files (INPUT_FILES) by name, the network also
    by DIGITS's name (original.prototxt), or its dataset's labels.txt (what
    DIGITS's "labels file" names); not_found otherwise."""
    name = NETWORK_FILE if name == digits_keys.ORIGINAL_FILE else name
    if name == digits_keys.LABELS_FILE and job.get("dataset"):
        path = c.ws.dataset_dir(job["dataset"]) / name
    elif name in INPUT_FILES:
        path = c.ws.input_dir(job["id"]) / name
    else:
        raise NotFound("No such file.")
    try:
        return Workspace.read_capped(path, 8 << 20)
    except OSError:
        raise NotFound("No such file.") from None


DOWNLOAD_FORMATS = {"tar.gz": "application/gzip", "tar": "application/x-tar", "tar.bz2": "application/x-bzip2",
                    "zip": "application/zip"}
