"""The hand-over of a dataset build whose worker died (celery queue), on the
real store and the real sandboxed builder: a build writes a heartbeat; a
stale one is queued again to build from the upload (at most twice, then an
error saying why); a build that was only slow finds itself superseded and
leaves the upload to the new one. (End to end with a SIGKILLed side node:
tests/test_celery.py.)"""
from __future__ import annotations

import io
import threading
import time

from test_datasets import _pngs, _zip

from app.services import datasets
from app.worker.heartbeat import MAX_AUTO_RETRIES, hand_over_stale_builds


def _queued(client, per_class: int = 20) -> str:
    """A dataset upload that nothing builds yet (no worker in these tests)."""
    data = {"name": "d", "image_width": "28", "image_height": "28", "channels": "1", "val_percent": "25",
            "archive": (io.BytesIO(_zip(_pngs(classes=(0, 1), per_class=per_class))), "d.zip")}
    resp = client.post("/api/v1/datasets", data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def _running(store, ds_id: str, beat_age: float, worker: str = "w1@hostA") -> None:
    """As a build on ``worker`` that last beat ``beat_age`` seconds ago leaves it."""
    assert store.claim_dataset(ds_id, "queued", "running")
    info = store.get_dataset(ds_id)["info"]
    store.upsert_dataset(ds_id, info=dict(info, builder={"token": "dead", "worker": worker,
                                                         "heartbeat_at": time.time() - beat_age}))


def test_a_stale_build_is_queued_again_and_builds_from_its_upload(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    _running(store, ds_id, beat_age=1)
    assert hand_over_stale_builds(ctx, stale_after=30) == []        # it beats: left alone
    store.upsert_dataset(ds_id, status="queued")
    _running(store, ds_id, beat_age=60)
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    assert hand_over_stale_builds(ctx, stale_after=30) == []        # once: no longer running
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "queued" and ds["info"]["builder"] is None
    assert [h["worker"] for h in ds["info"]["handovers"]] == ["w1@hostA"]
    # The dead build never removed the upload: the next build uses it.
    assert datasets.build(ctx, ds_id, worker="w2@hostB") == "done"
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "done" and ds["info"]["train_count"] + ds["info"]["val_count"] == 40
    assert "builder" not in ds["info"] and len(ds["info"]["handovers"]) == 1


def test_a_build_that_keeps_losing_its_worker_ends_in_error_with_why(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    for _ in range(MAX_AUTO_RETRIES):
        _running(store, ds_id, beat_age=60)
        assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
        assert store.get_dataset(ds_id)["status"] == "queued"
    _running(store, ds_id, beat_age=60, worker="w9@hostZ")
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    ds = client.get(f"/api/v1/datasets/{ds_id}").get_json()
    assert ds["status"] == "error" and "(w9@hostZ) stopped heart-beating" in ds["error"]
    assert f"after {MAX_AUTO_RETRIES} earlier restarts" in ds["error"]


def test_a_slow_build_that_was_handed_over_stops_and_leaves_the_upload(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client, per_class=170)
    got = {}
    thread = threading.Thread(target=lambda: got.update(end=datasets.build(ctx, ds_id, worker="slow@hostA")))
    thread.start()
    deadline = time.monotonic() + 30
    while (store.get_dataset(ds_id)["info"].get("builder") or {}).get("worker") != "slow@hostA":
        assert time.monotonic() < deadline and thread.is_alive(), store.get_dataset(ds_id)
        time.sleep(0.02)
    # Another worker judged it dead (its heartbeat looked stale) and queued it again.
    assert store.claim_dataset(ds_id, "running", "queued")
    thread.join(30)
    assert got == {"end": "superseded"}
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "queued" and ds["error"] is None
    assert (ctx.ws.dataset_dir(ds_id) / "upload" / "archive").exists()   # the new build's input
    assert datasets.build(ctx, ds_id, worker="w2@hostB") == "done"
