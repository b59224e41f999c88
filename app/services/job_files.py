"""A job's files as the views serve them: the validation report, the
network, metrics for the charts, the log, input files and the model
download (streamed from disk, never a model in memory)."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from app.core import joblog, layer_code
from app.core.errors import ServiceError
from app.core.workspace import (
    DEPLOY_FILE, DOWNLOAD_FILE, LAYER_FILE, METRICS_FILE, NETWORK_FILE, REPORT_FILE, SOLVER_FILE,
    TRAIN_VAL_FILE, VALIDATION_DIR, Workspace)
from app.services.context import Context
from app.services.jobs import to_json


def validation_report(c: Context, job: dict) -> dict | None:
    """The report the job's validation wrote, or None."""
    try:
        return json.loads(Workspace.read_capped(c.ws.job_dir(job["id"]) / VALIDATION_DIR / REPORT_FILE,
                                                8 << 20))
    except (OSError, ValueError):
        return None



def network_text(c: Context, job: dict) -> str:
    """The job's train_val prototxt (every stage but deploy)."""
    return (c.ws.input_dir(job["id"]) / TRAIN_VAL_FILE).read_text()




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


def download(c: Context, job: dict) -> Path:
    """Write the tarball of API.md to the job's directory and return its path.
    Files are streamed from disk into the archive: the web process never
    holds a model in memory."""
    inp, out = c.ws.input_dir(job["id"]), c.ws.output_dir(job["id"])
    dest = c.ws.job_dir(job["id"]) / DOWNLOAD_FILE
    # A private temporary name per request: two downloads of one job at once
    # each build their own archive, and the rename publishes whole files only.
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=c.ws.job_dir(job["id"]))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tarfile.open(tmp, mode="w:gz", compresslevel=1) as tar:
            def add(path: Path, arcname: str) -> None:
                try:
                    fd = Workspace.open_regular(path)
                except OSError:
                    return
                with fd as fh:
                    info = tarfile.TarInfo(arcname)
                    info.size, info.mtime, info.mode = os.fstat(fh.fileno()).st_size, int(time.time()), 0o644
                    tar.addfile(info, fh)
            orig = Path((job.get("params") or {}).get("network_filename") or NETWORK_FILE).name
            add(inp / NETWORK_FILE, orig if orig not in (TRAIN_VAL_FILE, DEPLOY_FILE,
                                                         SOLVER_FILE) else f"original_{orig}")
            for name in (TRAIN_VAL_FILE, DEPLOY_FILE, SOLVER_FILE, LAYER_FILE):
                add(inp / name, name)
            for rel in layer_code.files(inp)[1:]:   # helper modules beside the layer file
                add(inp / rel, rel)
            snaps = Workspace.complete_snapshots(out)      # never a truncated model
            latest = snaps[max(snaps)].caffemodel if snaps else None
            if latest:
                add(latest, latest.name)
            if job.get("dataset"):
                ds = c.ws.dataset_dir(job["dataset"])
                add(ds / "labels.txt", "labels.txt")
                add(ds / "mean.binaryproto", "mean.binaryproto")
            info = dict(to_json(job), framework="caffe",
                        snapshot=latest.name if latest else None)
            data = json.dumps(info, indent=1).encode()
            ti = tarfile.TarInfo("info.json")
            ti.size, ti.mtime = len(data), int(time.time())
            tar.addfile(ti, io.BytesIO(data))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest



INPUT_FILES = (NETWORK_FILE, TRAIN_VAL_FILE, DEPLOY_FILE, SOLVER_FILE, LAYER_FILE)


def input_file(c: Context, job: dict, name: str) -> bytes:
    """One of the job's input files (INPUT_FILES) by name; not_found otherwise."""
    if name not in INPUT_FILES:
        raise ServiceError("not_found", "No such file.")
    try:
        return Workspace.read_capped(c.ws.input_dir(job["id"]) / name, 8 << 20)
    except OSError:
        raise ServiceError("not_found", "No such file.") from None


DOWNLOAD_FORMATS = {"tar.gz": "application/gzip", "tar": "application/x-tar", "tar.bz2": "application/x-bzip2",
                    "zip": "application/zip"}


def download_as(c: Context, job: dict, fmt: str) -> Path:
    """The download of ``download`` in another archive format (DOWNLOAD_FORMATS);
    the same files, repacked member by member (never all in memory)."""
    import zipfile
    if fmt not in DOWNLOAD_FORMATS:
        raise ServiceError("not_found", "Unknown download format; use " + ", ".join(DOWNLOAD_FORMATS) + ".")
    src = download(c, job)
    if fmt == "tar.gz":
        return src
    jdir = c.ws.job_dir(job["id"])
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".tmp", dir=jdir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tarfile.open(src, "r:gz") as tin:
            if fmt == "zip":
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
                    for member in tin:
                        if member.isfile():
                            with tin.extractfile(member) as fh, zout.open(member.name, "w") as out:
                                shutil.copyfileobj(fh, out, 1 << 20)
            else:
                with tarfile.open(tmp, "w:bz2" if fmt == "tar.bz2" else "w") as tout:
                    for member in tin:
                        if member.isfile():
                            tout.addfile(member, tin.extractfile(member))
        dest = jdir / f"download.{fmt}"
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
