"""DIGITS's dataset routes: create from an uploaded archive (DIGITS's resize
and split fields), JSON, status, abort, delete (403 while a model uses it)."""
from __future__ import annotations

from flask import Response, jsonify, redirect, render_template, request

from app.core.errors import ServiceError
from app.services import datasets as dataset_service
from app.web.auth import current_user
from app.web.context import ctx
from app.web.digits import bp
from app.web.digits.common import alert_page, dataset_json, refuse, status_json

# DIGITS field -> /api/v1 dataset field.
FIELDS = {"dataset_name": "name", "resize_width": "image_width", "resize_height": "image_height",
          "resize_channels": "channels", "resize_mode": "resize_mode", "folder_pct_val": "val_percent"}
# DIGITS's storage options: what this server always writes is accepted (the
# same pixels: PNG-encoded, or raw, both lossless), JPEG and HDF5 are not.
STORAGE = {"backend": ("lmdb", ""), "encoding": ("png", "none", ""), "compression": ("none", "")}


def _archive():
    # DIGITS named a server folder; here the folder comes as an uploaded
    # archive, in the same field (or "archive").
    upload = request.files.get("folder_train") or request.files.get("archive")
    if upload is not None and upload.filename:
        return upload.stream
    if request.form.get("folder_train") or request.form.get("method") == "textfile":
        raise refuse("folder_train", "Server folders and text files of server paths are not read here: upload "
                     "the folder itself (one sub-folder per class) as a zip or tar.gz in folder_train.")
    return None


def _fields() -> dict[str, str]:
    form = request.form
    for name, allowed in STORAGE.items():
        if (form.get(name) or "").lower() not in allowed:
            raise refuse(name, f"{name}={form.get(name)[:20]} is not supported (LMDB of PNG-encoded images only).")
    if form.get("clone"):
        raise refuse("clone", "Datasets cannot be cloned here (the uploaded archive is not kept): upload it again.")
    for side in ("train", "val", "test"):
        for limit in ("min", "max"):
            if (form.get(f"folder_{side}_{limit}_per_class") or "").strip() not in ("", "None"):
                raise refuse(f"folder_{side}_{limit}_per_class", "Per-class image limits are not supported.")
    for name in ("folder_pct_test", "has_val_folder", "has_test_folder"):
        if (form.get(name) or "0").lower() not in ("0", "", "false", "n"):
            raise refuse(name, f"{name}: separate validation/test folders and test splits are not supported; "
                         "use folder_pct_val.")
    return {ours: form[theirs] for theirs, ours in FIELDS.items() if form.get(theirs)}


def _create() -> dict:
    return dataset_service.create(ctx(), _archive(), _fields(), current_user()["name"])


@bp.post("/datasets/images/classification.json")
def create_dataset_json():
    """DIGITS: create an image classification dataset; {"id", "name", "status"}."""
    ds = _create()
    return jsonify({"id": ds["id"], "name": ds["name"], "status": dataset_json(ds)["status"]})


@bp.post("/datasets/images/classification")
def create_dataset_form():
    """DIGITS: the new-dataset form; 302 to the dataset page."""
    try:
        ds = _create()
    except ServiceError as err:
        if err.code not in ("invalid_request", "payload_too_large"):
            raise
        return alert_page(err, 400)
    return redirect(f"/datasets/{ds['id']}", code=302)


@bp.get("/datasets/images/classification/new")
def new_dataset_page():
    """DIGITS: the new-dataset page (the form lives at /datasets/new)."""
    return render_template("web/digits_new.html", title="New Image Classification Dataset", target="/datasets/new")


@bp.get("/datasets/<dataset_id>.json")
def dataset(dataset_id: str):
    """DIGITS: a dataset's JSON."""
    return jsonify(dataset_json(dataset_service.get(ctx(), dataset_id, current_user())))


@bp.get("/datasets/<dataset_id>/status")
def dataset_status(dataset_id: str):
    """DIGITS: {status, name, type, error} in DIGITS's words."""
    return status_json("dataset", dataset_service.get(ctx(), dataset_id, current_user()))


@bp.post("/datasets/<dataset_id>/abort")
def abort_dataset(dataset_id: str):
    """DIGITS: abort a dataset's build; 403 once it ended."""
    ds = dataset_service.get(ctx(), dataset_id, current_user())
    try:
        dataset_service.abort(ctx(), ds)
    except ServiceError as err:
        if err.code != "conflict":
            raise
        raise refuse("job_id", err.message, 403) from None
    return jsonify(dataset_json(dataset_service.get(ctx(), dataset_id, current_user())))


@bp.delete("/datasets/<dataset_id>")
def delete_dataset(dataset_id: str):
    """DIGITS: delete a dataset (a build under way is aborted first); 403
    while a model uses it or for a built-in one."""
    return delete_record(dataset_service.get(ctx(), dataset_id, current_user()))


def delete_record(ds: dict) -> Response:
    """Delete ``ds`` as DIGITS does (shared with DELETE /jobs/<id>)."""
    try:
        dataset_service.delete_aborting(ctx(), ds, current_user())
    except ServiceError as err:
        if err.code != "conflict":
            raise
        raise refuse("dataset", err.message, 403) from None
    return Response("Job deleted.", mimetype="text/plain")
