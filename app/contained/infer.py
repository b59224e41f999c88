"""Classify images with a trained job, executed inside the sandbox:

    python -m app.contained.infer INPUT_DIR CAFFEMODEL DATASET_DIR WORK_DIR

WORK_DIR holds the uploaded images (`files.json` maps server names to the
original names) and receives `result.json`. Images get the training
pipeline's preprocessing: the dataset's size, channels and resize mode, then
the train Data layer's transform (mean, centre crop, scale); the deploy net
(with the job's own digits_python_layers.py) gives the probabilities.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


from app.core import layer_code, tracebacks
from app.core.workspace import DATASET_INFO_FILE, DEPLOY_FILE, RESULT_FILE, TRAIN_VAL_FILE

def _transform(input_dir: Path, caffe_pb2, text_format):
    net = caffe_pb2.NetParameter()
    text_format.Parse((input_dir / TRAIN_VAL_FILE).read_text(), net)
    for layer in net.layer:
        if layer.type == "Data":
            return layer.transform_param
    return caffe_pb2.TransformationParameter()


def _mean(tp, caffe_pb2, shape):
    if tp.mean_file:
        blob = caffe_pb2.BlobProto()
        blob.ParseFromString(Path(tp.mean_file).read_bytes())
        return np.array(blob.data, dtype=np.float32).reshape(shape)
    if tp.mean_value:
        return np.array(tp.mean_value, dtype=np.float32).reshape(-1, 1, 1)
    return np.float32(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    if (x >= 0).all() and abs(float(x.sum()) - 1.0) < 1e-3:
        return x   # already probabilities (the deploy net ends in Softmax)
    e = np.exp(x - x.max())
    return e / e.sum()


VISUALIZE_FLAG, VISUALS_FILE = "visualize", "visualizations.json"


def _visualize(net, work: Path) -> None:
    """Per layer, the activations and the weights of the net's last forward
    pass (pictures and statistics) into VISUALS_FILE and vis_*.png."""
    from app.caffe import visuals
    out = []
    for name, blob in net.blobs.items():
        if blob.data.ndim == 0 or name == net.inputs[0]:
            continue
        data = blob.data[0]
        (work / f"vis_{len(out)}.png").write_bytes(visuals.png(visuals.tiles(data)))
        out.append(visuals.describe(name, "Activation", data, f"vis_{len(out)}.png"))
    for name, params in net.params.items():
        weights = params[0].data
        (work / f"vis_{len(out)}.png").write_bytes(visuals.png(visuals.tiles(weights)))
        out.append(visuals.describe(name, "Weights", weights, f"vis_{len(out)}.png"))
    (work / VISUALS_FILE).write_text(json.dumps(out))


def classify(input_dir: Path, model: Path, dataset: Path, work: Path) -> list[dict]:
    """Predictions for every uploaded image, in upload order."""
    layer_code.activate(input_dir)   # the job's helper modules and admin-added packages
    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    from PIL import Image

    from app.caffe.images import resize
    caffe.set_mode_cpu()
    info = json.loads((dataset / DATASET_INFO_FILE).read_text())
    labels = (dataset / "labels.txt").read_text().splitlines()
    c, h, w = info["image_shape"]
    tp = _transform(input_dir, caffe_pb2, text_format)
    mean = _mean(tp, caffe_pb2, (c, h, w))
    net = caffe.Net(str(input_dir / DEPLOY_FILE), str(model), caffe.TEST)
    data_name = net.inputs[0]
    out_name = net.outputs[-1]
    rng = np.random.default_rng(0)
    results = []
    for server_name, original in json.loads((work / "files.json").read_text()):
        try:
            with Image.open(work / server_name) as im:
                im.load()
                img = resize(im.convert("L" if c == 1 else "RGB"), w, h, info.get("resize_mode", "squash"), rng)
        except Exception as exc:      # not an image: report it, classify the rest
            results.append({"filename": original, "error": f"not a readable image ({type(exc).__name__})"})
            continue
        x = np.asarray(img, dtype=np.float32).reshape(h, w, -1).transpose(2, 0, 1) - mean
        if tp.crop_size:
            top, left = (h - tp.crop_size) // 2, (w - tp.crop_size) // 2
            x = x[:, top:top + tp.crop_size, left:left + tp.crop_size]
        x = x * (tp.scale if tp.HasField("scale") else 1.0)
        net.blobs[data_name].reshape(1, *x.shape)
        net.blobs[data_name].data[0] = x
        probs = _softmax(net.forward()[out_name].reshape(-1).astype(np.float64))
        if (work / VISUALIZE_FLAG).exists() and not (work / VISUALS_FILE).exists():
            _visualize(net, work)    # DIGITS's "show visualizations": the first image's
        order = np.argsort(-probs)[:5]
        results.append({"filename": original, "top": [
            {"label": labels[i] if i < len(labels) else str(i), "probability": round(float(probs[i]), 6)}
            for i in order], "probabilities": [round(float(v), 6) for v in probs[:1000]]})
    return results


def main(argv: list[str]) -> None:
    """Entry point: result.json holds predictions or the error."""
    work = Path(argv[3])
    try:
        result = {"ok": True, "predictions": classify(Path(argv[0]), Path(argv[1]), Path(argv[2]), work)}
    except BaseException as exc:   # a Python layer may raise anything
        result = tracebacks.failure(exc)   # the user's files and Caffe's frames only
    (work / RESULT_FILE).write_text(json.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
