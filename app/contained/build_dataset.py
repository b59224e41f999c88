"""Build a dataset from an image archive, executed inside the sandbox:

    python -m app.contained.build_dataset ARCHIVE OUT_DIR PARAMS_JSON

The archive (zip or tar.gz, one folder per class) is read member by member,
never extracted: entries with absolute paths, `..` or links are refused, and
the entry count and total uncompressed bytes are capped while reading (zip
bombs). Files that are not images are skipped and counted. Writes the
dataset (see datasets.py) into OUT_DIR, `progress.json` while working and
`result.json` at the end.
"""
from __future__ import annotations

import io
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.core.archives import ArchiveError, members   # shared with the Python layer upload
from app.core.workspace import PROGRESS_FILE, RESULT_FILE
from app.core.status import RunOutcome

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def build(archive: str, out: str, params: dict) -> dict:
    """Decode, resize and split the archive's images; write the dataset."""
    from PIL import Image

    from app.caffe.datasets import write_dataset
    from app.caffe.images import resize
    Image.MAX_IMAGE_PIXELS = int(params.get("max_pixels", 40_000_000))  # decompression bombs
    width, height, channels = int(params["image_width"]), int(params["image_height"]), int(params["channels"])
    mode = "L" if channels == 1 else "RGB"
    rng = np.random.default_rng(0)
    entries = list(members(archive, int(params["max_files"]), int(params["max_bytes"])))
    roots = {e[0].parts[0] for e in entries if len(e[0].parts) > 1}
    # One wrapping folder ("mydata/cat/1.png") is common: look inside it,
    # whatever loose files sit beside the class folders ("mydata/README.txt"
    # is skipped, not taken for a class).
    strip = 1 if len(roots) == 1 and any(len(e[0].parts) > 2 for e in entries) else 0
    by_class: dict[str, list] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    folders = set()
    for i, (path, data) in enumerate(entries):
        parts = path.parts[strip:]
        if len(parts) < 2 or parts[-1].startswith("."):
            skipped["not in a class folder"] += 1
            continue
        folders.add(parts[0])
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                arr = np.asarray(resize(im.convert(mode), width, height, params["resize_mode"], rng))
        except Image.DecompressionBombError:
            skipped["too many pixels"] += 1
            continue
        except Exception:       # anything Pillow cannot decode is "not an image"
            skipped["not an image"] += 1
            continue
        by_class[parts[0]].append(arr.reshape(height, width, -1).transpose(2, 0, 1))
        if i % 50 == 0:
            _progress(out, 0.9 * (i + 1) / len(entries))
    empty = sorted(folders - set(by_class))
    if empty:
        raise ArchiveError(f"class folder(s) without any image: {', '.join(empty[:10])}")
    if len(by_class) < 2:
        raise ArchiveError(f"a dataset needs at least two class folders with images (found {len(by_class)})")
    names = sorted(by_class)
    images = np.concatenate([np.stack(by_class[n]) for n in names]).astype(np.uint8)
    labels = np.concatenate([np.full(len(by_class[n]), i) for i, n in enumerate(names)])
    info = write_dataset(Path(out), images, labels, names, float(params["val_percent"]), params["name"],
                         in_place=True)
    info["skipped"] = dict(skipped)
    info["resize_mode"] = params["resize_mode"]
    return info


def build_segmentation(archive: str, out: str, params: dict) -> dict:
    """A segmentation dataset (images/ + labels/ pairs): app.caffe.segmentation."""
    from app.caffe import segmentation
    entries = list(members(archive, int(params["max_files"]), int(params["max_bytes"])))
    decoded = segmentation.decode_pairs(entries, params, lambda v: _progress(out, v))
    return segmentation.write_segmentation(Path(out), decoded, float(params["val_percent"]), params["name"])


def _progress(out: str, value: float) -> None:
    tmp = os.path.join(out, ".progress.tmp")
    with open(tmp, "w") as fh:
        json.dump({"progress": round(value, 3)}, fh)
    os.replace(tmp, os.path.join(out, PROGRESS_FILE))


def main(argv: list[str]) -> None:
    """Entry point: always writes result.json."""
    archive, out, params = argv[0], argv[1], json.loads(open(argv[2]).read())
    try:
        builder = build_segmentation if params.get("type") == "segmentation" else build
        result = {"status": RunOutcome.DONE.value, "info": builder(archive, out, params)}
    except ArchiveError as exc:
        result = {"status": RunOutcome.ERROR.value, "message": str(exc)}
    except MemoryError:
        result = {"status": RunOutcome.ERROR.value, "message": "the dataset does not fit in the memory limit"}
    with open(os.path.join(out, RESULT_FILE), "w") as fh:
        json.dump(result, fh)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
