"""From an upload to validated job inputs.

Parses the form/REST fields, stores the uploads under server-chosen names,
generates train_val / deploy / solver prototxts, and runs the contained
validator, turning every failure into the API's error details.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from app.core import untrusted
from app.caffe import network, py2convert
from app.services.layers import environments as layer_env
from app.services.layers import files as layer_files
from app.services.runtime import run_counts, sandbox
from app.caffe import solver
from app.caffe.digits_net import MEAN_CHOICES
from app.core import tracebacks
from app.core.errors import InvalidNetwork, InvalidPythonLayer, InvalidRequest, PayloadTooLarge, ServiceError
from app.core.config import Settings
from app.core.workspace import (
    DEPLOY_FILE, JOB_META_FILE, LAYER_FILE, LAYER_PY2_ORIGINAL, NETWORK_FILE, REPORT_FILE, SANDBOX_LOG, SOLVER_FILE,
    TRAIN_VAL_FILE, VALIDATE_LOG, VALIDATION_STARTED, WEIGHTS_FILE, Workspace)

DEVICE_CHOICES = ("auto", "cpu", "gpu")
log = logging.getLogger(__name__)


@dataclass
class Upload:
    """What a client sent, before any checking."""

    network_text: str | bytes | None
    network_filename: str = "network.prototxt"
    layer_stream: IO[bytes] | None = None
    layer_filename: str | None = None
    solver_text: str | bytes | None = None
    fields: dict[str, str] = field(default_factory=dict)
    weights_stream: IO[bytes] | None = None   # a .caffemodel to start from (fine-tuning)
    weights_filename: str | None = None
    # Several layer files or one zip (app.services.layers.files); the main
    # one is named by fields["python_layer_main"]. Empty: layer_stream alone.
    layer_files: list[tuple[IO[bytes], str | None]] = field(default_factory=list)


@dataclass
class Prepared:
    """Inputs written to a job's input directory, ready to validate."""

    params: dict
    network: network.Network
    python_layer: dict | None
    dataset: str | None
    max_iter: int
    iters_per_epoch: float | None


_NUMBERS = {"train_epochs": float, "max_iter": int, "learning_rate": float, "batch_size": int,
            "val_interval": float, "snapshot_interval": float, "random_seed": int,
            "gamma": float, "power": float, "stepsize": int, "momentum": float,
            "weight_decay": float, "stepsize_percent": float, "iter_size": int, "crop_size": int,
            "previous_snapshot": float}
# Fields where zero or a negative value means something (-1: the last snapshot).
_SIGNED = ("random_seed", "gamma", "weight_decay", "momentum", "previous_snapshot")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# What to do with a Python 2 layer file (app.caffe.py2convert): refuse (it
# fails validation, with the Python 2 → 3 hints) or convert it first.
PYTHON2_CHOICES = ("refuse", "convert")


def parse_params(fields: dict[str, str]) -> dict:
    """Typed solver/job parameters from text fields; 400 on a bad value."""
    params: dict = {}
    details = []
    for name, kind in _NUMBERS.items():
        raw = (fields.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = kind(raw)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
        except ValueError:
            details.append({"field": name, "message": f"'{raw[:40]}' is not a valid {kind.__name__}"})
            continue
        if value <= 0 and name not in _SIGNED:
            details.append({"field": name, "message": "must be greater than zero"})
        params[name] = value
    for name in ("solver_type", "lr_policy", "stepvalues", "stepvalues_percent", "name", "dataset",
                 "previous_job", "pretrained_model", "group_name", "priority"):
        if (fields.get(name) or "").strip():
            params[name] = fields[name].strip()
    use_mean = (fields.get("use_mean") or "").strip().lower()
    if use_mean:
        if use_mean not in MEAN_CHOICES:
            details.append({"field": "use_mean", "message": "use none, image or pixel"})
        params["use_mean"] = use_mean
    shuffle = (fields.get("shuffle") or "").strip().lower()
    if shuffle:
        if shuffle not in _TRUE + _FALSE:
            details.append({"field": "shuffle", "message": "use true or false"})
        params["shuffle"] = shuffle in _TRUE
    # Start again from the beginning when the worker is lost before the
    # first snapshot (app.worker.heartbeat); on unless asked otherwise.
    auto_retry = (fields.get("auto_retry") or "").strip().lower()
    if auto_retry and auto_retry not in _TRUE + _FALSE:
        details.append({"field": "auto_retry", "message": "use true or false"})
    params["auto_retry"] = auto_retry not in _FALSE
    python2 = (fields.get("python2") or "refuse").strip().lower()
    if python2 not in PYTHON2_CHOICES:
        details.append({"field": "python2", "message": "use convert or refuse"})
    params["python2"] = python2
    from app.services.layers.gradient_policy import parse_mode   # warn (default) or error
    if parse_mode(fields.get("gradient_check"), details) == "error":
        params["gradient_check"] = "error"
    device = (fields.get("device") or "auto").strip().lower()
    if device not in DEVICE_CHOICES and not (device.startswith("gpu:") and device[4:].isdigit()):
        details.append({"field": "device", "message": "use auto, cpu, gpu or gpu:N"})
    params["device"] = device
    if details:
        raise InvalidRequest("Some fields have invalid values.", details)
    return params


def unknown_dataset(ds_id: str) -> ServiceError:
    """The one answer for a ``dataset`` field naming nothing this user may
    train on: unknown, malformed, another user's or not built yet all read
    the same, so an id of someone else's dataset tells its sender nothing."""
    return InvalidRequest(f"Dataset '{ds_id[:80]}' does not exist or is not ready.",
                        [{"field": "dataset", "message": "unknown dataset"}])


def check_dataset(c, user: dict, fields: dict[str, str]) -> dict | None:
    """The dataset record the ``dataset`` field names, or None when the field
    is empty; ``unknown_dataset`` unless it is a well-formed id of a dataset
    ``user`` may see (app.services.access). ``c``: the services Context.
    Called before any job record is stored: a record keeps its dataset id,
    and later reads (downloads, clone, inference) build paths from it and
    treat the dataset as the job owner's."""
    from app.services.access import may_see
    ds_id = (fields.get("dataset") or "").strip()
    if not ds_id:
        return None
    try:
        # The workspace's own id rule (no '/', no '..'): a record never
        # names a path outside the datasets directory.
        c.ws.dataset_dir(ds_id)
    except ValueError:
        raise unknown_dataset(ds_id) from None
    ds = c.store.get_dataset(ds_id)
    if not may_see(user, ds):
        raise unknown_dataset(ds_id)
    return ds


def _text(raw: str | bytes | None, field_name: str, filename: str, limit: int) -> str:
    if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
        raise InvalidRequest(f"The {field_name} is missing.",
                       [{"field": field_name, "file": filename, "message": "required"}])
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > limit:
        raise PayloadTooLarge(f"The {field_name} is larger than {limit // 1024} KiB.",
                       [{"field": field_name, "file": filename, "message": "too large"}])
    if b"\x00" in data:
        raise (InvalidNetwork if field_name == "network" else InvalidRequest)(
                       f"The {field_name} contains NUL bytes; it must be text.",
                       [{"field": field_name, "file": filename, "message": "NUL byte"}])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise (InvalidNetwork if field_name == "network" else InvalidRequest)(
                       f"The {field_name} is not UTF-8 text.",
                       [{"field": field_name, "file": filename, "line": data[:exc.start].count(b"\n") + 1,
                         "message": str(exc)}]) from None


def _save_layer(upload: Upload, input_dir: Path, limit: int, python2: str = "refuse"
                ) -> tuple[dict | None, py2convert.Conversion | None]:
    """Store the single uploaded layer file as LAYER_FILE: (the job's
    ``python_layer`` record, the Python 2 conversion when one was made).
    With ``python2`` "convert", a file that counts as Python 2 is stored
    converted and the upload kept beside it as LAYER_PY2_ORIGINAL."""
    if upload.layer_stream is None:
        return None, None
        return None
    dest = input_dir / LAYER_FILE
    try:
        Workspace.save_stream(dest, upload.layer_stream, limit)
    except ValueError:
        raise PayloadTooLarge(f"The Python layer file is larger than {limit // 1024} KiB.",
                       [{"field": "python_layer", "file": LAYER_FILE, "message": "too large"}]) from None
    data = untrusted.read_all(dest, limit)
    detail = {"field": "python_layer", "file": LAYER_FILE, "layer": None, "stage": "upload"}
    if not data.strip():
        dest.unlink()
        return None, None
    if b"\x00" in data:
        raise InvalidPythonLayer("The Python layer file contains NUL bytes.",
                       [{**detail, "line": data[:data.index(b"\x00")].count(b"\n") + 1, "message": "NUL byte"}])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPythonLayer("The Python layer file is not UTF-8 text.",
                       [{**detail, "line": data[:exc.start].count(b"\n") + 1, "message": str(exc)}]) from None
    conversion = None
    if python2 == "convert":
        conversion = py2convert.convert_python2(text)
        if conversion.converted:
            # The upload as sent stays downloadable; the validator and the
            # training run the converted file under the usual name.
            Workspace.write_atomic(input_dir / LAYER_PY2_ORIGINAL, data)
            Workspace.write_atomic(dest, conversion.text)
        else:
            conversion = None
    return {"module": network.LAYER_MODULE,
            "original_filename": Workspace.display_name(upload.layer_filename, LAYER_FILE),
            "classes": []}, conversion


def prepare(upload: Upload, input_dir: Path, *, cfg: Settings, datasets: dict[str, network.DatasetInfo]
            ) -> Prepared:
    """Check the upload and write every job input into ``input_dir``."""
    params = parse_params(upload.fields)
    net_name = Workspace.display_name(upload.network_filename, NETWORK_FILE)
    text = _text(upload.network_text, "network", net_name, cfg.max_network_file_bytes)
    python2 = params.pop("python2", "refuse")
    python_layer, conversion = _save_layer(upload, input_dir, cfg.max_layer_file_bytes, python2)
    if conversion is not None:   # the job JSON says python2_converted false without it
        params["python2_converted"] = True
        params["python2_changes"] = conversion.changes
    try:
        net = network.parse(text, net_name)
        network.check(net)
        network.check_sizes(net)
    except network.NetworkError as exc:
        _excerpts(exc.details, net_name, text)
        raise InvalidNetwork(exc.message, exc.details) from None
    if upload.layer_files:   # several files or a zip: the main one is chosen by the net's classes
        python_layer = layer_files.save(upload.layer_files, upload.fields.get(layer_files.MAIN_FIELD),
                                        input_dir, net, cfg, python2=python2)
    if network.python_layers(net.net) and python_layer is None:
        layer = network.python_layers(net.net)[0].name
        raise InvalidPythonLayer("The network has Python layers but no Python layer file "
                       "was uploaded.", [net.detail("upload digits_python_layers.py", layer, field_name="python_layer")])
    if python_layer is not None:
        python_layer["classes"] = list(dict.fromkeys(lay.python_param.layer for lay in network.python_layers(net.net)))

    ds_id = params.get("dataset")
    ds = None
    if ds_id:
        ds = datasets.get(ds_id)
        if ds is None:
            raise unknown_dataset(ds_id)
    if ds is not None and params.get("crop_size") and params["crop_size"] > min(ds.image_shape[1:]):
        raise InvalidRequest(f"crop_size {params['crop_size']} is larger than the dataset's "
                           f"images ({ds.image_shape[2]}x{ds.image_shape[1]}).",
                           [{"field": "crop_size", "message": f"at most {min(ds.image_shape[1:])}"}])
    try:
        filled = network.fill(net, ds, params.get("batch_size"),
                              {k: params.get(k) for k in ("use_mean", "crop_size")})
        network.check_paths(net, [input_dir] + ([ds.path] if ds else []))
    except network.NetworkError as exc:
        _excerpts(exc.details, net_name, text)
        raise InvalidNetwork(exc.message, exc.details) from None
    base = solver.parse_solver(_text(upload.solver_text, "solver", "solver.prototxt", 256 * 1024)) \
        if upload.solver_text else None
    out_dir = input_dir.parent / "output"
    try:
        plan = solver.build(params, net_path=str(input_dir / TRAIN_VAL_FILE),
                            snapshot_prefix=str(out_dir / "snapshot"),
                            train_count=ds.train_count if ds else None, val_count=ds.val_count if ds else None,
                            train_batch=filled["train_batch"], val_batch=filled["val_batch"], base=base)
    except solver.SolverError as exc:
        raise InvalidRequest(exc.message, [{"field": exc.field, "message": exc.message}]) from None
    deploy = network.deploy_net(net, ds, filled["data_top"])
    Workspace.write_atomic(input_dir / NETWORK_FILE, text)
    Workspace.write_atomic(input_dir / TRAIN_VAL_FILE, network.to_text(net.net))
    Workspace.write_atomic(input_dir / DEPLOY_FILE, network.to_text(deploy))
    Workspace.write_atomic(input_dir / SOLVER_FILE, solver.to_text(plan.solver))
    job_meta = {"max_iter": plan.max_iter, "iters_per_epoch": plan.iters_per_epoch,
                "dataset": ds_id, "device": params["device"], "shuffle": bool(params.get("shuffle")),
                "random_seed": params.get("random_seed"),
                "weights": WEIGHTS_FILE if (input_dir / WEIGHTS_FILE).exists() else None}
    Workspace.write_json(input_dir / JOB_META_FILE, job_meta)
    return Prepared(params, net, python_layer, ds_id, plan.max_iter, plan.iters_per_epoch)


def _excerpts(details: list[dict], net_name: str, text: str) -> None:
    from app.services.layers.diagnostics import annotate_details
    annotate_details(details, network=(net_name, text))


def run_validation(input_dir: Path, out_dir: Path, prepared: Prepared, *, cfg: Settings, how: str,
                   dataset_dir: Path | None) -> dict:
    """Run app.validate contained; return the report with network lines filled."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path, log_path = out_dir / REPORT_FILE, out_dir / VALIDATE_LOG
    spec = sandbox.Spec([cfg.caffe_python, "-m", "app.contained.validate", str(input_dir),
                         str(report_path), str(log_path)],
                        read_only=[input_dir] + ([dataset_dir] if dataset_dir else []),
                        writable=[out_dir], cwd=out_dir)
    layer_env.mount(spec, cfg)   # administrator-added packages, read-only
    timeout = cfg.validate_timeout
    limits = sandbox.Limits(wall_seconds=timeout, cpu_seconds=int(timeout * 2) + 5,
                            address_space=cfg.memory_limit_bytes,
                            memory_bytes=cfg.memory_limit_bytes)
    t0 = time.perf_counter()
    # bwrap's own complaints (a path it cannot bind, no namespaces) come
    # before the validator opens its log: keep them for the server log.
    with open(out_dir / SANDBOX_LOG, "wb") as box_log:
        # Counted below with its verdict, not just its exit status.
        result = sandbox.run(spec, how, limits, stderr=box_log, count=False)
    seconds = round(time.perf_counter() - t0, 3)
    report = _read_report(report_path)
    if report is None and not result.timed_out and not (out_dir / VALIDATION_STARTED).exists():
        run_counts.count("validate", "error")      # the validator never started: the server's fault
        raise _server_fault(result, out_dir, log_path)
    if report is None:
        report = {"ok": False, "warnings": [], "layers": [], "timing": [],
                  "errors": [_crash_detail(result, log_path, timeout)]}
    for err in report["errors"]:
        _locate(err, prepared.network)
    from app.services.layers.gradient_policy import apply_policy   # the gradient check: warnings, or errors
    apply_policy(report, prepared.params.get("gradient_check", "warn"))
    unused = unused_layer_warning(prepared)
    if unused is not None:
        report.setdefault("warnings", []).insert(0, unused)
    from app.services.layers.diagnostics import annotate_report   # excerpts, Python 2 hints
    annotate_report(report, input_dir, prepared.network.filename)
    # No host path in what the user sees (a Caffe abort's log tail names files).
    report = json.loads(tracebacks.scrub(json.dumps(report), input_dir, {
        str(out_dir): "<validation>", **({str(dataset_dir): "<dataset>"} if dataset_dir else {})}))
    report["seconds"] = seconds
    report["containment"] = how
    run_counts.count("validate", "timeout" if result.timed_out else "ok" if report.get("ok") else "invalid")
    return report


def unused_layer_warning(prepared: Prepared) -> dict | None:
    """A warning when a layer file came with a network none of whose train,
    val or deploy nets has a Python layer: the file was imported by the
    validator but none of its classes was built or run, so "valid" says
    nothing about it."""
    if prepared.python_layer is None:
        return None
    if any(network.layer_stages(layer) for layer in network.python_layers(prepared.network.net)):
        return None
    name = prepared.python_layer.get("original_filename") or LAYER_FILE
    stored = "" if name == LAYER_FILE else f" (stored as {LAYER_FILE})"
    return {"field": "python_layer", "file": LAYER_FILE, "line": None, "layer": None, "stage": "unused",
            "message": f"No layer of this network uses {name}{stored}; it was not run. A layer uses it "
                       f"with type: \"Python\" and python_param {{ module: \"{network.LAYER_MODULE}\" "
                       f"layer: \"<its class>\" }}."}


def _server_fault(result: sandbox.Result, out_dir: Path, log_path: Path) -> ServiceError:
    """The validator died before it reached the upload: say so as a 5xx and
    put what the sandbox printed in the server log."""
    text = b""
    for path in (out_dir / SANDBOX_LOG, log_path):
        try:
            text += Workspace.read_capped(path, 64 << 10)[-4000:]
        except OSError:
            pass
    log.error("validator failed before running user code (exit status %s): %s",
              result.returncode, text.decode("utf-8", "replace").strip() or "no output")
    err = ServiceError("validator_unavailable", "The server could not start the validator (exit "
                   f"status {result.returncode}); this is a fault of the server, not of your upload. "
                   "Try again later; the administrator has the details in the server log.")
    err.server_log = text.decode("utf-8", "replace").strip()[-1500:]  # type: ignore[attr-defined]
    return err


def _read_report(path: Path) -> dict | None:
    try:
        report = json.loads(Workspace.read_capped(path, 4 << 20))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "ok" in report else None


def _crash_detail(result: sandbox.Result, log_path: Path, timeout: float) -> dict:
    from app.caffe.glog import fatal_from_log
    try:
        log = Workspace.read_capped(log_path, 8 << 20).decode("utf-8", "replace")
    except OSError:
        log = ""
    if result.timed_out:
        return {"field": "python_layer", "file": LAYER_FILE, "line": None, "layer": None,
                "stage": "timeout", "message": f"Validation did not finish within {timeout:g} s "
                "(an endless loop or a sleep in the Python layer?)."}
    # The net being built when Caffe aborted: the validator logs a line
    # before each stage; only what follows the last one is about that net.
    at, stage = max((log.rfind(network.BUILDING.format(stage=name)), name)
                    for name in ("train", "val", "deploy"))
    if at < 0:
        at, stage = 0, "caffe"   # died before building any net
    fatal = fatal_from_log(log[at:])
    layer = fatal["layer"]
    # "Unknown bottom blob 'x' (layer 'y', ...)"; "Cannot copy param 0 weights from layer 'y'"
    named = re.search(r"\(layer '([^']+)'|weights from layer '([^']+)'", fatal["message"] or "")
    if named:
        layer = named.group(1) or named.group(2)
    where = f" while building the {stage} net" if stage != "caffe" else ""
    return {"field": "network", "file": None, "line": None, "layer": layer, "stage": stage,
            "message": (f"Caffe aborted{where}: {fatal['message']}" if fatal["message"]
                        else f"The validator died{where} (exit status {result.returncode})."),
            "log_tail": log[-3000:]}


def _locate(err: dict, net: network.Network) -> None:
    # Errors about the network (not inside the Python file) point at the
    # layer's line in the uploaded prototxt.
    if err.get("field") != "python_layer" or err.get("stage") == "caffe":
        err.setdefault("field", "network")
        if err.get("layer"):
            err["file"] = net.filename
            err["line"] = net.line_of(err["layer"])
