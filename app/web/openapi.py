"""OpenAPI 3 description of /api/v1 (served at /api/v1/openapi.json)."""
from __future__ import annotations

from app.caffe.solver import LR_POLICIES, SOLVER_TYPES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): _json(_ref("Error"), text) for code, text in (
    (400, "Invalid input; `details` point at file, line, layer"), (401, "Missing or bad token"),
    (404, "No such job (or not yours)"), (409, "Conflict with the job's state"),
    (413, "Upload too large"), (415, "Not multipart/form-data"))}

_JOB_FIELDS = {
    "network": {"type": "string", "format": "binary", "description": "all-in-one network prototxt (file or text)"},
    "python_layer": {"type": "string", "format": "binary", "description": "stored as digits_python_layers.py"},
    "dataset": {"type": "string"}, "name": {"type": "string"},
    "train_epochs": {"type": "number", "default": 30}, "max_iter": {"type": "integer"},
    "solver_type": {"type": "string", "enum": list(SOLVER_TYPES)},
    "learning_rate": {"type": "number", "default": 0.01},
    "lr_policy": {"type": "string", "enum": list(LR_POLICIES)},
    "gamma": {"type": "number"}, "power": {"type": "number"}, "stepsize": {"type": "integer"},
    "stepvalues": {"type": "string", "description": "comma-separated iterations (multistep)"},
    "batch_size": {"type": "integer"}, "val_interval": {"type": "number", "description": "epochs"},
    "snapshot_interval": {"type": "number", "description": "epochs"}, "random_seed": {"type": "integer"},
    "device": {"type": "string", "description": "auto | cpu | gpu | gpu:N"},
    "solver": {"type": "string", "format": "binary", "description": "optional solver prototxt"},
}


def _op(summary: str, responses: dict, body: dict | None = None, params: list | None = None) -> dict:
    op = {"summary": summary, "responses": {**responses, **{k: v for k, v in _ERRORS.items()
                                                           if k in ("401", "404")}}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _ds_id() -> list:
    return [{"name": "dataset_id", "in": "path", "required": True, "schema": {"type": "string"}}]


def spec() -> dict:
    """The OpenAPI document."""
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    form = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["network"], "properties": _JOB_FIELDS}}}}
    errs = {k: _ERRORS[k] for k in ("400", "413", "415")}
    jid = [job_id]
    return {
        "openapi": "3.0.3",
        "info": {"title": "Layerbench API", "version": "1.0.0",
                 "description": "Train Caffe networks with custom Python layers (DIGITS-style)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message", "details"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}}}},
                "Job": {"type": "object", "properties": {k: {} for k in (
                    "id", "name", "owner", "status", "created_at", "started_at", "finished_at", "progress",
                    "iteration", "max_iter", "epoch", "eta_seconds", "device", "dataset", "python_layer",
                    "metrics", "snapshots", "error", "links")}},
                "Report": {"type": "object", "properties": {k: {} for k in (
                    "ok", "errors", "warnings", "layers", "timing")}},
                "Dataset": {"type": "object", "properties": {k: {} for k in (
                    "id", "name", "status", "num_classes", "labels", "train_count", "val_count",
                    "image_shape", "error")}},
            }},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/validate": {"post": _op("Validate only; never creates a job",
                                             {"200": _json(_ref("Report"), "The report"), **errs}, form)},
            "/api/v1/jobs": {
                "post": _op("Validate and queue a job", {"201": _json(_ref("Job"), "Queued"), **errs}, form),
                "get": _op("Jobs, newest first", {"200": _json({"type": "object", "properties": {
                    "jobs": {"type": "array", "items": _ref("Job")}}}, "Jobs")},
                    params=[{"name": "status", "in": "query", "schema": {"type": "string"}}])},
            "/api/v1/jobs/{job_id}": {
                "get": _op("One job", {"200": _json(_ref("Job"), "The job")}, params=jid),
                "delete": _op("Abort if running and delete", {"204": {"description": "Deleted"}}, params=jid)},
            "/api/v1/jobs/{job_id}/metrics": {"get": _op("Every recorded point", {"200": _json(
                {"type": "object"}, "train, val and lr series")}, params=jid)},
            "/api/v1/jobs/{job_id}/log": {"get": _op("Log text from ?offset", {"200": {
                "description": "text/plain; X-Log-Size header", "content": {"text/plain": {}}}},
                params=jid + [{"name": "offset", "in": "query", "schema": {"type": "integer"}}])},
            "/api/v1/jobs/{job_id}/events": {"get": _op("Server-Sent Events: status, metrics, log, end", {
                "200": {"description": "event stream", "content": {"text/event-stream": {}}}}, params=jid)},
            "/api/v1/jobs/{job_id}/abort": {"post": _op("Abort", {"202": _json(_ref("Job"), "Aborting"),
                                                                 "409": _ERRORS["409"]}, params=jid)},
            "/api/v1/jobs/{job_id}/clone": {"post": _op("Clone (fields override)", {
                "201": _json(_ref("Job"), "Queued clone"), **errs}, params=jid)},
            "/api/v1/jobs/{job_id}/resume": {"post": _op("Resume from the last solverstate", {
                "202": _json(_ref("Job"), "Queued again"), "409": _ERRORS["409"]}, params=jid)},
            "/api/v1/jobs/{job_id}/download": {"get": _op("Model tarball", {"200": {
                "description": "tar.gz", "content": {"application/gzip": {}}}}, params=jid)},
            "/api/v1/jobs/{job_id}/infer": {"post": _op("Classify images with a snapshot", {
                "200": _json({"type": "object", "properties": {"predictions": {"type": "array"}}},
                             "Top-5 labels per image"), **errs, "409": _ERRORS["409"]},
                {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "snapshot": {"type": "integer"}}}}}}, params=jid)},
            "/api/v1/datasets": {
                "get": _op("Datasets", {"200": _json({"type": "object", "properties": {
                    "datasets": {"type": "array", "items": _ref("Dataset")}}}, "Datasets")}),
                "post": _op("Build a dataset from an image archive", {"202": _json(_ref("Dataset"), "Queued"), **errs},
                            {"required": True, "content": {"multipart/form-data": {"schema": {
                                "type": "object", "required": ["name", "archive", "image_width", "image_height"],
                                "properties": {"name": {"type": "string"},
                                               "archive": {"type": "string", "format": "binary"},
                                               "image_width": {"type": "integer"}, "image_height": {"type": "integer"},
                                               "channels": {"type": "integer", "enum": [1, 3]},
                                               "resize_mode": {"type": "string",
                                                               "enum": ["squash", "crop", "fill", "half_crop"]},
                                               "val_percent": {"type": "number", "default": 25}}}}}})},
            "/api/v1/datasets/{dataset_id}": {
                "get": _op("One dataset", {"200": _json(_ref("Dataset"), "The dataset")}, params=_ds_id()),
                "delete": _op("Delete a dataset (409 while a job uses it)", {"204": {"description": "Deleted"},
                                                                            "409": _ERRORS["409"]}, params=_ds_id())},
        },
    }
