"""DIGITS's model routes: create (form and JSON), model JSON, status, page,
abort, delete, downloads, the new-model page, visualize-network, customize."""
from __future__ import annotations

import base64
import io

from flask import Response, jsonify, redirect, render_template, request, send_file

from app.caffe.network import standard_network_text, standard_networks
from app.core.errors import Conflict, InvalidNetwork, InvalidPythonLayer, InvalidRequest, NotFound, ServiceError
from app.core.workspace import LAYER_FILE, NETWORK_FILE
from app.services.runtime import data_roots
from app.services.jobs import files as job_files
from app.services.jobs import lifecycle as jobs
from app.services.jobs.submission import Upload
from app.web.auth import current_user
from app.web.context import ctx
from app.web.digits.blueprint import bp
from app.web.digits.common import arg, model_json, refuse, status_json

# DIGITS field -> /api/v1 field (learning-rate policy parameters included).
FIELDS = {"model_name": "name", "dataset": "dataset", "train_epochs": "train_epochs",
          "learning_rate": "learning_rate", "solver_type": "solver_type", "batch_size": "batch_size",
          "lr_policy": "lr_policy", "val_interval": "val_interval", "snapshot_interval": "snapshot_interval",
          "random_seed": "random_seed", "max_iter": "max_iter",
          "lr_step_gamma": "gamma", "lr_multistep_gamma": "gamma", "lr_exp_gamma": "gamma",
          "lr_inv_gamma": "gamma", "lr_sigmoid_gamma": "gamma", "lr_inv_power": "power",
          "lr_poly_power": "power", "lr_step_size": "stepsize_percent", "lr_sigmoid_step": "stepsize_percent",
          "lr_multistep_values": "stepvalues_percent", "batch_accumulation": "iter_size",
          "crop_size": "crop_size", "use_mean": "use_mean", "shuffle": "shuffle", "group_name": "group_name"}
# DIGITS's data augmentation (Torch/TensorFlow in DIGITS 6): only "off" is honoured.
AUGMENT = {"aug_flip": ("none", ""), "aug_quad_rot": ("none", ""), "aug_rot": ("0", ""), "aug_scale": ("0", ""),
           "aug_noise": ("0", ""), "aug_hsv_use": ("false", "n", ""), "aug_hsv_h": ("0", "0.02", ""),
           "aug_hsv_s": ("0", "0.04", ""), "aug_hsv_v": ("0", "0.06", "")}


def _network(form) -> Upload:
    method = form.get("method", "custom")
    if method == "standard":
        name = form.get("standard_networks", "")
        text = standard_network_text(name)
        if text is None:
            raise refuse("standard_networks", f"Unknown standard network '{name[:40]}'; use "
                         + ", ".join(standard_networks()) + ".")
        return Upload(network_text=text, network_filename=f"{name}.prototxt")
    if method == "custom":
        return Upload(network_text=form.get("custom_network"), network_filename="custom_network.prototxt")
    if method == "previous":
        # As DIGITS: the previous model's own network and Python layer (the
        # service fills them in), weights from its snapshot at that epoch.
        prev_id = form.get("previous_networks", "")
        snap = (form.get(f"{prev_id}-snapshot") or "-1").strip()
        return Upload(network_text=None, fields={"previous_job": prev_id, "previous_snapshot": snap})
    if method == "pretrained":
        return Upload(network_text=form.get("custom_network") or None,
                      fields={"pretrained_model": form.get("pretrained_networks", "")})
    raise refuse("method", f"method '{method[:20]}' is not one of standard, custom, previous, pretrained.")


def digits_upload(form, files) -> Upload:
    """DIGITS's create fields as the service's Upload (400 for what is refused)."""
    if (form.get("framework") or "caffe").lower() != "caffe":
        raise refuse("framework", "Only Caffe networks are trained here (framework=caffe).")
    if form.get("python_layer_server_file") and not data_roots.configured(ctx().cfg):
        raise refuse("python_layer_server_file", "python_layer_server_file (a path on the server) is not read "
                     "here (the administrator set no data roots): upload the file itself as "
                     "python_layer_client_file.")
    if not (form.get("model_name") or "").strip():
        raise refuse("model_name", "model_name is required.")
    for name, neutral in AUGMENT.items():
        if (form.get(name) or "").strip().lower() not in neutral:
            raise refuse(name, f"{name}: data augmentation is not supported (DIGITS offered it for Torch "
                         "and TensorFlow only).")
    if (form.get("rms_decay") or "0.99").strip() not in ("0.99", ""):
        raise refuse("rms_decay", "rms_decay other than Caffe's default 0.99 is not supported.")
    if form.get("select_gpu_count") not in (None, "", "1", "0") or "," in (form.get("select_gpus_list") or ""):
        raise refuse("select_gpu_count", "Training on several GPUs at once is not supported: use 1.")
    upload = _network(form)
    fields = {ours: form[theirs].strip() for theirs, ours in FIELDS.items() if form.get(theirs)}
    for name in ("learning_rate", "batch_size"):   # DIGITS lists: "[0.01, 0.02]", also "[10]"
        if fields.get(name, "").startswith("[") and fields[name].endswith("]"):
            fields[name] = fields[name][1:-1].strip()
    fields.update(upload.fields)
    gpu = form.get("select_gpu") or form.get("select_gpus") or form.get("select_gpus_list")
    fields["device"] = "auto" if gpu in (None, "", "next") else ("cpu" if gpu == "cpu" else f"gpu:{gpu}")
    upload.fields = fields
    layer = files.get("python_layer_client_file")
    if layer is not None and layer.filename:
        upload.layer_stream, upload.layer_filename = layer.stream, layer.filename
    elif (form.get("python_layer_server_file") or "").strip():
        upload.layer_stream, upload.layer_filename = _server_layer(form["python_layer_server_file"].strip())
    if upload.layer_stream is not None:
        # DIGITS's layer files come from its Python 2 era: converted before
        # validation (app.caffe.py2convert) unless the client sends python2=refuse.
        upload.fields["python2"] = (form.get("python2") or "convert").strip()
    # DIGITS's "pretrained model" path of a custom network: here the
    # .caffemodel itself, uploaded in the same field.
    weights = files.get("custom_network_snapshot")
    if weights is not None and weights.filename:
        upload.weights_stream, upload.weights_filename = weights.stream, weights.filename
    elif (form.get("custom_network_snapshot") or "").strip():
        raise refuse("custom_network_snapshot", "custom_network_snapshot names a file on the server: upload the "
                     ".caffemodel itself in custom_network_snapshot instead.")
    return upload


def _server_layer(raw: str) -> tuple[io.BytesIO, str]:
    # DIGITS's python_layer_server_file: a file under the data roots, read
    # in the sandbox (app.services.runtime.data_roots), then handled as an upload.
    field, cap = "python_layer_server_file", ctx().cfg.max_layer_file_bytes
    user = current_user()["name"]
    real = data_roots.resolve(ctx(), raw, user, field, kind="file")
    got = data_roots.fetch(ctx(), user, [real], cap, cap)
    if 0 not in got:
        raise refuse(field, f"{field} '{raw[:300]}' could not be read in the sandbox, or is larger than "
                     f"{cap >> 10} KiB.")
    return io.BytesIO(got[0]), real.name


def _create() -> list[dict]:
    clone_id = (request.form.get("clone") or "").strip()
    if clone_id:
        old = jobs.get(ctx(), clone_id, current_user())
        # DIGITS's clone repeats every field of the original: jobs.clone
        # carries the training settings; the group is DIGITS's too.
        params = old.get("params") or {}
        group = (params.get("group") or {}).get("name") or params.get("group_name")
        return [jobs.clone(ctx(), old, current_user(), {
            "name": (request.form.get("model_name") or "").strip() or None, "group_name": group})]
    return jobs.submit_keeping_failures(ctx(), digits_upload(request.form, request.files), current_user())


@bp.post("/models/images/classification.json")
def create_model_json():
    """DIGITS: create an image classification model; its model JSON, as
    DIGITS answered (``{"jobs": [...]}`` of them for a sweep)."""
    try:
        made = _create()
    except ServiceError as err:
        if not isinstance(err, (InvalidRequest, InvalidNetwork, InvalidPythonLayer)):
            raise
        resp = jsonify({"errors": err.details or [{"message": err.message}], "error": err.code,
                        "message": err.message})
        resp.status_code = 400
        return resp
    return jsonify(model_json(made[0]) if len(made) == 1 else {"jobs": [model_json(j) for j in made]})


@bp.post("/models/images/classification")
def create_model_form():
    """DIGITS: the new-model form; 302 to the model (to the home page for a sweep)."""
    from app.web.digits.common import alert_page
    try:
        made = _create()
    except ServiceError as err:
        if not isinstance(err, (InvalidRequest, InvalidNetwork, InvalidPythonLayer, NotFound)):
            raise
        return alert_page(err, 404 if isinstance(err, NotFound) else 400)
    return redirect(f"/models/{made[0]['id']}" if len(made) == 1 else "/", code=302)


@bp.get("/models/images/classification/new")
def new_model_page():
    """DIGITS: the new-model page (the form lives at /jobs/new)."""
    return render_template("web/digits_new.html", title="New Image Classification Model", target="/jobs/new")


@bp.get("/models/<job_id>.json")
def model(job_id: str):
    """DIGITS: a model's JSON."""
    return jsonify(model_json(jobs.get(ctx(), job_id, current_user())))


@bp.get("/models/<job_id>/status")
def model_status(job_id: str):
    """DIGITS: {status, name, type, error} in DIGITS's words."""
    return status_json("model", jobs.get(ctx(), job_id, current_user()))


@bp.get("/models/<job_id>")
def model_page(job_id: str):
    """DIGITS: the model's page (the job page)."""
    from app.web import pages
    return pages.job_page(job_id)


@bp.get("/models/<job_id>/files/<name>")
def model_file(job_id: str, name: str):
    """A model's input file by name (what DIGITS's "directory" + file keys named)."""
    data = job_files.input_file(ctx(), jobs.get(ctx(), job_id, current_user()), name)
    return Response(data, mimetype="text/plain", headers={"Content-Disposition": f"attachment; filename={name}"})


@bp.post("/models/<job_id>/abort")
def abort_model(job_id: str):
    """DIGITS: abort a model; 403 when it already ended (as DIGITS)."""
    job = jobs.get(ctx(), job_id, current_user())
    try:
        jobs.abort(ctx(), job)
    except ServiceError as err:
        if not isinstance(err, Conflict):
            raise
        raise refuse("job_id", err.message, 403) from None
    return jsonify(model_json(jobs.get(ctx(), job_id, current_user())))


@bp.delete("/models/<job_id>")
def delete_model(job_id: str):
    """DIGITS: delete a model and its files; 200."""
    jobs.delete(ctx(), jobs.get(ctx(), job_id, current_user()))
    return Response("Job deleted.", mimetype="text/plain")


@bp.get("/models/<job_id>/download")
@bp.get("/models/<job_id>/download.<fmt>")
def download_model(job_id: str, fmt: str = "tar.gz"):
    """DIGITS: the model archive as .tar, .zip, .tar.gz or .tar.bz2."""
    job = jobs.get(ctx(), job_id, current_user())
    if fmt not in job_files.DOWNLOAD_FORMATS:
        raise refuse("extension", "Use download.tar, .zip, .tar.gz or .tar.bz2.", 404)
    return send_file(job_files.download(ctx(), job, fmt, digits_names=True), mimetype=job_files.DOWNLOAD_FORMATS[fmt], as_attachment=True,
                     download_name=f"{job['id']}.{fmt}", max_age=0)


@bp.post("/models/visualize-network")
def visualize_network():
    """DIGITS: the network of ``custom_network`` drawn (an <img> of the SVG)."""
    from app.caffe import network
    from app.caffe.netdraw import render_svg
    if (arg("framework") or "caffe").lower() != "caffe":
        raise refuse("framework", "Only Caffe networks are drawn here.")
    try:
        net = network.parse(request.form.get("custom_network") or "", "custom_network.prototxt")
    except network.NetworkError as exc:
        raise refuse("custom_network", "The network cannot be drawn: " + exc.message) from None
    drawn = render_svg(net.net)
    svg = base64.b64encode(drawn if isinstance(drawn, bytes) else drawn.encode()).decode()
    return Response(f'<img src="data:image/svg+xml;base64,{svg}" alt="network">', mimetype="text/html")


@bp.post("/models/customize")
def customize():
    """DIGITS: a standard network's text (or a model's own) to edit:
    {"network", "snapshots", "python_layer"}."""
    name = arg("network") or ""
    text = standard_network_text(name)
    if text is not None:
        return jsonify({"network": text, "snapshots": [], "python_layer": None})
    job = jobs.get(ctx(), name, current_user())
    layer = None
    if job.get("python_layer"):
        layer = job_files.input_file(ctx(), job, LAYER_FILE).decode("utf-8", "replace")
    from app.web.digits.common import epochs
    return jsonify({"network": job_files.input_file(ctx(), job, NETWORK_FILE).decode("utf-8", "replace"),
                    "snapshots": epochs(job), "python_layer": layer})
