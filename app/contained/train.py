"""The training runner, executed inside the sandbox:

    python -m app.contained.train INPUT_DIR OUTPUT_DIR CONTROL_DIR

A pycaffe solver loop that writes, to OUTPUT_DIR only: ``metrics.jsonl``
(train/val outputs per blob, learning rate, snapshots), ``progress.json``,
snapshots (published whole: see ``Workspace.publish_snapshot``), and
``result.json`` at the end; stdout and stderr are a pipe the worker copies
into train.log. It stops early with a final snapshot on SIGTERM or when
CONTROL_DIR/abort appears (the supervisor's read-only channel to us), resumes
from CONTROL_DIR/resume.json, and ends in error on a NaN loss or an
exception in a Python layer. Knows nothing of Flask.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from app.caffe.datasets import shuffled_copy
from app.caffe.glog import NETS_BUILT
from app.core import layer_code, tracebacks
from app.caffe.weights import load as load_weights
from app.core.workspace import (
    ABORT_FILE, JOB_META_FILE, LAYER_FILE, METRICS_FILE, PROGRESS_FILE, RESULT_FILE, RESUME_FILE,
    RUN_FILE, SHUFFLED_TRAIN_DB, SNAPSHOT_PREFIX, SNAPSHOT_STAGING, SOLVER_FILE, WEIGHTS_FILE, Workspace,
    user_line)

SUPERSEDED_EXIT = 75   # EX_TEMPFAIL: another run of this job took over


def metric_blobs(net) -> list[str]:
    """The blobs recorded as metrics: the net's outputs plus every top of a
    Python layer (a metric layer such as DIGITS's Dice is charted even when
    another layer consumes its top); in-place tops are the bottom's, skipped."""
    names = list(net.outputs)
    for lname, layer in zip(net._layer_names, net.layers):
        if layer.type == "Python":
            bottoms = set(net.bottom_names[lname])
            names += [t for t in net.top_names[lname] if t not in names and t not in bottoms]
    return names


class Runner:
    """One training run; ``run()`` always leaves a result.json."""

    def __init__(self, input_dir: Path, output_dir: Path, control_dir: Path) -> None:
        self.input, self.output, self.control = input_dir, output_dir, control_dir
        self.meta = json.loads((input_dir / JOB_META_FILE).read_text())
        self.stop_reason: str | None = None
        self.metrics = open(output_dir / METRICS_FILE, "a", buffering=1)
        self.last_progress = 0.0
        self.shared = False
        self.side_seconds = 0.0   # time in validation and snapshots
        self.run_id = self._current_run()

    # ---- output --------------------------------------------------------------
    def emit(self, kind: str, **fields) -> None:
        """Append one record to metrics.jsonl, tagged with our run generation."""
        self.metrics.write(json.dumps({"type": kind, **fields, "run": self.run_id}) + "\n")

    def write_json(self, name: str, obj: dict) -> None:
        """Replace OUTPUT_DIR/name atomically (the worker reads it any time)."""
        tmp = self.output / f".{name}.tmp"
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, self.output / name)

    # ---- control -------------------------------------------------------------
    def _on_term(self, _signum, _frame) -> None:
        self.stop_reason = "aborted"

    def _current_run(self) -> int | None:
        try:
            return json.loads((self.control / RUN_FILE).read_text()).get("run")
        except (OSError, ValueError, AttributeError):
            return None

    def fence(self) -> None:
        """Leave at once, writing nothing, if another run took the job over."""
        if self.run_id is not None and self._current_run() != self.run_id:
            os._exit(SUPERSEDED_EXIT)

    def abort_requested(self) -> bool:
        """Whether to stop: SIGTERM came, or the worker wrote CONTROL_DIR/abort.
        A run another one has superseded leaves at once, writing nothing."""
        self.fence()
        if self.stop_reason is None and (self.control / ABORT_FILE).exists():
            self.stop_reason = "aborted"
        return self.stop_reason is not None

    # ---- the loop ------------------------------------------------------------
    def run(self) -> dict:
        """Train to max_iter or until stopped; the result.json to write."""
        signal.signal(signal.SIGTERM, self._on_term)
        layer_code.activate(self.input)   # helpers beside the layer file, admin-added packages last
        import caffe
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format

        from app.caffe.solver import lr_at

        device = os.environ.get("LAYERBENCH_DEVICE", "cpu")
        if device.startswith("gpu"):
            caffe.set_device(0)  # CUDA_VISIBLE_DEVICES holds exactly our GPU
            caffe.set_mode_gpu()
        else:
            caffe.set_mode_cpu()
        sp = caffe_pb2.SolverParameter()
        text_format.Parse((self.input / SOLVER_FILE).read_text(), sp)
        test_interval, snapshot_every, test_iter = sp.test_interval, sp.snapshot, sp.test_iter[0]
        # We run validation and snapshots ourselves (to record every output
        # blob); Caffe's own copies of them are switched off.
        run_sp = caffe_pb2.SolverParameter()
        run_sp.CopyFrom(sp)
        run_sp.test_interval, run_sp.snapshot = sp.max_iter + 1, 0
        # Relative on purpose: Caffe records the model's path in the
        # solverstate (learned_net), and snapshot() writes the pair inside the
        # staging directory before it is renamed into OUTPUT_DIR.
        run_sp.snapshot_prefix = SNAPSHOT_PREFIX
        if self.meta.get("shuffle"):
            run_sp.net = self._shuffled_net(run_sp.net, caffe_pb2, text_format)
        run_path = Path("/tmp") / f"solver-{os.getpid()}.prototxt"
        run_path.write_text(text_format.MessageToString(run_sp))
        solver = caffe.get_solver(str(run_path))
        resume = self.control / RESUME_FILE
        if resume.exists():
            state = json.loads(resume.read_text())["solverstate"]
            # learned_net inside the solverstate is relative to OUTPUT_DIR;
            # a layer's setup may have moved the working directory.
            os.chdir(self.output)
            solver.restore(str(self.output / Path(state).name))
            self.emit("resumed", iteration=solver.iter)
        elif self.meta.get("weights"):
            # Fine-tuning: start from the chosen weights, copied by layer name
            # (validation already proved they fit this net).
            loaded = load_weights(solver.net, self.input / WEIGHTS_FILE)
            self.emit("weights", copied=loaded["copied"], fresh=loaded["fresh"])
        sys.stderr.write(f"{NETS_BUILT} from iteration {solver.iter}\n")

        max_iter, per_epoch = sp.max_iter, self.meta.get("iters_per_epoch")
        epoch = (lambda it: round(it / per_epoch, 4)) if per_epoch else (lambda it: None)
        net = solver.net
        outputs = metric_blobs(net)
        # pycaffe's net.blobs builds a new OrderedDict of every blob on each
        # access: look the output blobs up once (the Blob objects persist).
        out_blobs = {k: net.blobs[k] for k in outputs}
        batch = max(1, min(50, max_iter // 1000 or 1))  # averaging window, <= ~1000 points
        sums = {k: 0.0 for k in outputs}
        count, t_start, it0 = 0, time.monotonic(), solver.iter
        t_first = None
        while solver.iter < max_iter and not self.abort_requested():
            solver.step(1)
            it = solver.iter
            for k, blob in out_blobs.items():
                data = blob.data
                sums[k] += float(data.flat[0]) if data.size == 1 else float(data.mean())
            count += 1
            if it == it0 + 1:
                t_first, self.side_seconds = time.monotonic(), 0.0
                self.emit("first_iteration", seconds=round(t_first - t_start, 4), at=time.time())
            if count == batch or it == max_iter:
                point = {k: v / count for k, v in sums.items()}
                bad = [k for k, v in point.items() if not math.isfinite(v)]
                self.emit("train", iteration=it, epoch=epoch(it), **point)
                self.emit("lr", iteration=it, epoch=epoch(it), lr=lr_at(sp, it))
                # Wall-clock time of this iteration (job comparison "by wall time").
                self.emit("clock", iteration=it, time=round(time.time(), 3))
                sums, count = {k: 0.0 for k in outputs}, 0
                if bad:
                    return {"status": "error", "error": {
                        "stage": "train", "message": f"Training diverged: '{bad[0]}' became "
                        f"{point[bad[0]]} at iteration {it}. Try a lower learning rate."}}
            if test_interval and it % test_interval == 0 or it == max_iter:
                self.validate(solver, test_iter, it, epoch(it))
            if snapshot_every and it % snapshot_every == 0 and it < max_iter:
                self.snapshot(solver, epoch)
            self.progress(it, max_iter, it0, t_start, epoch(it))
        if t_first is not None and solver.iter > it0 + 1:
            # Training throughput after the first iteration, without our
            # validation and snapshot passes (bench/ compares it to bare pycaffe).
            self.emit("timing", iterations=solver.iter - it0 - 1,
                      seconds=round(time.monotonic() - t_first - self.side_seconds, 6))
        self.snapshot(solver, epoch)
        self.progress(solver.iter, max_iter, it0, t_start, epoch(solver.iter), force=True)
        return {"status": self.stop_reason or "done"}

    def _shuffled_net(self, net_path: str, caffe_pb2, text_format) -> str:
        """The train net reading a shuffled copy of the train LMDB (made once
        per job in OUTPUT_DIR; a resume reuses it)."""
        net = caffe_pb2.NetParameter()
        text_format.Parse(Path(net_path).read_text(), net)
        train = [layer for layer in net.layer
                 if layer.type == "Data" and layer.data_param.backend == caffe_pb2.DataParameter.LMDB
                 and any("train" in rule.stage for rule in layer.include)]
        seed = self.meta.get("random_seed")
        if len(train) > 1 and seed is None:
            # Features and labels (segmentation) must get the same order: one
            # seed for every copy, the same for every run of this job (a
            # resume after a kill between two copies makes the rest alike).
            import hashlib
            seed = int(hashlib.sha256(str(self.output).encode()).hexdigest()[:8], 16)
        for k, layer in enumerate(train):
            dest = SHUFFLED_TRAIN_DB if len(train) == 1 else f"{SHUFFLED_TRAIN_DB}_{k}"
            copy = shuffled_copy(Path(layer.data_param.source), self.output / dest, seed)
            layer.data_param.source = str(copy)
            self.emit("shuffled", layer=layer.name, seed=self.meta.get("random_seed"))
        path = Path("/tmp") / f"train_val-{os.getpid()}.prototxt"
        path.write_text(text_format.MessageToString(net))
        return str(path)

    def validate(self, solver, test_iter: int, it: int, ep) -> None:
        """Run the val net ``test_iter`` times and record its mean outputs."""
        t0 = time.monotonic()
        try:
            self._validate(solver, test_iter, it, ep)
        finally:
            self.side_seconds += time.monotonic() - t0

    def _validate(self, solver, test_iter: int, it: int, ep) -> None:
        if not solver.test_nets:
            return
        net = solver.test_nets[0]
        # Caffe's Solver::Test shares the trained weights with the test net;
        # we test ourselves, so share them here (pointers: stays shared).
        if not self.shared:
            net.share_with(solver.net)
            self.shared = True
        names = metric_blobs(net)
        blobs = {k: net.blobs[k] for k in names}
        sums = {k: 0.0 for k in names}
        for _ in range(test_iter):
            net.forward()
            for k in sums:
                sums[k] += float(blobs[k].data.mean())
        self.emit("val", iteration=it, epoch=ep, **{k: v / test_iter for k, v in sums.items()})

    def snapshot(self, solver, epoch) -> None:
        """Snapshot unless a complete pair of this iteration exists (a torn
        one from a killed run is replaced)."""
        if solver.iter in Workspace.complete_snapshots(self.output):
            return
        t0 = time.monotonic()
        staging = self.output / SNAPSHOT_STAGING
        staging.mkdir(exist_ok=True)
        for stale in staging.iterdir():   # a pair a killed run left half written
            stale.unlink()
        back = os.getcwd()
        os.chdir(staging)   # Caffe writes to the relative snapshot_prefix
        try:
            solver.snapshot()
        finally:
            os.chdir(back)
        self.fence()   # never publish over a newer run's snapshots
        Workspace.publish_snapshot(staging, self.output, solver.iter)
        self.side_seconds += time.monotonic() - t0
        self.emit("snapshot", iteration=solver.iter, epoch=epoch(solver.iter))

    def progress(self, it: int, max_iter: int, it0: int, t_start: float, ep, force=False) -> None:
        """Write progress.json (at most every 0.5 s unless ``force``)."""
        now = time.monotonic()
        if not force and now - self.last_progress < 0.5:
            return
        self.last_progress = now
        rate = (it - it0) / max(now - t_start, 1e-9)
        self.write_json(PROGRESS_FILE, {
            "iteration": it, "max_iter": max_iter, "epoch": ep,
            "progress": round(it / max_iter, 4) if max_iter else 0.0,
            "iterations_per_second": round(rate, 3),
            "eta_seconds": round((max_iter - it) / rate, 1) if rate > 0 else None})


def _python_error(exc: BaseException) -> dict:
    line = user_line(exc.__traceback__)
    # The user's files and Caffe's frames only, no host path (app.core.tracebacks).
    file, line = tracebacks.locate(exc) or (LAYER_FILE if line else None, line)
    return {"stage": "train", "message": tracebacks.describe(exc),
            "file": file, "line": line,
            "traceback": tracebacks.format_exception(exc)[-6000:]}


def main(argv: list[str]) -> int:
    """Entry point; the exit status is 0 whenever result.json was written."""
    runner = Runner(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    try:
        result = runner.run()
    except BaseException as exc:  # a Python layer may raise anything
        result = {"status": "error", "error": _python_error(exc)}
    runner.metrics.flush()
    runner.write_json(RESULT_FILE, result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip teardown: prefetch threads and user objects may hang it


if __name__ == "__main__":
    main(sys.argv[1:])
