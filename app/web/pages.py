"""Pages blueprint: HTML views and the health check. Thin: parse, call, render."""
from __future__ import annotations

from contextlib import nullcontext

from flask import (Blueprint, Response, abort, current_app, flash, g, jsonify, redirect, render_template,
                   request, session, url_for)

from wtforms import SelectChoice

from app.caffe.network import standard_network_text, standard_networks
from app.core.errors import Conflict, NotFound, ServiceError
from app.core.status import DatasetStatus
from app.services.datasets import lifecycle as dataset_service
from app.services.jobs import files as job_files
from app.services.jobs import listing as job_listing
from app.services.jobs import intake
from app.services.jobs import lifecycle as jobs
from app.services.jobs import sweeps
from app.services.layers import environments as layer_env
from app.services.layers import files as layer_files
from app.services.jobs.submission import Upload
from app.web.auth import current_user
from app.web.context import ctx, settings
from app.web.errors import ApiError, as_api_error
from app.web.forms import ActionForm, DatasetForm, InferForm, JobForm, LoginForm

bp = Blueprint("web", __name__)


@bp.app_context_processor
def _disk_warning() -> dict:
    # Every page tells a signed-in user when the jobs volume runs low: jobs
    # would otherwise fail with "no space left" one by one.
    from flask import g
    if not getattr(g, "user", None):
        return {}
    from app.services.operations.health import disk
    state = disk(ctx())
    return {"disk_low": state} if state["low"] else {}


@bp.get("/healthz")
def healthz():
    """Liveness for anyone: {"status": "ok"} (or "unhealthy"). What this
    install can do and how (containment, cgroups, disk, workers, GPUs) only
    for an admin (session or token) or LAYERBENCH_MONITOR_TOKEN as a bearer
    token: those details map the host for an attacker."""
    from app.services.operations.health import health, summary
    report = health(ctx(), current_app.instance_path)
    resp = jsonify(report if _sees_health_details() else summary(report))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _sees_health_details() -> bool:
    # /healthz is public (no login guard ran): a bearer token is judged here.
    # A wrong one only gets the short answer, never a 401: a probe stays a
    # probe. HTTP Basic is not taken: a public route must not become a way
    # to guess passwords past the login's limits.
    import hmac
    from flask_login import current_user as session_user
    from app.web.auth import user_for_token
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        monitor = settings().monitor_token or ""
        if monitor and hmac.compare_digest(token.encode(), monitor.encode()):
            return True
        user = user_for_token(token) if token else None
        return bool(user and user.get("admin"))
    return bool(session_user.is_authenticated and getattr(session_user, "admin", False))


@bp.get("/health")
def health_page():
    """/healthz for people: the status, and for an admin the facts behind it
    (self-test, Caffe, containment, disk, store, queue and workers, GPUs)."""
    from app.services.operations.health import health, summary
    report = health(ctx(), current_app.instance_path)
    details = bool(current_user().get("admin"))
    return render_template("web/health.html", report=report if details else summary(report), details=details)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Session login for the pages."""
    from flask_login import login_user
    from app.web.auth import check_login, safe_next
    form = LoginForm()
    failed = False
    if request.method == "POST" and (request.form.get("username") or "").strip() and not request.form.get("password"):
        # DIGITS signed in by user name alone; here every user has a password.
        raise ApiError(401, "unauthorized", "A user name alone does not sign in here: add the password "
                       "(-F password=...), or send 'Authorization: Bearer <token>' (a token from "
                       "'flask --app wsgi users token NAME') instead of a session cookie.")
    if form.validate_on_submit():
        user = check_login(form.username.data, form.password.data)
        if user is not None:
            login_user(user)
            if g.get("script_login"):
                from app.web.auth import SCRIPT_SESSION
                session[SCRIPT_SESSION] = True   # its writes are judged by Origin/Referer (auth.py)
            # Only paths on this site, as the browser will read them: never an open redirect.
            return redirect(safe_next(request.args.get("next")), code=303)
        failed = True
    return render_template("web/login.html", form=form, failed=failed), (401 if failed else 200)


@bp.post("/logout")
def logout():
    """End the session."""
    from flask_login import logout_user
    if ActionForm().validate_on_submit():
        logout_user()
    return redirect(url_for("web.login"), code=303)


@bp.get("/")
def index():
    """Jobs (one page of 50, newest first; ?cursor= for older ones; ?ids=a,b
    for some, e.g. a sweep's group) and datasets."""
    user = current_user()
    cursor = request.args.get("cursor") or None
    ids = job_listing.parse_ids(request.args.get("ids"))
    page = job_listing.list_for(ctx(), user, cursor=cursor, ids=ids)
    # ?metric=val:dice — "the" metric of the list, a column with each job's latest value.
    metric_names = sorted({f"{kind}:{k}" for j in page.jobs for kind, vals in (j.get("metrics") or {}).items()
                           if kind in ("train", "val") and isinstance(vals, dict) for k in vals})
    metric = request.args.get("metric") if request.args.get("metric") in metric_names else None
    return render_template("web/index.html", jobs=page.jobs, next_cursor=page.next_cursor,
                           paged=cursor is not None or ids is not None,
                           datasets=dataset_service.list_for(ctx(), user), metric=metric, metric_names=metric_names)


def _job_form(prefill: dict[str, str] | None = None) -> JobForm:
    # prefill: the fields of a job being cloned, taken as if they were posted
    # (each shown exactly as the job had it).
    from werkzeug.datastructures import MultiDict
    form = JobForm(formdata=MultiDict(prefill)) if prefill is not None else JobForm()
    # data-kind: what the form's job type switch (new_job.js) shows for each type.
    form.standard_network.choices = [SelectChoice("", "— custom —")] + [
        SelectChoice(k, v, render_kw={"data-kind": "segmentation" if k == "fcn" else "classification"})
        for k, v in standard_networks().items()]
    form.dataset.choices = [SelectChoice("", "— none (network brings its own data) —")] + [
        SelectChoice(d["id"], d["name"], render_kw={"data-kind": (d.get("info") or {}).get("type") or "classification"})
        for d in dataset_service.list_for(ctx(), current_user(), status=DatasetStatus.DONE.value)]
    from app.services.runtime import gpus
    form.device.choices = list(form.device.choices[:3]) + [
        SelectChoice(f"gpu:{g['index']}", f"GPU {g['index']}: {g['name']}") for g in gpus.detect()]
    from app.services.jobs import pretrained
    form.pretrained_model.choices = [SelectChoice("", "— none —")] + [
        SelectChoice(m["id"], m["name"]) for m in pretrained.list_for(ctx(), current_user())]
    if request.method == "GET":
        # "Use as starting point" on a job page: its id (and last snapshot).
        form.previous_job.data = form.previous_job.data or request.args.get("previous_job", "")[:80]
    if request.method == "GET" and prefill is None:
        # "Train on this dataset" on a dataset page: ?dataset=<id>.
        wanted = request.args.get("dataset")
        if wanted and any(ch.value == wanted for ch in form.dataset.choices):
            form.dataset.data = wanted
        elif not form.dataset.data and len(form.dataset.choices) > 1:
            form.dataset.data = form.dataset.choices[1].value
    return form


def _upload_from_form(form: JobForm) -> Upload:
    text, name = form.network_text.data, "network.prototxt"
    f = form.network.data
    if f is not None and getattr(f, "filename", None):
        text, name = f.read(settings().max_network_file_bytes + 1), f.filename
    elif not (text or "").strip() and standard_network_text(form.standard_network.data):
        text = standard_network_text(form.standard_network.data)
        name = f"{form.standard_network.data}.prototxt"
    # One .py file as ever, or several files / one zip (app.services.layers.files).
    layer, layer_name, layers = layer_files.split([(f.stream, f.filename) for f in
                                                   request.files.getlist("python_layer") if f.filename])
    solver_file = form.solver.data
    fields = {k: ("" if form[k].data is None else str(form[k].data)) for k in (
        "name", "dataset", "train_epochs", "max_iter", "batch_size", "val_interval", "snapshot_interval",
        "solver_type", "learning_rate", "lr_policy", "gamma", "power", "stepsize", "stepvalues",
        "random_seed", "device", "gradient_check", "python2", "iter_size", "crop_size", "use_mean", "group_name",
        "previous_job", "previous_snapshot", "pretrained_model")}
    fields["shuffle"] = "true" if form.shuffle.data else "false"
    fields["auto_retry"] = "true" if form.auto_retry.data else "false"
    weights = form.weights.data if form.weights.data is not None and getattr(form.weights.data, "filename", None) \
        else None
    fields[layer_files.MAIN_FIELD] = (form.python_layer_main.data or "").strip()
    return Upload(network_text=text, network_filename=name,
                  layer_stream=layer, layer_filename=layer_name, layer_files=layers,
                  solver_text=solver_file.read(256 * 1024 + 1) if solver_file is not None and
                  getattr(solver_file, "filename", None) else None,
                  fields=fields, weights_stream=weights.stream if weights else None,
                  weights_filename=weights.filename if weights else None)


@bp.route("/jobs/new", methods=["GET", "POST"])
def new_job():
    """Upload form: Validate shows the report; Create validates and queues.
    ?clone=<job id> opens it filled in from that job (the job page's Clone),
    its layer files and uploaded weights named by the form's clone_from and
    kept on the server; ?dataset=<id> opens it on that dataset."""
    from app.services.jobs import clone_form
    clone_id = (request.args.get("clone") if request.method == "GET" else request.form.get(clone_form.FIELD)) or ""
    prefill, source = (clone_form.prefill(ctx(), clone_id[:80], current_user()) if clone_id else (None, None))
    form = _job_form(prefill if request.method == "GET" else None)
    report, error = None, None
    if form.validate_on_submit():
        try:
            upload = _upload_from_form(form)
            # A clone's layer files and weights, where the form chose none of its own.
            carry = clone_form.carried(ctx(), upload, source["id"], current_user()) if source else nullcontext(upload)
            with carry as upload:
                if request.form.get("action") == "validate":
                    report = intake.validate_only(ctx(), upload, current_user())
                else:
                    created = sweeps.submit_all(ctx(), upload, current_user())
                    if len(created) > 1:   # a sweep: its jobs side by side
                        return redirect(url_for("web.index", ids=",".join(j["id"] for j in created)), code=303)
                    return redirect(url_for("web.job_page", job_id=created[0]["id"]), code=303)
        except ServiceError as err:
            if not err.user_fault and not isinstance(err, Conflict):
                raise
            error = as_api_error(err)
    elif request.method == "POST":
        error = ApiError(400, "invalid_request", "The form has errors.",
                         [{"field": k, "message": "; ".join(v)} for k, v in form.errors.items()])
    status = 400 if error is not None else 200
    if request.headers.get("X-Requested-With") == "fetch":
        # The page's script validates and creates in place (keeping the chosen files).
        return render_template("web/_report.html", report=report, error=error), status
    return render_template("web/new_job.html", form=form, report=report, error=error, clone=source,
                           choose_again=_chosen_files() if request.method == "POST" else []), status


# The form's file fields, as the page names them.
_FILE_FIELDS = (("network", "network file"), ("python_layer", "Python layer file"),
                ("solver", "solver file"), ("weights", "weights file"))


def _chosen_files() -> list[tuple[str, str, str]]:
    """(field, its label, file name) of each file the posted form carried:
    a page sent back after a full round trip has them unchosen again."""
    return [(field, label, f.filename) for field, label in _FILE_FIELDS
            for f in request.files.getlist(field) if f.filename]


def _svg(net, stage: str | None) -> Response:
    from app.caffe.netdraw import STAGES, render_svg
    if stage and stage not in STAGES:
        raise ApiError(400, "invalid_request", "stage is one of train, val, deploy (or empty: all stages).",
                       [{"field": "stage", "message": "use train, val or deploy"}])
    try:
        svg = render_svg(net, stage=stage or None)
    except RuntimeError as exc:
        raise ApiError(500, "internal_error", str(exc)) from None
    # An SVG may carry scripts: served with its own strict CSP, shown via <img>.
    return Response(svg, mimetype="image/svg+xml",
                    headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                             "Cache-Control": "private, no-store"})


@bp.post("/networks/visualize")
def visualize():
    """The network in the form (file or text) as an SVG graph: one stage's
    net (``stage`` train, val or deploy) or all of them."""
    from app.caffe import network
    f = request.files.get("network")
    text = f.read(settings().max_network_file_bytes) if f and f.filename else \
        (request.form.get("network_text") or "").encode()
    if not text.strip():
        text = (standard_network_text(request.form.get("standard_network")) or "").encode()
    try:
        net = network.parse(text.decode("utf-8"), "network.prototxt")
    except (UnicodeDecodeError, network.NetworkError) as exc:
        details = getattr(exc, "details", [{"field": "network", "message": "not UTF-8 text"}])
        raise ApiError(400, "invalid_network", "The network cannot be drawn: it does not parse.", details) from None
    return _svg(net.net, request.form.get("stage"))


@bp.get("/jobs/<job_id>/network.svg")
def job_network_svg(job_id: str):
    """The job's network (as uploaded) as an SVG graph: ?stage=train, val
    or deploy for that stage's net, all stages without."""
    from app.caffe import network
    job = jobs.get(ctx(), job_id, current_user())
    return _svg(network.parse(job_files.network_text(ctx(), job)).net, request.args.get("stage"))


@bp.get("/networks/<name>.prototxt")
def standard_network(name: str):
    """A standard network's text (the form's "customize" action)."""
    text = standard_network_text(name)
    if text is None:
        raise ApiError(404, "not_found", "No such standard network.")
    return Response(text, mimetype="text/plain")


@bp.get("/jobs/compare")
def compare_page():
    """Jobs side by side; ?ids=a&ids=b (the job list's form) redirects to
    the shareable ?ids=a,b."""
    from app.services.jobs import compare
    raw = request.args.getlist("ids")
    ids = compare.parse_ids(raw)
    if len(raw) > 1:
        return redirect(url_for("web.compare_page", ids=",".join(ids)), code=303)
    return render_template("web/compare.html", data=compare.compare(ctx(), ids, current_user()))


@bp.post("/python-layers/convert")
def convert_python_layer():
    """The validation report's "download the Python 3 version" button: the
    form's layer file converted (a download; the upload is not changed)."""
    from app.services.layers.diagnostics import convert_layer
    from app.web.api import python_layer_download
    if not ActionForm().validate_on_submit():
        abort(400)
    return python_layer_download(convert_layer)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    """The live status page (a dataset's id redirects to its page, as DIGITS's /jobs/<id> did)."""
    try:
        job = jobs.get(ctx(), job_id, current_user())
    except ServiceError as err:
        if not isinstance(err, NotFound):
            raise
        try:
            dataset = _dataset(job_id)
        except ServiceError as not_dataset:
            if not isinstance(not_dataset, NotFound):
                raise
            raise err from None   # neither: "No such job."
        return redirect(url_for("web.dataset_page", dataset_id=dataset["id"]), code=302)
    infer_form = InferForm()
    infer_form.snapshot.choices = [SelectChoice(str(s["iteration"]), f"iteration {s['iteration']}")
                                   for s in reversed(job.get("snapshots") or [])]
    from app.services.layers.diagnostics import job_error
    return render_template("web/job.html", job=job, data=jobs.to_json(job), events=jobs.events(ctx(), job),
                           job_error=job_error(ctx(), job), python2_diff=job_files.python2_diff(ctx(), job),
                           report=job_files.validation_report(ctx(), job), action_form=ActionForm(), infer_form=infer_form,
                           segmentation=_is_segmentation(job), queue=jobs.queue_position(ctx(), job))


@bp.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str):
    """Abort, clone, resume or delete from the page's buttons."""
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    c = ctx()
    job = jobs.get(c, job_id, current_user())
    if action == "abort":
        jobs.abort(c, job)
    elif action == "resume":
        jobs.resume(c, job)
    elif action == "notes":
        jobs.edit(c, job, notes=request.form.get("notes", ""))
    elif action == "clone":
        new = jobs.clone(c, job, current_user(), {})
        return redirect(url_for("web.job_page", job_id=new["id"]), code=303)
    elif action == "delete":
        jobs.delete(c, job)
        flash(f"Deleted job {job['name']}.")
        return redirect(url_for("web.index"), code=303)
    else:
        raise ApiError(404, "not_found", "No such job action.")
    return redirect(url_for("web.job_page", job_id=job_id), code=303)


@bp.route("/datasets/new", methods=["GET", "POST"])
def new_dataset():
    """Upload an image archive; the dataset builds in the background."""
    form = DatasetForm()
    error = None
    if form.validate_on_submit():
        f = form.archive.data
        fields = {k: str(form[k].data) for k in ("name", "image_width", "image_height", "channels",
                                                  "resize_mode", "val_percent", "type")}
        fields["folder"] = (form.folder.data or "").strip()
        try:
            ds = dataset_service.create(ctx(), f.stream if f is not None and getattr(f, "filename", None)
                                        else None, fields, current_user()["name"])
            return redirect(url_for("web.dataset_page", dataset_id=ds["id"]), code=303)
        except ServiceError as err:
            if not err.user_fault and not isinstance(err, Conflict):
                raise
            error = as_api_error(err)
    from app.services.runtime import data_roots
    roots = data_roots.roots_for(ctx().cfg, current_user()["name"]) if data_roots.configured(ctx().cfg) else []
    return render_template("web/new_dataset.html", form=form, error=error, roots=roots), (400 if error else 200)


@bp.get("/datasets")
def datasets_page():
    """The datasets this user may see (the top menu's Datasets)."""
    return render_template("web/datasets.html", datasets=dataset_service.list_for(ctx(), current_user()))


def _dataset(dataset_id: str) -> dict:
    return dataset_service.get(ctx(), dataset_id, current_user())


@bp.post("/datasets/<dataset_id>/notes")
def dataset_notes(dataset_id: str):
    """Save the dataset's notes (the page's notes form)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    dataset_service.edit(ctx(), _dataset(dataset_id), notes=request.form.get("notes", ""))
    return redirect(url_for("web.dataset_page", dataset_id=dataset_id), code=303)


@bp.get("/datasets/<dataset_id>")
def dataset_page(dataset_id: str):
    """A dataset: status and progress, counts, sample images, mean image."""
    ds = _dataset(dataset_id)
    samples = dataset_service.sample_names(ctx(), ds)
    return render_template("web/dataset.html", dataset=ds, data=dataset_service.to_json(ds), samples=samples,
                           action_form=ActionForm())


@bp.get("/datasets/<dataset_id>/files/<path:name>")
def dataset_file(dataset_id: str, name: str):
    """The dataset's preview images only (mean.png, samples/*.png)."""
    data = dataset_service.preview(ctx(), _dataset(dataset_id), name)
    if data is None:
        raise ApiError(404, "not_found", "No such dataset preview image.")
    return Response(data, mimetype="image/png", headers={"Cache-Control": "private, max-age=3600"})


@bp.post("/datasets/<dataset_id>/delete")
def dataset_delete(dataset_id: str):
    """Delete from the dataset page (409 page while a job uses it)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    ds = _dataset(dataset_id)
    dataset_service.delete_as(ctx(), ds, current_user())
    flash(f"Deleted dataset {ds['name']}.")
    return redirect(url_for("web.index"), code=303)


@bp.post("/jobs/<job_id>/infer")
def job_infer(job_id: str):
    """Classify images from the job page."""
    from app.services.inference import classify as classification
    job = jobs.get(ctx(), job_id, current_user())
    form = InferForm()
    form.snapshot.choices = [SelectChoice(str(s["iteration"])) for s in job.get("snapshots") or []]
    if not form.validate_on_submit():
        abort(400)
    files = [(f.stream, f.filename) for f in request.files.getlist("image") if f.filename]
    snap = int(form.snapshot.data) if form.snapshot.data else None
    if _is_segmentation(job):
        from app.services.inference import segment as segmentation
        # Masks as colour overlays on the images, with per-class pixel shares.
        result = segmentation.segment(ctx(), job, files, snap, caller=current_user())
        return render_template("web/segment.html", job=job, result=result, b64=_b64, swatch=_swatch)
    previews = _previews([stream for stream, _name in files])
    result = classification.classify(ctx(), job, files, snap, caller=current_user())
    return render_template("web/infer.html", job=job, result=result, previews=previews)


# Uploaded images the result page shows as they came: formats every browser
# draws, up to PREVIEW_BYTES each (larger ones, or TIFF, PGM..., get none).
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
                (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))
PREVIEW_BYTES = 2 << 20


def _previews(streams: list) -> list[str | None]:
    """A data: URL per uploaded image (None where none is shown); each
    stream is left at its start for the classification to read."""
    out = []
    for stream in streams:
        try:
            data = stream.read(PREVIEW_BYTES + 1)
            stream.seek(0)
        except (OSError, ValueError):
            out.append(None)
            continue
        kind = next((mime for magic, mime in _IMAGE_MAGIC if data.startswith(magic)), None)
        out.append(f"data:{kind};base64,{_b64(data)}" if kind and len(data) <= PREVIEW_BYTES else None)
    return out


def _is_segmentation(job: dict) -> bool:
    from app.services.inference import segment as segmentation
    return segmentation.dataset_type(ctx(), job) == "segmentation"


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def _swatch(color: list[int]) -> bytes:
    # A class colour as a 1x1 PNG (the CSP allows data: images, no inline styles).
    import numpy as np

    from app.caffe.segmentation import palette_png
    return palette_png(np.zeros((1, 1), np.uint8), [color])


@bp.get("/workers")
def workers_page():
    """The celery queue's live workers: hosts, GPUs, current jobs."""
    from app.services.runtime import workers
    return render_template("web/workers.html", queue=ctx().cfg.queue,
                           workers=workers.for_user(ctx(), current_user()))


@bp.get("/layer-env")
def layer_environment():
    """What layer code can import: Python, packages and versions, Caffe's build."""
    return render_template("web/layer_env.html", env=layer_env.describe_grouped(ctx()))
