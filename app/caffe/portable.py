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

README = """This archive holds a model trained by Layerbench.

  train_val.prototxt   the train and val nets
  deploy.prototxt      the deploy net (what inference loads)
  solver.prototxt      the solver; paths are relative to this directory
  *.caffemodel         the latest complete snapshot's weights
  digits_python_layers.py  the Python layers (put this directory on PYTHONPATH)
  labels.txt, mean.binaryproto  the dataset's labels and mean, when it has them
  info.json            the job as the service describes it

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
