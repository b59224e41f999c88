"""Validation through HTTP: real pycaffe in the real sandbox. Every failure
names its file, line, layer and stage, and no job is ever queued."""
from __future__ import annotations

import pytest

from conftest import LENET_SEED, SEED_LAYER, layer_line, line_of, post

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
    assert d["stage"] == "caffe" and d["layer"] == "conv2"
    assert d["line"] == layer_line(net, "conv2")
    assert "Check failed" in d["message"] or "negative" in d["message"].lower()


def test_python_layer_without_file(client):
    d = _submit_fails(client, "invalid_python_layer", layer=None)
    assert d["layer"] == "accuracy"


def test_endless_loop_at_import_times_out(app, client):
    app.config["VALIDATE_TIMEOUT"] = 3
    d = _submit_fails(client, "invalid_python_layer", layer="while True:\n    pass\n" + SEED_LAYER)
    assert d["stage"] == "timeout"
