"""A segmentation job's deploy net, loaded once inside the sandbox: the
cold runner (app.contained.segment) and the warm one
(app.contained.infer_server) both segment with it. Preprocessing is the
training pipeline's: the dataset's size and channels (squash), then the
features Data layer's mean and scale; the deploy net's last output is the
score map (N x classes x H x W), its argmax per pixel the mask.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from app.contained.classifier import data_transform, mean_array
from app.core import layer_code
from app.core.workspace import DATASET_INFO_FILE, DEPLOY_FILE


class Segmenter:
    """A job's deploy net loaded once (the cold runner and the warm
    app.contained.infer_server both use it): ``segment`` one image's bytes."""

    def __init__(self, input_dir: Path, model: Path, dataset: Path) -> None:
        layer_code.activate(input_dir)   # the job's helper modules and admin-added packages
        import caffe
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format

        from app.caffe import segmentation
        caffe.set_mode_cpu()
        info = json.loads((dataset / DATASET_INFO_FILE).read_text())
        self.names = info.get("labels") or []
        self.palette = info.get("palette") or segmentation.default_palette(max(2, len(self.names)))
        self.c, self.h, self.w = info["image_shape"]
        self.tp = data_transform(input_dir, caffe_pb2, text_format)
        self.mean = mean_array(self.tp, caffe_pb2, (self.c, self.h, self.w))
        self.net = caffe.Net(str(input_dir / DEPLOY_FILE), str(model), caffe.TEST)
        self.data_name, self.out_name = self.net.inputs[0], self.net.outputs[-1]

    def segment(self, data: bytes, original: str) -> tuple[dict, bytes | None, bytes | None]:
        """({"filename", "shape", "classes": [{"label", "color", "share"}]} or
        {"filename", "error"}, the mask PNG, the overlay PNG) of one image."""
        from PIL import Image

        from app.caffe import segmentation
        c, h, w = self.c, self.h, self.w
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                img = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        except Exception as exc:      # not an image: report it, segment the rest
            return {"filename": original, "error": f"not a readable image ({type(exc).__name__})"}, None, None
        pixels = np.asarray(img, dtype=np.uint8).reshape(h, w, -1)
        x = (pixels.transpose(2, 0, 1).astype(np.float32) - self.mean) * \
            (self.tp.scale if self.tp.HasField("scale") else 1.0)
        self.net.blobs[self.data_name].reshape(1, *x.shape)
        self.net.blobs[self.data_name].data[0] = x
        scores = np.asarray(self.net.forward()[self.out_name])
        if scores.ndim != 4:
            raise ValueError(f"the deploy net's output '{self.out_name}' has shape {list(scores.shape)}: a "
                             "segmentation network must end in a score map (N x classes x H x W)")
        mask = scores[0].argmax(axis=0).astype(np.uint8)
        if mask.shape != (h, w):    # a coarser score map: nearest-neighbour up to the image
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        buf = io.BytesIO()
        Image.fromarray(segmentation.overlay(pixels[..., 0] if c == 1 else pixels, mask, self.palette)).save(buf, "PNG")
        counts = np.bincount(mask.ravel(), minlength=max(len(self.names), int(mask.max()) + 1))
        record = {"filename": original, "shape": [h, w], "classes": [
            {"label": self.names[i] if i < len(self.names) else str(i),
             "color": self.palette[i] if i < len(self.palette) else [128, 128, 128],
             "share": round(float(counts[i]) / mask.size, 6)} for i in range(len(counts))]}
        return record, segmentation.palette_png(mask, self.palette), buf.getvalue()
