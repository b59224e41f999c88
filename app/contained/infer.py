"""Classify images with a trained job, executed inside the sandbox, one
process per request (the cold path; app.contained.infer_server is the warm
one, both compute with app.contained.classifier):

    python -m app.contained.infer INPUT_DIR CAFFEMODEL DATASET_DIR WORK_DIR

WORK_DIR holds the uploaded images (`files.json` maps server names to the
original names) and receives `result.json`; with a `visualize` file there,
also `visualizations.json` and its `vis_*.png` pictures.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from app.contained.classifier import Classifier
from app.core import tracebacks
from app.core.workspace import RESULT_FILE

VISUALIZE_FLAG, VISUALS_FILE = "visualize", "visualizations.json"


def classify(input_dir: Path, model: Path, dataset: Path, work: Path) -> list[dict]:
    """Predictions for every uploaded image, in upload order."""
    clf = Classifier(input_dir, model, dataset)
    files = [(original, work / server_name) for server_name, original in json.loads((work / "files.json").read_text())]
    results, visuals = clf.classify(files, visualize=(work / VISUALIZE_FLAG).exists())
    if visuals:
        for record, picture in visuals:
            (work / record["picture"]).write_bytes(picture)
        (work / VISUALS_FILE).write_text(json.dumps([record for record, _ in visuals]))
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
