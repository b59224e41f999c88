"""/api/v1/pretrained: a user's kept .caffemodel files, to start jobs from
(``pretrained_model=<id>`` on a new job). Thin: parse, call the service."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from app.services.jobs import pretrained
from app.web.auth import current_user
from app.web.context import ctx

bp = Blueprint("pretrained", __name__, url_prefix="/api/v1/pretrained")


@bp.post("")
def create():
    """Upload a .caffemodel (field ``weights``) under a ``name``: 201."""
    weights = request.files.get("weights")
    meta = pretrained.create(ctx(), current_user(), request.form.get("name", ""),
                             weights.stream if weights is not None and weights.filename else None)
    resp = jsonify(pretrained.summary(meta))
    resp.status_code = 201
    resp.headers["Location"] = f"/api/v1/pretrained/{meta['id']}"
    return resp


@bp.get("")
def list_models():
    """The pretrained models the user may see, newest first."""
    return jsonify({"pretrained": [pretrained.summary(m) for m in pretrained.list_for(ctx(), current_user())]})


@bp.get("/<model_id>")
def get(model_id: str):
    """One pretrained model: name, size, sha256 and the layers it holds."""
    return jsonify(pretrained.summary(pretrained.get(ctx(), model_id, current_user())))


@bp.delete("/<model_id>")
def delete(model_id: str):
    """Delete a pretrained model (jobs started from it keep their copy): 204."""
    pretrained.delete(ctx(), model_id, current_user())
    return Response(status=204)
