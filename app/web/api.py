"""REST blueprint, /api/v1 (API.md). Thin: parse, call a service, return."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, send_file, stream_with_context

from app.services.datasets import lifecycle as dataset_service
from app.services.jobs import files as job_files
from app.services.jobs import listing as job_listing
from app.services.jobs import intake
from app.services.jobs import lifecycle as jobs
from app.services.jobs import sweeps
from app.services.layers import environments as layer_env
from app.services.layers import files as layer_files
from app.services.jobs.submission import Upload
from app.web import jsonsafe
from app.web.auth import current_user
from app.web.context import ctx, settings
from app.web.errors import ApiError

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _no_store(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


def upload_from_request() -> Upload:
    """An Upload from a multipart (or urlencoded) request; 415 otherwise."""
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, "unsupported_media_type", "Send multipart/form-data (see API.md).")
    net_file = request.files.get("network")
    # One .py file as ever, or several files / one zip (app.services.layers.files).
    layer, layer_name, layers = layer_files.split([(f.stream, f.filename) for f in
                                                   request.files.getlist("python_layer") if f.filename is not None])
    solver_file = request.files.get("solver")
    weights = request.files.get("weights")
    if net_file is not None and net_file.filename is not None:
        net_text, net_name = net_file.read(settings().max_network_file_bytes + 1), \
            net_file.filename or "network.prototxt"
    else:
        net_text, net_name = request.form.get("network"), "network.prototxt"
    return Upload(network_text=net_text, network_filename=net_name,
                  layer_stream=layer, layer_filename=layer_name, layer_files=layers,
                  solver_text=(solver_file.read(256 * 1024 + 1) if solver_file else request.form.get("solver")),
                  fields={k: v for k, v in request.form.items() if k not in ("network", "solver")},
                  weights_stream=weights.stream if weights is not None and weights.filename else None,
                  weights_filename=weights.filename if weights is not None else None)


def _job(job_id: str) -> dict:
    return jobs.get(ctx(), job_id, current_user())


@bp.post("/validate")
def validate():
    """Validation only; 200 with the report, valid or not."""
    return _no_store(jsonify(intake.validate_only(ctx(), upload_from_request(), current_user())))


@bp.post("/jobs")
def create_job():
    """Validate and queue a job: 201 + Location, or 400 with details."""
    created = sweeps.submit_all(ctx(), upload_from_request(), current_user())
    if len(created) > 1:   # a sweep: every job, and their group
        resp = jsonify({"jobs": [jobs.to_json(j) for j in created], "group": created[0]["params"]["group"]})
        resp.status_code = 201
        return resp
    job = created[0]
    resp = jsonify(jobs.to_json(job))
    resp.status_code = 201
    resp.headers["Location"] = f"/api/v1/jobs/{job['id']}"
    return resp


@bp.get("/jobs")
def list_jobs():
    """One page of jobs, newest first: ?limit= (default 50, at most 500),
    ?cursor= (next_cursor of the previous page); ?status=, ?owner= (admins:
    anyone; others: themselves), ?dataset= and ?ids=a,b,c filter."""
    args = request.args
    page = job_listing.list_for(ctx(), current_user(), args.get("status") or None,
                         limit=job_listing.parse_limit(args.get("limit")), cursor=args.get("cursor") or None,
                         owner=args.get("owner") or None, dataset=args.get("dataset") or None,
                         ids=job_listing.parse_ids(args.get("ids")))
    return _no_store(jsonify({"jobs": [jobs.to_json(j) for j in page.jobs], "next_cursor": page.next_cursor}))


@bp.get("/jobs/compare")
def compare_jobs():
    """Jobs side by side (?ids=a,b,c): curves, settings with differences,
    network and layer file diffs, final metrics; 404 for a job not visible."""
    from app.services.jobs import compare
    ids = compare.parse_ids(request.args.getlist("ids"))
    return _no_store(jsonify(compare.compare(ctx(), ids, current_user())))


@bp.post("/python-layers/convert")
def convert_python_layer():
    """The uploaded Python 2 layer file (field ``python_layer``) converted
    mechanically to Python 3, as a download; nothing is stored or run."""
    from app.services.layers.diagnostics import convert_layer
    return python_layer_download(convert_layer)


def python_layer_download(convert) -> Response:
    """The converted text of the request's ``python_layer`` file (shared
    with the page route of the same name)."""
    f = request.files.get("python_layer")
    limit = settings().max_layer_file_bytes
    data = f.read(limit + 1) if f is not None and f.filename else (request.form.get("python_layer") or "").encode()
    text = convert(data, limit)
    resp = Response(text, mimetype="text/x-python")
    resp.headers["Content-Disposition"] = 'attachment; filename="digits_python_layers.py"'
    return _no_store(resp)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """The job JSON, with its history (every state change, and which worker
    each run was on: a hand-over between workers shows here)."""
    job, events = jobs.get_with_history(ctx(), job_id, current_user())
    body = jobs.to_json(job)
    from app.services.layers.diagnostics import job_error   # the error's excerpt and Python 2 hint
    body["error"] = job_error(ctx(), job)
    body["history"] = [{"at": e["at"], "status": e["status"], "message": e["message"]} for e in events]
    body["queue"] = jobs.queue_position(ctx(), job)   # None unless queued
    return _no_store(jsonify(body))


@bp.get("/jobs/<job_id>/metrics")
def job_metrics(job_id: str):
    """Every recorded train/val/lr point."""
    return _no_store(jsonify(job_files.metrics(ctx(), _job(job_id))))


@bp.get("/jobs/<job_id>/log")
def job_log(job_id: str):
    """Plain-text log from byte ?offset=N; X-Log-Size gives the full size."""
    try:
        offset = max(0, int(request.args.get("offset", "0")))
    except ValueError:
        raise ApiError(400, "invalid_request", "offset must be an integer.") from None
    data, nxt, size = job_files.log(ctx(), _job(job_id), offset)
    resp = Response(data, mimetype="text/plain")
    resp.headers["X-Log-Size"] = str(size)
    # Past a capped log's dropped middle the next offset jumps: ask for this one.
    resp.headers["X-Log-Next-Offset"] = str(nxt)
    return _no_store(resp)


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """Server-Sent Events: status, metrics, log; ends when the job ends.
    Strict JSON like every answer: a NaN or infinite metric is null."""
    _job(job_id)   # 404 unless visible to this user
    from app.services.jobs.live_events import follow
    c = ctx()

    def stream():
        for event, data in follow(c, job_id):
            yield f"event: {event}\ndata: {jsonsafe.dumps(data)}\n\n"

    resp = Response(stream_with_context(stream()), mimetype="text/event-stream")
    resp.headers["X-Accel-Buffering"] = "no"
    return _no_store(resp)


@bp.post("/jobs/<job_id>/abort")
def abort_job(job_id: str):
    """202; the job ends aborted (409 when it already ended)."""
    job = _job(job_id)
    jobs.abort(ctx(), job)
    resp = jsonify(jobs.to_json(_job(job_id)))
    resp.status_code = 202
    return resp


@bp.post("/jobs/<job_id>/clone")
def clone_job(job_id: str):
    """201; a new queued job with the same inputs (body fields override)."""
    job = jobs.clone(ctx(), _job(job_id), current_user(), dict(request.form.items()))
    resp = jsonify(jobs.to_json(job))
    resp.status_code = 201
    resp.headers["Location"] = f"/api/v1/jobs/{job['id']}"
    return resp


@bp.post("/jobs/<job_id>/resume")
def resume_job(job_id: str):
    """202; continue an interrupted/aborted job from its last solverstate."""
    resp = jsonify(jobs.to_json(jobs.resume(ctx(), _job(job_id))))
    resp.status_code = 202
    return resp


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """204; aborts if running and removes the files."""
    jobs.delete(ctx(), _job(job_id))
    return Response(status=204)


@bp.get("/jobs/<job_id>/download")
def download_job(job_id: str):
    """application/gzip tarball of the job's model files."""
    job = _job(job_id)
    archive = job_files.download(ctx(), job)
    return send_file(archive, mimetype="application/gzip", as_attachment=True,
                     download_name=f"{job['id']}.tar.gz", max_age=0)


@bp.post("/jobs/<job_id>/infer")
def infer(job_id: str):
    """Classify uploaded images with the job's latest (or ?snapshot=) model."""
    from app.services.inference import classify as classification
    job = _job(job_id)
    raw = request.form.get("snapshot") or request.args.get("snapshot")
    try:
        snapshot = int(raw) if raw else None
    except ValueError:
        raise ApiError(400, "invalid_request", "snapshot must be an iteration number.") from None
    files = [(f.stream, f.filename) for f in request.files.getlist("image")]
    from app.services.inference import segment as segmentation
    if segmentation.dataset_type(ctx(), job) == "segmentation":
        raise ApiError(409, "conflict", f"A segmentation job: use POST /api/v1/jobs/{job['id']}/segment.")
    return _no_store(jsonify(classification.classify(ctx(), job, files, snapshot, caller=current_user())))


@bp.post("/jobs/<job_id>/segment")
def segment(job_id: str):
    """Segment uploaded images (``image`` files and/or an ``archive`` of them)
    with a segmentation job: JSON with each mask and overlay as base64 PNG, or
    with ``?format=png`` the first image's mask PNG itself (``&index=N``: the Nth)."""
    import base64

    from app.services.inference import segment as segmentation
    job = _job(job_id)
    raw = request.form.get("snapshot") or request.args.get("snapshot")
    try:
        snapshot = int(raw) if raw else None
        index = int(request.args.get("index") or 0)
    except ValueError:
        raise ApiError(400, "invalid_request", "snapshot and index must be numbers.") from None
    files = [(f.stream, f.filename) for f in request.files.getlist("image") if f.filename]
    archive = request.files.get("archive")
    result = segmentation.segment(ctx(), job, files, snapshot, archive.stream if archive else None,
                                  caller=current_user())
    preds = result["predictions"]
    if request.args.get("format") == "png":
        if not 0 <= index < len(preds) or "mask_png" not in preds[index]:
            raise ApiError(404, "not_found", "No mask for that image.")
        return _no_store(Response(preds[index]["mask_png"], mimetype="image/png"))
    for p in preds:
        for key in ("mask_png", "overlay_png"):
            if key in p:
                p[key] = base64.b64encode(p[key]).decode()
    return _no_store(jsonify(result))


@bp.get("/datasets")
def list_datasets():
    """Built-in datasets and the user's own."""
    rows = dataset_service.list_for(ctx(), current_user())
    return _no_store(jsonify({"datasets": [dataset_service.to_json(d) for d in rows]}))


@bp.post("/datasets")
def create_dataset():
    """202: the archive is stored (or the server folder in ``folder``,
    under the data roots, noted) and the dataset is built in the background."""
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, "unsupported_media_type", "Send multipart/form-data with an 'archive' file "
                       "(or a form with 'folder', a server folder under the data roots).")
    from app.web.digits.datasets import textfile_uploads
    archive = request.files.get("archive")
    ds = dataset_service.create(ctx(), archive.stream if archive and archive.filename is not None else None,
                                dict(request.form.items()), current_user()["name"], uploads=textfile_uploads())
    resp = jsonify(dataset_service.to_json(ds))
    resp.status_code = 202
    resp.headers["Location"] = f"/api/v1/datasets/{ds['id']}"
    return resp


def _dataset(dataset_id: str) -> dict:
    return dataset_service.get(ctx(), dataset_id, current_user())


@bp.get("/datasets/<dataset_id>")
def get_dataset(dataset_id: str):
    """One dataset's JSON."""
    return _no_store(jsonify(dataset_service.to_json(_dataset(dataset_id))))


@bp.delete("/datasets/<dataset_id>")
def delete_dataset(dataset_id: str):
    """204; 409 while a job uses it."""
    dataset_service.delete_as(ctx(), _dataset(dataset_id), current_user())
    return Response(status=204)


@bp.get("/layer-env")
def layer_environment():
    """What uploaded layer code can import inside the sandbox: Python, the
    packages with versions (the service's and those an administrator added),
    Caffe's build; the added packages' fingerprint."""
    return _no_store(jsonify(layer_env.describe(ctx())))


@bp.get("/openapi.json")
def openapi():
    """OpenAPI 3 description of everything under /api/v1."""
    from app.web.openapi import spec
    return jsonify(spec())
