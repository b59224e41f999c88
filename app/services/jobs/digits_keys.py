"""DIGITS's JSON keys that come from more than one record: a model's
dataset, files and versions (DIGITS's ``json_dict``, as docs/API.md shows
it), and a dataset's task lists (``CreateDbTasks``, ``ParseFolderTasks``).
Shared by the DIGITS routes (app.web.digits) and the model archive's
info.json (app.services.jobs.files), so that both say the same."""
from __future__ import annotations

from app import __version__
from app.caffe.datasets import storage
from app.core.status import DatasetStatus
from app.core.workspace import snapshot_name
from app.services.runtime.caffe_info import caffe_info
from app.services.context import Context

# The file names DIGITS's archives and JSON use.
ORIGINAL_FILE = "original.prototxt"
LABELS_FILE = "labels.txt"
MEAN_FILE = "mean.binaryproto"


def image_dimensions(shape: list | None) -> list | None:
    """DIGITS's [height, width, channels] of our [channels, height, width]."""
    if not shape or len(shape) != 3:
        return None
    c, h, w = shape
    return [h, w, c]


def model_keys(c: Context, job: dict) -> dict:
    """A model's DIGITS keys: versions ("digits version" is this service's),
    its dataset's image dimensions, resize mode, labels and mean files, the
    latest snapshot's file name and its owner."""
    ds = c.store.get_dataset(job["dataset"]) if job.get("dataset") else None
    info = (ds or {}).get("info") or {}
    snaps = [s["iteration"] for s in job.get("snapshots") or [] if isinstance(s.get("iteration"), int)]
    return {"caffe version": caffe_info(c.cfg.caffe_python).get("version"),
            "digits version": __version__,
            "image dimensions": image_dimensions(info.get("image_shape")),
            "image resize mode": info.get("resize_mode") or (info.get("params") or {}).get("resize_mode")
            or "squash",
            "labels file": LABELS_FILE if ds else None, "mean file": MEAN_FILE if ds else None,
            "network file": ORIGINAL_FILE,
            "snapshot file": snapshot_name(max(snaps), ".caffemodel") if snaps else "no snapshots",
            "username": job.get("owner")}


def dataset_tasks(ds: dict) -> dict:
    """DIGITS's task lists of an image classification dataset: one
    "Create DB" per split (what was written: backend, encoding, compression) and the
    folder parse's counts. Counts are null until the build is done."""
    info = ds.get("info") or {}
    params = info.get("params") or {}
    done = ds["status"] == DatasetStatus.DONE
    shape = info.get("image_shape") or [params.get("channels"), params.get("image_height"),
                                        params.get("image_width")]
    splits = [("train", "train_count"), ("val", "val_count")]
    if info.get("test_count") is not None or "test" in (params.get("folders") or {}) \
            or (params.get("test_percent") or 0) > 0:
        splits.append(("test", "test_count"))
    note = {"encoding_note": info["encoding_note"]} if info.get("encoding_note") else {}
    create = [{"name": f"Create DB ({split})", **storage(info), **note,
               "entries": info.get(key) if done else None, "image_channels": shape[0],
               "image_height": shape[1], "image_width": shape[2]} for split, key in splits]
    parsed = info.get("parsed_folders") if done else None
    if isinstance(parsed, list) and parsed:
        # One per folder parsed, as DIGITS's: the training folder's (what it
        # gave to train, val and test) and a separate val / test folder's.
        parse = [{"name": "Parse Folder (train/val)" if p.get("folder") == "train" else
                  f"Parse Folder ({p.get('folder')})",
                  **{k: p.get(k) for k in ("label_count", "train_count", "val_count", "test_count")}}
                 for p in parsed if isinstance(p, dict)]
    else:   # a textfile dataset, one built before the per-folder counts, or one not done
        parse = [{"name": "Parse Folder (train/val)", "label_count": info.get("num_classes") if done else None,
                  "train_count": info.get("train_count") if done else None,
                  "val_count": info.get("val_count") if done else None,
                  "test_count": (info.get("test_count") or 0) if done else None}]
    return {"CreateDbTasks": create, "ParseFolderTasks": parse}
