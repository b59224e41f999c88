"""Networks as DIGITS accepts them validate and train here, unchanged: no
Data layer at all (DIGITS adds train-data / val-data), a deploy input always
named `data`, and DIGITS's own standard networks verbatim (tests/data/digits,
see its README). Real Caffe in the real sandbox, through HTTP."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.caffe import network
from helpers import DATA, layer_line, post, wait_for

DIGITS = DATA / "digits"
LENET = (DIGITS / "lenet.prototxt").read_text()

# DIGITS's LeNet without its two Data layers: DIGITS adds them itself.
NO_DATA = "# LeNet\nname: \"LeNet\"\n" + LENET[LENET.index("layer {\n  # Use Power layer"):]

# Data layers produce `scaled` (scaled by transform_param); only the deploy
# net has the Power layer, reading DIGITS's deploy input `data`.
SCALED = NO_DATA.replace("""layer {
  # Use Power layer for input scaling
  name: "scale"
  bottom: "data"
  top: "scaled"
  type: "Power"
""", """layer {
  name: "train-data"
  type: "Data"
  top: "scaled"
  top: "label"
  transform_param { scale: 0.0125 }
  data_param { batch_size: 64 }
  include { stage: "train" }
}
layer {
  name: "val-data"
  type: "Data"
  top: "scaled"
  top: "label"
  transform_param { scale: 0.0125 }
  data_param { batch_size: 32 }
  include { stage: "val" }
}
layer {
  name: "scale"
  bottom: "data"
  top: "scaled"
  type: "Power"
  include { stage: "deploy" }
""")


def _ok(client, net: str, **kw) -> dict:
    resp = post(client, "/api/v1/validate", network=net, layer=None, **kw)
    assert resp.status_code == 200, resp.get_json()
    report = resp.get_json()
    assert report["ok"] is True, report["errors"]
    return report


def _refused(client, net: str) -> dict:
    resp = post(client, "/api/v1/jobs", network=net, layer=None)
    assert resp.status_code == 400, resp.get_json()
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []
    return resp.get_json()["details"][0]


# 1. No Data layer at all ---------------------------------------------------

def test_fill_adds_digits_data_layers():
    net = network.parse(NO_DATA)
    network.check(net)
    ds = network.DatasetInfo(Path("/ds"), 10, [1, 28, 28], 100, 20)
    filled = network.fill(net, ds, None)
    data = [lay for lay in net.net.layer if lay.type == "Data"]
    assert [(d.name, list(d.top), network.layer_stages(d)) for d in data] == [
        ("train-data", ["data", "label"], ["train"]), ("val-data", ["data", "label"], ["val"])]
    assert data[0].data_param.source == "/ds/train_db" and data[1].data_param.source == "/ds/val_db"
    assert filled["train_batch"] and filled["val_batch"] and filled["data_top"] == "data"
    deploy = network.deploy_net(net, ds, filled["data_top"])
    assert deploy.layer[0].type == "Input" and list(deploy.layer[0].top) == ["data"]
    assert not any(lay.type == "Data" for lay in deploy.layer)


def test_network_without_data_layers_validates(client):
    report = _ok(client, NO_DATA)
    stages = {lay["name"]: lay["stages"] for lay in report["layers"]}
    assert stages["train-data"] == ["train"] and stages["val-data"] == ["val"]
    assert stages["softmax"] == ["deploy"]
    ip2 = next(lay for lay in report["layers"] if lay["name"] == "ip2")
    assert ip2["top_shapes"][0][-1] == 10


# 2. The deploy input is named `data` ---------------------------------------

def test_deploy_input_is_named_data(client):
    report = _ok(client, SCALED)
    stages = {lay["name"]: lay["stages"] for lay in report["layers"]}
    assert stages["scale"] == ["deploy"]
    assert report["timing_by_stage"]["deploy"]["layers"][0]["layer"] == "data"


def test_static_check_covers_the_deploy_net(client):
    net = SCALED.replace('  bottom: "data"\n  top: "scaled"\n  type: "Power"',
                         '  bottom: "pixels"\n  top: "scaled"\n  type: "Power"')
    d = _refused(client, net)
    assert d["layer"] == "scale" and d["stage"] == "deploy" and "'pixels'" in d["message"]
    assert d["line"] == layer_line(net, "scale")


def test_caffe_abort_in_deploy_net_names_layer_line_and_stage(client):
    # A 40x40 kernel on the 28x28 deploy input: Caffe CHECK-fails (aborts the
    # validator) while building the deploy net, after train and val built.
    net = LENET.replace('layer {\n  name: "softmax"', '''layer {
  name: "deploy-conv"
  type: "Convolution"
  bottom: "data"
  top: "big"
  convolution_param { num_output: 2 kernel_size: 40 }
  include { stage: "deploy" }
}
layer {
  name: "softmax"''')
    d = _refused(client, net)
    assert d["layer"] == "deploy-conv" and d["stage"] == "deploy", d
    assert d["line"] == layer_line(net, "deploy-conv") and d["file"] == "network.prototxt"
    assert "Check failed" in d["message"] or "negative" in d["message"].lower()


def test_caffe_abort_in_train_net_says_train(client):
    net = LENET.replace("    num_output: 50\n    kernel_size: 5", "    num_output: 50\n    kernel_size: 40")
    d = _refused(client, net)
    assert d["layer"] == "conv2" and d["stage"] == "train" and d["line"] == layer_line(net, "conv2")


# 3. DIGITS's standard networks, verbatim -----------------------------------

def test_digits_lenet_verbatim_validates_and_trains_to_done(client, worker):
    _ok(client, LENET)
    resp = post(client, "/api/v1/jobs", network=LENET, layer=None, train_epochs=1, name="digits lenet")
    assert resp.status_code in (200, 201, 202), resp.get_json()
    done = wait_for(client, resp.get_json()["id"], {"done", "error"}, timeout=300)
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == done["max_iter"] > 0


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_digits_big_networks_verbatim_validate(client, rgb_dataset, name):
    report = _ok(client, (DIGITS / f"{name}.prototxt").read_text(), dataset=rgb_dataset, batch_size=2)
    deploy = report["timing_by_stage"]["deploy"]["layers"]
    assert deploy[0]["layer"] == "data"
    softmax = next(lay for lay in report["layers"] if lay["name"] == "softmax")
    assert softmax["stages"] == ["deploy"] and softmax["top_shapes"][0] == [1, 3]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_digits_big_networks_verbatim_train(client, worker, rgb_dataset, name):
    # Two iterations of batch 2 on 256x256 colour images: the verbatim text
    # trains (random crops of 227 / 224, DIGITS's data layers, its deploy net).
    resp = post(client, "/api/v1/jobs", network=(DIGITS / f"{name}.prototxt").read_text(), layer=None,
                dataset=rgb_dataset, batch_size=2, max_iter=2, name=f"digits {name}")
    assert resp.status_code == 201, resp.get_json()
    done = wait_for(client, resp.get_json()["id"], {"done", "error"}, timeout=300)
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == 2 and done["snapshots"]
