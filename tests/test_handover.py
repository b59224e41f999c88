"""The hand-over of a dead worker's job (app.worker.heartbeat), on the real
store: exactly one hand-over per dead run, never of a run that still beats;
to the queue from the newest complete snapshot, or ``interrupted`` with the
reason when there is none. (End to end with real Celery workers and a
SIGKILL: tests/test_celery.py.)"""
from __future__ import annotations

import time

from app.core.workspace import snapshot_name
from app.worker.heartbeat import hand_over_stale


def _running(app, beat_age: float) -> dict:
    store = app.extensions["store"]
    job = store.insert_job(name="j", owner="admin", device="cpu", params={}, max_iter=10)
    app.extensions["ctx"].ws.create_job(job["id"])
    run = store.claim_job(job["id"], "w1@hostA", started_at="x", heartbeat_at=time.time() - beat_age)
    return {**store.get_job(job["id"]), "run": run}


def test_a_stale_job_with_a_snapshot_is_queued_to_resume_from_it_once(app):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=60)
    out = ctx.ws.output_dir(job["id"])
    for it in (4, 8):
        for suffix in (".caffemodel", ".solverstate"):
            (out / snapshot_name(it, suffix)).write_bytes(b"x")
    assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
    assert hand_over_stale(ctx, stale_after=30) == []          # once: it is no longer running
    after = store.get_job(job["id"])
    assert after["status"] == "queued" and after["resume_from"] == 8 and after["run"] == job["run"]
    last = store.job_events(job["id"])[-1]
    assert last["status"] == "queued" and "worker w1@hostA stopped heart-beating" in last["message"]
    # The dead run is fenced: its late writes change nothing.
    assert not store.update_job(job["id"], expect_run=job["run"] - 1, iteration=9)


def test_a_stale_job_without_a_snapshot_is_interrupted_with_the_reason(app):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=60)
    assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
    after = store.get_job(job["id"])
    assert after["status"] == "interrupted" and "w1@hostA" in after["error"]["message"]
    assert "before the first snapshot" in after["error"]["message"]


def test_a_job_that_beats_is_left_alone_and_a_superseded_run_cannot_be_handed_over(app):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=1)
    assert hand_over_stale(ctx, stale_after=30) == []
    assert store.get_job(job["id"])["status"] == "running"
    # The compare-and-set: a stale view (an older run) changes nothing.
    assert not store.hand_over_job(job["id"], job["run"] - 1, time.time(), "late", status="queued")
    assert not store.hand_over_job(job["id"], job["run"], time.time() - 30, "beating", status="queued")
    assert store.hand_over_job(job["id"], job["run"], time.time(), "dead", status="queued")
