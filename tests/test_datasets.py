"""Datasets from image archives: real PNGs (scikit-learn digits), the real
contained builder, real LMDB; every bad-archive case."""
from __future__ import annotations

import io
import tarfile
import time


import numpy as np
import pytest
from PIL import Image

from app.caffe.network import STANDARD_DIR
from helpers import change_settings, client_for, post, wait_for


from helpers import digit_pngs as _pngs, zip_of as _zip  # noqa: E402


def _tgz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


from helpers import upload_dataset as _upload  # noqa: E402


def _built(client, ds_id: str, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ds = client.get(f"/api/v1/datasets/{ds_id}").get_json()
        if ds["status"] in ("done", "error") or time.monotonic() > deadline:
            return ds
        time.sleep(0.1)


def test_archive_becomes_dataset_and_lenet_trains_on_it(app, client, worker):
    files = _pngs()
    files["digit_1/readme.txt"] = b"not an image"
    t0 = time.monotonic()
    resp = _upload(client, _zip(files, wrap="mydigits/"))
    assert resp.status_code == 202 and resp.get_json()["status"] == "queued"
    ds = _built(client, resp.get_json()["id"])
    build_seconds = time.monotonic() - t0
    assert ds["status"] == "done", ds["error"]
    assert ds["labels"] == ["digit_0", "digit_1", "digit_2"] and ds["num_classes"] == 3
    assert ds["image_shape"] == [1, 28, 28]
    assert ds["train_count"] == 135 and ds["val_count"] == 45     # 25% of 60 per class, stratified
    assert ds["per_class"]["digit_2"] == {"train": 45, "val": 15}
    assert ds["skipped"] == {"not an image": 1}
    root = app.config["JOBS_DIR"] + f"/datasets/{ds['id']}"
    import os
    deadline = time.monotonic() + 10     # upload/ goes just after the end is written
    while {"upload", "build"} & set(os.listdir(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(root)) == ["build.log", "explore", "info.json", "labels.txt", "mean.binaryproto",
                                        "mean.jpg", "mean.png", "samples", "train_db", "val_db"]
    page = client.get(f"/datasets/{ds['id']}").get_data(as_text=True)
    assert "digit_2" in page and "mean.png" in page and "samples/2_0.png" in page
    assert client.get(f"/datasets/{ds['id']}/files/mean.png").mimetype == "image/png"
    print(f"dataset build: {build_seconds:.2f} s")

    job = post(client, "/api/v1/jobs", dataset=ds["id"], layer=None,
               network=(STANDARD_DIR / "lenet.prototxt").read_text(),
               train_epochs=8).get_json()
    done = wait_for(client, job["id"], {"done", "error"})
    assert done["status"] == "done", done["error"]
    assert done["metrics"]["val"]["accuracy"] > 0.8
    # held-out images (beyond the 60 per class used for the dataset)
    held = {k: v for k, v in _pngs(per_class=80).items() if int(k.split("/")[1][:3]) >= 60}
    data = {"image": [(io.BytesIO(v), k.replace("/", "_")) for k, v in held.items()]}
    resp = client.post(f"/api/v1/jobs/{job['id']}/infer", data=data, content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_json()
    preds = resp.get_json()["predictions"]
    assert len(preds) == len(held) == 60
    right = sum(p["top"][0]["label"] == p["filename"].split("_")[0] + "_" + p["filename"].split("_")[1]
                for p in preds)
    assert right / len(preds) > 0.8, right
    assert len(preds[0]["top"]) == 3 and abs(sum(t["probability"] for t in preds[0]["top"]) - 1) < 1e-3
    # The finished job still needs it; deleted after the job.
    assert client.delete(f"/api/v1/datasets/{ds['id']}").status_code == 409
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert client.delete(f"/api/v1/datasets/{ds['id']}").status_code == 204


@pytest.mark.parametrize("case,archive,message", [
    ("not an archive", b"just some bytes, no archive", "not a zip or tar"),
    ("dotdot", _zip({"../evil/x.png": b"x", "a/1.png": b"x"}), "'..'"),
    ("absolute", _tgz({"/etc/cron.d/x.png": b"x"}), "absolute"),
    ("symlink", _tgz({"a/1.png": b"x"}, links={"b/passwd.png": "/etc/passwd"}), "link"),
    ("one class", _zip({f"only/{i}.png": v for i, v in enumerate(list(_pngs((0,), 5).values()))}), "two class"),
    ("empty class", _zip({**_pngs((0, 1), 5), "digit_9/notes.txt": b"hi"}), "without any image: digit_9"),
])
def test_bad_archives_fail_clearly_and_leave_nothing(app, client, worker, case, archive, message):
    resp = _upload(client, archive, filename="x.tgz")
    assert resp.status_code == 202
    ds = _built(client, resp.get_json()["id"])
    assert ds["status"] == "error" and message in ds["error"], (case, ds["error"])
    import os
    # Nothing half-made is left: the build removes it just after writing its
    # end (the end first, so that a build handed over meanwhile touches
    # nothing), so allow it a moment.
    deadline = time.monotonic() + 10
    while (left := os.listdir(app.config["JOBS_DIR"] + f"/datasets/{ds['id']}")) != ["build.log"] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == ["build.log"], left
    assert "sample-digits" in [d["id"] for d in client.get("/api/v1/datasets").get_json()["datasets"]]


def test_zip_bomb_is_capped(app, client, worker):
    bomb = _zip({**_pngs((0, 1), 3), "digit_0/zeros.png": b"\0" * (8 << 20)})
    assert len(bomb) < 100_000       # 8 MiB of zeros compress to almost nothing
    change_settings(app, DATASET_MAX_MB=4)  # the cap is fixed when the archive is accepted
    ds = _built(client, _upload(client, bomb).get_json()["id"])
    assert ds["status"] == "error" and "zip bomb" in ds["error"]


def test_too_many_files_is_capped(app, client, worker):
    change_settings(app, DATASET_MAX_FILES=10)
    ds = _built(client, _upload(client, _zip(_pngs((0, 1), 8))).get_json()["id"])
    assert ds["status"] == "error" and "more than 10 files" in ds["error"]


def test_fields_are_checked(client):
    resp = _upload(client, _zip(_pngs((0, 1), 2)), channels="2", resize_mode="stretch", image_width="0")
    assert resp.status_code == 400
    fields = {d["field"] for d in resp.get_json()["details"]}
    assert fields == {"channels", "resize_mode", "image_width"}
    assert client.get("/api/v1/datasets").get_json()["datasets"][0]["id"] == "sample-digits"


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
def test_resize_modes(mode):
    from app.caffe.images import resize
    img = Image.fromarray(np.full((20, 40), 200, np.uint8), "L")
    out = resize(img, 16, 16, mode, np.random.default_rng(0))
    arr = np.asarray(out)
    assert out.size == (16, 16)
    if mode in ("squash", "crop"):
        assert (arr == 200).all()
    else:   # letterboxed: noise above and below the image
        assert (arr[8] == 200).all() and not (arr[0] == 200).all()


def test_dataset_in_use_cannot_be_deleted_and_others_cannot_see_it(app, client):
    ds_id = _upload(client, _zip(_pngs((0, 1), 4))).get_json()["id"]
    other = client_for(app, "eve")
    assert other.get(f"/api/v1/datasets/{ds_id}").status_code == 404
    assert ds_id not in [d["id"] for d in other.get("/api/v1/datasets").get_json()["datasets"]]
    # The built-in dataset is never deleted, not even by an admin.
    resp = client.delete("/api/v1/datasets/sample-digits")
    assert resp.status_code == 409 and "built in" in resp.get_json()["message"]
    assert client.get("/api/v1/datasets/sample-digits").get_json()["status"] == "done"


def test_a_dataset_finished_jobs_use_cannot_be_deleted(app, client, worker):
    # Deleting it used to work, and inference on the finished job then died
    # with a 500: refused while any job, finished or not, uses it.
    import shutil
    store, ws = app.extensions["store"], app.extensions["ctx"].ws
    shutil.copytree(ws.dataset_dir("sample-digits"), ws.dataset_dir("mine"))
    store.upsert_dataset("mine", name="mine", owner="admin", status="done",
                         info=store.get_dataset("sample-digits")["info"])
    job = post(client, "/api/v1/jobs", dataset="mine", max_iter=2).get_json()
    assert wait_for(client, job["id"], {"done", "error"})["status"] == "done"
    resp = client.delete("/api/v1/datasets/mine")
    assert resp.status_code == 409 and job["id"] in resp.get_json()["details"][0]["message"]
    png = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, "PNG")
    resp = client.post(f"/api/v1/jobs/{job['id']}/infer", data={"image": (io.BytesIO(png.getvalue()), "x.png")},
                       content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_json()
    assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 204
    assert client.delete("/api/v1/datasets/mine").status_code == 204
    assert not ws.dataset_dir("mine").exists()


def test_a_lost_data_root_rebuilds_the_builtin_dataset(tmp_path, sample_datasets):
    # The database survived, the jobs directory did not: the sample dataset
    # must not be listed as ready with its files gone.
    import shutil
    from helpers import make_app
    app = make_app(tmp_path, sample_datasets)
    app.extensions["store"].engine.dispose()
    shutil.rmtree(tmp_path / "jobs")
    from app.web import create_app
    again = create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(tmp_path / "jobs"),
                        "TESTING": True})
    try:
        assert (tmp_path / "jobs" / "datasets" / "sample-digits" / "info.json").is_file()
        resp = post(client_for(again, "admin"), "/api/v1/validate")
        assert resp.status_code == 200 and resp.get_json()["ok"] is True, resp.get_json()
    finally:
        again.extensions["store"].engine.dispose()


def test_a_wrapping_folder_with_loose_files_beside_the_classes(client, worker):
    # DIGITS users zip "digits/" holding "README.txt" beside "zero/", "one/":
    # refused as "needs at least two class folders (found 1)" before.
    files = {f"digits/{k}": v for k, v in _pngs((0, 1), 12).items()}
    files["digits/README.txt"] = b"how these digits were made"
    resp = _upload(client, _zip(files))
    assert resp.status_code == 202, resp.get_json()
    ds = _built(client, resp.get_json()["id"])
    assert ds["status"] == "done", ds["error"]
    assert ds["num_classes"] == 2 and ds["skipped"] == {"not in a class folder": 1}
