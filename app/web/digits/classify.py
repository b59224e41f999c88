"""DIGITS's inference routes on a model: classify_one, classify_many, top_n
(HTML laid out as DIGITS did, and .json). Images are uploaded, or, for the
lists, read from the server's data roots in the sandbox
(app.services.runtime.data_roots); image URLs are not fetched."""
from __future__ import annotations

from flask import jsonify, render_template, request

from app.services.inference import classify as classification

from app.services.inference import image_lists as classify_list

from app.services.runtime import data_roots

from app.services.jobs import lifecycle as jobs
from app.web.auth import current_user
from app.web.context import ctx
from app.web.digits.blueprint import bp
from app.web.digits.common import arg, refuse


def _job() -> dict:
    job_id = arg("job_id")
    if not job_id:
        raise refuse("job_id", "job_id is required.")
    return jobs.get(ctx(), job_id, current_user())


def _iteration(job: dict) -> int | None:
    raw = (arg("snapshot_epoch") or "").strip()
    if raw in ("", "-1"):
        return None
    for s in job.get("snapshots") or []:
        try:
            if s.get("epoch") is not None and abs(float(s["epoch"]) - float(raw)) < 1e-6:
                return int(s["iteration"])
        except ValueError:
            break
    raise refuse("snapshot_epoch", f"No snapshot at epoch {raw[:20]}.")


def _percent(p: float) -> float:
    return round(100.0 * p, 2)


def _visualizations(out: dict) -> list[dict]:
    # The pictures as data: URIs (the page's CSP allows those for images).
    import base64
    return [{k: v for k, v in vis.items() if k != "png"}
            | {"image": "data:image/png;base64," + base64.b64encode(vis["png"]).decode()}
            for vis in out.get("visualizations") or []]


@bp.post("/models/images/classification/classify_one")
@bp.post("/models/images/classification/classify_one.json")
def classify_one():
    """DIGITS: classify one uploaded image (image_file); {"predictions": [[label, %], ...]}."""
    job = _job()
    show = (arg("show_visualizations") or "").lower() in ("y", "yes", "true", "1", "on")
    if arg("image_url") or arg("image_path"):
        raise refuse("image_url", "Image URLs and server paths are not read: upload the image as image_file.")
    f = request.files.get("image_file")
    if f is None or not f.filename:
        raise refuse("image_file", "Upload the image as image_file.")
    out = classification.classify(ctx(), job, [(f.stream, f.filename)], _iteration(job), visualize=show,
                                  caller=current_user())
    pred = out["predictions"][0]
    if pred.get("error"):
        raise refuse("image_file", pred["error"])
    predictions = [[t["label"], _percent(t["probability"])] for t in pred["top"]]
    visualizations = _visualizations(out) if show else None
    if request.path.endswith(".json"):
        body = {"predictions": predictions, "snapshot": out["snapshot"]}
        return jsonify(body if visualizations is None else dict(body, visualizations=visualizations))
    return render_template("web/digits_classify_one.html", job=job, predictions=predictions,
                           filename=pred["filename"], snapshot=out["snapshot"], visualizations=visualizations)


def _classify_list(job: dict) -> dict:
    # The list's images: an uploaded archive, or DIGITS's server paths
    # (image_folder + relative lines, or absolute lines) under the data roots.
    if arg("image_folder") and not data_roots.configured(ctx().cfg):
        raise refuse("image_folder", "Server folders are not read here (the administrator set no data roots): "
                     "upload the images as a zip or tar archive in image_archive (the list's paths are matched "
                     "against it).")
    listing = request.files.get("image_list")
    if listing is None or not listing.filename:
        raise refuse("image_list", "Upload the list of images ('path [label]' lines) as image_list.")
    archive = request.files.get("image_archive")
    return classify_list.classify_list(ctx(), job, listing.stream.read(1 << 20),
                                       archive.stream if archive is not None and archive.filename else None,
                                       _iteration(job), folder=arg("image_folder") or None,
                                       user=current_user()["name"])


@bp.post("/models/images/classification/classify_many")
@bp.post("/models/images/classification/classify_many.json")
def classify_many():
    """DIGITS: classify a list of images; accuracy and a confusion matrix
    where the list gives labels. JSON: {"classifications": {path: [[label, %], ...]}}."""
    job = _job()
    result = _classify_list(job)
    if request.path.endswith(".json"):
        return jsonify({"classifications": {r["path"]: [[t["label"], _percent(t["probability"])] for t in r["top"]]
                                            for r in result["images"] if "top" in r},
                        "errors": {r["path"]: r["error"] for r in result["images"] if "error" in r},
                        "accuracy": result["accuracy"], "confusion_matrix": result["confusion"],
                        "labels": result["labels"], "snapshot": result["snapshot"]})
    return render_template("web/digits_classify_many.html", job=job, result=result, percent=_percent)


@bp.post("/models/images/classification/top_n")
def top_n():
    """DIGITS: per class, the top_n images (default 9) most confidently of it."""
    job = _job()
    try:
        n = max(1, min(int(arg("top_n") or 9), 100))
    except ValueError:
        raise refuse("top_n", "top_n must be a whole number.") from None
    result = _classify_list(job)
    return render_template("web/digits_top_n.html", job=job, classes=classify_list.top_images(result, n),
                           percent=_percent)
