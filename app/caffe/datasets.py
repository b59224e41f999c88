"""Datasets: LMDB train/val sets with labels and a mean image.

A dataset directory holds ``train_db/`` and ``val_db/`` (LMDB of Caffe
``Datum``), ``labels.txt`` (one class name per line, index = label),
``mean.binaryproto`` and ``info.json``. The built-in ``sample-digits`` set is
scikit-learn's bundled 8x8 digits scaled to 28x28 grayscale.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from app.core.workspace import DATASET_INFO_FILE
from app.caffe.proto import caffe_pb2

SAMPLE_ID = "sample-digits"


def write_lmdb(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 images (N, C, H, W) with int labels as a Caffe LMDB."""
    import lmdb

    pb = caffe_pb2()
    n, c, h, w = images.shape
    # map_size is an upper bound of the file's size, not an allocation.
    env = lmdb.open(str(path), map_size=max(1 << 24, images.nbytes * 3 + (n << 10)),
                    subdir=True, lock=True)
    try:
        with env.begin(write=True) as txn:
            for i in range(n):
                datum = pb.Datum(channels=c, height=h, width=w,
                                 data=np.ascontiguousarray(images[i], dtype=np.uint8).tobytes(),
                                 label=int(labels[i]))
                txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    finally:
        env.close()


def write_mean(path: Path, images: np.ndarray) -> np.ndarray:
    """Write the per-pixel mean of uint8 images (N, C, H, W) as binaryproto."""
    # Summed as float64 without a float64 copy of every image (that copy took
    # longer than decoding them): integer sums, exact in any order, so the
    # same mean to the bit.
    mean = images.mean(axis=0, dtype=np.float64).astype(np.float32)
    blob = caffe_pb2().BlobProto()
    blob.shape.dim.extend([1, *mean.shape])
    blob.data.extend(mean.ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return mean


def stratified_split(labels: np.ndarray, val_percent: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``val_percent`` of every class goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(len(idx) * val_percent / 100.0))
        val.extend(idx[:k])
        train.extend(idx[k:])
    return rng.permutation(np.array(train, dtype=int)), rng.permutation(np.array(val, dtype=int))


def split_three(labels: np.ndarray, val_percent: float, test_percent: float, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): of every class ``val_percent`` to val and
    ``test_percent`` to test (DIGITS's folder_pct_val / folder_pct_test),
    the rest to train, which keeps at least one image of a class that has
    any (parse_folder's three-way split does the same). Without a test
    share, exactly ``stratified_split``'s split."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(len(idx) * val_percent / 100.0))
        t = min(int(round(len(idx) * test_percent / 100.0)), max(0, len(idx) - k - 1))
        if test_percent and not t and len(idx) - k > 1:
            t = 1    # a share asked for gets an image when the class can spare one
        val.extend(idx[:k])
        test.extend(idx[k:k + t])
        train.extend(idx[k + t:])
    return (rng.permutation(np.array(train, dtype=int)), rng.permutation(np.array(val, dtype=int)),
            rng.permutation(np.array(test, dtype=int)))


# DIGITS's HDF5 files (create_db.py's Hdf5Writer): float32 data (N, C, H, W)
# and label (N,), files of at most this many values (its hdf5_dset_limit,
# 2**31), listed in <db>/list.txt for Caffe's HDF5Data layer.
HDF5_VALUES_PER_FILE = 2 ** 31
HDF5_LIST = "list.txt"


def write_hdf5(path: Path, images: np.ndarray, labels: np.ndarray, compression: str = "none",
               values_per_file: int = HDF5_VALUES_PER_FILE) -> list[str]:
    """Write uint8 images (N, C, H, W) with int labels as DIGITS's HDF5
    database: ``path``/0.h5, <n>.h5 ... (each named by its first image's
    index, at most ``values_per_file`` pixel values), and ``list.txt`` of
    their names (relative, as DIGITS writes it); the names. Caffe's
    HDF5Data opens a list's paths as given: ``write_hdf5_list`` writes the
    one it reads, with absolute paths, where the dataset is published."""
    import h5py

    n, c, h, w = images.shape
    per_file = max(1, values_per_file // max(1, c * h * w))
    path.mkdir()
    names = []
    for lo in range(0, max(n, 1), per_file):
        chunk = images[lo:lo + per_file]
        name = f"{lo}.h5"
        with h5py.File(path / name, "w") as fh:
            # chunks=True and gzip as DIGITS writes them; float32 as Caffe's
            # HDF5Data loads (it feeds the values as they are: no transform).
            opts = {"compression": "gzip"} if compression == "gzip" else {}
            fh.create_dataset("data", data=chunk.astype(np.float32), maxshape=(per_file, c, h, w),
                              chunks=True, **opts)
            fh.create_dataset("label", data=labels[lo:lo + per_file].astype(np.float32), maxshape=(per_file,),
                              chunks=True, **opts)
        names.append(name)
    (path / HDF5_LIST).write_text("".join(f"{name}\n" for name in names))
    return names


def hdf5_list_file(root: Path, db: str) -> Path:
    """Where the list of ``db``'s HDF5 files by absolute path lives (beside
    the database, written by the host: what HDF5Data's source names)."""
    return root / f"{db}.{HDF5_LIST}"


def write_hdf5_list(root: Path, db: str, names: list[str]) -> None:
    """``hdf5_list_file`` naming ``names`` (files in ``root``/``db``) by
    absolute path: Caffe's HDF5Data opens the list's paths as given, and
    the training runs elsewhere than where the dataset was built."""
    hdf5_list_file(root, db).write_text("".join(f"{root / db / name}\n" for name in names))


def storage(info: dict) -> dict:
    """How a dataset is (or will be) stored, from its record's info (the
    build's, else the asked ``params``): DIGITS's ``backend`` (lmdb or hdf5),
    ``encoding`` (none: raw pixels) and ``compression``."""
    params = info.get("params") or {}
    return {key: str(info.get(key) or params.get(key) or default).lower()
            for key, default in (("backend", "lmdb"), ("encoding", "none"), ("compression", "none"))}


def write_dataset(dest: Path, images: np.ndarray, labels: np.ndarray,
                  class_names: list[str], val_percent: float, name: str,
                  seed: int = 0, in_place: bool = False) -> dict:
    """Write a complete dataset directory and return its info: atomically
    (temp dir + rename), or straight into an existing ``dest`` (the sandboxed
    builder, whose output its caller publishes). ``val_percent`` of every
    class goes to the validation set."""
    tr, va = stratified_split(labels, val_percent, seed)
    return write_splits(dest, {"train": (images[tr], labels[tr]), "val": (images[va], labels[va])},
                        class_names, name, in_place=in_place)


# DIGITS's create_db encodes a Datum with PIL: PNG, or JPEG at quality 90.
JPEG_QUALITY = 90
ENCODED_NOTE = ("stored decoded: the pixels are what the {encoding} encoding decodes to, written raw "
                "(this server's Caffe is built without OpenCV and cannot decode encoded datums)")


def encoding_round_trip(images: np.ndarray, encoding: str) -> np.ndarray:
    """What a DB of ``encoding`` ("none", "png" or "jpg") holds for uint8
    images (N, C, H, W) once decoded: each image encoded as DIGITS's
    create_db encodes it (PIL; JPEG quality 90) and decoded back. PNG is
    lossless: the same pixels, returned as they are."""
    if encoding != "jpg" or not len(images):
        return images
    import io
    from PIL import Image
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
        decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode))
        out[i] = decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)
    return out


def write_splits(dest: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str],
                 name: str, in_place: bool = False, backend: str = "lmdb", compression: str = "none",
                 encoding: str = "none") -> dict:
    """``write_dataset`` with the splits given: "train" and "val" (DIGITS's
    separate validation folder), and "test" when present (test_db, counted
    but never trained on, as in DIGITS). ``backend``: "lmdb" (raw Datum) or
    "hdf5" (``write_hdf5``, ``compression`` "none" or "gzip"). ``encoding``
    (LMDB only; DIGITS writes HDF5 raw whatever it is): "png" or "jpg", the
    pixels those decode to (``encoding_round_trip``), stored raw. The mean
    is the resized images' before encoding, as DIGITS's create_db sums them."""
    tmp = dest if in_place else dest.with_name(dest.name + ".partial")
    if not in_place:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    encoding = encoding if backend == "lmdb" else "none"
    (x_tr, y_tr), y_va = splits["train"], splits["val"][1]
    mean_source = x_tr
    splits = {k: (encoding_round_trip(x, encoding), y) for k, (x, y) in splits.items()}
    x_tr = splits["train"][0]
    test = splits.get("test")
    for db, split in (("train_db", splits["train"]), ("val_db", splits["val"]), ("test_db", test)):
        if split is None:
            continue
        if backend == "hdf5":
            if len(split[1]):    # an empty split has no file (HDF5Data refuses an empty list)
                write_hdf5(tmp / db, *split, compression=compression)
        else:
            write_lmdb(tmp / db, *split)
    mean = write_mean(tmp / "mean.binaryproto", mean_source)
    (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in class_names))
    every = [x for x, _ in splits.values() if len(x)]
    _previews(tmp, mean, np.concatenate(every), np.concatenate([y for x, y in splits.values() if len(x)]),
              len(class_names))
    write_explore_index(tmp, splits)
    info = {
        "name": name, "num_classes": len(class_names), "labels": class_names,
        "train_count": int(len(y_tr)), "val_count": int(len(y_va)),
        "image_shape": [int(s) for s in x_tr.shape[1:]],
        "backend": backend, "encoding": encoding, "compression": compression if backend == "hdf5" else "none",
        "per_class": {c: {"train": int((y_tr == i).sum()), "val": int((y_va == i).sum())}
                      for i, c in enumerate(class_names)},
    }
    if encoding != "none":
        info["encoding_note"] = ENCODED_NOTE.format(encoding=encoding.upper())
    if test is not None:
        info["test_count"] = int(len(test[1]))
        for i, c in enumerate(class_names):
            info["per_class"][c]["test"] = int((test[1] == i).sum())
    (tmp / DATASET_INFO_FILE).write_text(json.dumps(info, indent=1))
    if not in_place:
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return info


def _previews(dest: Path, mean: np.ndarray, images: np.ndarray, labels: np.ndarray, n_classes: int,
              per_class: int = 6) -> None:
    # mean.png and samples/<class index>_<k>.png for the dataset page.
    from PIL import Image

    def save(arr: np.ndarray, path: Path) -> None:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)

    save(mean, dest / "mean.png")
    # DIGITS's /files/<id>/mean.jpg, written here so that the host serves
    # bytes and never decodes an image a sandboxed build wrote.
    mean8 = np.clip(np.around(mean), 0, 255).astype(np.uint8)
    Image.fromarray(mean8[0] if mean8.shape[0] == 1 else mean8.transpose(1, 2, 0)).save(
        dest / "mean.jpg", format="JPEG", quality=JPEG_QUALITY)
    (dest / "samples").mkdir(exist_ok=True)
    for cls in range(n_classes):
        for k, idx in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            save(images[idx], dest / "samples" / f"{cls}_{k}.png")


# DIGITS's explore page reads the DB itself; here the host never opens what
# a sandboxed build wrote but through app.core.untrusted, and LMDB needs a
# path. So the build writes a small index per DB, explore/<db>.json: its
# first EXPLORE_MAX entries as [label, PNG (base64)] in the DB's order, each
# image as stored (what the DB decodes to). The host reads it capped, checks
# it and hands the PNGs to the browser as they are (it decodes none).
EXPLORE_DIR = "explore"
EXPLORE_MAX = 1000
EXPLORE_MAX_BYTES = 32 << 20
EXPLORE_SIDE = 256


def write_explore_index(dest: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """explore/<db>.json for each split: {"count": entries in the DB,
    "items": [[label, base64 PNG], ...] (the first EXPLORE_MAX, fewer when
    they would pass three quarters of EXPLORE_MAX_BYTES)}."""
    import base64
    import io
    from PIL import Image

    (dest / EXPLORE_DIR).mkdir(exist_ok=True)
    for split, (images, labels) in splits.items():
        items, size = [], 0
        for image, label in zip(images[:EXPLORE_MAX], labels[:EXPLORE_MAX]):
            buf = io.BytesIO()
            pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
            pil.thumbnail((EXPLORE_SIDE, EXPLORE_SIDE))     # large images shown smaller (their size kept)
            pil.save(buf, format="PNG")
            size += len(buf.getvalue()) * 4 // 3 + 16
            if size > EXPLORE_MAX_BYTES * 3 // 4:
                break   # the index stays well within what the host reads of it
            items.append([int(label), base64.b64encode(buf.getvalue()).decode()])
        (dest / EXPLORE_DIR / f"{split}.json").write_text(json.dumps({"count": int(len(labels)), "items": items}))


def sample_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 (N, 1, 28, 28) images and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR))
                    for im in small])
    return big[:, None, :, :], digits.target.astype(np.int64)


def ensure_sample_digits(datasets_dir: Path) -> dict:
    """Build ``sample-digits`` under ``datasets_dir`` unless already there."""
    dest = datasets_dir / SAMPLE_ID
    info_path = dest / DATASET_INFO_FILE
    if info_path.is_file():
        return json.loads(info_path.read_text())
    images, labels = sample_digits_arrays()
    return write_dataset(dest, images, labels, [str(d) for d in range(10)],
                         val_percent=25, name="Sample digits (scikit-learn 8x8, 28x28)")


def shuffled_copy(source: Path, dest: Path, seed: int | None) -> Path:
    """A copy of the LMDB ``source`` with its records in a random order
    (``seed``: reproducible), for a job with shuffle on: Caffe's Data layer
    reads an LMDB in key order. Written under a temporary name and renamed,
    so a killed run never leaves a half copy that a resume would train on;
    an existing complete copy is reused."""
    import lmdb

    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    src = lmdb.open(str(source), readonly=True, lock=False, subdir=True)
    try:
        with src.begin() as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
            order = np.random.default_rng(seed).permutation(len(keys))
            size = max(1 << 24, int(src.info()["map_size"]), os.path.getsize(source / "data.mdb") * 2)
            out = lmdb.open(str(tmp), map_size=size, subdir=True, lock=True)
            try:
                with out.begin(write=True) as wtxn:
                    for new, old in enumerate(order):
                        wtxn.put(f"{new:08d}".encode(), txn.get(keys[old]))
            finally:
                out.close()
    finally:
        src.close()
    os.replace(tmp, dest)
    return dest
