"""Pages blueprint: HTML views and the health check. Thin: parse, call, render."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("web", __name__)


def _caffe_info() -> dict:
    # Probed once per process in a subprocess: the web process never imports
    # caffe itself.
    info = current_app.extensions.get("caffe_info")
    if info is None or not info.get("ok"):
        from .probe import probe
        info = probe(str(current_app.config["CAFFE_PYTHON"]))
        current_app.extensions["caffe_info"] = info
    return info


@bp.get("/healthz")
def healthz():
    """Liveness and what this install can do; no auth."""
    caffe = _caffe_info()
    store_ok = current_app.extensions["store"].ping()
    body = {
        "ok": bool(caffe.get("ok") and caffe.get("python_layer") and store_ok),
        "caffe": {"version": caffe.get("version"), "python_layer": caffe.get("python_layer", False),
                  "gpu_build": caffe.get("gpu_build", False), "error": caffe.get("error")},
        "containment": current_app.extensions.get("containment", "none"),
        "store": {"ok": store_ok, "backend": current_app.extensions["store"].engine.dialect.name},
        "queue": current_app.config["QUEUE"],
    }
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp
