"""The hand-over of a dataset build whose worker died (celery queue), on the
real store and the real sandboxed builder: a claim gives the run a token and
a heartbeat (the dataset's ``build_*`` columns); a stale one is queued again
to build from the upload (at most twice, then an error saying why, with the
upload removed); every write of a run is fenced by its token, so a build that
was only slow, or whose write lands late, can never take its dataset back.
Whatever fails in a build, it ends (error) and its builder is killed.
(End to end with a SIGKILLed side node: tests/test_celery.py.)"""
from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from helpers import digit_pngs as _pngs, zip_of as _zip

from helpers import post
from app.core.workspace import RESULT_FILE
from app.services.datasets import lifecycle as datasets
from app.services.runtime import broker as queue
from app.worker.heartbeat import MAX_AUTO_RETRIES, hand_over_stale_builds

EVERY = -5.0   # a stale_after that finds every running build stale: "its worker died now"


def _big_pngs(per_class: int = 300) -> dict[str, bytes]:
    """Two classes of 1500x1500 PNGs: 5 KB each, but ~15 ms each to decode,
    so the build takes seconds (long enough to act on it mid-build) while
    the archive stays small."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.add.outer(np.arange(1500), np.arange(1500)) % 256).astype(np.uint8)).save(buf, "PNG")
    return {f"{c}/{i:03d}.png": buf.getvalue() for c in ("a", "b") for i in range(per_class)}


def _queued(client, slow: bool = False) -> str:
    """A dataset upload that nothing builds yet (no worker in these tests):
    40 small images, or (``slow``) 600 big ones that take seconds to build."""
    files = _big_pngs() if slow else _pngs(classes=(0, 1), per_class=20)
    data = {"name": "d", "image_width": "28", "image_height": "28", "channels": "1", "val_percent": "25",
            "archive": (io.BytesIO(_zip(files)), "d.zip")}
    resp = client.post("/api/v1/datasets", data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def _running(store, ds_id: str, beat_age: float, worker: str = "w1@hostA", token: str = "dead") -> None:
    """As a build run ``token`` on ``worker`` that last beat ``beat_age`` seconds ago leaves it."""
    assert store.claim_dataset_build(ds_id, token, worker, time.time() - beat_age)


def _in_background(ctx, ds_id: str, worker: str) -> tuple[threading.Thread, dict]:
    """A real build in a thread (as a side node runs it); its end or exception lands in the dict."""
    got: dict = {}

    def run():
        try:
            got["end"] = datasets.build(ctx, ds_id, worker=worker)
        except Exception as exc:    # noqa: BLE001 - the test looks at it
            got["raised"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


def _builders(ds_id: str) -> list[int]:
    """Pids of processes building ``ds_id`` (its path is in their command line)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if ds_id.encode() in Path(entry.path, "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _wait_building(store, ds_id: str, thread: threading.Thread) -> None:
    """Until the sandboxed builder of ``ds_id`` is up and has reported progress."""
    deadline = time.monotonic() + 30
    while not (_builders(ds_id) and (store.get_dataset(ds_id)["info"].get("progress") or 0) > 0):
        assert time.monotonic() < deadline and thread.is_alive(), store.get_dataset(ds_id)
        time.sleep(0.02)


def test_a_stale_build_is_queued_again_and_builds_from_its_upload(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    _running(store, ds_id, beat_age=1)
    assert hand_over_stale_builds(ctx, stale_after=30) == []        # it beats: left alone
    assert store.hand_over_dataset_build(ds_id, "dead", time.time(), status="queued")
    _running(store, ds_id, beat_age=60)
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    assert hand_over_stale_builds(ctx, stale_after=30) == []        # once: no longer running
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "queued" and ds["build_token"] is None
    assert [h["worker"] for h in ds["handovers"]] == ["w1@hostA"] and queue.build_generation(ds) == 1
    # The dead build never removed the upload: the next build uses it.
    assert datasets.build(ctx, ds_id, worker="w2@hostB") == "done"
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "done" and ds["info"]["train_count"] + ds["info"]["val_count"] == 40
    assert ds["build_worker"] == "w2@hostB" and ds["build_token"] is None
    assert len(ds["handovers"]) == 1 and "builder" not in ds["info"]


def test_a_late_heartbeat_of_a_build_handed_over_cannot_take_its_dataset_back(app, client):
    # The reviewer's race: run A stalls inside its heartbeat write, is handed
    # over, B claims it, then A's write lands.
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    _running(store, ds_id, beat_age=60, token="A", worker="w1@hostA")
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    assert store.claim_dataset_build(ds_id, "B", "w2@hostB", time.time())
    info = store.get_dataset(ds_id)["info"]
    assert not store.beat_dataset_build(ds_id, "A", time.time(), dict(info, progress=0.9))
    assert not store.end_dataset_build(ds_id, "A", status="error", error="late", info=info)
    assert not store.hand_over_dataset_build(ds_id, "A", time.time() + 60, status="queued")
    ds = store.get_dataset(ds_id)
    assert (ds["status"], ds["build_token"], ds["build_worker"], ds["error"]) == ("running", "B", "w2@hostB", None)
    assert [h["worker"] for h in ds["handovers"]] == ["w1@hostA"] and queue.build_generation(ds) == 1
    assert ds["info"]["progress"] == 0.0
    # B's own writes still land, and B can be handed over in its turn.
    assert store.beat_dataset_build(ds_id, "B", time.time() - 60, dict(info, progress=0.5))
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    assert queue.build_generation(store.get_dataset(ds_id)) == 2


def test_a_slow_build_handed_over_and_claimed_again_stops_without_writing(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client, slow=True)
    thread, got = _in_background(ctx, ds_id, "slow@hostA")
    _wait_building(store, ds_id, thread)
    # Another worker judged it dead (its heartbeat looked stale), and a third
    # claimed it at once, before the slow build looked again.
    assert hand_over_stale_builds(ctx, stale_after=EVERY) == [ds_id]
    assert store.claim_dataset_build(ds_id, "new", "w2@hostB", time.time())
    thread.join(30)
    assert got == {"end": "superseded"}
    ds = store.get_dataset(ds_id)
    assert (ds["status"], ds["build_token"], ds["build_worker"], ds["error"]) == ("running", "new", "w2@hostB", None)
    assert [h["worker"] for h in ds["handovers"]] == ["slow@hostA"]
    assert (ctx.ws.dataset_dir(ds_id) / "upload" / "archive").exists()   # the new build's input
    assert _builders(ds_id) == []                                        # the slow one was killed


def test_past_the_cap_a_build_ends_in_error_leaves_nothing_and_its_late_end_changes_nothing(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client, slow=True)
    waiting = post(client, "/api/v1/jobs", dataset=ds_id, max_iter=4).get_json()
    assert waiting["status"] == "waiting", waiting
    for n in range(MAX_AUTO_RETRIES):
        _running(store, ds_id, beat_age=60, token=f"dead{n}")
        assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
        assert store.get_dataset(ds_id)["status"] == "queued"
    # The last try: a real build, whose worker looks dead while it still builds.
    thread, got = _in_background(ctx, ds_id, "w9@hostZ")
    _wait_building(store, ds_id, thread)
    root = ctx.ws.dataset_dir(ds_id)
    assert (root / "build").is_dir() and (root / "upload").is_dir()
    assert hand_over_stale_builds(ctx, stale_after=EVERY) == [ds_id]
    assert not (root / "upload").exists() and not (root / "build").exists()     # up to GBs: gone
    ds = client.get(f"/api/v1/datasets/{ds_id}").get_json()
    assert ds["status"] == "error" and "(w9@hostZ) stopped heart-beating" in ds["error"]
    assert f"after {MAX_AUTO_RETRIES} earlier restarts" in ds["error"]
    job = client.get(f"/api/v1/jobs/{waiting['id']}").get_json()
    assert job["status"] == "error" and "stopped heart-beating" in job["error"]["message"], job
    # The build was only slow: it stops, and neither it nor a late end of
    # any earlier run overwrites why (not "Aborted by its owner.").
    thread.join(30)
    assert got == {"end": "superseded"}
    assert not store.end_dataset_build(ds_id, "dead0", status="error", error=datasets.ABORTED, info={})
    assert store.get_dataset(ds_id)["error"] == ds["error"]
    assert _builders(ds_id) == []


def test_a_build_whose_sandbox_cannot_start_ends_in_error_and_releases_waiting_jobs(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    waiting = post(client, "/api/v1/jobs", dataset=ds_id, max_iter=4).get_json()
    assert waiting["status"] == "waiting", waiting
    # A setting the sandbox cannot run (subprocess raises ValueError, not an OSError).
    ctx.cfg = ctx.cfg.replace(CAFFE_PYTHON="/usr/bin/python3\0")
    assert datasets.build(ctx, ds_id, worker="w1@hostA") == "error"
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "error" and "embedded null byte" in ds["error"] and ds["build_token"] is None
    assert not (ctx.ws.dataset_dir(ds_id) / "upload").exists()
    job = client.get(f"/api/v1/jobs/{waiting['id']}").get_json()
    assert job["status"] == "error" and "failed to build" in job["error"]["message"], job


def test_a_node_dying_right_after_its_claim_is_handed_over_and_a_build_dir_failure_ends_the_build(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client)
    # The claim alone carries the heartbeat: a node that dies before it
    # writes anything else is still handed over.
    _running(store, ds_id, beat_age=60, token="claimed-then-died")
    ds = store.get_dataset(ds_id)
    assert ds["build_token"] == "claimed-then-died" and ds["build_heartbeat_at"] and ds["build_worker"]
    assert hand_over_stale_builds(ctx, stale_after=30) == [ds_id]
    # A build whose build/ cannot be made (a file is in the way) ends in error.
    (ctx.ws.dataset_dir(ds_id) / "build").write_text("in the way")
    assert datasets.build(ctx, ds_id) == "error"
    ds = store.get_dataset(ds_id)
    assert ds["status"] == "error" and "the build failed" in ds["error"] and "exists" in ds["error"], ds


def test_a_store_failure_mid_build_kills_the_builder(app, client):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client, slow=True)
    thread, got = _in_background(ctx, ds_id, "w1@hostA")
    _wait_building(store, ds_id, thread)
    with store.engine.begin() as conn:      # the database fails under the build
        conn.execute(sa.text("ALTER TABLE datasets RENAME TO datasets_away"))
    try:
        thread.join(30)
        assert isinstance(got.get("raised"), sa.exc.OperationalError), got
        # Killed at once: not left building (its uid leased), nor waited for.
        assert _builders(ds_id) == []
        assert not (ctx.ws.dataset_dir(ds_id) / "build" / RESULT_FILE).exists()
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE datasets_away RENAME TO datasets"))


def test_an_aborted_build_ends_aborted_and_the_local_recovery_still_ends_running_builds(app, client):
    from app.worker.runner import recover
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    ds_id = _queued(client, slow=True)
    thread, got = _in_background(ctx, ds_id, None)
    _wait_building(store, ds_id, thread)
    datasets.abort(ctx, store.get_dataset(ds_id))
    ds = datasets.wait_built(ctx, ds_id)       # the abort keeps the token: the build writes its end
    thread.join(30)
    assert got == {"end": "error"} and ds["error"] == datasets.ABORTED and ds["build_token"] is None
    assert _builders(ds_id) == [] and not (ctx.ws.dataset_dir(ds_id) / "upload").exists()
    # A fresh local supervisor ends the builds its dead predecessor left running.
    other = _queued(client)
    _running(store, other, beat_age=0, token="previous-process")
    recover(ctx)
    ds = store.get_dataset(other)
    assert ds["status"] == "error" and "stopped while building" in ds["error"]
