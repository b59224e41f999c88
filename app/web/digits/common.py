"""What the DIGITS route modules share: DIGITS's status words (the one place
they are mapped), its job and dataset JSON, request helpers."""
from __future__ import annotations

from flask import Response, jsonify, render_template, request

from app.core.errors import InvalidRequest, NotFound, ServiceError
from app.core.status import DatasetStatus, JobStatus
from app.core.workspace import DEPLOY_FILE, SOLVER_FILE, TRAIN_VAL_FILE
from app.services.datasets import lifecycle as dataset_service
from app.services.jobs import digits_keys
from app.services.jobs import lifecycle as jobs
from app.web.auth import current_user
from app.web.context import ctx
from app.web.errors import ApiError

# DIGITS's words: Initialized, Waiting, Running, Done, Abort, Error. A job
# interrupted by a dead worker is what DIGITS called an aborted job (a server
# restart aborted DIGITS's running jobs); here it can be resumed.
JOB_WORDS = {JobStatus.QUEUED: "Waiting", JobStatus.RUNNING: "Running", JobStatus.DONE: "Done",
             JobStatus.ERROR: "Error", JobStatus.ABORTED: "Abort", JobStatus.INTERRUPTED: "Abort"}
if hasattr(JobStatus, "WAITING"):       # a job whose dataset is still building (issue 16)
    JOB_WORDS[JobStatus("waiting")] = "Waiting"
DATASET_WORDS = {DatasetStatus.QUEUED: "Waiting", DatasetStatus.RUNNING: "Running",
                 DatasetStatus.DONE: "Done", DatasetStatus.ERROR: "Error"}
ENDED_WORDS = ("Done", "Abort", "Error")


def job_word(job: dict) -> str:
    """A job's status in DIGITS's words."""
    return JOB_WORDS.get(job["status"], "Waiting")


def dataset_word(ds: dict) -> str:
    """A dataset's status in DIGITS's words (an aborted build says Abort)."""
    if ds["status"] == DatasetStatus.ERROR and ds.get("error") == dataset_service.ABORTED:
        return "Abort"
    if dataset_service.stopping(ds):
        return "Abort"      # aborted, its build still stopping (DIGITS says Abort at once)
    return DATASET_WORDS[DatasetStatus(ds["status"])]


def _number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def epochs(job: dict) -> list:
    """The job's snapshots as DIGITS lists them: epochs (1, 2, or 0.5...)."""
    return [_number(round(s["epoch"], 4)) if s.get("epoch") is not None else s["iteration"]
            for s in job.get("snapshots") or []]


def model_json(job: dict) -> dict:
    """A model as DIGITS's /models/<id>.json answers it (docs/API.md's keys,
    app.services.jobs.digits_keys). Keys that held server paths in DIGITS carry
    URLs (``directory``) or file names."""
    params = job.get("params") or {}
    out = {"id": job["id"], "name": job["name"], "status": job_word(job), "type": "Image Classification Model",
           "framework": "caffe", "caffe flavor": "BVLC", "job id": job["id"],
           "creation time": job.get("created_at"), "dataset_id": job.get("dataset"),
           "directory": f"/models/{job['id']}/files", **digits_keys.model_keys(ctx(), job),
           "train_val file": TRAIN_VAL_FILE, "deploy file": DEPLOY_FILE,
           "solver file": SOLVER_FILE, "snapshots": epochs(job), "python_layer": job.get("python_layer"),
           "max_iter": job.get("max_iter"), "progress": job.get("progress"), "error": job.get("error"),
           "notes": params.get("notes"),
           "group_name": (params.get("group") or {}).get("name") or params.get("group_name"),
           **jobs.python2_json(job)}
    for key in ("train_epochs", "learning_rate", "batch_size", "solver_type", "lr_policy", "snapshot_interval",
                "val_interval", "random_seed", "iter_size", "crop_size", "use_mean", "shuffle"):
        if params.get(key) is not None:
            out[key] = params[key]
    return out


def dataset_json(ds: dict) -> dict:
    """A dataset as DIGITS's /datasets/<id>.json answers it (plus our counts)."""
    info = ds.get("info") or {}
    out = dataset_service.to_json(ds)
    out.update({"status": dataset_word(ds), "job id": ds["id"], "creation time": ds.get("created_at"),
                "type": "Image Classification Dataset", "directory": f"/datasets/{ds['id']}",
                "image size": info.get("image_shape"), "notes": info.get("notes"),
                "username": ds.get("owner"), "options": dataset_service.options(ds),
                **digits_keys.dataset_tasks(ds)})
    if info.get("encoding_note"):
        out["encoding_note"] = info["encoding_note"]
    return out


def status_json(kind: str, record: dict) -> Response:
    """DIGITS's /<kind>/<id>/status answer: {status, name, type, error}."""
    word = job_word(record) if kind == "model" else dataset_word(record)
    err = record.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    return jsonify({"status": word, "name": record["name"], "error": err,
                    "type": "Image Classification Model" if kind == "model" else "Image Classification Dataset"})


def find(record_id: str) -> tuple[str, dict]:
    """("model", job) or ("dataset", dataset) for an id of either; 404 otherwise."""
    try:
        return "model", jobs.get(ctx(), record_id, current_user())
    except ServiceError as err:
        if not isinstance(err, NotFound):
            raise
    try:
        return "dataset", dataset_service.get(ctx(), record_id, current_user())
    except ServiceError as err:
        if not isinstance(err, NotFound):
            raise
        raise NotFound("No such job or dataset.") from None


def arg(name: str, default: str | None = None) -> str | None:
    """A field from the form or the query string (DIGITS reads both)."""
    value = request.form.get(name)
    if value is None:
        value = request.args.get(name)
    return default if value is None else value


def refuse(field: str, message: str, status: int = 400) -> ApiError:
    """The error for a DIGITS field this server does not take."""
    details = [{"field": field, "message": message}]
    # A plain refusal is the typed InvalidRequest every caller tests for.
    return InvalidRequest(message, details) if status == 400 else ApiError(status, "invalid_request", message, details)


def alert_page(err: ServiceError, status: int) -> tuple[str, int]:
    """An HTML error as DIGITS's forms show one (div.alert-danger)."""
    return render_template("web/digits_alert.html", error=err), status
