"""Classify images with a trained job, executed inside the sandbox and kept
alive between requests (warm inference; the host side is app.services.inference.warm_pool):

    python -m app.contained.infer_server INPUT_DIR CAFFEMODEL DATASET_DIR WORK_DIR

Loads the net once (a classifier, or a segmenter for a job trained on a
segmentation dataset: app.contained.segmenter), says {"ready": true, "kind":
"classify" | "segment"} and then answers one request frame
on stdin with one reply frame (app.core.infer_wire) until stdin closes. The
images come as bytes in the frame; nothing is read from WORK_DIR (its
writable scratch directory, for whatever the layer code writes).

The protocol uses a private copy of the original stdout: descriptor 1 then
points at stderr, so a layer's print() lands in the log instead of
corrupting a reply. After a failure (the net could not load, a layer raised)
the reply says so and the process exits: a net a layer left half-way is
never used again.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from app.contained.classifier import Classifier
from app.core import infer_wire, tracebacks
from app.core.workspace import DATASET_INFO_FILE


def _send(fd: int, header: dict, blobs: list[bytes] = ()) -> None:
    infer_wire.write_all(fd, infer_wire.encode(header, list(blobs)), None)


def _answer(clf: Classifier, header: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
    names = header.get("images") or []
    images = [(str(name), io.BytesIO(data)) for name, data in zip(names, blobs)]
    predictions, visuals = clf.classify(images, visualize=bool(header.get("visualize")))
    if not header.get("probabilities"):
        for p in predictions:    # only asked for: a 1000-class net's list is most of a reply
            p.pop("probabilities", None)
    return ({"ok": True, "predictions": predictions, "visuals": [record for record, _ in visuals]},
            [picture for _, picture in visuals])


def _segment(seg, header: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
    # Per image its record; a segmented one names its mask and overlay by
    # their index among the reply's pictures.
    predictions, pictures = [], []
    for name, data in zip(header.get("images") or [], blobs):
        record, mask, overlay = seg.segment(data, str(name))
        if mask is not None:
            record = dict(record, mask=len(pictures), overlay=len(pictures) + 1)
            pictures += [mask, overlay]
        predictions.append(record)
    return {"ok": True, "predictions": predictions}, pictures


def _load(argv: list[str]):
    dataset = Path(argv[2])
    try:
        kind = json.loads((dataset / DATASET_INFO_FILE).read_text()).get("type")
    except (OSError, ValueError):
        kind = None
    if kind == "segmentation":
        from app.contained.segmenter import Segmenter
        return "segment", Segmenter(Path(argv[0]), Path(argv[1]), dataset)
    return "classify", Classifier(Path(argv[0]), Path(argv[1]), dataset)


def main(argv: list[str]) -> None:
    """Entry point: serve requests until the host closes stdin."""
    proto = os.dup(1)
    os.dup2(2, 1)
    try:
        kind, model = _load(argv)
    except BaseException as exc:   # a Python layer may raise anything, in setup too
        _send(proto, tracebacks.failure(exc))
        os._exit(0)
    _send(proto, {"ready": True, "kind": kind})
    answer = _segment if kind == "segment" else _answer
    while True:
        try:
            # The host is trusted; the bounds only keep a confused one from
            # making this process allocate without limit.
            header, blobs = infer_wire.read_frame(0, None, max_blobs=1000, max_blob=64 << 20,
                                                  max_total=1 << 31)
        except infer_wire.Broken:
            os._exit(0)            # stdin closed: the host retired this process
        try:
            reply, pictures = answer(model, header, blobs)
        except BaseException as exc:
            _send(proto, tracebacks.failure(exc))
            os._exit(0)
        _send(proto, reply, pictures)


if __name__ == "__main__":
    main(sys.argv[1:])
