"""The standard networks (LeNet, AlexNet, GoogLeNet) build and run in Caffe
through the real validator, on a small 256x256 RGB dataset."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import post

STANDARD = Path(__file__).resolve().parent.parent / "app" / "caffe" / "standard_networks"


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_big_standard_networks_validate(client, rgb_dataset, name):
    resp = post(client, "/api/v1/validate", network=(STANDARD / f"{name}.prototxt").read_text(), layer=None,
                dataset=rgb_dataset, batch_size=2)
    report = resp.get_json()
    assert report["ok"] is True, [e["message"] for e in report["errors"]]
    stages = {lay["name"]: lay["stages"] for lay in report["layers"]}
    assert stages["softmax"] == ["deploy"] and "deploy" not in stages["accuracy" if name == "alexnet"
                                                                      else "loss3/accuracy"]
    if name == "googlenet":
        assert stages["loss1/classifier"] == ["train", "val"] and stages["loss2/loss"] == ["train", "val"]
    logits = next(lay for lay in report["layers"] if lay["name"] in ("fc8", "loss3/classifier"))
    assert logits["top_shapes"][0][-1] == 3     # sized from the dataset's class count


def test_lenet_is_offered_with_the_others(client):
    html = client.get("/jobs/new").get_data(as_text=True)
    for name in ("lenet", "alexnet", "googlenet"):
        assert f'value="{name}"' in html
