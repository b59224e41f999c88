"""OpenAPI 3 description of /api/v1 (served at /api/v1/openapi.json)."""
from __future__ import annotations

from app.caffe.images import RESIZE_MODES
from app.caffe.solver import LR_POLICIES, SOLVER_TYPES
from app.core.status import JobStatus

STATUSES = tuple(s.value for s in JobStatus)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): _json(_ref("Error"), text) for code, text in (
    (400, "Invalid input; `details` point at file, line, layer"), (401, "Missing or bad token"),
    (404, "No such job (or not yours)"), (409, "Conflict with the job's state"),
    (413, "Upload too large"), (415, "Not multipart/form-data"),
    (503, "The server cannot run the validator or sandbox right now (its fault, not the request's)"),
    (507, "No space left on the jobs volume"))}
# Inference in the celery queue runs on a worker (app.services.inference.celery_offload).
_WORKER = {"type": "string", "description": "celery queue: the worker that ran it (absent in the local queue)"}
_NO_WORKER = _json(_ref("Error"), "The service cannot run it now: the sandbox, or (celery queue) no live "
                   "worker took it in time; the server's fault, not the request's")
# Answered by the HTTP server itself, before the app: a request line or
# header longer than the server accepts.
_TOO_LONG = {"414": {"description": "Request line too long (answered by the HTTP server)"},
             "431": {"description": "Request headers too large (answered by the HTTP server)"}}
_POSITIVE = {"type": "number", "exclusiveMinimum": True, "minimum": 0}
_POSITIVE_INT = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"}

_JOB_FIELDS = {
    "network": {"type": "string", "format": "binary", "description": "all-in-one network prototxt (file or text)"},
    "python_layer": {"type": "string", "format": "binary", "description": "stored as digits_python_layers.py; "
                     "repeat the field for several .py files (helper modules, importable by their names), or send "
                     "one .zip of them (folders become packages; `..`, absolute paths and links are refused)"},
    "python_layer_main": {"type": "string", "maxLength": 300, "description": "with several files: the one that "
                          "holds the layers (its name as sent); default: the one defining the classes the "
                          "network names"},
    "dataset": _ID, "name": {"type": "string", "maxLength": 200},
    "train_epochs": {**_POSITIVE, "default": 30}, "max_iter": _POSITIVE_INT,
    "solver_type": {"type": "string", "enum": list(SOLVER_TYPES)},
    "learning_rate": {**_POSITIVE, "default": 0.01, "description": "a list (`0.01,0.02` or `[0.01, 0.02]`, "
                      "as a string) makes a sweep: one job per combination with batch_size's list, all validated "
                      "before any is queued, answered as {jobs, group}"},
    "lr_policy": {"type": "string", "enum": list(LR_POLICIES)},
    "gamma": {"type": "number"}, "power": _POSITIVE, "stepsize": _POSITIVE_INT,
    "stepvalues": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$",
                   "description": "comma-separated iterations (multistep)"},
    "batch_size": {**_POSITIVE_INT, "description": "a list (`32,64`, as a string) makes a sweep (see learning_rate)"},
    "iter_size": {**_POSITIVE_INT, "description": "batch accumulation (DIGITS's batch_accumulation): gradients of "
                  "iter_size batches per iteration; epochs count batch_size x iter_size images"},
    "crop_size": {**_POSITIVE_INT, "description": "random crops in training, the centre in validation and at "
                  "inference; at most the dataset's image size"},
    "use_mean": {"type": "string", "enum": ["image", "pixel", "none"], "default": "image",
                 "description": "subtract the dataset's mean image, its per-channel mean, or nothing"},
    "shuffle": {"type": "boolean", "default": False,
                "description": "train on a shuffled copy of the train set (made once per job, seeded by random_seed)"},
    "auto_retry": {"type": "boolean", "default": True,
                   "description": "with LAYERBENCH_QUEUE=celery: when the job's worker stops heart-beating before "
                   "the first snapshot, start the job again from the beginning on another worker (at most twice "
                   "per job; the history says `restarting from the beginning`); false: it ends `interrupted` with "
                   "the reason. A job with a snapshot always resumes from it. Kept by clone; shown in `settings`"},
    "previous_job": {**_ID, "description": "fine-tune: start from this job's snapshot (weights by layer name); its "
                     "network, Python layer file and dataset are used where none is sent"},
    "previous_snapshot": {"type": "number", "default": -1,
                          "description": "the previous job's snapshot by epoch (DIGITS's numbering), -1 for the last"},
    "pretrained_model": {**_ID, "description": "fine-tune from a kept pretrained model (/api/v1/pretrained)"},
    "weights": {"type": "string", "format": "binary", "description": "a .caffemodel to start from (at most "
                "LAYERBENCH_MAX_WEIGHTS_MB), parsed in the sandbox; layers load by name, renamed ones start fresh"},
    "group_name": {"type": "string", "maxLength": 200, "description": "the name of a sweep's group"},
    "val_interval": {**_POSITIVE, "description": "epochs"},
    "snapshot_interval": {**_POSITIVE, "description": "epochs"},
    "random_seed": {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1},
    "device": {"type": "string", "pattern": "^(auto|cpu|gpu|gpu:[0-9]+)$", "description": "auto | cpu | gpu | gpu:N. "
               "With LAYERBENCH_QUEUE=celery the first free worker whose host offers it runs the job: gpu:N a "
               "host that has a GPU N, gpu any GPU host, cpu a CPU-only worker, auto any worker (a GPU if it has "
               "one); the job's `worker` says which."},
    "solver": {"type": "string", "format": "binary", "description": "optional solver prototxt"},
    "gradient_check": {"type": "string", "enum": ["warn", "error"], "default": "warn",
                       "description": "a Python layer whose backward fails the gradient check (verdict wrong or "
                       "not_implemented in the report's `gradient_check`): a warning, or with `error` an "
                       "invalid upload (400 on /jobs, ok false on /validate; details name layer and blob)"},
    "python2": {"type": "string", "enum": ["refuse", "convert"], "default": "refuse",
                "description": "a Python 2 layer file (one that does not compile as Python 3, uses Python 2 "
                "idioms, or divides with `/` without `from __future__ import division`): `refuse` validates "
                "it as sent (it fails with the Python 2 → 3 hints), `convert` stores it converted first, `/` "
                "as `old_div` (floor division when both operands are integers), the original kept (the "
                "job's `python2_original`); a single layer file only (DIGITS's routes convert by default)"},
}


def _op(summary: str, responses: dict, body: dict | None = None, params: list | None = None,
        op_id: str | None = None, links: dict | None = None) -> dict:
    op = {"summary": summary, "responses": {**responses, **{k: v for k, v in _ERRORS.items()
                                                           if k in ("401", "404")}, **_TOO_LONG}}
    if op_id:
        op["operationId"] = op_id
    if links:
        for status in links.get("on", ()):
            op["responses"][status] = dict(op["responses"][status], links=links["links"])
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _ds_id() -> list:
    return [{"name": "dataset_id", "in": "path", "required": True, "schema": _ID}]


def _digits_routes() -> list[str]:
    # From the blueprint itself, so the list cannot drift from the routes.
    from flask import current_app
    rules = [r for r in current_app.url_map.iter_rules() if r.endpoint.startswith("digits.")]
    return sorted(f"{m} {r.rule}" for r in rules for m in sorted(r.methods - {"HEAD", "OPTIONS"}))


def spec() -> dict:
    """The OpenAPI document."""
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": _ID}
    # Stateful fuzzing follows these from a created job to everything about it.
    to_job = {"on": ("201",), "links": {name: {"operationId": name, "parameters": {
        "job_id": "$response.body#/id"}} for name in (
        "getJob", "deleteJob", "jobMetrics", "jobLog", "abortJob", "cloneJob", "resumeJob", "downloadJob")}}
    form = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["network"], "properties": _JOB_FIELDS}}}}
    errs = {k: _ERRORS[k] for k in ("400", "413", "415", "503", "507")}
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
                "Job": {"type": "object", "properties": {**{k: {} for k in (
                    "id", "name", "owner", "status", "created_at", "started_at", "finished_at", "progress",
                    "iteration", "max_iter", "epoch", "eta_seconds", "device", "dataset", "python_layer",
                    "metrics", "snapshots", "error", "links", "worker", "history", "settings", "start_weights",
                    "group")},
                    "python2_converted": {"type": "boolean", "description": "the layer file was converted from "
                                          "Python 2 before validation (python2=convert; DIGITS's routes)"},
                    "python2_changes": {"type": "array", "items": {"type": "string"}, "description":
                                        "when converted: what changed, one line per kind of change"},
                    "python2_original": {"type": "string", "description": "when converted: where the layer "
                                         "file as uploaded downloads from"}}},
                "Comparison": {"type": "object", "properties": {
                    "jobs": {"type": "array", "items": {"type": "object"}, "description": "per job: {id, name, "
                             "owner, status, created_at, iteration, max_iter, links, final: {metric: last value}, "
                             "series: {metric: [{iteration, epoch, wall_seconds, value}]}}; metrics are 'train "
                             "<top>', 'val <top>' (Python layers' tops included) and 'lr'"},
                    "metrics": {"type": "array", "items": {"type": "string"}},
                    "axes": {"type": "array", "items": {"type": "string"}},
                    "settings": {"type": "array", "items": {"type": "object"}, "description":
                                 "{name, values (one per job), differs}"},
                    "diffs": {"type": "object", "description": "{network, python_layer}: per job after the first, "
                              "{job, same, missing, diff (unified diff against the first job)}"},
                    "link": {"type": "string", "description": "the page's shareable URL"}}},
                "Pretrained": {"type": "object", "properties": {k: {} for k in (
                    "id", "name", "owner", "created_at", "size", "sha256", "net_name", "layers")}},
                "Report": {"type": "object", "properties": {**{k: {} for k in (
                    "ok", "errors", "warnings", "layers", "timing")},
                    "gradient_check": {"type": "array", "description": "per Python layer of the train net and "
                                       "per bottom / parameter blob: {layer, blob, kind, max_rel_error, verdict "
                                       "(ok | wrong | not_implemented | skipped), reason, checked, elements, "
                                       "kinks, line}", "items": {"type": "object"}},
                    "layer_views": {"type": "array", "description": "per Python layer: {layer, stage, image, "
                                    "blobs: [{role, blob, shape, mean, std, min, max, nan, inf, channels, "
                                    "images (PNG data URIs, image-shaped tops only)}]}",
                                    "items": {"type": "object"}},
                    "layer_check_ms": {"type": "number"},
                    "python2": {"type": "object", "description": "present when the layer file has Python 2 "
                                "idioms: {findings: [{line, column, idiom, hint}], count, convert (the route "
                                "that returns the converted file)}; errors[] on such a line carry `hint`, and "
                                "every error naming a line carries `excerpt` (the line, two lines around it, a "
                                "caret under `column`)"}}},
                "LayerEnv": {"type": "object", "description": "what layer code can import in the sandbox",
                             "properties": {
                                 "ok": {"type": "boolean"},
                                 "python": {"type": "object", "description": "{version, implementation}"},
                                 "packages": {"type": "array", "items": {"type": "object"}, "description":
                                              "{name, version, origin: service | admin}"},
                                 "caffe": {"type": "object", "description": "{version, variant, gpu_build, "
                                           "with_python_layer, flags, layer_types}"},
                                 "fingerprint": {"type": "string", "description": "hash of the packages an "
                                                 "administrator added (\"none\" without any); a job records "
                                                 "its own in python_layer.environment (absent while none are added)"},
                                 "added": {"type": "array", "items": {"type": "string"}}}},
                "Dataset": {"type": "object", "properties": {k: {} for k in (
                    "id", "name", "status", "num_classes", "labels", "train_count", "val_count",
                    "image_shape", "error", "type", "palette", "class_share", "progress", "progress_images",
                    "test_count", "backend", "encoding", "compression")}},
            }},
        "security": [{"bearer": []}],
        # DIGITS 6's routes (docs/DIGITS.md): listed, not described
        # as operations; their contract is DIGITS's own API and view tests.
        "x-digits-routes": _digits_routes(),
        "paths": {
            "/api/v1/validate": {"post": _op("Validate only; never creates a job",
                                             {"200": _json(_ref("Report"), "The report"), **errs}, form)},
            "/api/v1/jobs": {
                "post": _op("Validate and queue a job (status waiting while its dataset is still building; "
                            "a sweep answers {jobs, group})", {"201": _json(_ref("Job"), "Queued"), **errs}, form,
                            op_id="createJob", links=to_job),
                "get": _op("Jobs, newest first, a page at a time (follow next_cursor)", {"200": _json(
                    {"type": "object", "properties": {
                        "jobs": {"type": "array", "items": _ref("Job")},
                        "next_cursor": {"type": "string", "nullable": True,
                                        "description": "pass as ?cursor= for the next page; null on the last"}}},
                    "Jobs"), "400": _ERRORS["400"]},
                    params=[{"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                            {"name": "cursor", "in": "query", "schema": {"type": "string"},
                             "description": "opaque: the next_cursor of the previous page"},
                            {"name": "owner", "in": "query", "schema": {"type": "string"},
                             "description": "admins: any owner; others see only their own"},
                            {"name": "dataset", "in": "query", "schema": _ID},
                            {"name": "ids", "in": "query", "schema": {"type": "string"},
                             "description": "up to 500 comma-separated job ids (unknown or invisible ones left out)"}],
                    op_id="listJobs")},
            "/api/v1/jobs/compare": {"get": _op(
                "Jobs side by side: curves (by epoch, iteration, wall_seconds), settings with the differences "
                "marked, unified diffs of the network and layer file against the first job, final metrics; "
                "404 when any job is not visible to you", {
                    "200": _json(_ref("Comparison"), "The comparison"), "400": _ERRORS["400"],
                    "404": _ERRORS["404"]},
                params=[{"name": "ids", "in": "query", "required": True, "schema": {"type": "string"},
                         "description": "1 to 32 comma-separated job ids; the first is the diffs' baseline"}],
                op_id="compareJobs")},
            "/api/v1/python-layers/convert": {"post": _op(
                "A Python 2 layer file converted mechanically to Python 3 (print, `/` as an index, xrange, "
                "iteritems, has_key, basestring/unicode/long, `except E, e`, string.letters, renamed modules, "
                "...): a download; nothing is stored or run", {
                    "200": {"description": "the converted file (attachment)", "content": {"text/x-python": {
                        "schema": {"type": "string"}}}},
                    "400": _ERRORS["400"], "413": _ERRORS["413"]},
                {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["python_layer"], "properties": {
                        "python_layer": {"type": "string", "format": "binary"}}}}}},
                op_id="convertPythonLayer")},
            "/api/v1/pretrained": {
                "post": _op("Keep a .caffemodel as a named pretrained model", {
                    "201": _json(_ref("Pretrained"), "Kept"), **errs},
                    {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "required": ["name", "weights"], "properties": {
                            "name": {"type": "string", "maxLength": 200},
                            "weights": {"type": "string", "format": "binary"}}}}}}),
                "get": _op("The pretrained models you may see, newest first", {"200": _json(
                    {"type": "object", "properties": {"pretrained": {"type": "array", "items": _ref("Pretrained")}}},
                    "Pretrained models")})},
            "/api/v1/pretrained/{model_id}": {
                "get": _op("One pretrained model and the layers it holds", {"200": _json(_ref("Pretrained"), "It")},
                           params=[{"name": "model_id", "in": "path", "required": True, "schema": _ID}]),
                "delete": _op("Delete it (jobs started from it keep their copy)", {"204": {"description": "Deleted"}},
                              params=[{"name": "model_id", "in": "path", "required": True, "schema": _ID}])},
            "/api/v1/jobs/{job_id}": {
                "get": _op("One job", {"200": _json(_ref("Job"), "The job")}, params=jid, op_id="getJob"),
                "delete": _op("Abort if running and delete", {"204": {"description": "Deleted"}}, params=jid,
                              op_id="deleteJob")},
            "/api/v1/jobs/{job_id}/metrics": {"get": _op("Every recorded point", {"200": _json(
                {"type": "object"}, "train, val and lr series")}, params=jid, op_id="jobMetrics")},
            "/api/v1/jobs/{job_id}/log": {"get": _op("Log text from ?offset", {"200": {
                "description": "text/plain; X-Log-Size header", "content": {"text/plain": {}}},
                "400": _ERRORS["400"]},
                params=jid + [{"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                op_id="jobLog")},
            "/api/v1/jobs/{job_id}/events": {"get": {**_op("Server-Sent Events: status, metrics, log, end", {
                "200": {"description": "event stream", "content": {"text/event-stream": {}}}}, params=jid),
                "description": "A `metrics` event holds metrics.jsonl's new records in order (a superseded "
                "run's late ones left out). Applied in order they give /metrics: `train`/`val`/`lr` append "
                "a point, `restarted` clears every series, `resumed` with `iteration` N drops the points "
                "after iteration N."}},
            "/api/v1/jobs/{job_id}/abort": {"post": _op("Abort", {"202": _json(_ref("Job"), "Aborting"),
                                                                 "409": _ERRORS["409"]}, params=jid,
                                                          op_id="abortJob")},
            "/api/v1/jobs/{job_id}/clone": {"post": _op("Clone (fields override)", {
                "201": _json(_ref("Job"), "Queued clone"), **errs}, params=jid, op_id="cloneJob")},
            "/api/v1/jobs/{job_id}/resume": {"post": _op("Resume from the last solverstate", {
                "202": _json(_ref("Job"), "Queued again"), "409": _ERRORS["409"]}, params=jid,
                op_id="resumeJob")},
            "/api/v1/jobs/{job_id}/download": {"get": _op("Model tarball", {"200": {
                "description": "tar.gz", "content": {"application/gzip": {}}}, "507": _ERRORS["507"]},
                params=jid, op_id="downloadJob")},
            "/api/v1/jobs/{job_id}/infer": {"post": _op("Classify images with a snapshot", {
                "200": _json({"type": "object", "properties": {"predictions": {"type": "array"}, "worker": _WORKER}},
                             "Top-5 labels per image"), **errs, "409": _ERRORS["409"], "503": _NO_WORKER},
                {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "snapshot": {"type": "integer"}}}}}}, params=jid)},
            "/api/v1/jobs/{job_id}/segment": {"post": _op(
                "Segment images with a segmentation job's snapshot: per image the predicted mask (palette PNG "
                "of class indices) and a colour overlay (base64 PNGs) with each class's pixel share; "
                "?format=png&index=N answers the Nth mask PNG itself", {
                    "200": _json({"type": "object", "properties": {"snapshot": {"type": "integer"}, "worker": _WORKER,
                                                                   "predictions": {
                        "type": "array", "items": {"type": "object", "properties": {
                            "filename": {"type": "string"}, "shape": {"type": "array"},
                            "mask_png": {"type": "string", "format": "byte"},
                            "overlay_png": {"type": "string", "format": "byte"},
                            "classes": {"type": "array", "items": {"type": "object", "properties": {
                                "label": {"type": "string"}, "color": {"type": "array"},
                                "share": {"type": "number"}}}}}}}}}, "Masks and overlays"),
                    **errs, "409": _ERRORS["409"], "503": _NO_WORKER},
                {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "archive": {"type": "string", "format": "binary", "description": "zip or tar.gz of images"},
                    "snapshot": {"type": "integer"}}}}}}, params=jid + [
                        {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "png"]}},
                        {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
                op_id="segmentImages")},
            "/api/v1/layer-env": {"get": _op("What uploaded layer code can import (Python, packages with "
                                             "versions, Caffe's build)", {"200": _json(_ref("LayerEnv"),
                                                                                        "The layer environment")},
                                             op_id="layerEnvironment")},
            "/api/v1/datasets": {
                "get": _op("Datasets", {"200": _json({"type": "object", "properties": {
                    "datasets": {"type": "array", "items": _ref("Dataset")}}}, "Datasets")}),
                "post": _op("Build a dataset from an image archive or a server folder",
                            {"202": _json(_ref("Dataset"), "Queued"), **errs},
                            {"required": True, "content": {"multipart/form-data": {"schema": {
                                "type": "object", "required": ["name", "image_width", "image_height"],
                                "properties": {"name": {"type": "string"},
                                               "archive": {"type": "string", "format": "binary",
                                                           "description": "the images; or name a folder"},
                                               "folder": {"type": "string", "description": "a server folder "
                                                          "(one sub-folder per class) inside the data roots "
                                                          "(LAYERBENCH_DATA_ROOTS), read in the sandbox"},
                                               "folder_val": {"type": "string", "description": "a separate "
                                                              "validation folder (same class names)"},
                                               "folder_test": {"type": "string", "description": "a test folder "
                                                               "(test_db: counted, never trained on)"},
                                               "image_width": {"type": "integer", "minimum": 1, "maximum": 1024},
                                               "image_height": {"type": "integer", "minimum": 1, "maximum": 1024},
                                               "channels": {"type": "integer", "enum": [1, 3]},
                                               "resize_mode": {"type": "string", "enum": list(RESIZE_MODES)},
                                               "val_percent": {"type": "number", "minimum": 0, "maximum": 90,
                                                               "default": 25},
                                               "test_percent": {"type": "number", "minimum": 0, "maximum": 90,
                                                                "default": 0, "description": "a test DB split off "
                                                                "the training images (DIGITS's folder_pct_test)"},
                                               **{f"{side}_{bound}_per_class": {
                                                   "type": "integer", "minimum": 1, "description":
                                                   f"DIGITS's folder_{side}_{bound}_per_class"}
                                                  for side in ("train", "val", "test") for bound in ("min", "max")},
                                               "backend": {"type": "string", "enum": ["lmdb", "hdf5"],
                                                           "default": "lmdb"},
                                               "encoding": {"type": "string", "enum": ["none", "png", "jpg"],
                                                            "description": "png / jpg: the pixels they decode "
                                                            "to (JPEG quality 90), stored raw (this Caffe has no "
                                                            "OpenCV); hdf5 is written raw (as in DIGITS)"},
                                               "compression": {"type": "string", "enum": ["none", "gzip"],
                                                               "description": "gzip: hdf5 only"},
                                               "method": {"type": "string", "enum": ["folder", "textfile"],
                                                          "description": "textfile: DIGITS's textfile_* fields "
                                                          "(lists of 'path label' under the data roots and a "
                                                          "labels file; docs/DIGITS.md)"},
                                               "type": {"type": "string", "enum": ["classification", "segmentation"],
                                                        "default": "classification",
                                                        "description": "segmentation: images/ + labels/ (same "
                                                        "stems), optional val/images + val/labels and classes.txt "
                                                        "('name' or 'name R G B' per line); labels are palette PNGs, "
                                                        "grayscale class indices or RGB in classes.txt's colours"}}}}}})},
            "/api/v1/datasets/{dataset_id}": {
                "get": _op("One dataset", {"200": _json(_ref("Dataset"), "The dataset")}, params=_ds_id()),
                "delete": _op("Delete a dataset (409 while a job uses it)", {"204": {"description": "Deleted"},
                                                                            "409": _ERRORS["409"]}, params=_ds_id())},
        },
    }
