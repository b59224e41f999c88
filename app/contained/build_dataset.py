"""Build a dataset from an image archive or a server folder, executed
inside the sandbox:

    python -m app.contained.build_dataset ARCHIVE OUT_DIR PARAMS_JSON

The archive (zip or tar.gz, one folder per class) is read member by member,
never extracted: entries with absolute paths, `..` or links are refused, and
the entry count and total uncompressed bytes are capped while reading (zip
bombs). With ``folders`` in the parameters (DIGITS's folder_train /
folder_val / folder_test under the server's data roots) the folders are
read instead, with the data roots bound read-only into this sandbox. Files
that are not images are skipped and counted. The images are read, decoded
and resized by a pool of processes forked from this one, one per core
(app.contained.dataset_pool; ``LAYERBENCH_DATASET_WORKERS=1``: serially,
with the same result); this process alone writes the dataset (see
datasets.py) into OUT_DIR, `progress.json` while working (entries done of
all) and `result.json` at the end.
"""
from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from app.contained import dataset_pool
from app.core.archives import ArchiveError, indexed, members   # shared with the Python layer upload
from app.core.workspace import PROGRESS_FILE, RESULT_FILE
from app.core.status import RunOutcome

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def build(archive: str, out: str, params: dict) -> dict:
    """Decode, resize and split the archive's (or server folder's) images;
    write the dataset. With DIGITS's separate validation / test folders
    (``folders``: "val", "test"), those are the splits, their class folders
    named as in the train folder. The images are decoded on every core
    (app.contained.dataset_pool); this process alone writes the dataset."""
    from app.caffe.datasets import split_three, write_splits
    folders = params.get("folders") or {}
    if folders:     # every folder listed first: the progress counts all their files
        sides = {s: folder_entries(folders[s], params) for s in ("train", "val", "test") if s in folders}
        max_bytes = None
    else:
        sides = {"train": indexed(archive, int(params["max_files"]), int(params["max_bytes"]))}
        max_bytes = int(params["max_bytes"])
    progress = Progress(out, sum(len(e) for e in sides.values()))
    limits = params.get("per_class") or {}
    names, images, labels, skipped = _decode(sides["train"], params, progress, 0, max_bytes)
    names, images, labels = per_class(names, images, labels, limits.get("train") or {}, skipped)
    # DIGITS's parse_folder: what the training folder gives to validation and
    # test, per class; a separate folder replaces its share (DIGITS sets the
    # percentage to 0 then).
    val_pct = 0.0 if "val" in folders else float(params["val_percent"])
    test_pct = 0.0 if "test" in folders else float(params.get("test_percent") or 0)
    tr, va, te = split_three(labels, val_pct, test_pct)
    splits = {"train": (images[tr], labels[tr]), "val": (images[va], labels[va])}
    if test_pct:
        splits["test"] = (images[te], labels[te])
    # DIGITS's ParseFolderTasks: one per folder parsed, each with what it
    # gave to each split and how many classes it kept.
    parsed = [{"folder": "train", "label_count": len(names), "train_count": int(len(tr)),
               "val_count": int(len(va)), "test_count": int(len(te)) if test_pct else 0}]
    for k, side in enumerate(s for s in ("val", "test") if s in folders):
        _, x, y, more = _decode(sides[side], params, progress, k + 1, None, classes=names)
        _, x, y = per_class(names, x, y, limits.get(side) or {}, more, keep_names=True)
        if not len(y):
            raise ArchiveError(f"the {side} folder keeps no image within its per-class limits")
        splits[side] = (x, y)
        parsed.append({"folder": side, "label_count": int(len(np.unique(y))), "train_count": 0, "val_count": 0,
                       "test_count": 0, f"{side}_count": int(len(y))})
        for why, n in more.items():
            skipped[why] = skipped.get(why, 0) + n
    info = write_splits(Path(out), splits, names, params["name"], in_place=True,
                        backend=params.get("backend") or "lmdb", compression=params.get("compression") or "none",
                        encoding=params.get("encoding") or "none")
    info["parsed_folders"] = parsed
    info["skipped"] = dict(skipped)
    info["resize_mode"] = params["resize_mode"]
    return info


LIST_LINE = re.compile(r"(.+?)\s+(\d+)\s*$")     # DIGITS's create_db: "[/]path/to/file.jpg 123"


def build_textfile(out: str, params: dict) -> dict:
    """DIGITS's textfile dataset: each split's list of ``path label`` lines
    (absolute paths, or relative to the split's folder) and the labels file,
    all read here, inside the sandbox; a path whose real path lies outside
    the data roots fails the build, naming it and the roots."""
    from app.caffe.datasets import write_splits
    spec = params["textfile"]
    roots = [r.rstrip("/") for r in params.get("roots") or []]
    names = [line.strip() for line in _read_list(spec["labels"], "the labels file").splitlines() if line.strip()]
    if len(names) < 2:
        raise ArchiveError("the labels file must name at least two classes")
    entries = {}
    for split, side in spec["splits"].items():
        entries[split] = _list_entries(split, side, names, roots, int(params["max_files"]))
    progress = Progress(out, sum(len(e) for e in entries.values()))
    width, height, channels = int(params["image_width"]), int(params["image_height"]), int(params["channels"])
    splits, skipped = {}, defaultdict(int)
    for k, split in enumerate(entries):
        reads = [lambda limit=None, p=path: _read(p) for path, _ in entries[split]]
        images, codes = dataset_pool.decode(reads, (channels, height, width), params["resize_mode"], k,
                                            lambda n: progress.done(n), None)
        progress.done(len(reads), final=True)
        labels = np.array([label for (_, label), code in zip(entries[split], codes) if code == dataset_pool.OK],
                          dtype=np.int64)
        for code in codes:
            if code != dataset_pool.OK:
                skipped[dataset_pool.SKIPPED[code]] += 1
        if not len(labels):
            raise ArchiveError(f"no image of the {split} list could be read")
        if spec.get("shuffle", True):   # DIGITS's textfile_shuffle
            order = np.random.default_rng(k).permutation(len(labels))
            images, labels = images[order], labels[order]
        splits[split] = (images, labels)
    splits.setdefault("val", (np.zeros((0, channels, height, width), np.uint8), np.zeros(0, np.int64)))
    info = write_splits(Path(out), splits, names, params["name"], in_place=True,
                        backend=params.get("backend") or "lmdb", compression=params.get("compression") or "none",
                        encoding=params.get("encoding") or "none")
    info["skipped"] = dict(skipped)
    info["resize_mode"] = params["resize_mode"]
    return info


def _read_list(path: str, what: str) -> str:
    try:
        return _read(path).decode("utf-8", "replace")
    except OSError as exc:
        raise ArchiveError(f"the sandbox cannot read {what} '{path}' ({exc.strerror or exc}): make it readable "
                           "by others (chmod o+r)") from None


def _list_entries(split: str, side: dict, names: list[str], roots: list[str], limit: int) -> list:
    """(real path, label) of a list's lines, each checked: DIGITS's format,
    a label of the labels file, inside the data roots."""
    out = []
    for number, line in enumerate(_read_list(side["list"], f"the {split} list").splitlines(), 1):
        if not line.strip():
            continue
        match = LIST_LINE.match(line.strip())
        if match is None:
            raise ArchiveError(f"the {split} list, line {number}: expected 'path label'")
        path, label = match.group(1), int(match.group(2))
        if label >= len(names):
            raise ArchiveError(f"the {split} list, line {number}: label {label} is not a line of the labels file")
        if not path.startswith("/"):
            if not side.get("folder"):
                raise ArchiveError(f"the {split} list, line {number}: a relative path without the split's folder")
            path = os.path.join(side["folder"], path)
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r + "/") for r in roots):
            raise ArchiveError(f"the {split} list, line {number}: '{path[:300]}' is not inside this server's data "
                               f"roots ({', '.join(roots) or 'none'}), links resolved")
        out.append((real, label))
        if len(out) > limit:
            raise ArchiveError(f"the {split} list has more than {limit} images")
    return out


def per_class(names: list[str], images: np.ndarray, labels: np.ndarray, limits: dict, skipped: dict,
              keep_names: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """DIGITS's per-class limits (parse_folder's min/max_per_category):
    the first ``max`` images of each class (in the folder's sorted order),
    and a class with fewer than ``min`` left out (counted in ``skipped``).
    Without ``keep_names`` (the training folder) a left-out class is no
    class of the dataset; at least two must remain."""
    lo, hi = limits.get("min") or 1, limits.get("max")
    keep, kept = [], []
    for i, _ in enumerate(names):
        idx = np.flatnonzero(labels == i)[:hi]
        if len(idx) < lo:
            if len(idx):
                skipped["in a class below its minimum per class"] = \
                    skipped.get("in a class below its minimum per class", 0) + len(idx)
            continue
        keep.append(idx)
        kept.append(i)
    if hi is not None:
        over = sum(max(0, int((labels == i).sum()) - hi) for i in range(len(names)))
        if over:
            skipped["over the maximum per class"] = skipped.get("over the maximum per class", 0) + over
    order = np.concatenate(keep) if keep else np.zeros(0, dtype=int)
    if keep_names:
        return names, images[order], labels[order]
    if len(kept) < 2:
        raise ArchiveError(f"a dataset needs at least two classes with at least {lo} image(s) each "
                           f"(found {len(kept)})")
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return [names[i] for i in kept], images[order], remap[labels[order]]


class Progress:
    """``progress.json``: the entries done of all to decode, and the share of
    the whole build (decoding is 90% of it); written at most every 0.1 s."""

    def __init__(self, out: str, total: int) -> None:
        self.out, self.total, self.base, self.last = out, total, 0, 0.0

    def done(self, n: int, final: bool = False) -> None:
        """The current side's first ``n`` entries are done (``final``: the side is)."""
        now = time.monotonic()
        if final or now - self.last >= 0.1:
            self.last = now
            done = self.base + n
            _progress(self.out, 0.9 * done / max(1, self.total), done, self.total)
        if final:
            self.base += n


def _decode(entries: list, params: dict, progress: Progress, side: int, max_bytes: int | None,
            classes: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """(class names, images (N, C, H, W) uint8, labels, skipped counts) of
    ``entries`` ((path, read) pairs, one folder per class), grouped by class
    in the entries' order. ``classes``: the train folder's names, which a
    validation or test folder must use. ``side``: 0 train, 1 and 2 the
    others (seeds the fill modes' noise)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = int(params.get("max_pixels", 40_000_000))  # decompression bombs
    width, height, channels = int(params["image_width"]), int(params["image_height"]), int(params["channels"])
    roots = {e[0].parts[0] for e in entries if len(e[0].parts) > 1}
    # One wrapping folder ("mydata/cat/1.png") is common: look inside it,
    # whatever loose files sit beside the class folders ("mydata/README.txt"
    # is skipped, not taken for a class).
    strip = 1 if len(roots) == 1 and any(len(e[0].parts) > 2 for e in entries) else 0
    skipped: dict[str, int] = defaultdict(int)
    reads, folder_of = [], []
    for path, read in entries:
        parts = path.parts[strip:]
        if len(parts) < 2 or parts[-1].startswith("."):
            skipped["not in a class folder"] += 1
            continue
        reads.append(read)
        folder_of.append(parts[0])
    outside = len(entries) - len(reads)     # done before any decoding
    images, codes = dataset_pool.decode(reads, (channels, height, width), params["resize_mode"], side,
                                        lambda n: progress.done(outside + n), max_bytes)
    progress.done(len(entries), final=True)
    decoded = [f for f, code in zip(folder_of, codes) if code == dataset_pool.OK]
    for code in codes:
        if code != dataset_pool.OK:
            skipped[dataset_pool.SKIPPED[code]] += 1
    found = set(decoded)
    if classes is not None:
        unknown = sorted(found - set(classes))
        if unknown:
            raise ArchiveError(f"class folder(s) not in the train folder: {', '.join(unknown[:10])}")
        if not found:
            raise ArchiveError("a validation or test folder without any image")
        names = classes
    else:
        empty = sorted(set(folder_of) - found)
        if empty:
            raise ArchiveError(f"class folder(s) without any image: {', '.join(empty[:10])}")
        if len(found) < 2:
            raise ArchiveError(f"a dataset needs at least two class folders with images (found {len(found)})")
        names = sorted(found)
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[f] for f in decoded], dtype=np.int64)
    order = np.argsort(labels, kind="stable")   # by class, each in the entries' order
    return names, images[order], labels[order], skipped


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
            out.append((PurePosixPath(os.path.relpath(path, folder)), lambda limit=None, p=path: _read(p)))
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


def _progress(out: str, value: float, done: int | None = None, total: int | None = None) -> None:
    tmp = os.path.join(out, ".progress.tmp")
    with open(tmp, "w") as fh:
        json.dump({"progress": round(value, 3), **({"done": done, "total": total} if total is not None else {})},
                  fh)
    os.replace(tmp, os.path.join(out, PROGRESS_FILE))


def main(argv: list[str]) -> None:
    """Entry point: always writes result.json."""
    archive, out, params = argv[0], argv[1], json.loads(open(argv[2]).read())
    try:
        if params.get("textfile"):
            info = build_textfile(out, params)
        else:
            builder = build_segmentation if params.get("type") == "segmentation" else build
            info = builder(archive, out, params)
        result = {"status": RunOutcome.DONE.value, "info": info}
    except ArchiveError as exc:
        result = {"status": RunOutcome.ERROR.value, "message": str(exc)}
    except MemoryError:
        result = {"status": RunOutcome.ERROR.value, "message": "the dataset does not fit in the memory limit"}
    with open(os.path.join(out, RESULT_FILE), "w") as fh:
        json.dump(result, fh)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
