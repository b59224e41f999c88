"""Jobs created on a dataset that is still building (DIGITS's "Waiting").

The job is accepted at once with status ``waiting`` and the upload is kept
as sent in the job's ``pending/`` directory: the network cannot be checked
before the dataset exists (its class count, image shape and counts fill the
net). When the build ends, ``release`` validates every job waiting on it,
contained as always: valid ones are queued, invalid ones end in ``error``
carrying the validation report, and a failed build ends them in ``error``
naming the dataset and its reason. Nothing waiting is ever shown as running.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from app.core import untrusted
from app.core.errors import PayloadTooLarge, ServiceError
from app.core.status import DatasetStatus, JobStatus
from app.core.workspace import REPORT_FILE, VALIDATION_DIR, Workspace
from app.services.jobs import intake
from app.services.access import may_see
from app.services.context import Context
from app.services.jobs.submission import Upload, parse_params
from app.store import new_job_id

PENDING = "pending"
_FIELDS = "upload.json"
log = logging.getLogger(__name__)


def building(c: Context, upload: Upload, user: dict) -> dict | None:
    """The dataset the upload names when ``user`` may see it and it is still
    being built (queued or running); None otherwise."""
    ds_id = (upload.fields.get("dataset") or "").strip()
    ds = c.store.get_dataset(ds_id) if ds_id else None
    if ds is None or not may_see(user, ds):
        return None
    return ds if ds["status"] in (DatasetStatus.QUEUED, DatasetStatus.RUNNING) else None


def _save(stream, dest: Path, limit: int, what: str) -> None:
    try:
        Workspace.save_stream(dest, stream, limit)
    except ValueError:
        raise PayloadTooLarge(f"The {what} is larger than {limit >> 10} KiB.") from None


def hold(c: Context, upload: Upload, user: dict, ds: dict) -> dict:
    """Accept a job on a building dataset: its fields are checked now, the
    rest when the dataset is done. The job record, status waiting."""
    params = parse_params(upload.fields)   # a bad field is a 400 now, not an error later
    job_id = new_job_id()
    job_dir = c.ws.create_job(job_id)
    pending = job_dir / PENDING
    try:
        pending.mkdir()
        layer_limit = c.cfg.max_layer_file_bytes
        net = upload.network_text.encode() if isinstance(upload.network_text, str) else upload.network_text
        if net is not None:
            Workspace.write_atomic(pending / "network", net[: c.cfg.max_network_file_bytes + 1])
        if upload.solver_text is not None:
            solver = upload.solver_text.encode() if isinstance(upload.solver_text, str) else upload.solver_text
            Workspace.write_atomic(pending / "solver", solver)
        if upload.layer_stream is not None:
            _save(upload.layer_stream, pending / "layer", layer_limit, "Python layer file")
        names = []
        for i, (stream, name) in enumerate(upload.layer_files):
            _save(stream, pending / f"layer-file-{i}", layer_limit, "Python layer file")
            names.append(name)
        if upload.weights_stream is not None:
            _save(upload.weights_stream, pending / "weights", c.cfg.max_weights_bytes, "weights file")
        Workspace.write_json(pending / _FIELDS, {
            "fields": upload.fields, "network_filename": upload.network_filename,
            "layer_filename": upload.layer_filename, "weights_filename": upload.weights_filename,
            "layer_files": names})
    except BaseException:
        c.ws.delete(job_dir)
        raise
    return c.store.insert_job(id=job_id, name=(params.get("name") or "job")[:200], owner=user["name"],
                              dataset=ds["id"], device=params["device"], status=JobStatus.WAITING.value,
                              params={k: v for k, v in params.items() if k not in ("name", "dataset", "python2")},
                              max_iter=0)


def _upload(pending: Path) -> Upload:
    # The pending upload is the host's own copy, read like everything under
    # the jobs directory: through app.core.untrusted.
    meta = json.loads(untrusted.read_all(pending / _FIELDS, 16 << 20))

    def stream(name: str):
        try:
            return untrusted.open_file(pending / name)
        except FileNotFoundError:
            return None

    def text(name: str):
        try:
            return untrusted.read_all(pending / name, 64 << 20)
        except FileNotFoundError:
            return None
    return Upload(network_text=text("network"),
                  network_filename=meta["network_filename"], layer_stream=stream("layer"),
                  layer_filename=meta["layer_filename"],
                  solver_text=text("solver"),
                  fields=meta["fields"], weights_stream=stream("weights"), weights_filename=meta["weights_filename"],
                  layer_files=[(stream(f"layer-file-{i}"), name) for i, name in enumerate(meta["layer_files"])])


def release(c: Context, ds_id: str) -> int:
    """Move every job waiting on ``ds_id`` on, now that its build ended:
    validated and queued, or ended in error with the reason. How many moved."""
    ds = c.store.get_dataset(ds_id)
    if ds is not None and ds["status"] in (DatasetStatus.QUEUED, DatasetStatus.RUNNING):
        return 0
    rows, _ = c.store.page_jobs(limit=500, status=JobStatus.WAITING.value, dataset=ds_id)
    moved = 0
    for job in reversed(rows):   # oldest first, as they were submitted
        if ds is None or ds["status"] != DatasetStatus.DONE:
            reason = (ds or {}).get("error") or "it was deleted"
            moved += c.store.update_job(job["id"], expect_status=[JobStatus.WAITING.value],
                                        status=JobStatus.ERROR.value, error={
                                            "stage": "dataset", "message": f"The dataset '{ds_id}' this job "
                                            f"waited for failed to build: {reason}"})
            continue
        moved += _validate_and_queue(c, job)
    return moved


def _validate_and_queue(c: Context, job: dict) -> bool:
    job_dir, user = c.ws.job_dir(job["id"]), c.store.get_user(job["owner"]) or {"name": job["owner"]}
    pending = job_dir / PENDING
    (job_dir / VALIDATION_DIR).mkdir(exist_ok=True)
    upload = _upload(pending)
    try:
        prepared, report = intake.validate_inputs(c, upload, user, c.ws.input_dir(job["id"]),
                                                job_dir / VALIDATION_DIR)
    except ServiceError as err:
        report = {"ok": False, "errors": err.details or [{"message": err.message}], "warnings": []}
        if not err.user_fault:
            log.error("validating waiting job %s failed: %s", job["id"], err.message)
    finally:
        for fh in [upload.layer_stream, upload.weights_stream, *(f for f, _ in upload.layer_files)]:
            if fh is not None:
                fh.close()
    Workspace.write_json(job_dir / VALIDATION_DIR / REPORT_FILE, report)
    if not report["ok"]:
        first = report["errors"][0] if report["errors"] else {}
        return c.store.update_job(job["id"], expect_status=[JobStatus.WAITING.value], status=JobStatus.ERROR.value,
                                  error={**first, "stage": "validation",
                                         "message": first.get("message") or "The network did not validate."})
    params = intake.job_params(prepared, report)
    shutil.rmtree(pending, ignore_errors=True)
    queued = c.store.update_job(job["id"], expect_status=[JobStatus.WAITING.value], status=JobStatus.QUEUED.value,
                                params=params, python_layer=prepared.python_layer, max_iter=prepared.max_iter,
                                name=(prepared.params.get("name") or prepared.network.net.name or job["name"])[:200])
    if queued:
        from app.services.runtime import broker as queue
        queue.enqueue_job(c, c.store.get_job(job["id"]))   # the broker, or the local workers' doorbell
    return queued


def release_stale(c: Context) -> int:
    """Release jobs still waiting on a dataset whose build already ended (a
    worker that died between the two steps); run when a worker starts."""
    rows, _ = c.store.page_jobs(limit=500, status=JobStatus.WAITING.value)
    return sum(release(c, ds_id) for ds_id in {job["dataset"] for job in rows if job.get("dataset")})
