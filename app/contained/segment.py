"""Segment images with a trained job, executed inside the sandbox:

    python -m app.contained.segment INPUT_DIR CAFFEMODEL DATASET_DIR WORK_DIR

WORK_DIR holds the uploaded images (`files.json` maps server names to the
original names) and receives, per image k, `mask_k.png` (a palette PNG whose
pixel values are the predicted classes, coloured with the dataset's class
colours), `overlay_k.png` (the image with the mask tinted over it) and
`result.json` (per image: per-class pixel share). Preprocessing is the
training pipeline's: the dataset's size and channels (squash), then the
features Data layer's mean and scale; the deploy net's last output is the
score map (N x classes x H x W), its argmax per pixel the mask.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from app.contained.classifier import data_transform, mean_array
from app.core import layer_code, tracebacks
from app.core.workspace import DATASET_INFO_FILE, DEPLOY_FILE, RESULT_FILE


def segment(input_dir: Path, model: Path, dataset: Path, work: Path) -> list[dict]:
    """Per uploaded image: {"filename", "mask", "overlay", "shape", "classes":
    [{"label", "color", "share"}]} (mask/overlay: file names in ``work``)."""
    layer_code.activate(input_dir)   # the job's helper modules and admin-added packages
    import caffe
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format
    from PIL import Image

    from app.caffe import segmentation
    caffe.set_mode_cpu()
    info = json.loads((dataset / DATASET_INFO_FILE).read_text())
    names = info.get("labels") or []
    palette = info.get("palette") or segmentation.default_palette(max(2, len(names)))
    c, h, w = info["image_shape"]
    tp = data_transform(input_dir, caffe_pb2, text_format)
    mean = mean_array(tp, caffe_pb2, (c, h, w))
    net = caffe.Net(str(input_dir / DEPLOY_FILE), str(model), caffe.TEST)
    data_name, out_name = net.inputs[0], net.outputs[-1]
    results = []
    for k, (server_name, original) in enumerate(json.loads((work / "files.json").read_text())):
        try:
            with Image.open(work / server_name) as im:
                im.load()
                img = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        except Exception as exc:      # not an image: report it, segment the rest
            results.append({"filename": original, "error": f"not a readable image ({type(exc).__name__})"})
            continue
        pixels = np.asarray(img, dtype=np.uint8).reshape(h, w, -1)
        x = (pixels.transpose(2, 0, 1).astype(np.float32) - mean) * (tp.scale if tp.HasField("scale") else 1.0)
        net.blobs[data_name].reshape(1, *x.shape)
        net.blobs[data_name].data[0] = x
        scores = np.asarray(net.forward()[out_name])
        if scores.ndim != 4:
            raise ValueError(f"the deploy net's output '{out_name}' has shape {list(scores.shape)}: a "
                             "segmentation network must end in a score map (N x classes x H x W)")
        mask = scores[0].argmax(axis=0).astype(np.uint8)
        if mask.shape != (h, w):    # a coarser score map: nearest-neighbour up to the image
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        (work / f"mask_{k}.png").write_bytes(segmentation.palette_png(mask, palette))
        buf = io.BytesIO()
        Image.fromarray(segmentation.overlay(pixels[..., 0] if c == 1 else pixels, mask, palette)).save(buf, "PNG")
        (work / f"overlay_{k}.png").write_bytes(buf.getvalue())
        counts = np.bincount(mask.ravel(), minlength=max(len(names), int(mask.max()) + 1))
        results.append({"filename": original, "mask": f"mask_{k}.png", "overlay": f"overlay_{k}.png",
                        "shape": [h, w], "classes": [
                            {"label": names[i] if i < len(names) else str(i),
                             "color": palette[i] if i < len(palette) else [128, 128, 128],
                             "share": round(float(counts[i]) / mask.size, 6)} for i in range(len(counts))]})
    return results


def main(argv: list[str]) -> None:
    """Entry point: result.json holds the segmentations or the error."""
    work = Path(argv[3])
    try:
        result = {"ok": True, "predictions": segment(Path(argv[0]), Path(argv[1]), Path(argv[2]), work)}
    except BaseException as exc:   # a Python layer may raise anything
        result = tracebacks.failure(exc)   # the user's files and Caffe's frames only
    (work / RESULT_FILE).write_text(json.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
