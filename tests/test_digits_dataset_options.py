"""Issue 23 item 6: DIGITS's dataset options through the DIGITS routes and
/api/v1, against the real server (gunicorn, worker, sandbox, real Caffe):
per-class limits, a test split of the training folder (folder_pct_test),
backend=hdf5 (+ gzip) read by Caffe's HDF5Data layer and trained on, and
the combinations that cannot apply refused naming their field."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from digits_http import Digits, serve
from helpers import digit_pngs, initial_token


@pytest.fixture(scope="module")
def served(sample_datasets):
    """One server whose data root holds ``digits`` (classes 0..2, ten
    24x24 images each, and class 3 with two) for every test here."""
    base = Path(tempfile.mkdtemp(prefix="lb-dsopts-", dir="/tmp"))
    data = base / "data"
    old = os.umask(0o022)
    try:
        files = digit_pngs(classes=(0, 1, 2, 3), per_class=10)
        for name, blob in files.items():
            if name.startswith("digit_3/") and int(name[-7:-4]) >= 2:
                continue    # digit_3: two images only (below the minimum the tests ask)
            (data / "digits" / name).parent.mkdir(parents=True, exist_ok=True)
            (data / "digits" / name).write_bytes(blob)
    finally:
        os.umask(old)
    base.chmod(0o755)
    try:
        with serve(base, sample_datasets, {"LAYERBENCH_DATA_ROOTS": str(data)}) as (url, instance):
            yield Digits(url, initial_token(instance)), data, base / "jobs" / "datasets"
    finally:
        shutil.rmtree(base, ignore_errors=True)


BASE = {"method": "folder", "resize_channels": 1, "resize_width": 28, "resize_height": 28}


def _build(d: Digits, data: Path, **fields) -> dict:
    r = d.post("/datasets/images/classification.json",
               dict(BASE, dataset_name="opts", folder_train=str(data / "digits"), **fields))
    assert r.status == 200, r.text[:2000]
    assert d.wait("datasets", r.json["id"]) == "Done", d.get(f"/datasets/{r.json['id']}.json").text
    return d.get(f"/datasets/{r.json['id']}.json").json


def _datums(db: Path) -> tuple[np.ndarray, np.ndarray]:
    import lmdb
    from app.caffe.proto import caffe_pb2
    pb = caffe_pb2()
    env = lmdb.open(str(db), readonly=True, lock=False)
    x, y = [], []
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = pb.Datum()
            datum.ParseFromString(value)
            assert not datum.encoded
            x.append(np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width))
            y.append(datum.label)
    env.close()
    return np.stack(x), np.array(y)


@pytest.fixture(scope="module")
def lmdb_build(served):
    """The folder built as LMDB with limits and a test split."""
    d, data, _ = served
    return _build(d, data, folder_train_min_per_class=3, folder_train_max_per_class=8, folder_pct_val=25,
                  folder_pct_test=25, backend="lmdb", encoding="png", compression="none")


def test_per_class_limits_and_a_test_split(served, lmdb_build):
    d, data, datasets = served
    info = lmdb_build
    # digit_3 (2 images) is below the minimum of 3: no class; the others keep
    # their first 8, split 25 % / 25 % per class (2 + 2, 4 to train).
    assert info["labels"] == ["digit_0", "digit_1", "digit_2"]
    assert info["ParseFolderTasks"][0] == {"name": "Parse Folder (train/val)", "label_count": 3,
                                           "train_count": 12, "val_count": 6, "test_count": 6}
    assert [(t["name"], t["entries"], t["backend"], t["encoding"]) for t in info["CreateDbTasks"]] == [
        ("Create DB (train)", 12, "lmdb", "png"), ("Create DB (val)", 6, "lmdb", "png"),
        ("Create DB (test)", 6, "lmdb", "png")]
    assert info["per_class"] == {c: {"train": 4, "val": 2, "test": 2} for c in info["labels"]}
    assert info["skipped"] == {"in a class below its minimum per class": 2, "over the maximum per class": 6}
    root = datasets / info["id"]
    x, y = _datums(root / "test_db")        # the test DB is there, as DIGITS's
    assert x.shape == (6, 1, 28, 28) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    # The same through /api/v1, with its own names.
    r = d.post("/api/v1/datasets", {"name": "api opts", "folder": str(data / "digits"), "image_width": 28,
                                    "image_height": 28, "channels": 1, "train_max_per_class": 5,
                                    "test_percent": 20, "val_percent": 20})
    assert r.status == 202, r.text[:2000]
    assert d.wait("datasets", r.json["id"]) == "Done"
    got = d.get(f"/api/v1/datasets/{r.json['id']}").json
    # Four classes (no minimum asked: digit_3's two count), each capped at
    # 5 -> 1 val, 1 test, 3 train; digit_3's 2 -> 1 test (a share asked for
    # gets an image when the class can spare one), 1 train.
    assert (got["num_classes"], got["train_count"], got["val_count"], got["test_count"]) == (4, 10, 3, 4)
    assert got["backend"] == "lmdb"


def test_hdf5_dataset_holds_the_same_pixels_and_trains(served, lmdb_build):
    import h5py
    d, data, datasets = served
    info = _build(d, data, folder_train_min_per_class=3, folder_train_max_per_class=8, folder_pct_val=25,
                  folder_pct_test=25, backend="hdf5", encoding="none", compression="gzip")
    assert [(t["entries"], t["backend"], t["encoding"], t["compression"]) for t in info["CreateDbTasks"]] == [
        (12, "hdf5", "none", "gzip"), (6, "hdf5", "none", "gzip"), (6, "hdf5", "none", "gzip")]
    assert (info["backend"], info["compression"]) == ("hdf5", "gzip")
    page = d.get(f"/datasets/{info['id']}").text
    assert "backend hdf5 · encoding none · compression gzip" in page
    root = datasets / info["id"]
    raw = datasets / lmdb_build["id"]
    for db in ("train_db", "val_db", "test_db"):
        # DIGITS's layout: <db>/0.h5 with float32 data (N, C, H, W) and label,
        # gzip, and its list; the list Caffe reads names it by absolute path.
        assert (root / db / "list.txt").read_text() == "0.h5\n"
        assert (root / f"{db}.list.txt").read_text() == f"{root / db / '0.h5'}\n"
        with h5py.File(root / db / "0.h5", "r") as fh:
            assert fh["data"].dtype == np.float32 and fh["data"].compression == "gzip"
            x, y = fh["data"][:], fh["label"][:]
        # the same images in the same order as the LMDB build of the same folder
        x_raw, y_raw = _datums(raw / db)
        assert np.array_equal(x, x_raw.astype(np.float32)) and np.array_equal(y.astype(int), y_raw)

    # DIGITS's standard LeNet on it: HDF5Data layers, trained to Done.
    r = d.post("/models/images/classification.json", {
        "model_name": "on hdf5", "dataset": info["id"], "method": "standard", "standard_networks": "lenet",
        "train_epochs": 1, "batch_size": 4, "learning_rate": 0.01, "framework": "caffe", "use_mean": "image"})
    assert r.status == 200, r.text[:2000]
    job = r.json["id"]
    assert d.wait("models", job, timeout=240) == "Done", d.get(f"/models/{job}.json").text[:3000]
    train_val = d.get(f"/models/{job}/files/train_val.prototxt").text
    assert train_val.count('type: "HDF5Data"') == 2 and 'type: "Data"' not in train_val
    assert f'source: "{root / "train_db.list.txt"}"' in train_val
    assert "mean_file" not in train_val     # HDF5Data applies no transform (DIGITS's caveat)

    # A mean pixel or a crop cannot apply to HDF5Data (DIGITS asserts the same).
    for field, value in (("use_mean", "pixel"), ("crop_size", 20)):
        r = d.post("/api/v1/jobs", {"dataset": info["id"], "network": _lenet(), "train_epochs": 1, field: value})
        assert r.status == 400, r.text[:2000]
        assert field in [x.get("field") for x in r.json["details"]], r.text[:2000]


def _lenet() -> tuple[str, bytes]:
    from app.caffe.network import standard_network_text
    return ("lenet.prototxt", standard_network_text("lenet").encode())


def test_options_that_cannot_apply_are_refused_naming_them(served):
    d, data, _ = served
    cases = [({"encoding": "webp"}, "encoding"),
             ({"backend": "lmdb", "compression": "gzip"}, "compression"),
             ({"backend": "tfrecords"}, "backend"),
             ({"folder_train_min_per_class": 5, "folder_train_max_per_class": 2}, "folder_train_max_per_class"),
             ({"folder_pct_val": 60, "folder_pct_test": 40}, "folder_pct_test")]
    for fields, field in cases:
        r = d.post("/datasets/images/classification.json",
                   dict(BASE, dataset_name="bad", folder_train=str(data / "digits"), **fields))
        assert r.status == 400, (fields, r.text[:1000])
        assert field in [x.get("field") for x in r.json["details"]], (fields, r.text[:1000])
    r = d.post("/api/v1/datasets", {"name": "bad", "folder": str(data / "digits"), "image_width": 28,
                                    "image_height": 28, "encoding": "gif"})
    assert r.status == 400 and r.json["details"][0]["field"] == "encoding"


def test_jpg_and_png_datasets_hold_what_their_encoding_decodes_to(served, lmdb_build):
    """encoding=jpg: each image JPEG-encoded as DIGITS's create_db does
    (PIL, quality 90) and decoded back, stored raw (this Caffe has no
    OpenCV to decode an encoded datum); png: lossless, the raw pixels. Both
    report the encoding asked, with a note. HDF5 is written raw whatever the
    encoding, as DIGITS's create_db does, and reports none."""
    import io
    from PIL import Image
    d, data, datasets = served
    fields = dict(folder_train_min_per_class=3, folder_train_max_per_class=8, folder_pct_val=25,
                  folder_pct_test=25, backend="lmdb", compression="none")
    jpg = _build(d, data, encoding="jpg", **fields)
    raw = _build(d, data, encoding="none", **fields)
    assert {t["encoding"] for t in jpg["CreateDbTasks"]} == {"jpg"} and jpg["encoding"] == "jpg"
    assert "stored decoded" in jpg["encoding_note"] and "OpenCV" in jpg["CreateDbTasks"][0]["encoding_note"]
    assert "encoding_note" not in raw
    for db in ("train_db", "val_db", "test_db"):
        x_jpg, y_jpg = _datums(datasets / jpg["id"] / db)
        x_raw, y_raw = _datums(datasets / raw["id"] / db)
        assert np.array_equal(y_jpg, y_raw)
        expected = []
        for image in x_raw:
            buf = io.BytesIO()
            Image.fromarray(image[0]).save(buf, format="JPEG", quality=90)
            expected.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())))[None])
        assert np.array_equal(x_jpg, np.stack(expected))       # PIL's JPEG round trip of each image
        assert not np.array_equal(x_jpg, x_raw)                 # lossy: not the raw build's pixels
    # png: the raw build's pixels (lmdb_build asked png), reported as png.
    assert {t["encoding"] for t in lmdb_build["CreateDbTasks"]} == {"png"}
    for db in ("train_db", "val_db", "test_db"):
        assert np.array_equal(_datums(datasets / lmdb_build["id"] / db)[0], _datums(datasets / raw["id"] / db)[0])
    # hdf5 with an encoding: accepted (DIGITS's TestCreatedHdf5 asks png), written raw, reported none.
    h5 = _build(d, data, **dict(fields, backend="hdf5", encoding="jpg"))
    assert {t["encoding"] for t in h5["CreateDbTasks"]} == {"none"} and "encoding_note" not in h5


def test_textfile_datasets_under_the_roots(served):
    d, data, datasets = served
    labels = ("labels.txt", b"zero\none\ntwo\n")
    train = "".join(f"{data}/digits/digit_{c}/{k:03d}.png {c}\n" for c in range(3) for k in range(6))
    val = "".join(f"digit_{c}/{k:03d}.png {c}\n" for c in range(3) for k in (6, 7))   # relative to the folder
    base = dict(BASE, dataset_name="lists", method="textfile", backend="lmdb", encoding="none")
    r = d.post("/datasets/images/classification.json", dict(
        base, textfile_labels_file=labels, textfile_train_images=("train.txt", train.encode()),
        textfile_use_val="y", textfile_val_images=("val.txt", val.encode()),
        textfile_val_folder=str(data / "digits")))
    assert r.status == 200, r.text[:2000]
    assert d.wait("datasets", r.json["id"]) == "Done", d.get(f"/datasets/{r.json['id']}.json").text
    info = d.get(f"/datasets/{r.json['id']}.json").json
    assert info["labels"] == ["zero", "one", "two"]
    assert (info["train_count"], info["val_count"]) == (18, 6)
    assert info["per_class"] == {c: {"train": 6, "val": 2} for c in ("zero", "one", "two")}

    # The lists and labels as server files under the root (textfile_use_local_files), as hdf5.
    (data / "lists").mkdir()
    (data / "lists" / "labels.txt").write_bytes(labels[1])
    (data / "lists" / "train.txt").write_text(train)
    for p in (data / "lists", *(data / "lists").iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    r = d.post("/api/v1/datasets", {"name": "local lists", "method": "textfile", "image_width": 28,
                                    "image_height": 28, "channels": 1, "backend": "hdf5",
                                    "textfile_use_local_files": "y",
                                    "textfile_local_labels_file": str(data / "lists" / "labels.txt"),
                                    "textfile_local_train_images": str(data / "lists" / "train.txt")})
    assert r.status == 202, r.text[:2000]
    assert d.wait("datasets", r.json["id"]) == "Done", d.get(f"/datasets/{r.json['id']}.json").text
    got = d.get(f"/api/v1/datasets/{r.json['id']}").json
    assert (got["train_count"], got["backend"]) == (18, "hdf5")

    # A path outside the roots: 400 naming the roots; a relative path needs the folder.
    r = d.post("/datasets/images/classification.json", dict(
        base, textfile_labels_file=labels, textfile_train_images=("t.txt", train.encode() + b"/etc/hostname 1\n")))
    assert r.status == 400 and str(data) in r.text, r.text[:1000]
    assert r.json["details"][0]["field"] == "textfile_train_images"
    r = d.post("/datasets/images/classification.json", dict(
        base, textfile_labels_file=labels, textfile_train_images=("t.txt", val.encode())))
    assert r.status == 400 and r.json["details"][0]["field"] == "textfile_train_folder", r.text[:1000]


def test_textfile_without_data_roots_is_refused(app):
    from helpers import client_for
    c = client_for(app, admin=True)
    r = c.post("/api/v1/datasets", data={"name": "x", "method": "textfile", "image_width": 8, "image_height": 8})
    assert r.status_code == 400 and "LAYERBENCH_DATA_ROOTS" in r.get_json()["message"]
    assert r.get_json()["details"][0]["field"] == "method"
