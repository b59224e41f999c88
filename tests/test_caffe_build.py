"""The foundation: the pycaffe built by scripts/build_caffe.sh, for real."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import DATA, SEED_PAGE


def test_import_caffe_has_python_layer():
    import caffe
    assert "Python" in caffe.layer_type_list()
    assert "Data" in caffe.layer_type_list()
    # installed into the venv itself, no PYTHONPATH tricks
    assert Path(caffe.__file__).resolve().is_relative_to(Path(sys.prefix).resolve())


def test_caffe_io_does_not_import_skimage_eagerly():
    import subprocess
    out = subprocess.run([sys.executable, "-c",
                          "import sys, caffe; print('skimage' in sys.modules, 'scipy' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_seed_fixture_is_the_seed_page_verbatim(seed_layer_source):
    assert SEED_PAGE.is_file(), f"seed page missing at {SEED_PAGE}"
    page = SEED_PAGE.read_text()
    assert seed_layer_source in page
    snippet = (DATA / "seed_accuracy_snippet.prototxt").read_text()
    assert snippet.rstrip("\n") in page


VAL_NET = """
name: "seed-accuracy"
layer { name: "pred" type: "Input" top: "pred"
        input_param { shape { dim: %(n)d dim: %(k)d } } }
layer { name: "label" type: "Input" top: "label"
        input_param { shape { dim: %(n)d } } }
"""


def _build(tmp_path: Path, source: str, top_k: int, stage: str, n=64, k=10):
    import caffe
    (tmp_path / "digits_python_layers.py").write_text(source)
    snippet = (DATA / "seed_accuracy_snippet.prototxt").read_text()
    snippet = snippet.replace('{\\"top_k\\": 1}', '{\\"top_k\\": %d}' % top_k)
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(VAL_NET % {"n": n, "k": k} + snippet)
    sys.path.insert(0, str(tmp_path))
    return caffe.Net(str(net_path), caffe.TEST, stages=[stage])


@pytest.mark.parametrize("top_k", [1, 3])
def test_seed_accuracy_layer_matches_numpy(tmp_path, seed_layer_source, fresh_layer_module, top_k):
    net = _build(tmp_path, seed_layer_source, top_k, "val")
    assert "accuracy" in net.blobs
    assert net.layers[list(net._layer_names).index("accuracy")].type == "Python"
    rng = np.random.default_rng(top_k)
    pred = rng.standard_normal((64, 10)).astype(np.float32)
    label = rng.integers(0, 10, 64).astype(np.float32)
    net.blobs["pred"].data[...] = pred
    net.blobs["label"].data[...] = label
    out = net.forward()
    topk = np.argsort(-pred, axis=1)[:, :top_k]
    expected = np.mean([label[i] in topk[i] for i in range(64)])
    assert 0 < expected < 1  # the inputs exercise both outcomes
    assert out["accuracy"].shape == (1,)
    assert out["accuracy"][0] == pytest.approx(expected, abs=1e-6)


def test_seed_layer_absent_from_train_stage(tmp_path, seed_layer_source, fresh_layer_module):
    net = _build(tmp_path, seed_layer_source, 1, "train")
    assert "accuracy" not in list(net._layer_names)
    assert "accuracy" not in net.blobs


TRAIN_NET = """
name: "digits-mlp"
layer { name: "data" type: "Data" top: "data" top: "label"
        include { phase: TRAIN }
        transform_param { scale: 0.00390625 }
        data_param { source: "%(train)s" backend: LMDB batch_size: 64 } }
layer { name: "data" type: "Data" top: "data" top: "label"
        include { phase: TEST }
        transform_param { scale: 0.00390625 }
        data_param { source: "%(val)s" backend: LMDB batch_size: 50 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 64 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def test_short_solve_on_digits_lowers_loss_and_snapshots(tmp_path):
    import caffe
    from app.caffe.datasets import ensure_sample_digits
    info = ensure_sample_digits(tmp_path / "datasets")
    ds = tmp_path / "datasets" / "sample-digits"
    assert info["train_count"] + info["val_count"] == 1797
    (tmp_path / "net.prototxt").write_text(
        TRAIN_NET % {"train": ds / "train_db", "val": ds / "val_db"})
    (tmp_path / "solver.prototxt").write_text(f"""
net: "{tmp_path / 'net.prototxt'}"
base_lr: 0.1 momentum: 0.9 lr_policy: "fixed"
max_iter: 60 display: 0 test_iter: 9 test_interval: 1000 test_initialization: false
snapshot: 60 snapshot_prefix: "{tmp_path / 'snap'}" random_seed: 1 type: "SGD"
""")
    caffe.set_mode_cpu()
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    losses = []
    for _ in range(60):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    solver.snapshot()
    assert list(tmp_path.glob("snap_iter_60.caffemodel"))
    assert list(tmp_path.glob("snap_iter_60.solverstate"))


def test_no_build_flag_or_runpath_names_a_foreign_path():
    # The fork's CMake files named its author's conda (/root/miniconda3):
    # harmless for root, 'Permission denied' for everyone else. Every -I/-L
    # path and every RUNPATH entry must lie in the system, the venv or the
    # build cache.
    import re
    import subprocess
    import caffe
    pkg = Path(caffe.__file__).resolve().parent
    flags = (pkg / ".build-flags").read_text()
    cache = Path(os.environ.get("CAFFE_CACHE_DIR", Path.home() / ".cache" / "caffe-service")).resolve()
    allowed = [Path("/usr"), Path(sys.prefix).resolve(), cache]
    paths = re.findall(r"(?:^|\s)-(?:I|L|isystem\s*)(\S+)", flags)
    paths += re.findall(r"-Wl,-rpath,(\S+)", flags)
    dynamic = subprocess.run(["readelf", "-d", str(pkg / "_caffe.so")], capture_output=True, text=True,
                             check=True).stdout
    runpaths = re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", dynamic)
    # An empty entry means the current directory; $ORIGIN is the .so's own
    # (the CUDA build finds the wheels' libraries beside it in the venv).
    paths += [p.replace("$ORIGIN", str(pkg)) or "<empty: the current directory>"
              for entry in runpaths for p in entry.split(":")]
    assert paths, flags   # the flags file holds the compile line
    # The cached build is shared by every clone on the machine (its key leaves
    # the venv path out): numpy's headers come from whichever clone's venv
    # built it first, at the numpy version the key holds.
    numpy_headers = re.compile(r"^/.+/lib/python3\.\d+/site-packages/numpy/_?core/include$")
    foreign = [p for p in paths if not p.startswith("/")
               or not (any(Path(p).resolve().is_relative_to(a) for a in allowed) or numpy_headers.match(p))]
    assert not foreign, f"paths outside the system, venv and cache: {foreign}"
    assert "miniconda" not in flags and "miniconda" not in dynamic
