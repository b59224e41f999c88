"""A trained job's classifier, loaded once: what both inference runners call
(app.contained.infer, cold, one process per request; app.contained.infer_server,
warm, one process serving many), so that they compute exactly the same
predictions. A helper, not a runner: it runs nothing by itself.

Images get the training pipeline's preprocessing: the dataset's size,
channels and resize mode, then the train Data layer's transform (mean,
centre crop, scale); the deploy net (with the job's own
digits_python_layers.py) gives the probabilities.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Union

import numpy as np

from app.core import layer_code
from app.core.workspace import DATASET_INFO_FILE, DEPLOY_FILE, TRAIN_VAL_FILE

# Images per forward pass (DIGITS classified in batches too): as many as
# make about a million input values (a request's 100 LeNet digits at once,
# six 227x227 colour images), so a large net's batch stays within memory.
BATCH_VALUES, MAX_BATCH = 1 << 20, 100
TOP = 5
MAX_PROBABILITIES = 1000
VISUAL_PICTURE_MAX = 4 << 20       # bytes of one picture: larger ones are left out
VISUAL_BUDGET = 32 << 20           # bytes of all pictures of one request

Source = Union[Path, IO[bytes]]    # an image file, or its bytes in a BytesIO


def data_transform(input_dir: Path, caffe_pb2, text_format):
    """The transform_param of the job's Data layer that reads the images (the
    first whose top is not ``label``: a segmentation net has one for each)."""
    net = caffe_pb2.NetParameter()
    text_format.Parse((input_dir / TRAIN_VAL_FILE).read_text(), net)
    for layer in net.layer:
        if layer.type == "Data" and list(layer.top[:1]) != ["label"]:
            return layer.transform_param
    return caffe_pb2.TransformationParameter()


def mean_array(tp, caffe_pb2, shape) -> np.ndarray:
    """What the net subtracts from an image of ``shape`` (c, h, w): the mean
    file, per-channel mean values, or zeros."""
    if tp.mean_file:
        blob = caffe_pb2.BlobProto()
        blob.ParseFromString(Path(tp.mean_file).read_bytes())
        return np.array(blob.data, dtype=np.float32).reshape(shape)
    if tp.mean_value:
        return np.array(tp.mean_value, dtype=np.float32).reshape(-1, 1, 1)
    return np.zeros(shape, dtype=np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """``x`` as probabilities (unchanged when it already is: the deploy net
    ends in Softmax)."""
    if (x >= 0).all() and abs(float(x.sum()) - 1.0) < 1e-3:
        return x
    e = np.exp(x - x.max())
    return e / e.sum()


class Classifier:
    """The deploy net of one snapshot with its labels and preprocessing."""

    def __init__(self, input_dir: Path, model: Path, dataset: Path) -> None:
        layer_code.activate(input_dir)   # the job's helper modules and admin-added packages
        import caffe
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format
        caffe.set_mode_cpu()
        self.info = json.loads((dataset / DATASET_INFO_FILE).read_text())
        self.labels = (dataset / "labels.txt").read_text().splitlines()
        self.c, self.h, self.w = self.info["image_shape"]
        self.tp = data_transform(input_dir, caffe_pb2, text_format)
        self.mean = mean_array(self.tp, caffe_pb2, (self.c, self.h, self.w))
        self.net = caffe.Net(str(input_dir / DEPLOY_FILE), str(model), caffe.TEST)
        self.data_name, self.out_name = self.net.inputs[0], self.net.outputs[-1]

    def _array(self, source: Source, rng) -> np.ndarray:
        from PIL import Image

        from app.caffe.images import resize
        with Image.open(source) as im:
            im.load()
            img = resize(im.convert("L" if self.c == 1 else "RGB"), self.w, self.h,
                         self.info.get("resize_mode", "squash"), rng)
        x = np.asarray(img, dtype=np.float32).reshape(self.h, self.w, -1).transpose(2, 0, 1) - self.mean
        crop = self.tp.crop_size
        if crop:
            top, left = (self.h - crop) // 2, (self.w - crop) // 2
            x = x[:, top:top + crop, left:left + crop]
        return x * (self.tp.scale if self.tp.HasField("scale") else 1.0)

    def _prediction(self, original: str, scores: np.ndarray) -> dict:
        probs = softmax(scores.reshape(-1).astype(np.float64))
        order = np.argsort(-probs)[:TOP]
        return {"filename": original, "top": [
            {"label": self.labels[i] if i < len(self.labels) else str(i), "probability": round(float(probs[i]), 6)}
            for i in order], "probabilities": [round(float(v), 6) for v in probs[:MAX_PROBABILITIES]]}

    def classify(self, images: list[tuple[str, Source]], visualize: bool = False
                 ) -> tuple[list[dict], list[tuple[dict, bytes]]]:
        """(predictions in the order of ``images`` ((original name, source)
        pairs), visuals): with ``visualize``, per layer the activations and
        weights after the first readable image, as (record, PNG bytes)."""
        rng = np.random.default_rng(0)   # per request: a request's answer never depends on earlier ones
        results: list[dict | None] = [None] * len(images)
        ready: list[tuple[int, np.ndarray]] = []
        for k, (original, source) in enumerate(images):
            try:
                ready.append((k, self._array(source, rng)))
            except Exception as exc:      # not an image: report it, classify the rest
                results[k] = {"filename": original, "error": f"not a readable image ({type(exc).__name__})"}
        visuals: list[tuple[dict, bytes]] = []
        batch = max(1, min(MAX_BATCH, BATCH_VALUES // max(1, ready[0][1].size))) if ready else 1
        for start in range(0, len(ready), batch):
            chunk = ready[start:start + batch]
            blob = self.net.blobs[self.data_name]
            blob.reshape(len(chunk), *chunk[0][1].shape)
            for row, (_, x) in enumerate(chunk):
                blob.data[row] = x
            out = np.asarray(self.net.forward()[self.out_name])
            if visualize and start == 0:
                visuals = self._visuals()    # DIGITS's "show visualizations": the first image's
            for row, (k, _) in enumerate(chunk):
                results[k] = self._prediction(images[k][0], out[row])
        return results, visuals

    def _visuals(self) -> list[tuple[dict, bytes]]:
        """Per layer, the activations (of the batch's first image) and the
        weights of the last forward pass: statistics and a picture."""
        from app.caffe import visuals
        net, out, budget = self.net, [], VISUAL_BUDGET
        arrays = [(name, "Activation", blob.data[0]) for name, blob in net.blobs.items()
                  if blob.data.ndim != 0 and name != net.inputs[0]]
        arrays += [(name, "Weights", params[0].data) for name, params in net.params.items()]
        for name, kind, data in arrays:
            picture = visuals.png(visuals.tiles(data))
            if len(picture) > VISUAL_PICTURE_MAX:
                continue
            budget -= len(picture)
            if budget < 0:
                break
            out.append((visuals.describe(name, kind, data, f"vis_{len(out)}.png"), picture))
        return out
