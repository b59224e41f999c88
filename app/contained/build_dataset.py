"""Build a dataset from an image archive or a server folder, executed
inside the sandbox:

    python -m app.contained.build_dataset ARCHIVE OUT_DIR PARAMS_JSON

The archive (zip or tar.gz, one folder per class) is read member by member,
never extracted: entries with absolute paths, `..` or links are refused, and
the entry count and total uncompressed bytes are capped while reading (zip
bombs). With ``folders`` in the parameters (DIGITS's folder_train /
folder_val / folder_test under the server's data roots) the folders are
read instead, with the data roots bound read-only into this sandbox. Files that are not images are skipped and counted. Writes the
dataset (see datasets.py) into OUT_DIR, `progress.json` while working and
`result.json` at the end.
"""
from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from app.core.archives import ArchiveError, members   # shared with the Python layer upload
from app.core.workspace import PROGRESS_FILE, RESULT_FILE
from app.core.status import RunOutcome

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def build(archive: str, out: str, params: dict) -> dict:
    """Decode, resize and split the archive's (or server folder's) images;
    write the dataset. With DIGITS's separate validation / test folders
    (``folders``: "val", "test"), those are the splits, their class folders
    named as in the train folder."""
    from app.caffe.datasets import stratified_split, write_dataset, write_splits
    folders = params.get("folders") or {}
    if folders:
        entries = folder_entries(folders["train"], params)
    else:
        entries = [(p, lambda d=data: d) for p, data in members(archive, int(params["max_files"]),
                                                                 int(params["max_bytes"]))]
    share = 0.9 / max(1, len(folders))     # of the progress bar, per folder
    names, images, labels, skipped = _decode(entries, params, out, 0.0, share)
    if not set(folders) - {"train"}:
        info = write_dataset(Path(out), images, labels, names, float(params["val_percent"]), params["name"],
                             in_place=True)
    else:
        splits = {"train": (images, labels)}
        if "val" not in folders:    # a test folder only: validation split off train, as DIGITS does
            tr, va = stratified_split(labels, float(params["val_percent"]))
            splits = {"train": (images[tr], labels[tr]), "val": (images[va], labels[va])}
        for k, side in enumerate(s for s in ("val", "test") if s in folders):
            _, x, y, more = _decode(folder_entries(folders[side], params), params, out,
                                    share * (k + 1), share, classes=names)
            splits[side] = (x, y)
            for why, n in more.items():
                skipped[why] = skipped.get(why, 0) + n
        info = write_splits(Path(out), splits, names, params["name"], in_place=True)
    info["skipped"] = dict(skipped)
    info["resize_mode"] = params["resize_mode"]
    return info


def _decode(entries: list, params: dict, out: str, start: float, share: float,
            classes: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(class names, images (N, C, H, W) uint8, labels, skipped counts) of
    ``entries`` ((path, read) pairs, one folder per class). ``classes``: the
    train folder's names, which a validation or test folder must use."""
    from PIL import Image

    from app.caffe.images import resize
    Image.MAX_IMAGE_PIXELS = int(params.get("max_pixels", 40_000_000))  # decompression bombs
    width, height, channels = int(params["image_width"]), int(params["image_height"]), int(params["channels"])
    mode = "L" if channels == 1 else "RGB"
    rng = np.random.default_rng(0)
    roots = {e[0].parts[0] for e in entries if len(e[0].parts) > 1}
    # One wrapping folder ("mydata/cat/1.png") is common: look inside it,
    # whatever loose files sit beside the class folders ("mydata/README.txt"
    # is skipped, not taken for a class).
    strip = 1 if len(roots) == 1 and any(len(e[0].parts) > 2 for e in entries) else 0
    by_class: dict[str, list] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    folders = set()
    for i, (path, read) in enumerate(entries):
        parts = path.parts[strip:]
        if len(parts) < 2 or parts[-1].startswith("."):
            skipped["not in a class folder"] += 1
            continue
        folders.add(parts[0])
        try:
            data = read()
        except OSError:
            skipped["not readable"] += 1
            continue
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
            _progress(out, start + share * (i + 1) / len(entries))
    if classes is not None:
        unknown = sorted(set(by_class) - set(classes))
        if unknown:
            raise ArchiveError(f"class folder(s) not in the train folder: {', '.join(unknown[:10])}")
        if not by_class:
            raise ArchiveError("a validation or test folder without any image")
        names = classes
    else:
        empty = sorted(folders - set(by_class))
        if empty:
            raise ArchiveError(f"class folder(s) without any image: {', '.join(empty[:10])}")
        if len(by_class) < 2:
            raise ArchiveError(f"a dataset needs at least two class folders with images (found {len(by_class)})")
        names = sorted(by_class)
    present = [n for n in names if by_class.get(n)]
    images = np.concatenate([np.stack(by_class[n]) for n in present]).astype(np.uint8)
    labels = np.concatenate([np.full(len(by_class[n]), names.index(n)) for n in present])
    return names, images, labels, skipped


MAX_FILE_BYTES = 256 << 20   # one file of a server folder (a larger one is skipped as unreadable)


def folder_entries(folder: str, params: dict) -> list:
    """(relative path, read) of every file below a server folder, sorted,
    at most ``max_files``. Links are followed only where they lead inside
    the data roots (all this sandbox can see of the server's data anyway);
    a folder the sandbox cannot list fails the build, naming it."""
    roots = [r.rstrip("/") for r in params.get("roots") or []]

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == r or real.startswith(r + "/") for r in roots)

    def unreadable(err: OSError) -> None:
        raise ArchiveError(f"the sandbox cannot read '{err.filename}' (it runs as an unprivileged user of its "
                           "own, without groups): make it readable by others (chmod -R o+rX)")

    out, seen, limit = [], set(), int(params["max_files"])
    for top, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or not inside(top):
            dirs[:] = []    # a link loop, or a link out of the roots
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            if not inside(path):
                continue
            out.append((PurePosixPath(os.path.relpath(path, folder)), lambda p=path: _read(p)))
            if len(out) > limit:
                raise ArchiveError(f"the folder has more than {limit} files")
    return out


def _read(path: str) -> bytes:
    # Non-blocking open and a check of what was opened: a FIFO or a device
    # under the folder is skipped, never waited on.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            raise OSError("not a regular file, or too large")
        return fh.read(MAX_FILE_BYTES)


def _readable(entries: list) -> list:
    out = []
    for path, read in entries:
        try:
            out.append((path, read()))
        except OSError:
            continue
    return out


def build_segmentation(archive: str, out: str, params: dict) -> dict:
    """A segmentation dataset (images/ + labels/ pairs): app.caffe.segmentation."""
    from app.caffe import segmentation
    if params.get("folders"):
        entries = _readable(folder_entries(params["folders"]["train"], params))
    else:
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
