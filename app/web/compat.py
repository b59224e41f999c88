"""DIGITS-compatible routes (DIGITS 6 field names), so existing scripts keep
working. Thin: translate the fields, call the same services as /api/v1."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from app.caffe.network import standard_network_text, standard_networks
from app.core.errors import ServiceError
from app.services import datasets as dataset_service
from app.services import jobs
from app.services.submission import Upload
from app.web.auth import current_user
from app.web.context import ctx
from app.web.errors import ApiError

bp = Blueprint("compat", __name__)

# DIGITS field -> our field (learning-rate policy parameters included).
_FIELDS = {"model_name": "name", "dataset": "dataset", "train_epochs": "train_epochs",
           "learning_rate": "learning_rate", "solver_type": "solver_type", "batch_size": "batch_size",
           "lr_policy": "lr_policy", "val_interval": "val_interval", "snapshot_interval": "snapshot_interval",
           "random_seed": "random_seed", "max_iter": "max_iter",
           "lr_step_gamma": "gamma", "lr_multistep_gamma": "gamma", "lr_exp_gamma": "gamma",
           "lr_inv_gamma": "gamma", "lr_sigmoid_gamma": "gamma", "lr_inv_power": "power",
           "lr_poly_power": "power", "lr_step_size": "stepsize_percent", "lr_sigmoid_step": "stepsize_percent",
           "lr_multistep_values": "stepvalues_percent"}


def _digits_upload() -> Upload:
    form = request.form
    if form.get("python_layer_server_file"):
        raise ApiError(400, "invalid_request", "python_layer_server_file is not supported: upload the file "
                       "as python_layer_client_file.", [{"field": "python_layer_server_file", "message": "not allowed"}])
    method = form.get("method", "custom")
    if method == "standard":
        name = form.get("standard_networks", "")
        text = standard_network_text(name)
        if text is None:
            raise ApiError(400, "invalid_request", f"Unknown standard network '{name[:40]}'.",
                           [{"field": "standard_networks", "message": "use " + ", ".join(standard_networks())}])
        filename = f"{name}.prototxt"
    elif method == "custom":
        text, filename = form.get("custom_network"), "custom_network.prototxt"
    else:
        raise ApiError(400, "invalid_request", f"method '{method[:20]}' is not supported (standard or custom).",
                       [{"field": "method", "message": "standard | custom"}])
    layer = request.files.get("python_layer_client_file")
    fields = {ours: form[theirs] for theirs, ours in _FIELDS.items() if form.get(theirs)}
    gpu = form.get("select_gpu") or form.get("select_gpus")
    if form.get("select_gpu_count") not in (None, "", "1", "0"):
        raise ApiError(400, "invalid_request", "Training on several GPUs at once is not supported.",
                       [{"field": "select_gpu_count", "message": "use 1"}])
    fields["device"] = "auto" if gpu in (None, "", "next") else ("cpu" if gpu == "cpu" else f"gpu:{gpu}")
    return Upload(network_text=text, network_filename=filename,
                  layer_stream=layer.stream if layer is not None and layer.filename else None,
                  layer_filename=layer.filename if layer is not None else None, fields=fields)


def _model(job: dict) -> dict:
    out = jobs.to_json(job)
    out.update({"framework": "caffe", "job id": job["id"], "type": "Image Classification Model",
                "snapshots": [s.get("epoch") or s["iteration"] for s in job.get("snapshots") or []]})
    return out


@bp.post("/models/images/classification.json")
def create_model():
    """DIGITS: create an image classification model (job)."""
    try:
        job = jobs.submit(ctx(), _digits_upload(), current_user())
    except ServiceError as err:
        if err.code not in ("invalid_request", "invalid_network", "invalid_python_layer"):
            raise
        resp = jsonify({"errors": err.details or [{"message": err.message}], "error": err.code,
                        "message": err.message})
        resp.status_code = 400
        return resp
    return jsonify({"id": job["id"], "name": job["name"], "status": job["status"]})


@bp.get("/models/<job_id>.json")
def model_json(job_id: str):
    """DIGITS: a model's JSON."""
    return jsonify(_model(jobs.get(ctx(), job_id, current_user())))


@bp.get("/index.json")
def index_json():
    """DIGITS: the models (one page, newest first: ?limit=, ?cursor= as on
    /api/v1/jobs; next_cursor names the next page) and every dataset the
    user may see."""
    user = current_user()
    page = jobs.list_for(ctx(), user, limit=jobs.parse_limit(request.args.get("limit")),
                         cursor=request.args.get("cursor") or None)
    return jsonify({"models": [_model(j) for j in page.jobs],
                    "datasets": [{"id": d["id"], "name": d["name"], "status": d["status"]}
                                 for d in dataset_service.list_for(ctx(), user)],
                    "version": current_app.name, "next_cursor": page.next_cursor})


@bp.post("/models/<job_id>/abort")
def abort_model(job_id: str):
    """DIGITS: abort a running model."""
    jobs.abort(ctx(), jobs.get(ctx(), job_id, current_user()))
    return jsonify(_model(jobs.get(ctx(), job_id, current_user())))


@bp.delete("/models/<job_id>")
def delete_model(job_id: str):
    """DIGITS: delete a model and its files."""
    jobs.delete(ctx(), jobs.get(ctx(), job_id, current_user()))
    return Response(status=204)


@bp.get("/models/<job_id>/download.tar.gz")
def download_model(job_id: str):
    """DIGITS: the model tarball."""
    job = jobs.get(ctx(), job_id, current_user())
    return send_file(jobs.download(ctx(), job), mimetype="application/gzip", as_attachment=True,
                     download_name=f"{job['id']}.tar.gz", max_age=0)
