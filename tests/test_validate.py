"""Validation through HTTP: real pycaffe in the real sandbox. Every failure
names its file, line, layer and stage, and no job is ever queued."""
from __future__ import annotations

import pytest

from helpers import LENET_SEED, SEED_LAYER, change_settings, layer_line, line_of, post

LAYER = "digits_python_layers.py"


def _no_jobs(client) -> None:
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def _submit_fails(client, code: str, **kw) -> dict:
    resp = post(client, "/api/v1/jobs", **kw)
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["error"] == code
    assert body["message"]
    _no_jobs(client)
    return body["details"][0]


def test_valid_seed_lenet_report(client):
    resp = post(client, "/api/v1/validate")
    assert resp.status_code == 200
    report = resp.get_json()
    assert report["ok"] is True, report["errors"]
    acc = next(lay for lay in report["layers"] if lay["name"] == "accuracy")
    assert acc == {"name": "accuracy", "type": "Python", "stages": ["val"],
                   "python_class": "AccuracyLayer", "top_shapes": [[1]]}
    loss = next(lay for lay in report["layers"] if lay["name"] == "loss")
    assert loss["stages"] == ["train", "val"]
    assert "deploy" in next(lay for lay in report["layers"] if lay["name"] == "softmax")["stages"]
    timing = {t["layer"]: t for t in report["timing"]}
    assert timing["accuracy"]["forward_ms"] > 0
    assert timing["conv1"]["backward_ms"] > 0
    assert report["containment"] in ("bwrap", "unshare")
    _no_jobs(client)


def test_validate_never_creates_a_job_even_when_invalid(client):
    resp = post(client, "/api/v1/validate", layer=SEED_LAYER.replace("def reshape", "def reshape("))
    assert resp.status_code == 200
    report = resp.get_json()
    assert report["ok"] is False and report["errors"][0]["file"] == LAYER
    _no_jobs(client)


def test_syntax_error(client):
    bad = SEED_LAYER.replace("        self.top_k = params.get('top_k', 1)",
                             "        self.top_k = params.get('top_k', 1",)
    d = _submit_fails(client, "invalid_python_layer", layer=bad)
    assert d["file"] == LAYER and d["stage"] == "import"
    assert d["line"] == line_of(bad, "self.top_k = params.get(")
    assert "SyntaxError" in d["message"]


def test_import_error(client):
    bad = SEED_LAYER.replace("import json\n", "import json\nimport no_such_module_xyz\n")
    d = _submit_fails(client, "invalid_python_layer", layer=bad)
    assert (d["file"], d["line"], d["stage"]) == (LAYER, 3, "import")
    assert "no_such_module_xyz" in d["message"]


def test_missing_class(client):
    net = LENET_SEED.replace('layer: "AccuracyLayer"', 'layer: "TopKAccuracy"')
    d = _submit_fails(client, "invalid_python_layer", network=net)
    assert d["layer"] == "accuracy" and "TopKAccuracy" in d["message"]
    assert d["file"] == LAYER


def test_class_not_a_caffe_layer(client):
    bad = SEED_LAYER + "\n\nclass NotALayer(object):\n    pass\n"
    net = LENET_SEED.replace('layer: "AccuracyLayer"', 'layer: "NotALayer"')
    d = _submit_fails(client, "invalid_python_layer", network=net, layer=bad)
    assert d["layer"] == "accuracy" and "caffe.Layer" in d["message"]


@pytest.mark.parametrize("method", ["setup", "reshape", "forward"])
def test_exception_in_layer_method(client, method):
    marker = f"    def {method}(self, bottom, top):\n"
    bad = SEED_LAYER.replace(marker, marker + f"        raise ValueError('broken {method}')\n")
    d = _submit_fails(client, "invalid_python_layer", layer=bad)
    assert d["file"] == LAYER
    assert d["line"] == line_of(bad, f"raise ValueError('broken {method}')")
    assert d["layer"] == "accuracy"
    assert d["stage"] == "val"  # the seed layer only exists in the val net
    assert f"broken {method}" in d["message"]
    assert "Traceback" in d["traceback"]


IDENTITY = SEED_LAYER + """

class Identity(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        raise RuntimeError('no gradient here')
"""


def test_exception_in_backward_of_train_net(client):
    net = LENET_SEED.replace('  bottom: "pool2"\n  top: "ip1"', '  bottom: "pool2ident"\n  top: "ip1"')
    net = net.replace('layer {\n  name: "ip1"', 'layer {\n  name: "ident"\n  type: "Python"\n'
                      '  bottom: "pool2"\n  top: "pool2ident"\n  python_param { module: "digits_python_layers" '
                      'layer: "Identity" }\n}\nlayer {\n  name: "ip1"')
    d = _submit_fails(client, "invalid_python_layer", network=net, layer=IDENTITY)
    assert (d["file"], d["layer"], d["stage"]) == (LAYER, "ident", "train")
    assert d["line"] == line_of(IDENTITY, "raise RuntimeError")
    assert "backward" in d["message"]


def test_top_never_shaped(client):
    net = LENET_SEED.replace('    top: "accuracy"\n', '    top: "accuracy"\n    top: "accuracy_extra"\n')
    d = _submit_fails(client, "invalid_python_layer", network=net)
    assert d["layer"] == "accuracy" and "accuracy_extra" in d["message"]


def test_missing_top_is_an_index_error_in_reshape(client):
    net = LENET_SEED.replace('    top: "accuracy"\n', "")
    d = _submit_fails(client, "invalid_python_layer", network=net)
    assert d["layer"] == "accuracy" and "IndexError" in d["message"]
    assert d["line"] == line_of(SEED_LAYER, "top[0].reshape(1)")


def test_malformed_prototxt_points_at_line(client):
    net = LENET_SEED.replace('  name: "pool1"\n  type: "Pooling"', '  name: "pool1"\n  type: "Pooling"\n  kernel: 3')
    d = _submit_fails(client, "invalid_network", network=net)
    assert d["field"] == "network" and d["stage"] == "parse"
    assert d["line"] == line_of(net, "kernel: 3")
    assert d["file"] == "network.prototxt"


def test_not_a_prototxt(client):
    d = _submit_fails(client, "invalid_network", network="this is not { a network")
    assert d["line"] == 1


def test_blob_nobody_produces(client):
    net = LENET_SEED.replace('  bottom: "conv1"\n  top: "pool1"', '  bottom: "conv_one"\n  top: "pool1"')
    d = _submit_fails(client, "invalid_network", network=net)
    assert d["layer"] == "pool1" and "conv_one" in d["message"]
    assert d["line"] == layer_line(net, "pool1")


def test_python_module_other_than_uploaded_file_is_rejected(client):
    net = LENET_SEED.replace('module: "digits_python_layers"', 'module: "os"')
    d = _submit_fails(client, "invalid_network", network=net)
    assert d["layer"] == "accuracy" and "'os'" in d["message"]
    assert d["line"] == layer_line(net, "accuracy")


def test_caffe_check_failure_becomes_clear_message(client):
    # A 40x40 kernel on a 12x12 map: Caffe aborts the process on a CHECK.
    net = LENET_SEED.replace("    num_output: 50\n    kernel_size: 5", "    num_output: 50\n    kernel_size: 40")
    d = _submit_fails(client, "invalid_network", network=net)
    assert d["stage"] == "train" and d["layer"] == "conv2"   # the net Caffe was building
    assert d["line"] == layer_line(net, "conv2")
    assert "Check failed" in d["message"] or "negative" in d["message"].lower()


def test_python_layer_without_file(client):
    d = _submit_fails(client, "invalid_python_layer", layer=None)
    assert d["layer"] == "accuracy"


def test_endless_loop_at_import_times_out(app, client):
    change_settings(app, VALIDATE_TIMEOUT=2)   # the loop burns a core until then
    d = _submit_fails(client, "invalid_python_layer", layer="while True:\n    pass\n" + SEED_LAYER)
    assert d["stage"] == "timeout"


# --- Timing per stage (warm medians, each stage at its own batch size) ----------------------

PASS_THROUGH = SEED_LAYER + """

import time


class PassThrough(caffe.Layer):
    delay = 0.0

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.delay:
            time.sleep(self.delay)
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff


class Slow(PassThrough):
    delay = 0.1
"""


def _with_python_layer(cls: str) -> str:
    """LeNet with a Python layer of class ``cls`` between pool2 and ip1, in every stage."""
    net = LENET_SEED.replace('  bottom: "pool2"\n  top: "ip1"', '  bottom: "pool2py"\n  top: "ip1"')
    return net.replace('layer {\n  name: "ip1"', 'layer {\n  name: "py"\n  type: "Python"\n'
                       '  bottom: "pool2"\n  top: "pool2py"\n  python_param { module: "digits_python_layers" '
                       f'layer: "{cls}" }}\n}}\nlayer {{\n  name: "ip1"')


def _validate_ok(client, **kw) -> dict:
    resp = post(client, "/api/v1/validate", **kw)
    assert resp.status_code == 200
    report = resp.get_json()
    assert report["ok"] is True, report["errors"]
    return report


def _stage_layers(report: dict, stage: str) -> dict:
    return {x["layer"]: x for x in report["timing_by_stage"][stage]["layers"]}


def test_timing_is_per_stage_at_each_stage_batch(client):
    report = _validate_ok(client)
    by_stage = report["timing_by_stage"]
    assert set(by_stage) == {"train", "val", "deploy"}
    # LeNet seed: train batch 64, val batch 32, deploy one image.
    assert [by_stage[s]["batch"] for s in ("train", "val", "deploy")] == [64, 32, 1]
    train, val, deploy = (_stage_layers(report, s) for s in ("train", "val", "deploy"))
    # conv2 is in every stage: three separate figures, not one overwritten by the last stage.
    assert "conv2" in train and "conv2" in val and "conv2" in deploy
    # Only the train stage runs (and lists) a backward pass.
    assert all("backward_ms" in x for x in train.values())
    assert not any("backward_ms" in x for x in list(val.values()) + list(deploy.values()))
    assert train["conv1"]["backward_ms"] > 0 and train["conv2"]["backward_ms"] > 0
    assert train["conv2"]["type"] == "Convolution" and val["accuracy"]["type"] == "Python"
    # 64 images through conv2 cost more than one (both warm medians).
    assert train["conv2"]["forward_ms"] > deploy["conv2"]["forward_ms"]
    for name, st in by_stage.items():
        assert 1 <= st["passes"] <= 3
        total = sum(x["forward_ms"] + x.get("backward_ms", 0.0) for x in st["layers"])
        assert st["step_ms"] == pytest.approx(total, abs=0.001 * 2 * len(st["layers"]) + 1e-9), name
        assert 0.0 <= st["python_share"] <= 1.0
    # The seed's AccuracyLayer only runs in val.
    assert by_stage["train"]["python_share"] == 0.0 and by_stage["deploy"]["python_share"] == 0.0
    assert 0.0 < by_stage["val"]["python_share"] < 1.0
    assert by_stage["val"]["python_ms"] == val["accuracy"]["forward_ms"]
    # The flat list of API.md stays: one entry per layer, from its first stage, saying which.
    flat = {t["layer"]: t for t in report["timing"]}
    assert len(flat) == len(report["timing"])
    assert {k: flat["conv2"][k] for k in ("forward_ms", "backward_ms", "stage", "batch")} == \
        {"forward_ms": train["conv2"]["forward_ms"], "backward_ms": train["conv2"]["backward_ms"],
         "stage": "train", "batch": 64}
    assert (flat["accuracy"]["stage"], flat["accuracy"]["batch"], flat["accuracy"]["backward_ms"]) == ("val", 32, 0.0)
    assert (flat["softmax"]["stage"], flat["softmax"]["batch"]) == ("deploy", 1)


def test_slow_python_layer_dominates_the_step(app, client):
    report = _validate_ok(client, network=_with_python_layer("Slow"), layer=PASS_THROUGH, batch_size=4)
    by_stage = report["timing_by_stage"]
    assert by_stage["train"]["batch"] == 4
    for stage in ("train", "val", "deploy"):
        st = by_stage[stage]
        assert _stage_layers(report, stage)["py"]["forward_ms"] >= 100  # time.sleep(0.1), warm median
        assert st["python_ms"] >= 100
        # Around 0.9 (val: 32 images through the convolutions), 0.98 in deploy.
        assert st["python_share"] > 0.75, (stage, st)
    assert by_stage["deploy"]["python_share"] > 0.9
    # The page shows a column group per stage and the Python share of each step.
    from flask import render_template
    with app.test_request_context():
        html = render_template("web/_layers.html", report=report)
    assert "train · batch 4" in html and "val · batch 4" in html and "deploy · batch 1" in html   # DIGITS: batch_size sets the val batch too
    assert "Python layers' share of the step" in html
    assert f'{by_stage["train"]["python_share"] * 100:.1f} %' in html
    assert html.count("<th>Backward ms</th>") == 1 and html.count("<th>Forward ms</th>") == 3


def test_fast_python_layer_is_a_small_share(client):
    report = _validate_ok(client, network=_with_python_layer("PassThrough"), layer=PASS_THROUGH)
    train = report["timing_by_stage"]["train"]
    py = _stage_layers(report, "train")["py"]
    assert py["backward_ms"] >= 0 and train["python_ms"] == pytest.approx(
        py["forward_ms"] + py["backward_ms"], abs=0.002)
    assert 0.0 < train["python_share"] < 0.2, train


def test_page_renders_reports_stored_before_timing_by_stage(app):
    old = {"ok": True, "errors": [], "warnings": [], "seconds": 0.3, "containment": "bwrap",
           "layers": [{"name": "conv1", "type": "Convolution", "stages": ["train", "val", "deploy"],
                       "python_class": None, "top_shapes": [[64, 20, 24, 24]]}],
           "timing": [{"layer": "conv1", "forward_ms": 0.118, "backward_ms": 2.83}]}
    from flask import render_template
    with app.test_request_context():
        html = render_template("web/_layers.html", report=old)
    assert "0.118" in html and "2.83" in html and "share" not in html


@pytest.mark.parametrize("budget,passes", [(10.0, 3), (0.15, 1), (0.03, 0)])
def test_slow_stage_gets_fewer_timed_passes(tmp_path, monkeypatch, fresh_layer_module, budget, passes):
    # In-process (the budget is a module constant): a 0.1 s layer, a budget of
    # 1.5 passes gets one timed pass; a budget the warm-up alone overruns
    # keeps the warm-up's figures, as the one-pass validator did.
    import sys

    import caffe

    from app.contained import validate as v
    (tmp_path / "digits_python_layers.py").write_text(PASS_THROUGH)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "py" type: "Python" bottom: "x" top: "y"\n'
        '        python_param { module: "digits_python_layers" layer: "Slow" } }\n')
    sys.path.insert(0, str(tmp_path))
    caffe.set_mode_cpu()
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, stages=["deploy"])
    monkeypatch.setattr(v, "STAGE_BUDGET_S", budget)
    st = v.run_layers(net, "deploy", backward=False)
    assert st["passes"] == passes
    assert st["batch"] == 2
    assert [x["layer"] for x in st["layers"]] == ["x", "py"]
    assert st["layers"][1]["forward_ms"] >= 100 and st["python_share"] > 0.9
