"""The celery queue's cost and gain, measured in one run on this machine.

* submit -> first iteration: a job posted through the API, from the answer
  (validated, queued) to the store's first ``iteration >= 1``, with the local
  queue (`flask worker`) and with the celery queue (a Celery worker over a
  real Redis); the same SQLite store, jobs and runner on both sides, so the
  difference is the queue. Also queued -> claimed (the store's started_at).
* throughput: twelve short jobs queued at once, drained by one Celery worker,
  then by two (each a separate process, one job at a time): jobs per minute
  and the ratio. On a machine with few cores two workers mostly compete for
  the same CPUs: Caffe on the CPU already uses them.
* inference: one classify request on a finished job, run contained in the
  web process (local queue) and through the ``infer`` queue by the worker's
  inference node (celery queue): median seconds and the difference.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from .common import ROOT, cleanup, client as common_client, make_app, median, temp_root, upload

sys.path.insert(0, str(ROOT / "tests"))


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _first_iteration(store, job_id: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job["iteration"] >= 1 or job["status"] in ("done", "error", "aborted", "interrupted"):
            return time.time()
        time.sleep(0.01)
    raise RuntimeError(f"{job_id} never started")


def _wait_done(store, ids: list[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while any(store.get_job(i)["status"] in ("queued", "running") for i in ids):
        if time.monotonic() > deadline:
            raise RuntimeError("jobs never ended")
        time.sleep(0.05)


def _latency(app, client, n: int) -> dict:
    """Median seconds from the POST's answer to the first iteration, and to the claim."""
    store = app.extensions["store"]
    firsts, claims = [], []
    for _ in range(n):
        resp = client.post("/api/v1/jobs", data=upload(max_iter=4), content_type="multipart/form-data")
        answered = time.time()
        job_id = resp.get_json()["id"]
        firsts.append(_first_iteration(store, job_id) - answered)
        _wait_done(store, [job_id])
        claims.append(_iso(store.get_job(job_id)["started_at"]) - answered)
    return {"first_iteration_s": round(median(firsts), 3), "claimed_s": round(median(claims), 3)}


def _inference(app, client, job_id: str, n: int) -> float:
    """Median seconds of one classify request (one image) on ``job_id``."""
    import io
    image = sorted((Path(app.config["JOBS_DIR"]) / "datasets" / "sample-digits" / "samples").glob("*.png"))[0]
    times = []
    for _ in range(n + 1):                # the first one warms caches
        t0 = time.perf_counter()
        resp = client.post(f"/api/v1/jobs/{job_id}/infer", content_type="multipart/form-data",
                           data={"image": (io.BytesIO(image.read_bytes()), image.name)})
        times.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.get_json()
    return round(median(times[1:]), 3)


def _env(app, broker: str | None) -> dict:
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=app.config["INSTANCE_DIR"],
               LAYERBENCH_JOBS_DIR=app.config["JOBS_DIR"], LAYERBENCH_DATABASE_URL=app.config["DATABASE_URL"])
    if broker:
        env.update(LAYERBENCH_QUEUE="celery", LAYERBENCH_BROKER_URL=broker, LAYERBENCH_WORKER_GPUS="none")
    return env


def _celery_worker(app, broker: str, name: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "app.worker.celery_app", "-n", name, "--loglevel", "WARNING"],
                                cwd=ROOT, env=_env(app, broker), stdout=fh, stderr=fh)


def _wait_workers(app, n: int) -> None:
    from app.services.runtime import workers
    deadline = time.monotonic() + 120
    while len(workers.live(app.extensions["ctx"])) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("workers never came up")
        time.sleep(0.1)


def _stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _copies(app, job_id: str, n: int) -> list[str]:
    """``n`` queued copies of a validated job, rung on the queue at once."""
    from app.services.runtime import broker as queue
    from app.store import new_job_id
    ctx, store = app.extensions["ctx"], app.extensions["store"]
    src = store.get_job(job_id)
    ids = []
    for _ in range(n):
        new = new_job_id()
        shutil.copytree(ctx.ws.job_dir(job_id) / "input", ctx.ws.job_dir(new) / "input")
        for f in (ctx.ws.job_dir(new) / "input").rglob("*.prototxt"):
            f.write_text(f.read_text().replace(job_id, new))
        (ctx.ws.job_dir(new) / "output").mkdir()
        ids.append(store.insert_job(id=new, name="bench", owner=src["owner"], dataset=src["dataset"],
                                    device=src["device"], params=src["params"], python_layer=src["python_layer"],
                                    max_iter=src["max_iter"])["id"])
    for i in ids:
        queue.enqueue_job(ctx, store.get_job(i))
    return ids


def run(rounds: int = 5, jobs: int = 12, iters: int = 30) -> dict:
    """Latency of both queues and the 1 -> 2 worker throughput ratio."""
    from cluster import Redis
    root = temp_root()
    redis = Redis(root / "redis")
    redis.start()
    out: dict = {}
    try:
        # Local queue: `flask worker` beside the web (what `serve` starts).
        app = make_app(root / "local")
        client = common_client(app)
        with open(root / "local-worker.log", "ab") as fh:
            local = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"], cwd=ROOT,
                                     env=_env(app, None), stdout=fh, stderr=fh)
        try:
            _latency(app, client, 1)      # warm-up: caches, first sandbox start
            out["local"] = _latency(app, client, rounds)
            last = app.extensions["store"].list_jobs(status="done")[0]["id"]
            out["local"]["inference_s"] = _inference(app, client, last, rounds)
        finally:
            _stop([local])

        # Celery queue, one worker, the same kind of store.
        app = make_app(root / "celery", QUEUE="celery", BROKER_URL=redis.url)
        client = common_client(app)
        w1 = _celery_worker(app, redis.url, "w1@bench", root / "w1.log")
        procs = [w1]
        try:
            _wait_workers(app, 1)
            _latency(app, client, 1)
            out["celery"] = _latency(app, client, rounds)
            out["first_iteration_extra_s"] = round(out["celery"]["first_iteration_s"]
                                                   - out["local"]["first_iteration_s"], 3)
            seed = client.post("/api/v1/jobs", data=upload(max_iter=iters),
                               content_type="multipart/form-data").get_json()["id"]
            _wait_done(app.extensions["store"], [seed])
            out["celery"]["inference_s"] = _inference(app, client, seed, rounds)
            out["inference_extra_s"] = round(out["celery"]["inference_s"] - out["local"]["inference_s"], 3)
            rates = {}
            for n in (1, 2):
                if n == 2:
                    procs.append(_celery_worker(app, redis.url, "w2@bench", root / "w2.log"))
                    _wait_workers(app, 2)
                t0 = time.monotonic()
                ids = _copies(app, seed, jobs)
                _wait_done(app.extensions["store"], ids)
                rates[n] = jobs / (time.monotonic() - t0) * 60
                statuses = {app.extensions["store"].get_job(i)["status"] for i in ids}
                assert statuses == {"done"}, statuses
            out["throughput_jobs_per_min"] = {"1_worker": round(rates[1], 2), "2_workers": round(rates[2], 2)}
            out["throughput_ratio_2_vs_1"] = round(rates[2] / rates[1], 2)
            out["cores"] = os.cpu_count()
            out["jobs"], out["iterations_per_job"] = jobs, iters
        finally:
            _stop(procs)
    finally:
        redis.stop()
        cleanup(root)
    return out
