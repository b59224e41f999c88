"""The nets of the GPU bundle's checks, run with the bundle's own interpreter
(standard library + the bundle's packages only; see docs/GPU.md).

    python scripts/gpu_nets.py selfcheck --mode cpu|gpu --datasets DIR --json OUT
    python scripts/gpu_nets.py figures --modes gpu,cpu --datasets DIR --json OUT [--seconds S]

``selfcheck``: pycaffe imports, the ``Python`` layer type is registered, the
seed AccuracyLayer (tests/data) matches numpy, a short LeNet solve with the
seed layer in its val net lowers the loss and snapshots, and every shared
object mapped into the process lies inside the bundle (or is glibc, or the
GPU driver). tests_gpu/ runs it in CPU mode; scripts/gpu_check.sh runs it on
``gpu:0`` as the GPU smoke test.

``figures``: training iterations/s of LeNet (sample-digits LMDB) and of a
small AlexNet-like net (constant in-GPU data), per mode; and LeNet with one
Python pass-through layer in its training path (its blob crosses between
device and host twice per iteration) vs without. Each figure runs in its own
process, so one crash loses only that figure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"

LENET = """
name: "LeNet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 }
        data_param { source: "%(train)s" backend: LMDB batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 }
        data_param { source: "%(val)s" backend: LMDB batch_size: 50 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
%(python_layer)s
layer { name: "conv2" type: "Convolution" bottom: "%(conv2_in)s" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "pred" type: "InnerProduct" bottom: "ip1" top: "pred"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pred" bottom: "label" top: "loss" }
"""

# One Python layer in the training path: forward and backward copy the blob
# through host memory (pycaffe's .data/.diff are CPU views).
PASS_LAYER = """layer { name: "pass" type: "Python" bottom: "pool1" top: "pass1"
        python_param { module: "gpu_pass_layer" layer: "Pass" } }"""
PASS_SOURCE = '''import caffe


class Pass(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff
'''

# AlexNet's shape at a quarter of its width, on 112x112 inputs held in the
# net (constant DummyData: no data loading in the figure).
ALEXNET_SMALL = """
name: "AlexNetSmall"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 32 dim: 3 dim: 112 dim: 112 } shape { dim: 32 }
                           data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 48 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 128 kernel_size: 5 pad: 2 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
        convolution_param { num_output: 192 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
        convolution_param { num_output: 192 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
        convolution_param { num_output: 128 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
        inner_product_param { num_output: 1024 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 1024 weight_filler { type: "gaussian" std: 0.005 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
"""

VAL_NET = """
name: "seed-accuracy"
layer { name: "pred" type: "Input" top: "pred" input_param { shape { dim: 64 dim: 10 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 64 } } }
"""

# Shared objects a bundle process may map from outside the bundle: glibc
# (and its locale/gconv data) and the GPU driver's own libraries.
ALLOWED_OUTSIDE = re.compile(
    r"/(ld-linux[-\w]*\.so[.\d]*|lib(c|m|mvec|pthread|dl|rt|resolv|util|anl|nss_\w+)\.so[.\d]*"
    r"|libcuda\.so[.\d]*|libnvidia-[\w.-]+\.so[.\d]*|locale-archive|locale/.*|gconv/.*)$")


def _mode(caffe, mode: str) -> None:
    if mode == "gpu":
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()


def _solver(work: Path, net: str, extra: str = "") -> Path:
    (work / "net.prototxt").write_text(net)
    path = work / "solver.prototxt"
    path.write_text(f'net: "{work / "net.prototxt"}"\nbase_lr: 0.01 momentum: 0.9 lr_policy: "fixed"\n'
                    f'display: 0 random_seed: 1 type: "SGD" max_iter: 100000\n{extra}')
    return path


def _lenet(datasets: Path, python_layer: bool, seed_val: bool) -> str:
    ds = datasets / "sample-digits"
    net = LENET % {"train": ds / "train_db", "val": ds / "val_db",
                   "python_layer": PASS_LAYER if python_layer else "",
                   "conv2_in": "pass1" if python_layer else "pool1"}
    if seed_val:   # the seed page's snippet, as written (stage "val")
        net += (DATA / "seed_accuracy_snippet.prototxt").read_text()
    return net


def _foreign_mappings(root: Path) -> list[str]:
    """Shared objects mapped into this process from outside ``root``, except glibc and the driver."""
    out = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        path = parts[5].replace(" (deleted)", "")
        if Path(path).resolve().is_relative_to(root) or ALLOWED_OUTSIDE.search(path):
            continue
        out.add(path)
    return sorted(out)


def _foreign_modules(roots: list[Path]) -> list[str]:
    out = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and not any(Path(f).resolve().is_relative_to(r) for r in roots):
            out.append(f"{name}: {f}")
    return sorted(out)


def selfcheck(mode: str, datasets: Path) -> dict:
    """The checks above; ``{"ok": bool, "checks": {...}}``."""
    import numpy as np
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, **details) -> None:
        checks[name] = {"ok": bool(ok), **details}

    import caffe
    root = Path(sys.prefix).resolve()
    check("import", Path(caffe.__file__).resolve().is_relative_to(root),
          caffe=caffe.__file__, prefix=sys.prefix, python=sys.version.split()[0])
    check("python_layer_registered", "Python" in caffe.layer_type_list())
    _mode(caffe, mode)
    work = Path(tempfile.mkdtemp(prefix="gpu-nets-"))
    (work / "digits_python_layers.py").write_text((DATA / "seed_accuracy_layer.py").read_text())
    sys.path.insert(0, str(work))

    # The seed AccuracyLayer, top-1 and top-3, against numpy.
    snippet = (DATA / "seed_accuracy_snippet.prototxt").read_text()
    for top_k in (1, 3):
        (work / f"val{top_k}.prototxt").write_text(
            VAL_NET + snippet.replace('{\\"top_k\\": 1}', '{\\"top_k\\": %d}' % top_k))
        net = caffe.Net(str(work / f"val{top_k}.prototxt"), caffe.TEST, stages=["val"])
        rng = np.random.default_rng(top_k)
        pred = rng.standard_normal((64, 10)).astype(np.float32)
        label = rng.integers(0, 10, 64).astype(np.float32)
        net.blobs["pred"].data[...] = pred
        net.blobs["label"].data[...] = label
        got = float(net.forward()["accuracy"][0])
        topk = np.argsort(-pred, axis=1)[:, :top_k]
        want = float(np.mean([label[i] in topk[i] for i in range(64)]))
        check(f"seed_accuracy_top{top_k}", abs(got - want) < 1e-6 and 0 < want < 1, got=got, expected=want)

    # A short LeNet solve; the val net holds the seed layer (stage "val").
    solver_path = _solver(work, _lenet(datasets, False, True),
                          f'test_iter: 9 test_interval: 100000 test_initialization: false\n'
                          f'test_state {{ stage: "val" }}\nsnapshot_prefix: "{work / "snap"}"\n')
    solver = caffe.get_solver(str(solver_path))
    losses, t0 = [], time.perf_counter()
    for _ in range(60):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    seconds = time.perf_counter() - t0
    test = solver.test_nets[0]
    test.share_with(solver.net)   # what Solver::Test does before each test pass
    acc = float(np.mean([float(test.forward()["accuracy"][0]) for _ in range(9)]))
    solver.snapshot()
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-10:]))
    check("lenet_short_solve", last < 0.7 * first and acc > 0.5
          and any(work.glob("snap_iter_60.caffemodel")),
          iterations=60, seconds=round(seconds, 3), loss_first5=round(first, 4), loss_last10=round(last, 4),
          val_accuracy_seed_layer=round(acc, 4), mode=mode)

    # Self-containment: nothing loaded from outside the bundle but glibc and
    # the driver; no Python module from outside the bundle and this script.
    check("no_foreign_shared_objects", not _foreign_mappings(root), foreign=_foreign_mappings(root))
    foreign_mods = _foreign_modules([root, HERE, work])
    check("no_foreign_python_modules", not foreign_mods, foreign=foreign_mods)
    shutil.rmtree(work, ignore_errors=True)
    return {"ok": all(c["ok"] for c in checks.values()), "mode": mode, "checks": checks}


def measure(net_name: str, mode: str, datasets: Path, seconds: float) -> dict:
    """Training iterations/s of one net in one mode (this process)."""
    import caffe
    _mode(caffe, mode)
    work = Path(tempfile.mkdtemp(prefix="gpu-fig-"))
    if net_name == "alexnet_small":
        text = ALEXNET_SMALL
    else:
        text = _lenet(datasets, net_name == "lenet_python_layer", False)
        (work / "gpu_pass_layer.py").write_text(PASS_SOURCE)
        sys.path.insert(0, str(work))
    solver = caffe.get_solver(str(_solver(work, text)))
    solver.step(3)   # warm-up: allocation, cuDNN-less kernel choice, data prefetch
    done, chunk, t0 = 0, 1, time.perf_counter()
    while True:
        solver.step(chunk)
        done += chunk
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        # Grow the chunk so the clock is read rarely, yet stop near `seconds`.
        chunk = max(1, min(chunk * 2, int(done / elapsed * (seconds - elapsed)) or 1))
    loss = float(solver.net.blobs["loss"].data)
    shutil.rmtree(work, ignore_errors=True)
    return {"net": net_name, "mode": mode, "iterations": done, "seconds": round(elapsed, 3),
            "ips": round(done / elapsed, 2), "loss": round(loss, 4)}


def figures(modes: list[str], datasets: Path, seconds: float, save=None) -> dict:
    """Every figure, each in a fresh process of this interpreter; ``save``
    gets the result so far after each one (a step cut short keeps them)."""
    runs: list[dict] = []
    # Every net in the first mode (the GPU's) before any in the next.
    for mode in modes:
        for net in ("lenet", "lenet_python_layer", "alexnet_small"):
            t0 = time.monotonic()
            try:
                proc = subprocess.run([sys.executable, __file__, "measure", net, mode, "--datasets",
                                       str(datasets), "--seconds", str(seconds)], capture_output=True, text=True,
                                      timeout=seconds * 4 + 60)
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                runs.append({"net": net, "mode": mode, "error": "timed out",
                             "wall_s": round(time.monotonic() - t0, 1)})
            except (ValueError, IndexError):
                runs.append({"net": net, "mode": mode, "error": f"exit {proc.returncode}",
                             "stderr_tail": proc.stderr[-2000:], "wall_s": round(time.monotonic() - t0, 1)})
            if save:
                save(_summarise(runs, modes, seconds))
    return _summarise(runs, modes, seconds)


def _summarise(runs: list[dict], modes: list[str], seconds: float) -> dict:
    ips = {(r["net"], r["mode"]): r.get("ips") for r in runs}
    out: dict = {"runs": runs, "cpu_threads": os.cpu_count(), "seconds_per_figure": seconds}
    for net in ("lenet", "alexnet_small"):
        if ips.get((net, "gpu")) and ips.get((net, "cpu")):
            out[f"{net}_gpu_over_cpu"] = round(ips[(net, "gpu")] / ips[(net, "cpu")], 2)
    for mode in modes:
        if ips.get(("lenet", mode)) and ips.get(("lenet_python_layer", mode)):
            plain, with_layer = ips[("lenet", mode)], ips[("lenet_python_layer", mode)]
            out[f"python_layer_cost_{mode}"] = {
                "ips_without": plain, "ips_with": with_layer,
                "ms_per_iteration_added": round(1000 / with_layer - 1000 / plain, 4),
                "blob": "pool1, 64x20x12x12 floats (737 KB) each way per iteration"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("selfcheck")
    a.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    b = sub.add_parser("figures")
    b.add_argument("--modes", default="gpu,cpu")
    b.add_argument("--seconds", type=float, default=5.0)
    c = sub.add_parser("measure")
    c.add_argument("net")
    c.add_argument("mode")
    c.add_argument("--seconds", type=float, default=5.0)
    for p in (a, b, c):
        p.add_argument("--datasets", type=Path, required=True)
        p.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("GLOG_minloglevel", "2")
    if args.cmd == "selfcheck":
        result = selfcheck(args.mode, args.datasets)
    elif args.cmd == "figures":
        save = (lambda r: args.json.write_text(json.dumps(r, indent=1) + "\n")) if args.json else None
        result = figures(args.modes.split(","), args.datasets, args.seconds, save)
    else:
        result = measure(args.net, args.mode, args.datasets, args.seconds)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(text, flush=True)
    sys.exit(0 if result.get("ok", True) else 1)


if __name__ == "__main__":
    main()
