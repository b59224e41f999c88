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


def add_data_layers(net: Message, layer_lines: list, split_label: bool = False) -> None:
    """A network without data layers gets DIGITS's `train-data` / `val-data`
    (tops `data`, `label`; stages train / val), prepended and sourceless for
    fill() to feed from the dataset; they have no line in the upload.
    ``split_label`` (segmentation): one layer per top, as DIGITS adds them
    for a dataset of feature and label images."""
    pb = caffe_pb2()
    added = []
    for stage in ("train", "val"):
        tops = [[DEPLOY_INPUT], [LABEL]] if split_label else [[DEPLOY_INPUT, LABEL]]
        for top in tops:
            suffix = "-label" if top == [LABEL] else ""
            layer = pb.LayerParameter(name=f"{stage}-data{suffix}", type="Data", top=top)
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


MEAN_CHOICES = ("none", "image", "pixel")


def pixel_mean(mean_file: str) -> list[float]:
    """The per-channel mean of a mean.binaryproto (DIGITS's use_mean=pixel)."""
    import numpy as np
    from pathlib import Path
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(Path(mean_file).read_bytes())
    shape = list(blob.shape.dim) or [blob.channels, blob.height, blob.width]
    data = np.asarray(blob.data, dtype=np.float64).reshape(shape[-3:])
    return [round(float(v), 4) for v in data.mean(axis=(1, 2))]


def apply_transform(layer: Message, *, mean_file: str | None, use_mean: str | None,
                    crop_size: int | None) -> None:
    """DIGITS's data options on one dataset-fed Data layer: the mean
    (image: the mean image file, pixel: its per-channel values, none), and a
    crop (random in training, centre in validation and at inference, as
    Caffe's DataTransformer does). What the network sets itself wins."""
    tp = layer.transform_param
    if crop_size and not tp.crop_size:
        tp.crop_size = crop_size
    if tp.mean_file or tp.mean_value or not mean_file:
        return
    choice = use_mean or "image"
    if choice == "image":
        tp.mean_file = mean_file
    elif choice == "pixel":
        tp.mean_value.extend(pixel_mean(mean_file))
