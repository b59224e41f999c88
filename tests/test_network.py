"""network.py: parsing, stage filtering (checked against Caffe itself), filling."""
from __future__ import annotations

import pytest

from app.caffe import network
from helpers import LENET_SEED, layer_line

RULES_NET = """
name: "rules"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "all" type: "ReLU" bottom: "x" top: "a0" }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a1" include { stage: "train" } }
layer { name: "val_only" type: "ReLU" bottom: "x" top: "a2" include { stage: "val" } }
layer { name: "not_deploy" type: "ReLU" bottom: "x" top: "a3" exclude { stage: "deploy" } }
layer { name: "phase_test" type: "ReLU" bottom: "x" top: "a4" include { phase: TEST } }
layer { name: "phase_train" type: "ReLU" bottom: "x" top: "a5" include { phase: TRAIN } }
layer { name: "not_stage" type: "ReLU" bottom: "x" top: "a6" include { not_stage: "val" } }
layer { name: "min_level" type: "ReLU" bottom: "x" top: "a7" include { min_level: 1 } }
layer { name: "max_level" type: "ReLU" bottom: "x" top: "a8" include { max_level: 0 } }
layer { name: "two_rules" type: "ReLU" bottom: "x" top: "a9"
        include { stage: "train" } include { stage: "deploy" } }
layer { name: "two_excl" type: "ReLU" bottom: "x" top: "a10"
        exclude { phase: TEST } exclude { stage: "train" } }
"""


@pytest.mark.parametrize("stage", ["train", "val", "deploy"])
def test_stage_filter_matches_caffe(tmp_path, stage):
    import caffe
    path = tmp_path / "net.prototxt"
    path.write_text(RULES_NET)
    phase = caffe.TRAIN if stage == "train" else caffe.TEST
    built = [n for n in caffe.Net(str(path), phase, stages=[stage])._layer_names if not n.endswith("_split")]
    ours = [layer.name for layer in network.filtered(network.parse(RULES_NET).net, stage)]
    assert ours == built
    assert len(set(ours)) > 3


def test_include_and_exclude_together_is_rejected():
    text = RULES_NET + 'layer { name: "both" type: "ReLU" bottom: "x" top: "b" include { stage: "val" } ' \
        'exclude { stage: "deploy" } }\n'
    with pytest.raises(network.NetworkError) as err:
        network.check(network.parse(text))
    assert err.value.details[0]["layer"] == "both"
    assert err.value.details[0]["line"] == len(text.splitlines())


def test_parse_error_has_line():
    with pytest.raises(network.NetworkError) as err:
        network.parse('name: "x"\nlayer {\n  name: "a"\n  bogus_field: 1\n}\n', "mine.prototxt")
    d = err.value.details[0]
    assert (d["file"], d["line"], d["stage"]) == ("mine.prototxt", 4, "parse")


def test_layer_lines_follow_the_upload():
    net = network.parse(LENET_SEED)
    for name in ("train-data", "conv1", "accuracy", "softmax"):
        assert net.line_of(name) == layer_line(LENET_SEED, name)


def test_fill_from_dataset_and_deploy(tmp_path):
    net = network.parse(LENET_SEED)
    ds = network.DatasetInfo(path=tmp_path / "ds", num_classes=7, image_shape=[3, 32, 30],
                             train_count=100, val_count=20)
    filled = network.fill(net, ds, batch_size=16)
    assert filled == {"train_batch": 16, "val_batch": 16, "data_top": "data"}   # DIGITS: batch_size sets both
    train = next(layer for layer in net.net.layer if layer.name == "train-data")
    assert train.data_param.source == str(tmp_path / "ds" / "train_db")
    assert train.transform_param.mean_file == str(tmp_path / "ds" / "mean.binaryproto")
    assert next(layer for layer in net.net.layer if layer.name == "ip2").inner_product_param.num_output == 7
    deploy = network.deploy_net(net, ds, "data")
    names = [layer.name for layer in deploy.layer]
    assert names[0] == "data" and list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 32, 30]
    assert "loss" not in names and "accuracy" not in names and "softmax" in names
    assert all(not layer.include and not layer.exclude for layer in deploy.layer)


def test_check_paths_rejects_outside_files(tmp_path):
    text = LENET_SEED.replace("data_param { batch_size: 64 }", 'data_param { batch_size: 64 source: "/etc" }')
    net = network.parse(text)
    with pytest.raises(network.NetworkError) as err:
        network.check_paths(net, [tmp_path])
    assert err.value.details[0]["layer"] == "train-data"
    inside = network.parse(LENET_SEED.replace("data_param { batch_size: 64 }",
                                              f'data_param {{ batch_size: 64 source: "{tmp_path}/db" }}'))
    network.check_paths(inside, [tmp_path])
    escape = network.parse(LENET_SEED.replace("data_param { batch_size: 64 }",
                                              f'data_param {{ batch_size: 64 source: "{tmp_path}/../x" }}'))
    with pytest.raises(network.NetworkError):
        network.check_paths(escape, [tmp_path])


def test_absurd_blob_rejected_before_caffe():
    text = 'layer { name: "big" type: "Input" top: "x" input_param { shape { dim: 1000000 dim: 1000000 } } }'
    with pytest.raises(network.NetworkError) as err:
        network.check_sizes(network.parse(text))
    assert err.value.details[0]["layer"] == "big"


def test_data_layer_needs_a_stage():
    text = LENET_SEED.replace('  include { stage: "train" }\n  data_param { batch_size: 64 }',
                              "  data_param { batch_size: 64 }")
    with pytest.raises(network.NetworkError) as err:
        network.fill(network.parse(text), None, None)
    assert err.value.details[0]["layer"] == "train-data"


def test_emitted_prototxt_round_trips():
    net = network.parse(LENET_SEED)
    again = network.parse(network.to_text(net.net))
    assert again.net == net.net
