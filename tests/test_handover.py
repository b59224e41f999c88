"""The hand-over of a dead worker's job (app.worker.heartbeat), on the real
store: exactly one hand-over per dead run, never of a run that still beats;
to the queue from the newest complete snapshot; without one, back to the
queue from the beginning (``auto_retry``, on by default, capped), else
``interrupted`` with the reason. (End to end with real Celery workers and a
SIGKILL: tests/test_celery.py.)"""
from __future__ import annotations

import io
import json
import re
import time

from helpers import LENET_SEED, SEED_LAYER, post

from app.core.workspace import METRICS_FILE, snapshot_name
from app.services.jobs import files as job_files
from app.worker.heartbeat import MAX_AUTO_RETRIES, hand_over_stale


def _running(app, beat_age: float, params: dict | None = None, job_id: str | None = None) -> dict:
    """A running job (a new one, or ``job_id`` claimed again) whose last
    heartbeat is ``beat_age`` seconds old."""
    store = app.extensions["store"]
    if job_id is None:
        job_id = store.insert_job(name="j", owner="admin", device="cpu", params=params or {}, max_iter=10)["id"]
        app.extensions["ctx"].ws.create_job(job_id)
    run = store.claim_job(job_id, "w1@hostA", started_at="x", heartbeat_at=time.time() - beat_age)
    return {**store.get_job(job_id), "run": run}


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
    # As before automatic retry existed, now that its owner turned it off
    # (the one change to this test: the params).
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=60, params={"auto_retry": False})
    assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
    after = store.get_job(job["id"])
    assert after["status"] == "interrupted" and "w1@hostA" in after["error"]["message"]
    assert "before the first snapshot" in after["error"]["message"]
    assert "automatic retry is off" in after["error"]["message"]


def _append(path, *records) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


def test_a_stale_job_without_a_snapshot_starts_again_from_the_beginning_once(app):
    # params without auto_retry: a job from before the option, on by default.
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=60)
    out = ctx.ws.output_dir(job["id"])
    # What the lost run left: progress in its row, charted points, a torn snapshot.
    store.update_job(job["id"], iteration=3, progress=0.3, epoch=0.5, eta_seconds=9.0,
                     metrics={"train": {"loss": 2.0}})
    _append(out / METRICS_FILE, *({"type": "train", "iteration": i, "loss": 2.0, "run": job["run"]}
                                  for i in (1, 2, 3)))
    (out / snapshot_name(4, ".caffemodel")).write_bytes(b"torn")
    assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
    assert hand_over_stale(ctx, stale_after=30) == []          # once: it is no longer running
    after = store.get_job(job["id"])
    assert after["status"] == "queued" and after["resume_from"] is None and after["error"] is None
    assert (after["iteration"], after["progress"], after["epoch"], after["eta_seconds"]) == (0, 0.0, 0.0, None)
    assert after["metrics"] == {} and after["snapshots"] == [] and after["run"] == job["run"]
    restarts = [e for e in store.job_events(job["id"]) if "restarting from the beginning" in e["message"]]
    assert len(restarts) == 1 and restarts[0]["status"] == "queued"
    assert restarts[0]["message"].startswith("handed over: worker w1@hostA stopped heart-beating ")
    assert restarts[0]["message"].endswith(" s ago before the first snapshot; restarting from the beginning "
                                           f"on another worker (automatic retry 1 of {MAX_AUTO_RETRIES})")
    # The lost run's points are gone from the charts, also one it writes
    # late; the next run's (its generation is one more) are kept.
    assert job_files.metrics(ctx, after)["train"] == []
    _append(out / METRICS_FILE, {"type": "train", "iteration": 4, "loss": 2.0, "run": job["run"]},
            {"type": "train", "iteration": 1, "loss": 1.0, "run": job["run"] + 1})
    assert job_files.metrics(ctx, after)["train"] == [{"iteration": 1, "loss": 1.0}]


def test_automatic_restarts_stop_at_the_cap_with_the_reason(app):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=60, params={"auto_retry": True})
    for k in range(1, MAX_AUTO_RETRIES + 1):
        assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
        assert store.get_job(job["id"])["status"] == "queued"
        assert store.job_events(job["id"])[-1]["message"].endswith(f"(automatic retry {k} of {MAX_AUTO_RETRIES})")
        job = _running(app, beat_age=60, job_id=job["id"])     # the next worker takes it, and dies too
    assert hand_over_stale(ctx, stale_after=30) == [job["id"]]
    after = store.get_job(job["id"])
    assert after["status"] == "interrupted" and "before the first snapshot" in after["error"]["message"]
    assert f"already restarted {MAX_AUTO_RETRIES} times" in after["error"]["message"]
    assert store.job_events(job["id"])[-1]["status"] == "interrupted"


def test_auto_retry_is_a_job_field_on_by_default_and_kept_by_clone(app, client):
    store = app.extensions["store"]
    on = post(client, "/api/v1/jobs", max_iter=2, device="cpu")
    off = post(client, "/api/v1/jobs", max_iter=2, device="cpu", auto_retry="false")
    assert on.status_code == 201 and off.status_code == 201, off.get_data(as_text=True)[-1000:]
    assert store.get_job(on.get_json()["id"])["params"]["auto_retry"] is True
    assert store.get_job(off.get_json()["id"])["params"]["auto_retry"] is False
    assert off.get_json()["settings"]["auto_retry"] is False
    bad = post(client, "/api/v1/jobs", auto_retry="maybe")
    assert bad.status_code == 400 and bad.get_json()["details"][0]["field"] == "auto_retry"
    clone = client.post(f"/api/v1/jobs/{off.get_json()['id']}/clone", data={})
    assert clone.status_code == 201 and store.get_job(clone.get_json()["id"])["params"]["auto_retry"] is False
    sweep = post(client, "/api/v1/jobs", max_iter=2, device="cpu", learning_rate="0.01,0.02", auto_retry="false")
    assert sweep.status_code == 201 and len(sweep.get_json()["jobs"]) == 2
    assert all(store.get_job(j["id"])["params"]["auto_retry"] is False for j in sweep.get_json()["jobs"])


def test_the_form_offers_auto_retry_checked_and_an_unchecked_box_turns_it_off(app, client):
    html = client.get("/jobs/new").get_data(as_text=True)
    assert re.search(r'<input checked id="auto_retry" name="auto_retry" type="checkbox" value="y">', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)
    resp = client.post("/jobs/new", data={   # a browser sends no field for an unchecked box
        "csrf_token": token, "action": "create", "dataset": "sample-digits", "max_iter": "2",
        "solver_type": "SGD", "lr_policy": "fixed", "learning_rate": "0.01", "device": "cpu",
        "use_mean": "image", "previous_snapshot": "-1",
        "network": (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt"),
        "python_layer": (io.BytesIO(SEED_LAYER.encode()), "accuracy_layer.py")}, content_type="multipart/form-data")
    assert resp.status_code == 303, resp.get_data(as_text=True)[-2000:]
    job_id = resp.headers["Location"].rsplit("/", 1)[-1]
    assert app.extensions["store"].get_job(job_id)["params"]["auto_retry"] is False


def test_a_job_that_beats_is_left_alone_and_a_superseded_run_cannot_be_handed_over(app):
    store, ctx = app.extensions["store"], app.extensions["ctx"]
    job = _running(app, beat_age=1)
    assert hand_over_stale(ctx, stale_after=30) == []
    assert store.get_job(job["id"])["status"] == "running"
    # The compare-and-set: a stale view (an older run) changes nothing.
    assert not store.hand_over_job(job["id"], job["run"] - 1, time.time(), "late", status="queued")
    assert not store.hand_over_job(job["id"], job["run"], time.time() - 30, "beating", status="queued")
    assert store.hand_over_job(job["id"], job["run"], time.time(), "dead", status="queued")
