"""DIGITS 6's Caffe model test classes (digits/model/images/classification/
test_views.py, BSD-3-Clause), ported to Python 3 and run over real HTTP
against the real server, with their image folders on the server under a
data root (LAYERBENCH_DATA_ROOTS) as DIGITS's tests keep them:

* TestCaffeCreatedWideMoreNumOutput (20x10 images, num_output 1000),
  TestCaffeCreatedTallMultiStepLR (10x20, lr_policy multistep 50,75,90),
  TestCaffeCreatedCropInForm (crop_size 8), TestCaffeCreatedCropInNetwork
  (data layers with crop_size 8 in the network), TestCaffeLeNet (DIGITS's
  standard LeNet on 28x28): each trains 1 epoch (batch 10) and passes
  BaseTestCreated's checks: classify_one (HTML, every category right),
  classify_one.json, classify_many(.json) and top_n from a list of server
  paths and from a folder, the downloads, the model JSON;
* BaseTestCreation's test_classify_one_mean_image / _pixel / _none,
  test_snapshot_interval_2 (0.5: more than one snapshot),
  test_snapshot_interval_0_5 (4 epochs, interval 2: two snapshots),
  test_retrain_twice (from a job that was itself retrained, snapshot -1).

Every model is queued at once by one module fixture (the server trains them
one after another while the tests look at the finished ones).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from digits_http import Digits, members, png
from helpers import CAFFE_NETWORK, ROOT, initial_token, serve_with_data_root

pytestmark = pytest.mark.slow

CATEGORIES = ("red", "green", "blue")
IMAGE_COUNT = 10          # per class, as DIGITS's BaseViewsTestWithImageset

# TestCaffeCreatedWideMoreNumOutput's network: the hidden layer sized.
WIDE_NETWORK = CAFFE_NETWORK.replace("    top: \"output\"\n}", "    top: \"output\"\n"
                                     "    inner_product_param {\n        num_output: 1000\n    }\n}", 1)

# BaseTestCreatedCropInNetwork's network: data layers with a crop.
CROP_NETWORK = """layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    crop_size: 8
  }
}
layer {
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TEST
  }
  transform_param {
    crop_size: 8
  }
}
""" + CAFFE_NETWORK

LENET = (ROOT / "app" / "caffe" / "standard_networks" / "lenet.prototxt").read_text()


def imageset(folder: Path, width: int, height: int, count: int = IMAGE_COUNT) -> dict[str, list[str]]:
    """DIGITS's create_classification_imageset in spirit: per class, solid
    red, green or blue images with noise, ``width`` x ``height``; the class
    -> relative paths map (DIGITS's ``imageset_paths``)."""
    rng = np.random.default_rng(width * 100 + height)
    paths: dict[str, list[str]] = {}
    for k, name in enumerate(CATEGORIES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            img[:, :, k] = 200 + rng.integers(0, 55, (height, width), dtype=np.uint8)
            (folder / name / f"{i}.png").write_bytes(png(img))
            paths.setdefault(name, []).append(f"{name}/{i}.png")
    return paths


# name -> (image width, height, extra model fields)
CREATED = {
    "WideMoreNumOutput": (20, 10, {"custom_network": WIDE_NETWORK}),
    "TallMultiStepLR": (10, 20, {"lr_policy": "multistep", "lr_multistep_values": "50,75,90"}),
    "CropInForm": (10, 10, {"crop_size": 8}),
    "CropInNetwork": (10, 10, {"custom_network": CROP_NETWORK}),
    "LeNet": (28, 28, {"custom_network": LENET}),
}
MEANS = ("image", "pixel", "none")


class Lab:
    """The served instance, its data root and what the fixture queued."""

    def __init__(self, url: str, instance: Path, data: Path) -> None:
        self.url, self.instance, self.data = url, instance, data
        self.d = Digits(url, initial_token(instance))
        self.datasets: dict[tuple[int, int], str] = {}
        self.paths: dict[tuple[int, int], dict[str, list[str]]] = {}
        self.models: dict[str, str] = {}

    def folder(self, size: tuple[int, int]) -> Path:
        return self.data / f"images_{size[0]}x{size[1]}"

    def dataset(self, size: tuple[int, int]) -> str:
        """DIGITS's create_dataset: folder_train on the server, 25 % for validation."""
        if size not in self.datasets:
            r = self.d.post("/datasets/images/classification.json", {
                "dataset_name": f"test_dataset_{size[0]}x{size[1]}", "method": "folder",
                "folder_train": str(self.folder(size)), "resize_channels": 3, "resize_width": size[0],
                "resize_height": size[1], "resize_mode": "squash", "backend": "lmdb", "encoding": "png",
                "folder_pct_val": 25})
            assert r.status == 200, r.text[:2000]
            self.datasets[size] = r.json["id"]
        return self.datasets[size]

    def create(self, size: tuple[int, int], **extra) -> str:
        """BaseViewsTestWithDataset.create_model (json=True)."""
        data = {"model_name": "test_model", "group_name": "test_group", "dataset": self.dataset(size),
                "method": "custom", "custom_network": CAFFE_NETWORK, "batch_size": 10, "train_epochs": 1,
                "framework": "caffe", "random_seed": 0xCAFEBABE, "shuffle": "false"}
        data.update(extra)
        r = self.d.post("/models/images/classification.json", data)
        assert r.status == 200, r.text[:2000]
        return r.json["id"]

    def done(self, model_id: str) -> dict:
        assert self.d.wait("models", model_id, timeout=240) == "Done", \
            self.d.get(f"/models/{model_id}").text[-3000:]
        return self.d.get(f"/models/{model_id}.json").json


@pytest.fixture(scope="module")
def lab(sample_datasets):
    sizes = {(w, h) for w, h, _ in CREATED.values()} | {(10, 10)}
    paths = {}

    def fill(data: Path) -> None:
        paths.update({size: imageset(data / f"images_{size[0]}x{size[1]}", *size) for size in sizes})

    with serve_with_data_root(sample_datasets, "lb-digits-classes-", fill) as (url, instance, data):
        lab = Lab(url, instance, data)
        lab.paths = paths
        for size in sorted(sizes):
            lab.dataset(size)
        # Every model queued now: the worker trains them in turn while
        # the first tests look at the first ones.
        for name, (w, h, extra) in CREATED.items():
            lab.models[name] = lab.create((w, h), **extra)
        for mean in MEANS:
            lab.models[f"mean_{mean}"] = lab.create((10, 10), use_mean=mean)
        lab.models["snapshot_0.5"] = lab.create((10, 10), snapshot_interval=0.5)
        lab.models["snapshot_2"] = lab.create((10, 10), train_epochs=4, snapshot_interval=2)
        yield lab


def classify_one_for_job(lab: Lab, model_id: str, size: tuple[int, int], test_misclassification: bool = True):
    """BaseTestCreation.classify_one_for_job: the first image of each category."""
    for category, paths in lab.paths[size].items():
        blob = (lab.folder(size) / paths[0]).read_bytes()
        r = lab.d.post(f"/models/images/classification/classify_one?job_id={model_id}",
                       {"image_file": ("image.png", blob)})
        assert r.status == 200, r.text[:2000]
        items = re.findall(r'<li class="list-group-item">(.*?)</li>', r.text, re.S)
        predictions = [re.sub(r"<[^>]+>", " ", li).split() for li in items]
        assert predictions, r.text[:2000]
        if test_misclassification:
            assert predictions[0][1] == category, ("image misclassified", category, predictions)


def _listing(lab: Lab, size: tuple[int, int], absolute: bool) -> bytes:
    lines = []
    for label_id, (_category, images) in enumerate(lab.paths[size].items()):
        for image in images:
            path = str(lab.folder(size) / image) if absolute else image
            lines.append(f"{path} {label_id}\n")
    return "".join(lines).encode()


@pytest.mark.parametrize("name", list(CREATED))
def test_created(lab, name):
    """BaseTestCreated, for each of DIGITS's Caffe "Created" classes."""
    w, h, _ = CREATED[name]
    size = (w, h)
    model_id = lab.models[name]
    info = lab.done(model_id)
    d = lab.d
    # test_model_json
    assert info["id"] == model_id and info["dataset_id"] == lab.datasets[size] and info["snapshots"]
    # test_classify_one (HTML, every category) and test_classify_one_json (the last image of the last)
    classify_one_for_job(lab, model_id, size)
    category = CATEGORIES[-1]
    blob = (lab.folder(size) / lab.paths[size][category][-1]).read_bytes()
    r = d.post(f"/models/images/classification/classify_one.json?job_id={model_id}",
               {"image_file": ("image.png", blob), "show_visualizations": "y"})
    assert r.status == 200 and r.json["predictions"][0][0] == category, r.text[:2000]
    # test_classify_many / _json: absolute server paths under the data root
    listing = _listing(lab, size, absolute=True)
    r = d.post(f"/models/images/classification/classify_many.json?job_id={model_id}",
               {"image_list": ("images.txt", listing)})
    assert r.status == 200 and "classifications" in r.json, r.text[:2000]
    for cat, images in lab.paths[size].items():
        assert r.json["classifications"][str(lab.folder(size) / images[0])][0][0] == cat
    r = d.post(f"/models/images/classification/classify_many?job_id={model_id}",
               {"image_list": ("images.txt", listing)})
    assert r.status == 200, r.text[:2000]
    # test_classify_many_from_folder / test_top_n_from_folder: relative paths + image_folder
    relative = _listing(lab, size, absolute=False)
    r = d.post(f"/models/images/classification/classify_many?job_id={model_id}",
               {"image_list": ("images.txt", relative), "image_folder": str(lab.folder(size))})
    assert r.status == 200, r.text[:2000]
    for form in ({"image_list": ("images.txt", listing)},
                 {"image_list": ("images.txt", relative), "image_folder": str(lab.folder(size))}):
        r = d.post(f"/models/images/classification/top_n?job_id={model_id}", form)
        assert r.status == 200 and all(cat in r.text for cat in CATEGORIES), r.text[:2000]   # test_top_n
    # test_download
    for ext in ("tar", "zip", "tar.gz", "tar.bz2"):
        r = d.get(f"/models/{model_id}/download.{ext}")
        assert r.status == 200 and "deploy.prototxt" in members(r.body, ext), ext


@pytest.mark.parametrize("mean", MEANS)
def test_classify_one_mean(lab, mean):
    """BaseTestCreation.test_classify_one_mean_image / _pixel / _none."""
    model_id = lab.models[f"mean_{mean}"]
    lab.done(model_id)
    classify_one_for_job(lab, model_id, (10, 10), test_misclassification=mean != "none")


def test_snapshot_intervals(lab):
    """test_snapshot_interval_2 (interval 0.5 of 1 epoch: more than one
    snapshot) and test_snapshot_interval_0_5 (4 epochs, interval 2: two)."""
    assert len(lab.done(lab.models["snapshot_0.5"])["snapshots"]) > 1
    assert len(lab.done(lab.models["snapshot_2"])["snapshots"]) == 2


def test_retrain_twice(lab):
    """BaseTestCreation.test_retrain_twice: retrain from a job that was
    itself retrained, the last snapshot named as -1."""
    job1 = lab.models["mean_image"]
    content = lab.done(job1)
    assert content["snapshots"]
    job2 = lab.create((10, 10), method="previous", previous_networks=job1,
                      **{f"{job1}-snapshot": content["snapshots"][-1]})
    lab.done(job2)
    job3 = lab.create((10, 10), method="previous", previous_networks=job2, **{f"{job2}-snapshot": -1})
    lab.done(job3)
