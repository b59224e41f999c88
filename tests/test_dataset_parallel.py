"""Dataset builds on every core (issue 24 part 2): the same archive built
serially (LAYERBENCH_DATASET_WORKERS=1) and by the decoding pool through
the real service and sandbox gives the same LMDBs, key by key, and the
same mean; progress counts files done of all; the pool itself keeps the
archive's byte cap, survives a refused fork and reports a worker's death."""
from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.caffe.proto import caffe_pb2
from app.contained import dataset_pool
from app.core.archives import ArchiveError
from helpers import Workers


PER_CLASS = 360     # 3 classes: some 470 KB, enough files for 16 chunks


def _mixed_zip(per_class: int = PER_CLASS, classes: int = 3) -> tuple[bytes, int]:
    """(zip, number of files): RGB, grey and palette PNGs and JPEGs of many
    sizes (so the fill mode draws noise), plus files that are skipped."""
    rng = np.random.default_rng(24)
    buf, files = io.BytesIO(), 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for c in range(classes):
            for k in range(per_class):
                w, h = (int(v) for v in rng.integers(8, 40, 2))
                # blocks, not noise: the zip stays under the 500 KB werkzeug.test spools to a file
                block = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
                im = Image.fromarray(block, "RGB").resize((w, h), Image.NEAREST)
                im = [im, im.convert("L"), im.convert("P"), im][k % 4]
                out = io.BytesIO()
                im.save(out, "JPEG" if k % 16 == 3 else "PNG")
                zf.writestr(f"set/class_{c}/{k:04d}.img", out.getvalue())
            zf.writestr(f"set/class_{c}/notes.txt", b"not an image")
        zf.writestr("set/README", b"beside the class folders")
        files = classes * (per_class + 1) + 1
    return buf.getvalue(), files


def _records(path: Path) -> list[tuple[bytes, int, bytes]]:
    """(key, label, pixels) of every record of an LMDB, in key order."""
    import lmdb
    datum = caffe_pb2().Datum()
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for key, value in txn.cursor():
                datum.ParseFromString(value)
                out.append((key, datum.label, (datum.channels, datum.height, datum.width), datum.data))
            return out
    finally:
        env.close()


def _build(app, client, archive: bytes, workers: str) -> tuple[dict, list[dict]]:
    """Upload ``archive``; a worker started with LAYERBENCH_DATASET_WORKERS
    = ``workers`` builds it. (the dataset JSON at the end, every JSON seen)."""
    proc = Workers(app).start(LAYERBENCH_DATASET_WORKERS=workers)
    try:
        resp = client.post("/api/v1/datasets", content_type="multipart/form-data", data={
            "name": f"mixed {workers}", "image_width": "24", "image_height": "20", "channels": "3",
            "resize_mode": "fill", "val_percent": "25", "archive": (io.BytesIO(archive), "mixed.zip")})
        assert resp.status_code == 202, resp.get_json()
        seen, deadline = [], time.monotonic() + 180
        while True:
            ds = client.get(f"/api/v1/datasets/{resp.get_json()['id']}").get_json()
            seen.append(ds)
            if ds["status"] in ("done", "error") or time.monotonic() > deadline:
                return ds, seen
            time.sleep(0.02)
    finally:
        proc.stop()


def test_a_parallel_build_writes_what_a_serial_one_does(app, client):
    archive, files = _mixed_zip()
    serial, _ = _build(app, client, archive, "1")
    parallel, seen = _build(app, client, archive, "2")
    for ds in (serial, parallel):
        assert ds["status"] == "done", ds["error"]
        assert ds["skipped"] == {"not in a class folder": 1, "not an image": 3}
        # The last word of the build, whether or not a poll caught it midway.
        assert ds["progress"] == 1.0 and ds["progress_images"] == {"done": files, "total": files}
    for key in ("labels", "train_count", "val_count", "per_class", "image_shape"):
        assert serial[key] == parallel[key], key
    root = Path(app.config["JOBS_DIR"]) / "datasets"
    a, b = root / serial["id"], root / parallel["id"]
    for db in ("train_db", "val_db"):
        ra, rb = _records(a / db), _records(b / db)
        assert len(ra) == 3 * PER_CLASS * (75 if db == "train_db" else 25) // 100
        assert [r[0] for r in ra] == [r[0] for r in rb]            # keys
        assert [r[1] for r in ra] == [r[1] for r in rb]            # labels
        assert {r[2] for r in ra} == {(3, 20, 24)}
        assert [r[3] for r in ra] == [r[3] for r in rb]            # pixels, byte for byte
    assert (a / "mean.binaryproto").read_bytes() == (b / "mean.binaryproto").read_bytes()
    assert (a / "labels.txt").read_text() == (b / "labels.txt").read_text()
    # It did run in parallel (the builder says how, in the build log).
    cores = len(os.sched_getaffinity(0))
    assert "in one process" in (a / "build.log").read_text()
    assert ("in 2 worker processes" if cores > 1 else "in one process") in (b / "build.log").read_text()
    # Whatever the polls caught midway counts up to the same total.
    counts = [ds["progress_images"] for ds in seen if ds["progress_images"]]
    assert all(c["total"] == files for c in counts)
    assert [c["done"] for c in counts] == sorted(c["done"] for c in counts)


def test_the_dataset_page_shows_files_done_of_all(app, client):
    app.extensions["store"].upsert_dataset("building", name="building", owner="admin", status="running",
                                           info={"progress": 0.45, "progress_images": {"done": 700, "total": 1400}},
                                           created_at="2025-01-01T00:00:00Z")
    assert client.get("/api/v1/datasets/building").get_json()["progress_images"] == {"done": 700, "total": 1400}
    page = client.get("/datasets/building").get_data(as_text=True)
    assert "700 / 1400 images" in page and 'id="progress-images"' in page


# ---- the pool itself, in this process (no sandbox): fast and exact --------------------------------


def _reads(n: int = 300) -> list:
    rng = np.random.default_rng(5)
    out = []
    for k in range(n):
        w, h = (int(v) for v in rng.integers(6, 30, 2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
        data = buf.getvalue() if k % 50 else b"no image here"
        out.append(lambda limit, d=data: d)
    return out


def test_the_pool_decodes_what_one_process_does_and_reports_each_chunk():
    reads = _reads()
    steps: list[int] = []
    one = dataset_pool.decode(reads, (3, 16, 16), "half_crop", 0, lambda n: None, workers=1)
    two = dataset_pool.decode(reads, (3, 16, 16), "half_crop", 0, steps.append, workers=2)
    assert one[1] == two[1] and one[1].count(dataset_pool.NOT_AN_IMAGE) == 6
    assert one[0].shape == (294, 3, 16, 16) and np.array_equal(one[0], two[0])
    # Files done, counted up chunk by chunk to all of them.
    assert len(steps) > 2 and steps == sorted(steps) and steps[-1] == len(reads)


def test_a_refused_fork_leaves_the_pool_serial_with_the_same_result(monkeypatch):
    import multiprocessing
    reads = _reads(100)
    expected = dataset_pool.decode(reads, (1, 12, 12), "fill", 3, lambda n: None, workers=1)

    def refused(self):
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(multiprocessing.get_context("fork").Process, "start", refused)
    got = dataset_pool.decode(reads, (1, 12, 12), "fill", 3, lambda n: None, workers=2)
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]


def test_the_byte_cap_holds_across_workers():
    reads = [lambda limit: b"\0" * min(limit, 1 << 20) for _ in range(64)]    # 64 MiB in all
    with pytest.raises(ArchiveError, match="zip bomb"):
        dataset_pool.decode(reads, (1, 8, 8), "squash", 0, lambda n: None, max_bytes=8 << 20, workers=2)


def test_a_worker_that_dies_fails_the_build_clearly():
    parent = os.getpid()
    reads = _reads(200)
    reads[150] = lambda limit: os._exit(9) if os.getpid() != parent else b""   # dies in a worker
    with pytest.raises(ArchiveError, match="died"):
        dataset_pool.decode(reads, (3, 8, 8), "squash", 0, lambda n: None, workers=2)


def test_worker_count_follows_the_setting_cores_and_size(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv(dataset_pool.WORKERS_VAR, "1")
    assert dataset_pool.worker_count(100_000) == 1
    monkeypatch.setenv(dataset_pool.WORKERS_VAR, "1000")
    assert dataset_pool.worker_count(100_000) == min(cores, dataset_pool.MAX_WORKERS)
    monkeypatch.delenv(dataset_pool.WORKERS_VAR)
    assert dataset_pool.worker_count(100_000) == min(cores, dataset_pool.MAX_WORKERS)
    assert dataset_pool.worker_count(50) == 1      # too small to gain from a fork
