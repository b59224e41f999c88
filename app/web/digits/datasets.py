"""DIGITS's dataset routes: create from a server folder under the data roots
or an uploaded archive (DIGITS's resize and split fields, separate
validation / test folders), JSON, status, abort, delete (403 while a model
uses it)."""
from __future__ import annotations

from flask import Response, jsonify, redirect, render_template, request

from app.core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, ServiceError
from app.services.runtime import data_roots
from app.services.datasets import lifecycle as dataset_service
from app.web.auth import current_user
from app.web.context import ctx
from app.web.digits.blueprint import bp
from app.web.digits.common import alert_page, arg, dataset_json, dataset_word, refuse, status_json

# DIGITS field -> /api/v1 dataset field.
FIELDS = {"dataset_name": "name", "resize_width": "image_width", "resize_height": "image_height",
          "resize_channels": "channels", "resize_mode": "resize_mode", "folder_pct_val": "val_percent",
          "folder_pct_test": "test_percent", "backend": "backend", "encoding": "encoding",
          "compression": "compression",
          **{f"folder_{side}_{bound}_per_class": f"{side}_{bound}_per_class"
             for side in ("train", "val", "test") for bound in ("min", "max")}}
THEIRS = {ours: theirs for theirs, ours in FIELDS.items()}


def _archive():
    # DIGITS named a server folder; here that works under the administrator's
    # data roots (below), and the folder may also come as an uploaded
    # archive, in the same field (or "archive").
    upload = request.files.get("folder_train") or request.files.get("archive")
    if upload is not None and upload.filename:
        return upload.stream
    if request.form.get("method") == "textfile":
        return None     # its lists: textfile_uploads()
    if request.form.get("folder_train") and not data_roots.configured(ctx().cfg):
        raise refuse("folder_train", "Server folders are not read here (the administrator set no data roots): "
                     "upload the folder itself (one sub-folder per class) as a zip or tar.gz in folder_train.")
    return None


def _on(name: str) -> bool:
    return (request.form.get(name) or "").strip().lower() in ("1", "true", "y", "yes", "on")


def _fields() -> dict[str, str]:
    form = request.form
    fields = {ours: form[theirs] for theirs, ours in FIELDS.items() if form.get(theirs)}
    # DIGITS's per-class limits of a separate folder count only with its
    # checkbox on (its parse task exists only then), as its minimum defaults do.
    for side in ("val", "test"):
        if not _on(f"has_{side}_folder"):
            fields.pop(f"{side}_min_per_class", None)
            fields.pop(f"{side}_max_per_class", None)
    # DIGITS's server folders (app.services.runtime.data_roots): the separate
    # validation and test folders count only when their checkbox is on, as in DIGITS.
    if isinstance(form.get("folder_train"), str) and form.get("folder_train"):
        fields["folder"] = form["folder_train"]
    for side in ("val", "test"):
        if _on(f"has_{side}_folder"):
            if not (form.get(f"folder_{side}") or "").strip():
                raise refuse(f"folder_{side}", f"has_{side}_folder is on: name the folder in folder_{side}.")
            fields[f"folder_{side}"] = form[f"folder_{side}"]
    return fields


def textfile_uploads() -> dict[str, bytes]:
    """The uploaded files of DIGITS's textfile fields (lists and labels), by
    field, read capped (app.services.datasets.textfile checks them)."""
    from app.services.datasets.textfile import MAX_LIST_BYTES
    return {name: f.stream.read(MAX_LIST_BYTES + 1) for name, f in request.files.items()
            if name.startswith("textfile_") and f.filename}


def _create() -> dict:
    clone = arg("clone")
    if clone:
        # DIGITS's clone=<id>: the new dataset is made as that one was (its
        # options and folders; the other fields sent are not read).
        try:
            source = dataset_service.get(ctx(), clone, current_user())
        except NotFound:
            raise refuse("clone", f"No dataset {clone[:100]!r} to clone.") from None
        return dataset_service.clone(ctx(), source, current_user()["name"])
    fields = _fields()
    if request.form.get("method") == "textfile":
        fields.update({k: v for k, v in request.form.items() if k.startswith("textfile_")}, method="textfile")
    try:
        return dataset_service.create(ctx(), _archive(), fields, current_user()["name"],
                                      field_names={"folder": "folder_train"}, uploads=textfile_uploads())
    except InvalidRequest as err:
        # Errors name DIGITS's fields (folder_pct_test, not test_percent).
        for detail in err.details or []:
            if isinstance(detail, dict) and detail.get("field") in THEIRS:
                detail["field"] = THEIRS[detail["field"]]
        raise


@bp.post("/datasets/images/classification.json")
def create_dataset_json():
    """DIGITS: create an image classification dataset; the dataset's JSON
    (DIGITS answered its job's JSON: id, name, status and the rest)."""
    return jsonify(dataset_json(_create()))


@bp.post("/datasets/images/classification")
def create_dataset_form():
    """DIGITS: the new-dataset form; 302 to the dataset page."""
    try:
        ds = _create()
    except ServiceError as err:
        if not isinstance(err, (InvalidRequest, PayloadTooLarge)):
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
        if not isinstance(err, Conflict):
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
        if not isinstance(err, Conflict):
            raise
        raise refuse("dataset", err.message, 403) from None
    return Response("Job deleted.", mimetype="text/plain")


@bp.get("/files/<dataset_id>/mean.jpg")
def dataset_mean_jpg(dataset_id: str):
    """DIGITS: the dataset's mean image, JPEG, the dataset's width x height
    (404 for a dataset the user may not see, or one without it yet)."""
    data = dataset_service.mean_jpg(ctx(), dataset_service.get(ctx(), dataset_id, current_user()))
    if data is None:
        raise NotFound("The dataset has no mean image (yet).")
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


EXPLORE_SIZES = (10, 25, 50, 100)


def _int_arg(name: str, default: int, lo: int) -> int:
    try:
        return max(lo, int(request.args.get(name) or default))
    except ValueError:
        raise refuse(name, f"{name} must be a whole number.") from None


@bp.get("/datasets/images/classification/explore")
def explore():
    """DIGITS: the images of one DB of a done dataset with their labels,
    paginated (``db``: train, val or test; ``label``: one class only;
    ``page``, ``size``: items per page), for LMDB and HDF5 alike. A dataset
    that is not done is a 409 ("status should be Done"; DIGITS: 500)."""
    ds = dataset_service.get(ctx(), request.args.get("job_id") or "", current_user())
    word = dataset_word(ds)
    if word != "Done":
        raise refuse("job_id", f"The dataset's status should be Done, not {word}.", 409)
    db = request.args.get("db") or "train"
    index = dataset_service.explore_index(ctx(), ds, db)
    labels = (ds.get("info") or {}).get("labels") or []
    label = request.args.get("label")
    if label not in (None, ""):
        label = _int_arg("label", 0, 0)
        if label >= len(labels):
            raise refuse("label", f"label must be below {len(labels)}.")
    else:
        label = None
    size = _int_arg("size", 25, 1)
    size = size if size in EXPLORE_SIZES else 25
    items = [(i, lab, png) for i, (lab, png) in enumerate(index["items"]) if label is None or lab == label]
    pages = max(1, -(-len(items) // size))
    page = min(_int_arg("page", 0, 0), pages - 1)
    return render_template("web/digits_explore.html", ds=ds, db=db, labels=labels, label=label, size=size,
                           sizes=EXPLORE_SIZES, page=page, pages=pages, total=len(items), count=index["count"],
                           indexed=len(index["items"]), items=items[page * size:(page + 1) * size])
