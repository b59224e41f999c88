"""The validation run, executed inside the sandbox (never in the web process):

    python -m app.contained.validate INPUT_DIR REPORT_JSON LOG_FILE

Imports digits_python_layers.py, checks each referenced class, builds the
train, val and deploy nets with pycaffe (instantiating every layer and running
setup/reshape with the real shapes), runs forward/backward on the train net
and forward on the val and deploy nets, one layer at a time: one uncounted
warm-up pass, then the median of a few timed passes per layer, per stage
(`timing_by_stage`, with each stage's batch and the Python layers' share of
its step). Writes the report of API.md (less network line numbers, which the
caller adds).
A Caffe CHECK failure aborts this process; the caller reads LOG_FILE then.
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

from app.caffe.excerpts import user_position
from app.caffe.network import BUILDING
from app.contained import gradcheck
from app.core import layer_code, tracebacks
from app.caffe.weights import load as load_weights
from app.core.workspace import LAYER_FILE, VALIDATION_STARTED, WEIGHTS_FILE, user_line

MODULE = "digits_python_layers"


class Failure(Exception):
    """One validation error, already in detail form."""

    def __init__(self, **detail) -> None:
        super().__init__(detail.get("message"))
        self.detail = detail


def _python_error(exc: BaseException, stage: str, layer: str | None, method: str | None) -> Failure:
    where = f" in {method}()" if method else ""
    # The user's own files only (a helper module's frame names that file),
    # Caffe's calls into them, and never a host path (app.core.tracebacks).
    file, line = tracebacks.locate(exc) or (LAYER_FILE, user_line(exc.__traceback__))
    # The column lets the report put a caret under the failing expression.
    at, column = user_position(exc.__traceback__, Path(file).name) if file else (None, None)
    if isinstance(exc, SyntaxError):   # a helper module that does not compile
        at, column = exc.lineno, exc.offset
    return Failure(field="python_layer", file=file, line=line, column=column if at == line else None,
                   layer=layer, stage=stage,
                   message=tracebacks.describe(exc, where),
                   traceback=tracebacks.format_exception(exc)[-4000:])


def _last_layer_in_log(log: Path) -> str | None:
    # glog's "Creating Layer X" / "Setting up X" lines say which layer
    # Caffe was building when a Python exception came through.
    name = None
    try:
        for line in log.read_text(errors="replace").splitlines()[-400:]:
            for marker in ("] Creating Layer ", "] Setting up "):
                if marker in line:
                    name = line.split(marker, 1)[1].strip()
    except OSError:
        pass
    return name


def import_layers(input_dir: Path):
    """Compile and import the uploaded module; None when there is none."""
    path = input_dir / LAYER_FILE
    if not path.exists():
        return None
    source = path.read_bytes()
    try:
        compile(source, LAYER_FILE, "exec")
    except SyntaxError as exc:
        raise Failure(field="python_layer", file=LAYER_FILE, line=exc.lineno, column=exc.offset, layer=None,
                      stage="import", message=f"{type(exc).__name__}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise Failure(field="python_layer", file=LAYER_FILE, line=None, layer=None,
                      stage="import", message=f"{type(exc).__name__}: {exc}") from None
    layer_code.activate(input_dir)   # helpers beside it, admin-added packages after the service's
    try:
        return importlib.import_module(MODULE)
    except BaseException as exc:  # anything at import time, SystemExit included
        raise _python_error(exc, "import", None, None) from None


def check_classes(module, layers: list, caffe) -> None:
    """Each Python layer's class exists in the module and subclasses caffe.Layer."""
    for layer in layers:
        cls_name = layer.python_param.layer
        if module is None:
            raise Failure(field="python_layer", file=LAYER_FILE, line=None, layer=layer.name,
                          stage="import", message=f"layer '{layer.name}' is a Python layer but no "
                          "Python layer file was uploaded.")
        cls = getattr(module, cls_name, None)
        if cls is None:
            raise Failure(field="python_layer", file=LAYER_FILE, line=None, layer=layer.name,
                          stage="import", message=f"class '{cls_name}' is not defined in {LAYER_FILE}.")
        if not (isinstance(cls, type) and issubclass(cls, caffe.Layer)):
            raise Failure(field="python_layer", file=LAYER_FILE, line=None, layer=layer.name,
                          stage="import", message=f"'{cls_name}' is not a subclass of caffe.Layer.")


def build_net(caffe, path: Path, phase, stage: str, log: Path):
    """caffe.Net for one stage; a Python exception names the layer from the log."""
    try:
        return caffe.Net(str(path), phase, stages=[stage])
    except BaseException as exc:
        layer = _last_layer_in_log(log)
        tb = traceback.extract_tb(exc.__traceback__)
        method = next((f.name for f in reversed(tb) if Path(f.filename).name == LAYER_FILE), None)
        raise _python_error(exc, stage, layer, method or "setup") from None


TIMED_PASSES = 3      # timed passes per stage after one uncounted warm-up
STAGE_BUDGET_S = 2.0  # a further pass only while the stage stays within this (see run_layers)


def _pass(net, names: list[str], stage: str, backward: bool) -> tuple[list[float], list[float]]:
    """One forward (and backward) pass, one layer at a time: seconds per layer."""
    fwd, bwd = [0.0] * len(names), [0.0] * len(names)
    clock = time.perf_counter
    for i, name in enumerate(names):
        t0 = clock()
        try:
            net._forward(i, i)
        except BaseException as exc:
            raise _python_error(exc, stage, name, "forward") from None
        fwd[i] = clock() - t0
    if backward:
        for i in reversed(range(len(names))):
            t0 = clock()
            try:
                net._backward(i, i)
            except BaseException as exc:
                raise _python_error(exc, stage, names[i], "backward") from None
            bwd[i] = clock() - t0
    return fwd, bwd


def _batch(net) -> int | None:
    """The stage's batch size: the first dimension of the net's first blob
    (the data layer's top, or the deploy net's Input)."""
    for i in range(len(net._layer_names)):
        for top_id in net._top_ids(i):
            shape = net._blobs[top_id].shape
            return int(shape[0]) if len(shape) else None
    return None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def run_layers(net, stage: str, backward: bool) -> dict:
    """Time one stage warm: a warm-up pass, not counted (it also finds the
    errors), then the median of up to TIMED_PASSES timed passes per layer.

    Slow layers get fewer passes, so that a stage costs little more than
    before: a timed pass runs only when the stage, the last pass repeated,
    stays within STAGE_BUDGET_S, except the first when the warm-up alone took
    less than that. When the warm-up took longer, its (cold) figures are
    reported, with "passes": 0.

    Returns {"batch", "passes", "layers": [{"layer", "type", "forward_ms",
    ["backward_ms"]}], "step_ms", "python_ms", "python_share"}: step_ms is
    the sum of the layers' medians (one forward, plus one backward in train),
    python_ms the part of it spent in Python layers, python_share their ratio.
    """
    names = list(net._layer_names)
    clock = time.perf_counter
    started = clock()
    warm = _pass(net, names, stage, backward)  # caches, allocations, lazy imports
    last = clock() - started
    runs = []
    while len(runs) < TIMED_PASSES:
        elapsed = clock() - started
        if elapsed + last > STAGE_BUDGET_S and (runs or elapsed > STAGE_BUDGET_S):
            break
        t0 = clock()
        runs.append(_pass(net, names, stage, backward))
        last = clock() - t0
    passes = len(runs)
    runs = runs or [warm]
    layers, step, py = [], 0.0, 0.0
    for i, name in enumerate(names):
        kind = net.layers[i].type
        fwd = statistics.median(r[0][i] for r in runs)
        entry = {"layer": name, "type": kind, "forward_ms": _ms(fwd)}
        total = fwd
        if backward:
            bwd = statistics.median(r[1][i] for r in runs)
            entry["backward_ms"] = _ms(bwd)
            total += bwd
        step += total
        if kind == "Python":
            py += total
        layers.append(entry)
    return {"batch": _batch(net), "passes": passes, "layers": layers, "step_ms": _ms(step),
            "python_ms": _ms(py), "python_share": round(py / step, 4) if step > 0 else 0.0}


def legacy_timing(by_stage: dict) -> list[dict]:
    """API.md's flat `timing` list: one entry per layer, with the figures of
    the first stage (train, val, deploy) that has it, named in `stage` and
    `batch`; backward_ms is 0.0 where that stage runs no backward."""
    out: dict[str, dict] = {}
    for stage, st in by_stage.items():
        for lay in st["layers"]:
            if lay["layer"] not in out:
                out[lay["layer"]] = {"layer": lay["layer"], "forward_ms": lay["forward_ms"],
                                     "backward_ms": lay.get("backward_ms", 0.0),
                                     "stage": stage, "batch": st["batch"]}
    return list(out.values())


def check_tops(net, stage: str) -> None:
    """Every top of every layer must have been shaped by its layer."""
    for i, name in enumerate(net._layer_names):
        for top_id in net._top_ids(i):
            blob_name = net._blob_names[top_id]
            if net._blobs[top_id].count == 0:
                raise Failure(field="python_layer" if net.layers[i].type == "Python" else "network",
                              file=LAYER_FILE if net.layers[i].type == "Python" else None,
                              line=None, layer=name, stage=stage,
                              message=f"top '{blob_name}' was never shaped by layer '{name}' "
                              "(does the layer produce as many tops as the prototxt lists?)")


def validate(input_dir: Path, log: Path, started: Path | None = None) -> dict:
    """Run every check; return the report (raises Failure on the first error)."""
    os.environ["GLOG_minloglevel"] = "0"
    os.environ["GLOG_logtostderr"] = "1"
    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    caffe.set_mode_cpu()
    # From here on a death without a report is the upload's doing; before it,
    # the validator itself could not start: the server's fault, not the user's.
    if started is not None:
        started.touch()
    module = import_layers(input_dir)
    nets_txt = {}
    for name in ("train_val", "deploy"):
        nets_txt[name] = caffe_pb2.NetParameter()
        text_format.Parse((input_dir / f"{name}.prototxt").read_text(), nets_txt[name])
    py_layers = [lay for n in nets_txt.values() for lay in n.layer if lay.type == "Python"]
    check_classes(module, py_layers, caffe)

    by_stage: dict[str, dict] = {}
    built = {}
    weights_report = None
    for stage, phase, path in (("train", caffe.TRAIN, "train_val"), ("val", caffe.TEST, "train_val"),
                               ("deploy", caffe.TEST, "deploy")):
        # A Caffe CHECK failure kills this process with no report: this line
        # in the log tells the caller which stage's net it was building.
        print(BUILDING.format(stage=stage), file=sys.stderr, flush=True)
        net = build_net(caffe, input_dir / f"{path}.prototxt", phase, stage, log)
        if stage == "train" and (input_dir / WEIGHTS_FILE).exists():
            # Fine-tuning: the starting weights must fit the net (Caffe
            # aborts naming the layer whose shapes differ).
            weights_report = load_weights(net, input_dir / WEIGHTS_FILE)
        check_tops(net, stage)
        by_stage[stage] = run_layers(net, stage, backward=(stage == "train"))
        built[stage] = net

    layers, seen = [], {}
    py_class = {lay.name: lay.python_param.layer for lay in py_layers}
    for stage, net in built.items():
        for i, name in enumerate(net._layer_names):
            if name in seen:
                seen[name]["stages"].append(stage)
                continue
            entry = {"name": name, "type": net.layers[i].type, "stages": [stage],
                     "python_class": py_class.get(name),
                     "top_shapes": [list(net._blobs[t].shape) for t in net._top_ids(i)]}
            seen[name] = entry
            layers.append(entry)
    return {"ok": True, "errors": [], "warnings": [], "layers": layers,
            "timing": legacy_timing(by_stage), "timing_by_stage": by_stage, "weights": weights_report,
            # Each Python layer's backward against finite differences, and
            # what it does to real data (gradcheck.py, layerview.py).
            **gradcheck.examine(built, nets_txt["train_val"])}


def main(argv: list[str]) -> int:
    """Entry point: write the report JSON; exit 0 even when invalid."""
    input_dir, report_path, log = Path(argv[0]), Path(argv[1]), Path(argv[2])
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 2)  # C++ (glog) and Python stderr both land in the log
    try:
        report = validate(input_dir, log, report_path.with_name(VALIDATION_STARTED))
    except Failure as f:
        report = {"ok": False, "errors": [f.detail], "warnings": [], "layers": [], "timing": [],
                  "timing_by_stage": {}}
    report_path.write_text(json.dumps(report))
    sys.stdout.flush()
    # Skip interpreter teardown: Caffe's prefetch threads and the user's
    # objects can crash or hang at exit, and we already have the answer.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
