"""Prototxts as they go into a downloaded archive: no server path in them.

The job's own solver and train_val name absolute paths on this server (the
checkout, the jobs directory, a dataset's LMDBs). A download carries them
relative to the archive instead, and a README says where the data goes.
"""
from __future__ import annotations

from pathlib import PurePosixPath

from google.protobuf import text_format

from app.caffe import proto
from app.caffe.network import _PATH_FIELDS

README = """This archive holds a model trained by Layerbench, laid out as DIGITS's
(its examples/classification/use_archive.py reads it).

  train_val.prototxt   the train and val nets
  deploy.prototxt      the deploy net (what inference loads), its input
                       declared as DIGITS wrote it: input "data" + input_shape
  solver.prototxt      the solver; paths are relative to this directory
  *.caffemodel         the latest complete snapshot's weights
  digits_python_layers.py  the Python layers (put this directory on PYTHONPATH)
  labels.txt, mean.binaryproto  the dataset's labels and mean image (num,
                       channels, height, width, as DIGITS wrote it), when it has them
  info.json            the job as the service describes it (with DIGITS's keys)

Images are fed as the model was trained: resized as "image resize mode" in
info.json says, channels in RGB order (DIGITS stored BGR: drop its
example's channel swap for colour models), the mean subtracted as the job's
use_mean setting says (train_val.prototxt's transform_param).

Data sources in train_val.prototxt name the dataset's databases relative to
this directory (e.g. train_db, val_db): to train again, put the dataset's
databases beside this file, or edit data_param.source. Snapshots go to
./snapshot_iter_N.caffemodel.
"""


def _relative(value: str) -> str:
    """A server path reduced to what it is inside its dataset or job."""
    path = PurePosixPath(value)
    if not path.is_absolute():
        return value
    parts = path.parts
    for marker in ("datasets", "input", "output"):
        if marker in parts:
            i = len(parts) - 1 - parts[::-1].index(marker)
            rest = parts[i + 2:] if marker == "datasets" else parts[i + 1:]
            if rest:
                return str(PurePosixPath(*rest))
    return path.name


def relative_paths(text: str, name: str) -> str:
    """``text`` (a solver or a net prototxt, by file ``name``) with every
    file path relative; unchanged when it does not parse."""
    pb2 = proto.caffe_pb2()
    try:
        if name.startswith("solver"):
            msg = text_format.Parse(text, pb2.SolverParameter())
            for field in ("net", "train_net", "test_net"):
                if field != "test_net" and msg.HasField(field):
                    setattr(msg, field, _relative(getattr(msg, field)))
            msg.test_net[:] = [_relative(v) for v in msg.test_net]
            if msg.HasField("snapshot_prefix"):
                msg.snapshot_prefix = PurePosixPath(msg.snapshot_prefix).name
            return text_format.MessageToString(msg)
        msg = text_format.Parse(text, pb2.NetParameter())
    except text_format.ParseError:
        return text
    for layer in msg.layer:
        for sub, field in _PATH_FIELDS:
            if not layer.HasField(sub):
                continue
            part = getattr(layer, sub)
            value = getattr(part, field)
            if value:
                setattr(part, field, _relative(value))
    return text_format.MessageToString(msg)


def digits_deploy(text: str) -> str:
    """A deploy net whose first layer is an Input layer with one top and one
    shape, rewritten as DIGITS wrote deploy nets (digits/model/tasks/
    caffe_train.py: ``input: "data"`` + ``input_shape { dim: ... }``), which
    DIGITS's example.py reads; anything else unchanged."""
    pb2 = proto.caffe_pb2()
    try:
        net = text_format.Parse(text, pb2.NetParameter())
    except text_format.ParseError:
        return text
    first = net.layer[0] if net.layer else None
    if first is None or first.type != "Input" or len(first.top) != 1 or len(first.input_param.shape) != 1 \
            or net.input or net.input_shape or net.input_dim:
        return text
    net.input.append(first.top[0])
    net.input_shape.add().CopyFrom(first.input_param.shape[0])
    del net.layer[0]
    return text_format.MessageToString(net)


def digits_mean(data: bytes) -> bytes:
    """A mean.binaryproto with DIGITS's legacy num/channels/height/width
    (what DIGITS's example.py reads; ``shape`` is dropped); unchanged when it
    does not parse or is not 3- or 4-dimensional."""
    pb2 = proto.caffe_pb2()
    blob = pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception:     # protobuf's DecodeError: not a blob, leave it as it is
        return data
    dims = list(blob.shape.dim)
    if len(dims) not in (3, 4) or len(blob.data) != _product(dims):
        return data
    num, channels, height, width = ([1] + dims if len(dims) == 3 else dims)
    blob.ClearField("shape")
    blob.num, blob.channels, blob.height, blob.width = num, channels, height, width
    return blob.SerializeToString()


def _product(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n
