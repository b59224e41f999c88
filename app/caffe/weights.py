"""Caffe model files (``.caffemodel``): what they hold and copying them into
a net by layer name, as Caffe's ``Net::CopyTrainedLayersFrom`` (and DIGITS's
fine-tuning) does. Pure protobuf here; ``load`` is handed a pycaffe net by
the contained runners, so this module never imports libcaffe itself.
"""
from __future__ import annotations

from pathlib import Path


def describe(path: Path) -> dict:
    """The layers of a caffemodel with their blob shapes; ValueError when the
    file is not a Caffe NetParameter."""
    from app.caffe.proto import caffe_pb2
    from google.protobuf.message import DecodeError
    net = caffe_pb2().NetParameter()
    try:
        net.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError) as exc:
        raise ValueError(f"not a Caffe model (.caffemodel): {exc}") from None
    layers = []
    # New-style `layer` and the V1 `layers` field (old model-zoo files):
    # Caffe upgrades the latter when it loads it.
    for layer in list(net.layer) + list(net.layers):
        blobs = [list(b.shape.dim) or [d for d in (b.num, b.channels, b.height, b.width) if d]
                 for b in layer.blobs]
        if blobs:
            layers.append({"name": layer.name, "type": str(layer.type), "blobs": blobs})
    if not layers:
        raise ValueError("the file holds no learned weights (no layer has blobs)")
    return {"name": net.name, "layers": layers}


def load(net, path: Path) -> dict:
    """Copy ``path``'s weights into ``net`` by layer name. Returns
    {"copied": [...], "fresh": [...]}: the net's learnable layers that got
    weights and those that start from their fillers (renamed or new)."""
    held = {entry["name"] for entry in describe(path)["layers"]}
    net.copy_from(str(path))   # a shape mismatch is a Caffe CHECK naming the layer
    learnable = [name for name, layer in zip(net._layer_names, net.layers) if len(layer.blobs)]
    return {"copied": [n for n in learnable if n in held], "fresh": [n for n in learnable if n not in held]}

