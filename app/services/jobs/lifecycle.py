"""A job's lifecycle once submitted (submitting: app.services.jobs.admission
and intake): read, and the lifecycle (abort,
delete, clone, resume, edit). Plain Python: every function is handed the
context (settings, store, workspace) and, where it matters, the user.
Listings: app.services.jobs.listing; a job's files: app.services.jobs.files."""
from __future__ import annotations

import io
import time

from app.core import untrusted
from app.core.errors import Conflict, InvalidNetwork, InvalidPythonLayer, NotFound, ServiceError, invalid_field
from app.core.status import JobStatus
from app.core.workspace import LAYER_FILE, LAYER_PY2_ORIGINAL, NETWORK_FILE, REPORT_FILE, VALIDATION_DIR, WEIGHTS_FILE, Workspace
from app.services.jobs import fairshare
from app.services.layers import environments as layer_env
from app.services.layers import files as layer_files
from app.services.runtime import broker as queue
from app.services.inference import warm_pool as warm
from app.services.jobs.admission import submit
from app.services.access import may_see
from app.services.context import Context
from app.services.jobs.submission import Upload, check_dataset
from app.store import new_job_id, now_iso


def queue_position(c: Context, job: dict) -> dict | None:
    """Where a queued job stands: {"position": 1 for next, "ahead": N,
    "waiting_for": why}; None unless it is queued (local queue order)."""
    if job.get("status") != JobStatus.QUEUED.value:
        return None
    queued = c.store.list_jobs(status=JobStatus.QUEUED.value)
    limit = c.cfg.user_max_running
    state = c.store.share_state(j["owner"] for j in queued)
    pos = fairshare.position(job, queued, state, limit)
    if pos is None:
        return None
    running, _ = state.get(job["owner"], (0, ""))
    why = (f"{job['owner']} already runs {running} job(s), the limit per user (LAYERBENCH_USER_MAX_RUNNING)"
           if limit and running >= limit else
           "a free device" if pos == 1 else f"{pos - 1} job(s) ahead of it (fair share between users)")
    return {"position": pos, "ahead": pos - 1, "waiting_for": why}


def get_with_history(c: Context, job_id: str, user: dict) -> tuple[dict, list[dict]]:
    """``get`` and the job's status history, read together (the job JSON)."""
    job, events = c.store.get_job_with_events(job_id) if isinstance(job_id, str) else (None, [])
    if not may_see(user, job):
        raise NotFound("No such job.")
    return job, events


def get(c: Context, job_id: str, user: dict) -> dict:
    """The job ``job_id`` if ``user`` may see it, else not_found. (Reading
    never changes a job: recovering dead runs is the worker side's job.)"""
    job = c.store.get_job(job_id) if isinstance(job_id, str) else None
    if not may_see(user, job):
        raise NotFound("No such job.")
    return job


def events(c: Context, job: dict) -> list[dict]:
    """The job's recorded state changes, oldest first."""
    return c.store.job_events(job["id"])


# The solver and data settings a job ran with, as the job JSON shows them.
SETTINGS = ("train_epochs", "max_iter", "learning_rate", "batch_size", "iter_size", "solver_type", "lr_policy",
            "gamma", "power", "stepsize", "stepvalues", "momentum", "weight_decay", "random_seed",
            "val_interval", "snapshot_interval", "crop_size", "use_mean", "shuffle", "group_name", "auto_retry")


def to_json(job: dict) -> dict:
    """The job JSON of API.md."""
    base = f"/api/v1/jobs/{job['id']}"
    keys = ("id", "name", "owner", "status", "created_at", "started_at", "finished_at", "progress",
            "iteration", "max_iter", "epoch", "eta_seconds", "device", "dataset", "python_layer",
            "metrics", "snapshots", "error", "worker")
    out = {k: job.get(k) for k in keys}
    params = job.get("params") or {}
    out["settings"] = {k: params[k] for k in SETTINGS if params.get(k) is not None}
    out["start_weights"] = params.get("start_weights")
    out["group"] = params.get("group")
    out.update(python2_json(job))
    if job.get("warnings"):   # e.g. resume: the layer environment changed
        out["warnings"] = job["warnings"]
    if out["status"] != JobStatus.RUNNING.value:
        out["eta_seconds"] = None
    if job.get("device", "").startswith("gpu:") and job["status"] == JobStatus.RUNNING.value:
        from app.services.runtime import gpus
        out["gpu"] = gpus.usage(int(job["device"][4:]))
    out["links"] = {"self": base, "page": f"/jobs/{job['id']}", "log": f"{base}/log",
                    "metrics": f"{base}/metrics", "events": f"{base}/events",
                    "download": f"{base}/download"}
    return out


def python2_json(job: dict) -> dict:
    """Whether the job's layer file was converted from Python 2 (the DIGITS
    routes, python2=convert); when it was, what changed and where the
    original as uploaded downloads from. Shared by /api/v1 and DIGITS's JSON."""
    params = job.get("params") or {}
    if not params.get("python2_converted"):
        return {"python2_converted": False}
    return {"python2_converted": True, "python2_changes": list(params.get("python2_changes") or []),
            "python2_original": f"/models/{job['id']}/files/{LAYER_PY2_ORIGINAL}"}


def abort(c: Context, job: dict) -> None:
    """Ask a queued or running job to stop; conflict when it already ended."""
    store = c.store
    if JobStatus(job["status"]).ended:
        raise Conflict(f"The job already ended ({job['status']}).")
    store.update_job(job["id"], abort_requested=True)
    # A queued or waiting job never started: end it now.
    store.update_job(job["id"], expect_status=[JobStatus.QUEUED.value, JobStatus.WAITING.value],
                     status=JobStatus.ABORTED.value, finished_at=now_iso())


def delete(c: Context, job: dict) -> None:
    """Abort if running, then remove the job's files and record."""
    if not JobStatus(job["status"]).ended:
        c.store.update_job(job["id"], abort_requested=True)
        # The runner kills a run still going after the abort grace; a row
        # deleted under a run stops it too (the runner's next look).
        deadline = time.monotonic() + c.cfg.abort_grace_seconds + 5
        while time.monotonic() < deadline:
            cur = c.store.get_job(job["id"])
            if cur is None or JobStatus(cur["status"]).ended:
                break
            if cur["status"] in (JobStatus.QUEUED.value, JobStatus.WAITING.value):
                break
            time.sleep(0.1)
    c.store.delete_job(job["id"])
    c.ws.delete(c.ws.job_dir(job["id"]))
    warm.retire_job(c, job["id"])   # after the row: no request can start a new one now


def clone(c: Context, job: dict, user: dict, fields: dict[str, str]) -> dict:
    """A new job of ``user`` with the same network, layer, dataset and settings."""
    inp = c.ws.input_dir(job["id"])
    params = dict(job.get("params") or {})
    base = {k: str(v) for k, v in params.items() if v is not None and k in (
        "train_epochs", "max_iter", "learning_rate", "batch_size", "val_interval", "snapshot_interval",
        "random_seed", "gamma", "power", "stepsize", "solver_type", "lr_policy", "stepvalues", "device",
        "iter_size", "crop_size", "use_mean", "shuffle", "stepsize_percent", "stepvalues_percent",
        "momentum", "weight_decay", "auto_retry")}
    base["dataset"] = job.get("dataset") or ""
    base["name"] = f"{job['name']} (clone)"
    base.update({k: v for k, v in fields.items() if v is not None})
    carried, main = layer_files.carry(inp, job.get("python_layer"))   # helper modules too
    if carried:
        base.setdefault(layer_files.MAIN_FIELD, main)
    layer, weights = _open_or_none(inp / LAYER_FILE), None
    # A fine-tuned job's clone starts from the same weights, unless the
    # client names another start.
    if not any(fields.get(k) for k in ("previous_job", "pretrained_model")):
        weights = _open_or_none(inp / WEIGHTS_FILE)
    with (layer or io.BytesIO()) as fh, (weights or io.BytesIO()) as wh:
        upload = Upload(network_text=untrusted.read_all(inp / NETWORK_FILE, 8 << 20),
                        network_filename=params.get("network_filename") or NETWORK_FILE,
                        layer_stream=fh if layer is not None and not carried else None,
                        layer_filename=(job.get("python_layer") or {}).get("original_filename"),
                        layer_files=carried,
                        fields=base, weights_stream=wh if weights is not None else None,
                        weights_filename=WEIGHTS_FILE if weights is not None else None)
        return submit(c, upload, user)


def _open_or_none(path):
    try:
        return untrusted.open_file(path)
    except FileNotFoundError:
        return None


def resume(c: Context, job: dict) -> dict:
    """Requeue an interrupted/aborted job from its last solverstate; an
    interrupted one without any starts again from the beginning."""
    if job["status"] not in (JobStatus.INTERRUPTED.value, JobStatus.ABORTED.value):
        raise Conflict(f"Only interrupted or aborted jobs can be resumed (this one is "
                       f"{job['status']}).")
    # Only whole pairs: one torn by a kill or a full disk is never resumed from.
    snaps = Workspace.complete_snapshots(c.ws.output_dir(job["id"]))
    if snaps:
        c.store.update_job(job["id"], expect_status=[job["status"]], status=JobStatus.QUEUED.value,
                           abort_requested=False, resume_from=max(snaps), error=None, finished_at=None)
    elif job["status"] == JobStatus.INTERRUPTED.value:
        # Interrupted (a killed worker or trainer, a full disk) before its
        # first snapshot: nothing to continue from, and the job was not at
        # fault, so resuming it runs it again from the start, as the celery
        # queue's automatic retry does (the row as a fresh run expects it;
        # files the lost run left are replaced or ignored by the next one).
        c.store.update_job(job["id"], expect_status=[job["status"]], status=JobStatus.QUEUED.value,
                           abort_requested=False, resume_from=None, error=None, finished_at=None,
                           iteration=0, progress=0.0, epoch=0.0, eta_seconds=None, metrics={}, snapshots=[])
    else:
        raise Conflict("This job has no complete snapshot to resume from.")
    warm.retire_job(c, job["id"])   # its snapshots and layers serve the next life's requests afresh
    resumed = c.store.get_job(job["id"])   # what was accepted: queued, however soon a worker takes it
    queue.enqueue_job(c, resumed)
    changed = layer_env.job_warnings(c.cfg, resumed)   # other added packages than at validation
    return dict(resumed, warnings=changed) if changed else resumed




# ---- for the DIGITS routes (app.web.digits) ---------------------------------

def submit_keeping_failures(c: Context, upload: Upload, user: dict) -> list[dict]:
    """Submit as DIGITS does: the job(s) queued (``submit_all`` where the
    fields ask for a sweep), or, when the network or Python layer does not
    validate, one job record that has already ended in error and carries the
    validation report (never queued). Bad fields still raise invalid_request."""
    from app.services.jobs import sweeps
    from app.services.jobs.submission import parse_params
    # The failure record below keeps the dataset field as sent: it must name
    # a dataset this user may see (issue 22, item 3), checked before anything.
    check_dataset(c, user, upload.fields)
    try:
        return list(sweeps.submit_all(c, upload, user))
    except ServiceError as err:
        if not isinstance(err, (InvalidNetwork, InvalidPythonLayer)):
            raise
        failure = err
    params = parse_params(upload.fields)
    job_id = new_job_id()
    job_dir = c.ws.create_job(job_id)
    (job_dir / VALIDATION_DIR).mkdir()
    details = failure.details or [{"message": failure.message}]
    Workspace.write_json(job_dir / VALIDATION_DIR / REPORT_FILE,
                         {"ok": False, "errors": details, "warnings": [], "layers": [], "timing": []})
    first = details[0] if details else {}
    error = {"stage": "validation", "message": failure.message, "file": first.get("file"),
             "line": first.get("line")}
    name = params.get("name") or "job"
    return [c.store.insert_job(id=job_id, name=name[:200], owner=user["name"], dataset=params.get("dataset"),
                               device=params.get("device") or "auto", params={"network_filename": upload.network_filename},
                               status=JobStatus.ERROR.value, error=error, finished_at=now_iso(),
                               max_iter=0)]


def edit(c: Context, job: dict, name: str | None = None, notes: str | None = None) -> dict:
    """Rename a job and/or set its notes (kept in its params); the job."""
    fields: dict = {}
    if name is not None:
        if not name.strip():
            raise invalid_field("name", "The name must not be empty.", "required")
        fields["name"] = name.strip()[:200]
    if notes is not None:
        fields["params"] = dict(job.get("params") or {}, notes=notes[:10000])
    if fields:
        c.store.update_job(job["id"], **fields)
    return c.store.get_job(job["id"])
