"""Pages blueprint: HTML views and the health check. Thin: parse, call, render."""
from __future__ import annotations

import json
from pathlib import Path

from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template,
                   request, url_for)

from . import jobs
from .auth import current_user
from .errors import ApiError
from .forms import ActionForm, JobForm, LoginForm
from wtforms import SelectChoice
from .submission import Upload

bp = Blueprint("web", __name__)
STANDARD_DIR = Path(__file__).resolve().parent / "standard_networks"


def standard_networks() -> dict[str, str]:
    """Standard network name -> file stem (LeNet, AlexNet, GoogLeNet…)."""
    names = {"lenet": "LeNet", "alexnet": "AlexNet", "googlenet": "GoogLeNet"}
    return {stem: names.get(stem, stem) for stem in sorted(p.stem for p in STANDARD_DIR.glob("*.prototxt"))}


@bp.get("/healthz")
def healthz():
    """Liveness and what this install can do; no auth."""
    from . import gpus
    from .probe import caffe_info
    caffe = caffe_info(current_app)
    store_ok = current_app.extensions["store"].ping()
    body = {
        "ok": bool(caffe.get("ok") and caffe.get("python_layer") and store_ok),
        "caffe": {"version": caffe.get("version"), "python_layer": caffe.get("python_layer", False),
                  "gpu_build": caffe.get("gpu_build", False), "error": caffe.get("error")},
        "containment": current_app.extensions.get("containment", "none"),
        "store": {"ok": store_ok, "backend": current_app.extensions["store"].engine.dialect.name},
        "queue": current_app.config["QUEUE"],
        "gpus": list(gpus.detect()),
    }
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Session login for the pages."""
    from flask_login import login_user
    from .auth import check_login
    form = LoginForm()
    failed = False
    if form.validate_on_submit():
        user = check_login(form.username.data, form.password.data)
        if user is not None:
            login_user(user)
            target = request.args.get("next") or ""
            # Only local paths: never an open redirect to another site.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("web.index")
            return redirect(target, code=303)
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
    """Jobs and datasets."""
    user = current_user()
    store = jobs.ctx().store
    rows = store.list_jobs(owner=None if user.get("admin") else user["name"])
    return render_template("web/index.html", jobs=rows, datasets=store.list_datasets())


def _job_form() -> JobForm:
    form = JobForm()
    form.standard_network.choices = [SelectChoice("", "— custom —")] + [
        SelectChoice(k, v) for k, v in standard_networks().items()]
    form.dataset.choices = [SelectChoice("", "— none (network brings its own data) —")] + [
        SelectChoice(d["id"], d["name"]) for d in jobs.ctx().store.list_datasets() if d["status"] == "done"]
    from . import gpus
    form.device.choices = list(form.device.choices[:3]) + [
        SelectChoice(f"gpu:{g['index']}", f"GPU {g['index']}: {g['name']}") for g in gpus.detect()]
    if request.method == "GET" and not form.dataset.data and len(form.dataset.choices) > 1:
        form.dataset.data = form.dataset.choices[1].value
    return form


def _upload_from_form(form: JobForm) -> Upload:
    text, name = form.network_text.data, "network.prototxt"
    f = form.network.data
    if f is not None and getattr(f, "filename", None):
        text, name = f.read(int(current_app.config["MAX_NETWORK_FILE_KB"]) * 1024 + 1), f.filename
    elif not (text or "").strip() and form.standard_network.data in standard_networks():
        text = (STANDARD_DIR / f"{form.standard_network.data}.prototxt").read_text()
        name = f"{form.standard_network.data}.prototxt"
    layer = form.python_layer.data
    solver_file = form.solver.data
    fields = {k: ("" if form[k].data is None else str(form[k].data)) for k in (
        "name", "dataset", "train_epochs", "max_iter", "batch_size", "val_interval", "snapshot_interval",
        "solver_type", "learning_rate", "lr_policy", "gamma", "power", "stepsize", "stepvalues",
        "random_seed", "device")}
    return Upload(network_text=text, network_filename=name,
                  layer_stream=layer.stream if layer is not None and getattr(layer, "filename", None) else None,
                  layer_filename=getattr(layer, "filename", None),
                  solver_text=solver_file.read(256 * 1024 + 1) if solver_file is not None and
                  getattr(solver_file, "filename", None) else None,
                  fields=fields)


@bp.route("/jobs/new", methods=["GET", "POST"])
def new_job():
    """Upload form: Validate shows the report; Create validates and queues."""
    form = _job_form()
    report, error = None, None
    if form.validate_on_submit():
        upload = _upload_from_form(form)
        try:
            if request.form.get("action") == "validate":
                report = jobs.validate_only(upload)
            else:
                job = jobs.submit(upload, current_user()["name"])
                return redirect(url_for("web.job_page", job_id=job["id"]), code=303)
        except ApiError as err:
            if err.status >= 500:
                raise
            error = err
    elif request.method == "POST":
        error = ApiError(400, "invalid_request", "The form has errors.",
                         [{"field": k, "message": "; ".join(v)} for k, v in form.errors.items()])
    status = 400 if error is not None else 200
    if request.headers.get("X-Requested-With") == "fetch":
        # The page's script validates in place (keeping the chosen files).
        return render_template("web/_report.html", report=report, error=error), status
    return render_template("web/new_job.html", form=form, report=report, error=error,
                           standard=standard_networks()), status


@bp.get("/networks/<name>.prototxt")
def standard_network(name: str):
    """A standard network's text (the form's "customize" action)."""
    if name not in standard_networks():
        abort(404)
    return Response((STANDARD_DIR / f"{name}.prototxt").read_text(), mimetype="text/plain")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    """The live status page."""
    job = jobs.get(job_id, current_user())
    store = jobs.ctx().store
    report = None
    path = jobs.ctx().ws.job_dir(job_id) / "validation" / "report.json"
    if path.is_file():
        report = json.loads(path.read_text())
    return render_template("web/job.html", job=job, data=jobs.to_json(job), events=store.job_events(job_id),
                           report=report, action_form=ActionForm())


@bp.post("/jobs/<job_id>/<action>")
def job_action(job_id: str, action: str):
    """Abort, clone, resume or delete from the page's buttons."""
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    job = jobs.get(job_id, current_user())
    if action == "abort":
        jobs.abort(job)
    elif action == "resume":
        jobs.resume(job)
    elif action == "clone":
        new = jobs.clone(job, current_user()["name"], {})
        return redirect(url_for("web.job_page", job_id=new["id"]), code=303)
    elif action == "delete":
        jobs.delete(job)
        flash(f"Deleted job {job['name']}.")
        return redirect(url_for("web.index"), code=303)
    else:
        abort(404)
    return redirect(url_for("web.job_page", job_id=job_id), code=303)


@bp.get("/datasets/<dataset_id>")
def dataset_page(dataset_id: str):
    """A dataset's counts and labels."""
    d = jobs.ctx().store.get_dataset(dataset_id)
    if d is None:
        abort(404)
    return render_template("web/dataset.html", dataset=d)
