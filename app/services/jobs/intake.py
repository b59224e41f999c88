"""Admission of a new job: validate an upload into a fresh job directory
and put it in the store, queued (the pieces ``admission.submit``, sweeps and
jobs waiting for their dataset share; nothing here imports them)."""
from __future__ import annotations

import shutil
from pathlib import Path

from app.caffe import network
from app.core.errors import Forbidden, InvalidNetwork, InvalidPythonLayer, InvalidRequest, ServiceError, TooManyRequests, Unavailable, invalid_field
from app.core.status import DatasetStatus, JobStatus
from app.core.workspace import REPORT_FILE, VALIDATION_DIR, Workspace
from app.services.jobs import fairshare
from app.services.layers import environments as layer_env
from app.services.runtime import broker as queue
from app.services.access import only_visible
from app.services.context import Context
from app.services.jobs.submission import Prepared, Upload, check_dataset, prepare, run_validation
from app.store import Store, new_job_id


def ready_datasets(store: Store, ws: Workspace, user: dict | None = None) -> dict[str, network.DatasetInfo]:
    """Datasets ``user`` may train on (None: every ready one), by id."""
    rows = store.list_datasets()
    out = {}
    for d in rows if user is None else only_visible(user, rows):
        info = d.get("info") or {}
        if d["status"] == DatasetStatus.DONE and info.get("image_shape"):
            out[d["id"]] = network.DatasetInfo(
                path=ws.dataset_dir(d["id"]), num_classes=info["num_classes"],
                image_shape=info["image_shape"], train_count=info["train_count"],
                val_count=info["val_count"], has_mean=(ws.dataset_dir(d["id"]) / "mean.binaryproto").exists(),
                kind=info.get("type") or "classification", backend=str(info.get("backend") or "lmdb").lower())
    return out


def validate_inputs(c: Context, upload: Upload, user: dict, input_dir: Path, out_dir: Path
                    ) -> tuple[Prepared, dict]:
    """Stage the starting weights, prepare the upload into ``input_dir`` and
    validate it contained; the prepared inputs and the report."""
    from app.services.jobs import finetune
    from app.services.runtime import gpus
    from app.services.runtime.caffe_info import caffe_info
    upload, start = finetune.stage(c, upload, user, input_dir)
    prepared = prepare(upload, input_dir, cfg=c.cfg, datasets=ready_datasets(c.store, c.ws, user))
    if prepared.python_layer is not None and layer_env.fingerprint(c.cfg) != "none":
        # The added packages it validates with (resume and inference compare).
        prepared.python_layer["environment"] = layer_env.fingerprint(c.cfg)
    if start is not None:
        prepared.params["start_weights"] = start
    found = gpus.detect()
    gpu_build = bool(caffe_info(c.cfg.caffe_python).get("gpu_build"))
    problem = gpus.parse_device(prepared.params["device"], len(found), gpu_build)
    if problem:
        raise InvalidRequest(problem, [{"field": "device", "message": problem}])
    ds_dir = c.ws.dataset_dir(prepared.dataset) if prepared.dataset else None
    report = run_validation(input_dir, out_dir, prepared, cfg=c.cfg, how=c.containment, dataset_dir=ds_dir)
    if found and gpu_build and prepared.params["device"] != "cpu" and prepared.python_layer:
        report["warnings"].append({"field": "python_layer", "message": "Python layers run on the CPU: on a "
                                   "GPU their input and output blobs are copied between device and host "
                                   "every iteration."})
    return prepared, report


def guard_containment(c: Context) -> None:
    if c.containment == "none" and not c.cfg.allow_uncontained:
        raise Unavailable("No containment is available for uploaded code on this "
                       "server; set LAYERBENCH_ALLOW_UNCONTAINED=1 to run it anyway.")


def validate_only(c: Context, upload: Upload, user: dict) -> dict:
    """Validate without creating a job; the report (also when invalid)."""
    guard_containment(c)
    scratch = c.ws.scratch_dir()
    try:
        (scratch / "input").mkdir()
        try:
            _, report = validate_inputs(c, upload, user, scratch / "input", scratch / VALIDATION_DIR)
        except ServiceError as err:
            if not isinstance(err, (InvalidRequest, InvalidNetwork, InvalidPythonLayer)):
                raise
            return {"ok": False, "errors": err.details or [{"message": err.message}],
                    "warnings": [], "layers": [], "timing": [], "error": err.code}
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _invalid(report: dict) -> ServiceError:
    first = report["errors"][0] if report["errors"] else {}
    kind = InvalidPythonLayer if first.get("field") == "python_layer" else InvalidNetwork
    return kind(first.get("message") or "The network did not validate.", report["errors"])


def check_share(c: Context, upload: Upload, user: dict) -> None:
    """Fair share at the door (issue 27): at most USER_MAX_QUEUED jobs of one
    user queued or waiting (429 naming the limit), and priority ``high`` only
    for admins to grant."""
    prio = (upload.fields.get("priority") or "normal").strip().lower()
    if prio not in fairshare.PRIORITIES:
        raise invalid_field("priority", f"Priority '{prio[:20]}' is not one of low, normal, high.", "low, normal or high")
    if prio == "high" and not user.get("admin"):
        raise Forbidden("Only an administrator can give a job high priority.",
                           [{"field": "priority", "message": "high is for admins to grant"}])
    limit = c.cfg.user_max_queued
    if limit:
        mine = sum(1 for status in (JobStatus.QUEUED.value, JobStatus.WAITING.value)
                   for _ in c.store.list_jobs(owner=user["name"], status=status))
        if mine >= limit:
            raise TooManyRequests(f"You already have {mine} jobs queued or waiting; the "
                               f"limit per user is {limit} (LAYERBENCH_USER_MAX_QUEUED). Wait for some to "
                               "start, or abort some.", [{"field": "priority", "message": "queue full"}])


def validate_new(c: Context, upload: Upload, user: dict) -> tuple[str, Prepared, dict]:
    """A new job directory with validated inputs (nothing in the store yet);
    the directory is removed again when the upload is wrong."""
    guard_containment(c)
    check_dataset(c, user, upload.fields)   # before anything is made (issue 22, item 3)
    job_id = new_job_id()
    job_dir = c.ws.create_job(job_id)
    try:
        prepared, report = validate_inputs(c, upload, user, c.ws.input_dir(job_id), job_dir / VALIDATION_DIR)
        if not report["ok"]:
            raise _invalid(report)
    except BaseException:
        c.ws.delete(job_dir)
        raise
    Workspace.write_json(job_dir / VALIDATION_DIR / REPORT_FILE, report)
    return job_id, prepared, report


def queue_new(c: Context, job_id: str, prepared: Prepared, report: dict, user: dict,
              group: dict | None = None, name_suffix: str = "") -> dict:
    """Put a job validated by ``validate_new`` in the store, queued;
    ``group``: the sweep it belongs to."""
    name = (prepared.params.get("name") or prepared.network.net.name or "job") + name_suffix
    params = job_params(prepared, report)
    if group is not None:
        params["group"] = group
    job = c.store.insert_job(id=job_id, name=name[:200], owner=user["name"], dataset=prepared.dataset,
                             device=params["device"],
                             params=params, python_layer=prepared.python_layer,
                             max_iter=prepared.max_iter)
    queue.enqueue_job(c, job)   # the broker, or the local workers' doorbell
    return job


def job_params(prepared: Prepared, report: dict) -> dict:
    """The params a validated job is stored with."""
    params = {k: v for k, v in prepared.params.items() if k not in ("name", "dataset")}
    params["network_filename"] = prepared.network.filename
    params["iters_per_epoch"] = prepared.iters_per_epoch
    params["validation_seconds"] = report.get("seconds")
    prio = (prepared.params.get("priority") or "").strip().lower()
    if prio in fairshare.PRIORITIES and prio != "normal":
        params["priority"] = prio
    return params
