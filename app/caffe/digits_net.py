"""What DIGITS does to a classification network before Caffe sees it
(digits/model/tasks/caffe_train.py: save_files_classification and
cleanedUpClassificationNetwork), so that a DIGITS model validates and trains
here unchanged. Used by app.caffe.network.fill and deploy_net.
"""
from __future__ import annotations

from google.protobuf.message import Message

from app.caffe.proto import caffe_pb2

# DIGITS names the deploy net's input blob `data`, always.
DEPLOY_INPUT = "data"
LABEL = "label"


def add_data_layers(net: Message, layer_lines: list) -> None:
    """A network without data layers gets DIGITS's `train-data` / `val-data`
    (tops `data`, `label`; stages train / val), prepended and sourceless for
    fill() to feed from the dataset; they have no line in the upload."""
    pb = caffe_pb2()
    added = []
    for stage in ("train", "val"):
        layer = pb.LayerParameter(name=f"{stage}-data", type="Data", top=[DEPLOY_INPUT, LABEL])
        layer.include.add(stage=[stage])
        added.append(layer)
    rest = list(net.layer)
    del net.layer[:]
    net.layer.extend(added + rest)
    layer_lines[:0] = [None] * len(added)


def drop_unanswerable_accuracy(net: Message, layer_lines: list, num_classes: int) -> list[str]:
    """Remove Accuracy layers whose top_k exceeds the class count (Caffe
    would abort on them; DIGITS drops them). Returns their names."""
    gone = [i for i, layer in enumerate(net.layer) if layer.type == "Accuracy"
            and layer.accuracy_param.HasField("top_k") and layer.accuracy_param.top_k > num_classes]
    names = [net.layer[i].name for i in gone]
    for i in reversed(gone):
        del net.layer[i]
        if i < len(layer_lines):
            del layer_lines[i]
    return names


def deploy_input_name(deploy_layers: list[Message], data_top: str | None) -> str:
    """`data`, as in DIGITS; the Data layers' first top only for a net whose
    deploy layers read that and never `data` (what earlier versions took)."""
    bottoms = {b for layer in deploy_layers for b in layer.bottom}
    if data_top and DEPLOY_INPUT not in bottoms and data_top in bottoms:
        return data_top
    return DEPLOY_INPUT
