"""DIGITS's job routes (models and datasets alike): status, edit (name and
notes), delete, the listings (/index.json, /completed_jobs.json)."""
from __future__ import annotations

from flask import Response, jsonify, redirect, request

from app import __version__
from app.services.datasets import lifecycle as dataset_service
from app.services.jobs import listing as job_listing
from app.services.jobs import lifecycle as jobs
from app.web.auth import current_user
from app.web.context import ctx
from app.web.digits.blueprint import bp
from app.web.digits.common import ENDED_WORDS, dataset_json, find, model_json, refuse, status_json


@bp.get("/jobs/<job_id>/status")
def job_status(job_id: str):
    """DIGITS: a model's or dataset's {status, name, type, error}."""
    kind, record = find(job_id)
    return status_json(kind, record)


@bp.put("/jobs/<job_id>")
def edit_job(job_id: str):
    """DIGITS: rename (job_name) and/or annotate (job_notes) a model or dataset; 200."""
    name, notes = request.form.get("job_name"), request.form.get("job_notes")
    if name is None and notes is None:
        raise refuse("job_name", "Send job_name and/or job_notes.")
    kind, record = find(job_id)
    if kind == "model":
        return jsonify(model_json(jobs.edit(ctx(), record, name, notes)))
    return jsonify(dataset_json(dataset_service.edit(ctx(), record, name, notes)))


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str):
    """DIGITS: delete a model or dataset; 200."""
    kind, record = find(job_id)
    if kind == "dataset":
        from app.web.digits.datasets import delete_record
        return delete_record(record)
    jobs.delete(ctx(), record)
    return Response("Job deleted.", mimetype="text/plain")


@bp.get("/models")
def models_page():
    """DIGITS: the models list (the home page here)."""
    return redirect("/", code=302)


@bp.get("/index.json")
def index_json():
    """DIGITS: the models (one page, newest first: ?limit=, ?cursor= as on
    /api/v1/jobs; next_cursor names the next page) and the datasets the user may see."""
    user = current_user()
    page = job_listing.list_for(ctx(), user, limit=job_listing.parse_limit(request.args.get("limit")),
                         cursor=request.args.get("cursor") or None)
    return jsonify({"models": [model_json(j) for j in page.jobs],
                    "datasets": [dataset_json(d) for d in dataset_service.list_for(ctx(), user)],
                    "version": __version__, "next_cursor": page.next_cursor})


@bp.get("/completed_jobs.json")
def completed_jobs():
    """DIGITS: the ended models (one page, as /index.json) and datasets."""
    user = current_user()
    page = job_listing.list_for(ctx(), user, limit=job_listing.parse_limit(request.args.get("limit")),
                         cursor=request.args.get("cursor") or None)
    models = [m for m in map(model_json, page.jobs) if m["status"] in ENDED_WORDS]
    datasets = [d for d in map(dataset_json, dataset_service.list_for(ctx(), user)) if d["status"] in ENDED_WORDS]
    return jsonify({"models": models, "datasets": datasets, "next_cursor": page.next_cursor})
