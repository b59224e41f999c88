"""Job services: what the views call. Plain Python: every function is handed
the context (settings, store, workspace) and, where it matters, the user."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.caffe import network
from app.core.errors import ServiceError
from app.core.status import DatasetStatus, JobStatus
from app.core import joblog, layer_code
from app.core.workspace import (
    DEPLOY_FILE, DOWNLOAD_FILE, LAYER_FILE, METRICS_FILE, NETWORK_FILE, REPORT_FILE, SOLVER_FILE,
    TRAIN_VAL_FILE, VALIDATION_DIR, WEIGHTS_FILE, Workspace)
from app.services import layer_env, layer_files, queue
from app.services.access import may_see, only_visible, owner_filter
from app.services.context import Context
from app.services.submission import Prepared, Upload, prepare, run_validation
from app.store import Store, new_job_id, now_iso


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
                kind=info.get("type") or "classification")
    return out


def validate_inputs(c: Context, upload: Upload, user: dict, input_dir: Path, out_dir: Path
                    ) -> tuple[Prepared, dict]:
    """Stage the starting weights, prepare the upload into ``input_dir`` and
    validate it contained; the prepared inputs and the report."""
    from app.services import finetune, gpus
    from app.services.caffe_info import caffe_info
    upload, start = finetune.stage(c, upload, user, input_dir)
    prepared = prepare(upload, input_dir, cfg=c.cfg, datasets=ready_datasets(c.store, c.ws, user))
    if prepared.python_layer is not None and layer_env.fingerprint(c.cfg) != "none":
        # The added packages it validates with (resume and inference compare).
        prepared.python_layer["environment"] = layer_env.fingerprint(c.cfg)
    if start is not None:
        prepared.params["start_weights"] = start
    found = gpus.detect()
    gpu_build = bool(caffe_info(c.cfg["CAFFE_PYTHON"]).get("gpu_build"))
    problem = gpus.parse_device(prepared.params["device"], len(found), gpu_build)
    if problem:
        raise ServiceError("invalid_request", problem, [{"field": "device", "message": problem}])
    ds_dir = c.ws.dataset_dir(prepared.dataset) if prepared.dataset else None
    report = run_validation(input_dir, out_dir, prepared, cfg=c.cfg, how=c.containment, dataset_dir=ds_dir)
    if found and gpu_build and prepared.params["device"] != "cpu" and prepared.python_layer:
        report["warnings"].append({"field": "python_layer", "message": "Python layers run on the CPU: on a "
                                   "GPU their input and output blobs are copied between device and host "
                                   "every iteration."})
    return prepared, report


def _guard_containment(c: Context) -> None:
    if c.containment == "none" and not c.cfg["ALLOW_UNCONTAINED"]:
        raise ServiceError("unavailable", "No containment is available for uploaded code on this "
                       "server; set LAYERBENCH_ALLOW_UNCONTAINED=1 to run it anyway.")


def validate_only(c: Context, upload: Upload, user: dict) -> dict:
    """Validate without creating a job; the report (also when invalid)."""
    _guard_containment(c)
    scratch = c.ws.scratch_dir()
    try:
        (scratch / "input").mkdir()
        try:
            _, report = validate_inputs(c, upload, user, scratch / "input", scratch / VALIDATION_DIR)
        except ServiceError as err:
            if err.code not in ("invalid_request", "invalid_network", "invalid_python_layer"):
                raise
            return {"ok": False, "errors": err.details or [{"message": err.message}],
                    "warnings": [], "layers": [], "timing": [], "error": err.code}
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _invalid(report: dict) -> ServiceError:
    first = report["errors"][0] if report["errors"] else {}
    code = "invalid_python_layer" if first.get("field") == "python_layer" else "invalid_network"
    return ServiceError(code, first.get("message") or "The network did not validate.", report["errors"])


def submit(c: Context, upload: Upload, user: dict) -> dict:
    """Validate and queue a new job owned by ``user``; invalid_* and nothing
    queued when the upload is wrong."""
    from app.services import waiting
    ds = waiting.building(c, upload, user)
    if ds is not None:   # DIGITS: accepted, waits for its dataset
        _guard_containment(c)
        return waiting.hold(c, upload, user, ds)
    job_id, prepared, report = validate_new(c, upload, user)
    return queue_new(c, job_id, prepared, report, user)


def validate_new(c: Context, upload: Upload, user: dict) -> tuple[str, Prepared, dict]:
    """A new job directory with validated inputs (nothing in the store yet);
    the directory is removed again when the upload is wrong."""
    _guard_containment(c)
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
    queue.enqueue_job(c, job)   # celery queue only (the local one polls the store)
    return job


def job_params(prepared: Prepared, report: dict) -> dict:
    """The params a validated job is stored with."""
    params = {k: v for k, v in prepared.params.items() if k not in ("name", "dataset")}
    params["network_filename"] = prepared.network.filename
    params["iters_per_epoch"] = prepared.iters_per_epoch
    params["validation_seconds"] = report.get("seconds")
    return params


def get_with_history(c: Context, job_id: str, user: dict) -> tuple[dict, list[dict]]:
    """``get`` and the job's status history, read together (the job JSON)."""
    job, events = c.store.get_job_with_events(job_id) if isinstance(job_id, str) else (None, [])
    if not may_see(user, job):
        raise ServiceError("not_found", "No such job.")
    return job, events


def get(c: Context, job_id: str, user: dict) -> dict:
    """The job ``job_id`` if ``user`` may see it, else not_found. (Reading
    never changes a job: recovering dead runs is the worker side's job.)"""
    job = c.store.get_job(job_id) if isinstance(job_id, str) else None
    if not may_see(user, job):
        raise ServiceError("not_found", "No such job.")
    return job


PAGE_SIZE, MAX_PAGE_SIZE = 50, 500


@dataclass
class JobPage:
    """One page of a job listing: ``jobs`` newest first and the opaque
    cursor of the next (older) page, None on the last page."""
    jobs: list[dict]
    next_cursor: str | None


def _bad(field: str, message: str, hint: str) -> ServiceError:
    return ServiceError("invalid_request", message, [{"field": field, "message": hint}])


def parse_limit(raw: str | int | None) -> int:
    """A page size from a query string: default PAGE_SIZE, 1..MAX_PAGE_SIZE."""
    if raw is None or raw == "":
        return PAGE_SIZE
    text = str(raw).strip()
    limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise _bad("limit", f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.",
                   f"1..{MAX_PAGE_SIZE} (default {PAGE_SIZE})")
    return limit


def encode_cursor(key: tuple[str, str]) -> str:
    """The opaque cursor of a page position (the (created_at, id) of its last row)."""
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The position a cursor of ``encode_cursor`` names; invalid_request otherwise."""
    try:
        if len(cursor) > 400:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (not isinstance(key, list) or len(key) != 2
                or not all(isinstance(k, str) and 0 < len(k) <= 80 for k in key)):
            raise ValueError
    except ValueError:   # binascii.Error and JSON errors included
        raise _bad("cursor", "The cursor is not one this server handed out.",
                   "pass next_cursor of the previous page unchanged") from None
    return key[0], key[1]


def parse_ids(raw: str | None) -> list[str] | None:
    """Job ids from a comma-separated query value (at most MAX_PAGE_SIZE)."""
    if raw is None:
        return None
    ids = [i for i in (part.strip() for part in raw.split(",")) if i]
    if len(ids) > MAX_PAGE_SIZE or any(len(i) > 40 for i in ids):
        raise _bad("ids", f"ids takes at most {MAX_PAGE_SIZE} job ids.", "comma-separated job ids")
    return ids


def list_for(c: Context, user: dict, status: str | None = None, *, limit: int = PAGE_SIZE,
             cursor: str | None = None, owner: str | None = None, dataset: str | None = None,
             ids: list[str] | None = None) -> JobPage:
    """One page of the jobs ``user`` may see, newest first: ``limit`` jobs
    older than ``cursor`` (a ``next_cursor`` of an earlier page; None: the
    newest). ``status``, ``owner``, ``dataset`` and ``ids`` filter. Who sees
    what is app.services.access: a user asking for another owner's jobs gets
    an empty page unless that rule lets them see that owner's work."""
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ServiceError("invalid_request", f"Unknown status '{status[:20]}'.",
                           [{"field": "status", "message": "use " + "|".join(s.value for s in JobStatus)}])
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise _bad("limit", f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.", f"1..{MAX_PAGE_SIZE}")
    after = decode_cursor(cursor) if cursor else None
    scope = owner_filter(user)
    if owner is not None and scope is not None and owner != scope:
        return JobPage([], None)
    if ids is not None and not ids:
        return JobPage([], None)
    rows, last = c.store.page_jobs(limit=limit, after=after, owner=owner if owner is not None else scope,
                                   status=status, dataset=dataset, ids=ids)
    # The query is already scoped; this keeps the one rule the last word.
    return JobPage(only_visible(user, rows), encode_cursor(last) if last else None)


def validation_report(c: Context, job: dict) -> dict | None:
    """The report the job's validation wrote, or None."""
    try:
        return json.loads(Workspace.read_capped(c.ws.job_dir(job["id"]) / VALIDATION_DIR / REPORT_FILE,
                                                8 << 20))
    except (OSError, ValueError):
        return None


def events(c: Context, job: dict) -> list[dict]:
    """The job's recorded state changes, oldest first."""
    return c.store.job_events(job["id"])


def network_text(c: Context, job: dict) -> str:
    """The job's train_val prototxt (every stage but deploy)."""
    return (c.ws.input_dir(job["id"]) / TRAIN_VAL_FILE).read_text()


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
    if job.get("warnings"):   # e.g. resume: the layer environment changed
        out["warnings"] = job["warnings"]
    if out["status"] != JobStatus.RUNNING.value:
        out["eta_seconds"] = None
    if job.get("device", "").startswith("gpu:") and job["status"] == JobStatus.RUNNING.value:
        from app.services import gpus
        out["gpu"] = gpus.usage(int(job["device"][4:]))
    out["links"] = {"self": base, "page": f"/jobs/{job['id']}", "log": f"{base}/log",
                    "metrics": f"{base}/metrics", "events": f"{base}/events",
                    "download": f"{base}/download"}
    return out


def abort(c: Context, job: dict) -> None:
    """Ask a queued or running job to stop; conflict when it already ended."""
    store = c.store
    if JobStatus(job["status"]).ended:
        raise ServiceError("conflict", f"The job already ended ({job['status']}).")
    store.update_job(job["id"], abort_requested=True)
    # A queued or waiting job never started: end it now.
    store.update_job(job["id"], expect_status=[JobStatus.QUEUED.value, JobStatus.WAITING.value],
                     status=JobStatus.ABORTED.value, finished_at=now_iso())


def delete(c: Context, job: dict) -> None:
    """Abort if running, then remove the job's files and record."""
    if not JobStatus(job["status"]).ended:
        c.store.update_job(job["id"], abort_requested=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cur = c.store.get_job(job["id"])
            if cur is None or JobStatus(cur["status"]).ended:
                break
            if cur["status"] in (JobStatus.QUEUED.value, JobStatus.WAITING.value):
                break
            time.sleep(0.1)
    c.store.delete_job(job["id"])
    c.ws.delete(c.ws.job_dir(job["id"]))


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
    layer, weights = inp / LAYER_FILE, inp / WEIGHTS_FILE
    # A fine-tuned job's clone starts from the same weights, unless the
    # client names another start.
    same_start = weights.exists() and not any(fields.get(k) for k in ("previous_job", "pretrained_model"))
    with (open(layer, "rb") if layer.exists() else io.BytesIO()) as fh, \
            (open(weights, "rb") if same_start else io.BytesIO()) as wh:
        upload = Upload(network_text=(inp / NETWORK_FILE).read_bytes(),
                        network_filename=params.get("network_filename") or NETWORK_FILE,
                        layer_stream=fh if layer.exists() and not carried else None,
                        layer_filename=(job.get("python_layer") or {}).get("original_filename"),
                        layer_files=carried,
                        fields=base, weights_stream=wh if same_start else None,
                        weights_filename=WEIGHTS_FILE if same_start else None)
        return submit(c, upload, user)


def resume(c: Context, job: dict) -> dict:
    """Requeue an interrupted/aborted job from its last solverstate."""
    if job["status"] not in (JobStatus.INTERRUPTED.value, JobStatus.ABORTED.value):
        raise ServiceError("conflict", f"Only interrupted or aborted jobs can be resumed (this one is "
                       f"{job['status']}).")
    # Only whole pairs: one torn by a kill or a full disk is never resumed from.
    snaps = Workspace.complete_snapshots(c.ws.output_dir(job["id"]))
    if not snaps:
        raise ServiceError("conflict", "This job has no complete snapshot to resume from.")
    c.store.update_job(job["id"], expect_status=[job["status"]], status=JobStatus.QUEUED.value,
                       abort_requested=False, resume_from=max(snaps), error=None, finished_at=None)
    queue.enqueue_job(c, c.store.get_job(job["id"]))
    resumed = c.store.get_job(job["id"])
    changed = layer_env.job_warnings(c.cfg, resumed)   # other added packages than at validation
    return dict(resumed, warnings=changed) if changed else resumed


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



# ---- for the DIGITS routes (app.web.digits) ---------------------------------

def submit_keeping_failures(c: Context, upload: Upload, user: dict) -> list[dict]:
    """Submit as DIGITS does: the job(s) queued (``submit_all`` where the
    fields ask for a sweep), or, when the network or Python layer does not
    validate, one job record that has already ended in error and carries the
    validation report (never queued). Bad fields still raise invalid_request."""
    from app.services import sweeps
    from app.services.submission import parse_params
    try:
        return list(sweeps.submit_all(c, upload, user))
    except ServiceError as err:
        if err.code not in ("invalid_network", "invalid_python_layer"):
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
            raise _bad("name", "The name must not be empty.", "required")
        fields["name"] = name.strip()[:200]
    if notes is not None:
        fields["params"] = dict(job.get("params") or {}, notes=notes[:10000])
    if fields:
        c.store.update_job(job["id"], **fields)
    return c.store.get_job(job["id"])


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
