"""DIGITS 6's image classification dataset view tests
(digits/dataset/images/classification/test_views.py with its imageset,
test_imageset_creator.py, and digits/test_views.py's helpers; BSD-3-Clause),
ported to Python 3 and run over real HTTP against the real server, with the
image folders on the server under a data root (LAYERBENCH_DATA_ROOTS), as
DIGITS's tests keep them on DIGITS's own disk:

* TestViews: the new-dataset page, a dataset that does not exist;
* TestCreation: a folder that does not exist, create (form and JSON), delete,
  abort, wait; test_textfiles' four variants (absolute or relative paths x
  uploaded or server-side lists); test_abort_explore_fail;
* TestImageCount, TestMaxPerClass, TestMinPerClass (an unbalanced category):
  the ParseFolderTasks counts, for the training folder and for a separate
  validation or test folder;
* TestCreated and its subclasses (Grayscale, Wide, Tall, JPEG, Raw,
  RawGrayscale, Hdf5 with test_compression_method, Hdf5Gzip): index.json,
  the dataset JSON, mean.jpg's size, edit name / notes, the CreateDbTasks
  backend, explore train / val, clone.

Every dataset is created up front by one module fixture: the server builds
them in turn while the first tests look at the finished ones.

Where this server answers differently from DIGITS on purpose (docs/DIGITS.md):
exploring a dataset that is not done is 409 (our state, not a server fault;
DIGITS: 500), and an HDF5 dataset can be explored (DIGITS: 500, "expected
backend is lmdb").
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from digits_http import Digits
from helpers import initial_token, serve_with_data_root

pytestmark = pytest.mark.slow

IMAGE_SIZE = 10           # test_imageset_creator.IMAGE_SIZE
IMAGE_COUNT = 10          # per category, test_imageset_creator.IMAGE_COUNT
TIMEOUT_DATASET = 120     # DIGITS: 45 ("may be too short on a slow system"); two shared cores here


def _gradient(size: int, colour: list[float], rotation: int):
    """test_imageset_creator._create_gradient_image: black to ``colour``
    along one axis, rotated."""
    from PIL import Image
    ramp = np.stack([np.linspace(0, c, size).astype(np.uint8) for c in colour], axis=-1)   # (size, 3)
    picture = np.repeat(ramp[:, None, :], size, axis=1)     # rows: the gradient; columns: the same
    return Image.fromarray(np.ascontiguousarray(picture.transpose(1, 0, 2))).rotate(rotation)


def create_classification_imageset(folder: Path, add_unbalanced_category: bool = False) -> dict[str, list[str]]:
    """test_imageset_creator.create_classification_imageset: a folder of
    class folders of gradient PNGs; class -> relative paths."""
    config = [("red-to-right", 0, 0, IMAGE_COUNT), ("green-to-top", 1, 90, IMAGE_COUNT),
              ("blue-to-left", 2, 180, IMAGE_COUNT)]
    if add_unbalanced_category:
        config.append(("blue-to-bottom", 2, 270, IMAGE_COUNT // 2))
    paths: dict[str, list[str]] = {}
    for class_name, pixel_index, rotation, count in config:
        (folder / class_name).mkdir(parents=True)
        for i, colour in enumerate(np.linspace(200, 255, count)):
            pixel = [0.0, 0.0, 0.0]
            pixel[pixel_index] = colour
            _gradient(IMAGE_SIZE, pixel, rotation).save(folder / class_name / f"{i}.png")
            paths.setdefault(class_name, []).append(f"{class_name}/{i}.png")
    return paths


# TestCreated and its subclasses: name -> (width, height, channels, backend, encoding, compression)
CREATED = {
    "TestCreated": (10, 10, 3, "lmdb", "png", "none"),
    "TestCreatedGrayscale": (10, 10, 1, "lmdb", "png", "none"),
    "TestCreatedWide": (20, 10, 3, "lmdb", "png", "none"),
    "TestCreatedTall": (10, 20, 3, "lmdb", "png", "none"),
    "TestCreatedJPEG": (10, 10, 3, "lmdb", "jpg", "none"),
    "TestCreatedRaw": (10, 10, 3, "lmdb", "none", "none"),
    "TestCreatedRawGrayscale": (10, 10, 1, "lmdb", "none", "none"),
    "TestCreatedHdf5": (10, 10, 3, "hdf5", "png", "none"),
    "TestCreatedHdf5Gzip": (10, 10, 3, "hdf5", "png", "gzip"),
}

# BaseViewsTestWithDataset.test_clone's options_1.
CLONE_OPTIONS = {"encoding": "png", "folder_pct_test": 0, "folder_pct_val": 25, "folder_test": "",
                 "folder_test_max_per_class": None, "folder_test_min_per_class": 2,
                 "folder_train_max_per_class": 3, "folder_train_min_per_class": 1,
                 "folder_val_max_per_class": None, "folder_val_min_per_class": 2, "resize_mode": "half_crop"}


class Lab:
    """The served instance, its imagesets, and the datasets queued up front."""

    def __init__(self, url: str, instance: Path, data: Path) -> None:
        self.d = Digits(url, initial_token(instance))
        self.data = data
        self.imageset = data / "imageset"                 # BaseViewsTestWithImageset's
        self.unbalanced = data / "imageset_unbalanced"    # TestMinPerClass's (UNBALANCED_CATEGORY)
        self.paths: dict[str, list[str]] = {}
        self.unbalanced_paths: dict[str, list[str]] = {}
        self.jobs: dict[str, str] = {}

    # digits/test_views.py's BaseViewsTest helpers, over HTTP
    def dataset_exists(self, job_id: str) -> bool:
        r = self.d.get(f"/datasets/{job_id}/status")
        assert r.status in (200, 404), r.status
        return r.status == 200

    def dataset_info(self, job_id: str) -> dict:
        r = self.d.get(f"/datasets/{job_id}.json")
        assert r.status == 200, r.text[:2000]
        return r.json

    def abort_dataset(self, job_id: str) -> int:
        return self.d.post(f"/datasets/{job_id}/abort").status

    def delete_dataset(self, job_id: str) -> int:
        return self.d.call("DELETE", f"/datasets/{job_id}").status

    def edit_job(self, job_id: str, name: str | None = None, notes: str | None = None) -> int:
        data = {k: v for k, v in (("job_name", name), ("job_notes", notes)) if v is not None}
        return self.d.call("PUT", f"/jobs/{job_id}", data).status

    def wait(self, job_id: str) -> str:
        return self.d.wait("datasets", job_id, timeout=TIMEOUT_DATASET)

    def create_dataset(self, folder: Path | None = None, spec: tuple = CREATED["TestCreated"], **kwargs) -> str:
        """BaseViewsTestWithImageset.create_dataset: the form (302 to the
        dataset page) or, with json=True, the JSON route; RuntimeError when
        creation fails."""
        width, height, channels, backend, encoding, compression = spec
        data = {"dataset_name": "test_dataset", "method": "folder", "folder_train": str(folder or self.imageset),
                "resize_channels": channels, "resize_width": width, "resize_height": height,
                "backend": backend, "encoding": encoding, "compression": compression}
        data.update(kwargs)
        as_json = data.pop("json", False)
        r = self.d.post("/datasets/images/classification" + (".json" if as_json else ""), data)
        if as_json:
            if r.status != 200:
                raise RuntimeError(f"Dataset creation failed with {r.status}: {r.text[:1000]}")
            return r.json["id"]
        if not 300 <= r.status <= 310:
            alert = re.search(r'class="alert alert-danger"[^>]*>(.*?)</div>', r.text, re.S)
            raise RuntimeError(alert.group(1) if alert else f"Failed to create dataset ({r.status})")
        job_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[-1]   # job_id_from_response
        assert self.dataset_exists(job_id), "dataset not found after successful creation"
        return job_id


def _listing(lab: Lab, absolute: bool) -> tuple[str, str]:
    """check_textfiles' train list and labels file."""
    images, labels = "", ""
    for label_id, (label, paths) in enumerate(lab.paths.items()):
        labels += f"{label}\n"
        for image in paths:
            images += f"{lab.imageset / image if absolute else image} {label_id}\n"
    return images, labels


def _textfile_fields(lab: Lab, absolute: bool, local: bool) -> dict:
    """check_textfiles' form for one variant."""
    data = {"method": "textfile", "textfile_use_val": "y"}
    suffix = "abs" if absolute else "rel"
    if local:
        # Written by the fixture, beside the images (DIGITS: "in local filesystem").
        train_file = lab.imageset / f"local_train_{suffix}.txt"
        labels_file = lab.imageset / "local_labels.txt"
        data.update(textfile_use_local_files="True", textfile_local_train_images=str(train_file),
                    textfile_local_val_images=str(train_file), textfile_local_labels_file=str(labels_file))
    else:
        images, labels = _listing(lab, absolute)
        data.update(textfile_train_images=("train.txt", images.encode()),
                    textfile_val_images=("val.txt", images.encode()),
                    textfile_labels_file=("labels.txt", labels.encode()))
    if not absolute:
        data.update(textfile_train_folder=str(lab.imageset), textfile_val_folder=str(lab.imageset))
    return data


COUNT_TYPES = ("train", "val", "test")


def _count_fields(lab: Lab, kind: str, type_: str) -> dict:
    """check_image_count / check_max_per_class / check_min_per_class's form."""
    if kind == "count":
        data = {"folder_pct_val": 20, "folder_pct_test": 10}
        limit = {}
    else:
        data = {"folder_pct_val": 0}
        bound = IMAGE_COUNT // 2 if kind == "max" else IMAGE_COUNT // 2 + 1
        limit = {f"folder_{type_}_{kind}_per_class": bound}
    folder = lab.unbalanced if kind == "min" else lab.imageset
    if type_ in ("val", "test"):
        data[f"has_{type_}_folder"] = "True"
        data[f"folder_{type_}"] = str(folder)
    data.update(limit)
    return data


@pytest.fixture(scope="module")
def lab(sample_datasets):
    made = {}

    def fill(data: Path) -> None:
        made["paths"] = create_classification_imageset(data / "imageset")
        made["unbalanced"] = create_classification_imageset(data / "imageset_unbalanced",
                                                            add_unbalanced_category=True)

    with serve_with_data_root(sample_datasets, "lb-digits-dsclasses-", fill) as (url, instance, data):
        lab = Lab(url, instance, data)
        lab.paths, lab.unbalanced_paths = made["paths"], made["unbalanced"]
        old = os.umask(0o022)     # readable by the sandbox's own uid
        try:
            for absolute in (True, False):
                images, labels = _listing(lab, absolute)
                (lab.imageset / f"local_train_{'abs' if absolute else 'rel'}.txt").write_text(images)
                (lab.imageset / "local_labels.txt").write_text(labels)
        finally:
            os.umask(old)
        # Every dataset queued now, the ones TestCreated needs first.
        for name, spec in CREATED.items():
            lab.jobs[name] = lab.create_dataset(spec=spec, json=True)
        for name, spec in CREATED.items():
            lab.jobs[f"{name}.clone_source"] = lab.create_dataset(spec=spec, **CLONE_OPTIONS)
        for kind in ("count", "max", "min"):
            for type_ in COUNT_TYPES:
                lab.jobs[f"{kind}.{type_}"] = lab.create_dataset(
                    folder=lab.unbalanced if kind == "min" else None, **_count_fields(lab, kind, type_))
        for absolute in (True, False):
            for local in (True, False):
                lab.jobs[f"textfile.{absolute}.{local}"] = lab.create_dataset(
                    **_textfile_fields(lab, absolute, local))
        yield lab


# --------------------------------------------------------------------- TestViews

def test_page_dataset_new(lab):
    r = lab.d.get("/datasets/images/classification/new")
    assert r.status == 200, r.status
    assert "New Image Classification Dataset" in r.text


def test_nonexistent_dataset(lab):
    assert not lab.dataset_exists("foo"), "dataset shouldn't exist"


# ------------------------------------------------------------------ TestCreation

def test_nonexistent_folder(lab):
    with pytest.raises(RuntimeError):
        lab.create_dataset(folder=Path("/not-a-directory"))


def test_create_json(lab):
    job_id = lab.create_dataset(json=True)
    lab.abort_dataset(job_id)


def test_create_delete(lab):
    job_id = lab.create_dataset()
    assert lab.delete_dataset(job_id) == 200, "delete failed"
    assert not lab.dataset_exists(job_id), "dataset exists after delete"


def test_create_abort_delete(lab):
    job_id = lab.create_dataset()
    assert lab.abort_dataset(job_id) == 200, "abort failed"
    assert lab.delete_dataset(job_id) == 200, "delete failed"
    assert not lab.dataset_exists(job_id), "dataset exists after delete"


def test_create_wait_delete(lab):
    job_id = lab.create_dataset()
    assert lab.wait(job_id) == "Done", "create failed"
    r = lab.d.call("DELETE", f"/datasets/{job_id}")
    assert r.status == 200, ("delete failed", r.status, r.text[:1000])
    assert not lab.dataset_exists(job_id), "dataset exists after delete"


@pytest.mark.parametrize("absolute_path", (True, False))
@pytest.mark.parametrize("local_path", (True, False))
def test_textfiles(lab, absolute_path, local_path):
    """check_textfiles: lists of absolute paths, or relative ones with the
    image folders; uploaded, or server files (textfile_use_local_files)."""
    job_id = lab.jobs[f"textfile.{absolute_path}.{local_path}"]
    assert lab.wait(job_id) == "Done", lab.dataset_info(job_id).get("error")
    info = lab.dataset_info(job_id)
    assert (info["train_count"], info["val_count"]) == (3 * IMAGE_COUNT, 3 * IMAGE_COUNT)


def test_abort_explore_fail(lab):
    """DIGITS answers 500 "status should be Done"; a dataset that is not done
    is our state, not a server fault: 409, with DIGITS's words."""
    job_id = lab.create_dataset()
    lab.abort_dataset(job_id)
    r = lab.d.get(f"/datasets/images/classification/explore?job_id={job_id}&db=val")
    assert r.status == 409, "page load should have failed"
    assert "status should be Done" in r.text, r.text[:1000]
    r = lab.d.get("/datasets/images/classification/explore?job_id=foo&db=val")
    assert r.status == 404


# ------------------------------------- TestImageCount / TestMaxPerClass / TestMinPerClass

def _parse_info(lab: Lab, job_id: str, type_: str) -> dict:
    assert lab.wait(job_id) == "Done", lab.dataset_info(job_id).get("error")
    info = lab.dataset_info(job_id)
    if type_ == "train":
        assert len(info["ParseFolderTasks"]) == 1, "expected exactly one ParseFolderTasks"
        return info["ParseFolderTasks"][0]
    assert len(info["ParseFolderTasks"]) == 2, "expected exactly two ParseFolderTasks"
    return info["ParseFolderTasks"][1]


def _deleted(lab: Lab, job_id: str) -> None:
    assert lab.delete_dataset(job_id) == 200, "delete failed"
    assert not lab.dataset_exists(job_id), "dataset exists after delete"


@pytest.mark.parametrize("type_", COUNT_TYPES)
def test_image_count(lab, type_):
    job_id = lab.jobs[f"count.{type_}"]
    parse_info = _parse_info(lab, job_id, type_)
    if type_ == "train":
        image_count = parse_info["train_count"] + parse_info["val_count"] + parse_info["test_count"]
        assert parse_info["val_count"] == 0.2 * image_count
        assert parse_info["test_count"] == 0.1 * image_count
    elif type_ == "val":
        assert parse_info["train_count"] == 0 and parse_info["test_count"] == 0
        image_count = parse_info["val_count"]
    else:
        assert parse_info["train_count"] == 0 and parse_info["val_count"] == 0
        image_count = parse_info["test_count"]
    assert len(lab.paths) == parse_info["label_count"]
    assert image_count == IMAGE_COUNT * parse_info["label_count"], "image count mismatch"
    _deleted(lab, job_id)


@pytest.mark.parametrize("type_", COUNT_TYPES)
def test_max_per_class(lab, type_):
    job_id = lab.jobs[f"max.{type_}"]
    parse_info = _parse_info(lab, job_id, type_)
    image_count = parse_info["train_count"] + parse_info["val_count"] + parse_info["test_count"]
    assert image_count == IMAGE_COUNT // 2 * parse_info["label_count"], "image count mismatch"
    _deleted(lab, job_id)


@pytest.mark.parametrize("type_", COUNT_TYPES)
def test_min_per_class(lab, type_):
    job_id = lab.jobs[f"min.{type_}"]
    parse_info = _parse_info(lab, job_id, type_)
    # categoryCount(): four with the unbalanced one, which is below the minimum
    assert len(lab.unbalanced_paths) == parse_info["label_count"] + 1
    _deleted(lab, job_id)


# ------------------------------------------------------- TestCreated and subclasses

@pytest.fixture(params=list(CREATED))
def created(request, lab):
    """(name, spec, dataset id) of a TestCreated class, its dataset built."""
    name = request.param
    job_id = lab.jobs[name]
    assert lab.wait(job_id) == "Done", lab.dataset_info(job_id).get("error")
    return name, CREATED[name], job_id


def test_index_json(lab, created):
    _, _, job_id = created
    r = lab.d.get("/index.json")
    assert r.status == 200, r.status
    assert any(d["id"] == job_id for d in r.json["datasets"]), "dataset not found in list"


def test_dataset_json(lab, created):
    _, _, job_id = created
    r = lab.d.get(f"/datasets/{job_id}.json")
    assert r.status == 200, r.status
    assert r.json["id"] == job_id, "expected different job_id"


def test_mean_dimensions(lab, created):
    from PIL import Image
    _, (width, height, *_), job_id = created
    r = lab.d.get(f"/files/{job_id}/mean.jpg")
    assert r.status == 200, (r.status, r.text[:500])
    image = Image.open(io.BytesIO(r.body))
    assert image.format == "JPEG"
    assert image.size == (width, height), f"image size is {image.size}"


def test_edit_name(lab, created):
    assert lab.edit_job(created[2], name="new name") == 200


def test_edit_notes(lab, created):
    assert lab.edit_job(created[2], notes="new notes") == 200


def test_backend_selection(lab, created):
    _, (_, _, _, backend, _, _), job_id = created
    for task in lab.dataset_info(job_id)["CreateDbTasks"]:
        assert task["backend"] == backend


@pytest.mark.parametrize("db", ("train", "val"))
def test_explore(lab, created, db):
    """test_explore_train / test_explore_val. DIGITS cannot explore HDF5
    (500, "expected backend is lmdb"); this server can, for both backends."""
    r = lab.d.get(f"/datasets/images/classification/explore?job_id={created[2]}&db={db}")
    assert r.status == 200, (r.status, r.text[:1000])
    assert "Items per page" in r.text, "unexpected page format"


def test_clone(lab, created):
    """BaseViewsTestWithDataset.test_clone: a clone's JSON is the source's
    but for id and directory (and our creation times: see below), and so
    are its options (DIGITS compared the jobs' form_data)."""
    name, spec, _ = created
    job1_id = lab.jobs[f"{name}.clone_source"]
    assert lab.wait(job1_id) == "Done", "first job failed"
    content1 = lab.dataset_info(job1_id)
    job2_id = lab.create_dataset(spec=spec, clone=job1_id)
    assert lab.wait(job2_id) == "Done", "second job failed"
    content2 = lab.dataset_info(job2_id)
    # These will be different (DIGITS pops id and directory). DIGITS's JSON
    # has no creation time; ours does ("creation time", "created_at": when
    # each was created) and repeats the id as "job id".
    for key in ("id", "directory", "job id", "creation time", "created_at"):
        content1.pop(key)
        content2.pop(key)
    assert content1 == content2, "job content does not match"
    assert content1["options"] and content1["options"]["resize_mode"] == "half_crop"   # the form's options
    assert content1["ParseFolderTasks"][0]["label_count"] == 3


@pytest.mark.parametrize("name", ("TestCreatedHdf5", "TestCreatedHdf5Gzip"))
def test_compression_method(lab, name):
    """TestCreatedHdf5(Gzip).test_compression_method."""
    job_id = lab.jobs[name]
    assert lab.wait(job_id) == "Done"
    for task in lab.dataset_info(job_id)["CreateDbTasks"]:
        assert task["compression"] == CREATED[name][5]


# ----------------------------------------------------------- beyond DIGITS's tests

@pytest.mark.parametrize("name", ("TestCreated", "TestCreatedHdf5", "TestCreatedGrayscale"))
def test_explore_shows_the_db_paginated_by_label(lab, name):
    """What the explore page holds: every entry of the DB (all of them here:
    fewer than the index's cap), as PNG data with its label; a label
    filter, items per page and pages."""
    from PIL import Image
    import base64
    job_id = lab.jobs[name]
    assert lab.wait(job_id) == "Done"
    info = lab.dataset_info(job_id)
    width, height, channels = CREATED[name][:3]
    url = f"/datasets/images/classification/explore?job_id={job_id}"
    items = re.findall(r'data-label="(\d+)"><img alt="([^"]*)" src="data:image/png;base64,([^"]+)"',
                       lab.d.get(f"{url}&db=train&size=100").text)
    assert len(items) == info["train_count"] > 20
    assert sorted({int(label) for label, _, _ in items}) == [0, 1, 2]
    assert all(info["labels"][int(label)] == alt for label, alt, _ in items)
    image = Image.open(io.BytesIO(base64.b64decode(items[0][2])))
    assert image.size == (width, height) and image.mode == ("L" if channels == 1 else "RGB")
    page = lab.d.get(f"{url}&db=val&label=1&size=10").text
    labels = re.findall(r'data-label="(\d+)"', page)
    assert labels and set(labels) == {"1"} and len(labels) == info["per_class"][info["labels"][1]]["val"]
    pages = [re.findall(r'data-index="(\d+)"', lab.d.get(f"{url}&db=train&size=10&page={p}").text)
             for p in range(3)]
    assert [len(p) for p in pages] == [10, 10, info["train_count"] - 20]
    assert len({i for p in pages for i in p}) == info["train_count"]          # no entry twice
    assert lab.d.get(f"{url}&db=test").status == 404                          # no test DB
    assert lab.d.get(f"{url}&db=nope").status == 400


def test_mean_jpg_and_explore_follow_the_visibility_rule(app):
    """Another user's dataset: its mean.jpg and explore page are 404, as
    every other file of it (app.services.access)."""
    import shutil as _shutil
    from helpers import client_for
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    _shutil.copytree(ws.dataset_dir("sample-digits"), ws.dataset_dir("alice-digits"))
    store.upsert_dataset("alice-digits", name="alice's", owner="alice", status="done",
                         info=store.get_dataset("sample-digits")["info"])
    alice, bob = client_for(app, "alice"), client_for(app, "bob")
    for url in ("/files/alice-digits/mean.jpg", "/datasets/images/classification/explore?job_id=alice-digits&db=val"):
        assert alice.get(url).status_code == 200, url
        assert bob.get(url).status_code == 404, url
    assert alice.get("/files/alice-digits/mean.jpg").data.startswith(b"\xff\xd8\xff")


def test_clone_of_server_lists_and_of_an_upload(lab):
    """A textfile dataset whose lists are server files clones as any other;
    one made from an uploaded archive cannot once its build removed the
    upload: 400 naming clone."""
    from digits_http import zip_of
    source = lab.jobs["textfile.True.True"]
    assert lab.wait(source) == "Done"
    clone_id = lab.create_dataset(clone=source, json=True)
    assert lab.wait(clone_id) == "Done"
    one, two = lab.dataset_info(source), lab.dataset_info(clone_id)
    assert (two["train_count"], two["val_count"], two["labels"]) == (one["train_count"], one["val_count"],
                                                                      one["labels"])
    files = {f"set/{name}/{i}.png": (lab.imageset / path).read_bytes()
             for name, paths in lab.paths.items() for i, path in enumerate(paths)}
    r = lab.d.post("/datasets/images/classification.json", {
        "dataset_name": "uploaded", "folder_train": ("set.zip", zip_of(files)), "resize_width": 10,
        "resize_height": 10})
    assert r.status == 200, r.text[:1000]
    assert lab.wait(r.json["id"]) == "Done"
    r = lab.d.post("/datasets/images/classification.json", {"clone": r.json["id"]})
    assert r.status == 400 and r.json["details"][0]["field"] == "clone", r.text[:1000]
