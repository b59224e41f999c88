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

import json
import os
import sys
from pathlib import Path

from app.contained.segmenter import Segmenter
from app.core import tracebacks
from app.core.workspace import RESULT_FILE


def segment(input_dir: Path, model: Path, dataset: Path, work: Path) -> list[dict]:
    """Per uploaded image: {"filename", "mask", "overlay", "shape", "classes":
    [{"label", "color", "share"}]} (mask/overlay: file names in ``work``)."""
    seg = Segmenter(input_dir, model, dataset)
    results = []
    for k, (server_name, original) in enumerate(json.loads((work / "files.json").read_text())):
        record, mask, overlay = seg.segment((work / server_name).read_bytes(), original)
        if mask is not None:
            (work / f"mask_{k}.png").write_bytes(mask)
            (work / f"overlay_{k}.png").write_bytes(overlay)
            record = dict(record, mask=f"mask_{k}.png", overlay=f"overlay_{k}.png")
        results.append(record)
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
