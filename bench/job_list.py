"""Job list: one page of 50 from /api/v1/jobs (Flask test client, bearer
token, admin) with 100 jobs in the store and with 20,000; the cost of a page
must not grow with the store (keyset pagination on indexed (created_at, id)).
Targets: 20,000 within 1.5x of 100, and <= 20 ms.

Also timed at 20,000: a deep page (a cursor 19,000 jobs down), a non-admin's
page (owner index), the job list page `/`, and the page's live refresh
(?ids= of 5 active jobs).

Jobs are inserted in one transaction through SQLAlchemy, each with a job's
usual stored fields (params, Python layer, metrics, snapshots: about 1 KB of
job JSON each, as a real finished job has).
"""
from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timedelta, timezone

from .common import cleanup, client as admin_client, make_app, temp_root

SMALL, LARGE, PAGE = 100, 20_000, 50
TARGET_RATIO, TARGET_MS = 1.5, 20.0


def _rows(n: int, start: int, owner_every: int = 10) -> list[dict]:
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    params = json.dumps({"train_epochs": 30, "learning_rate": 0.01, "solver_type": "SGD", "lr_policy": "step",
                         "gamma": 0.1, "stepsize": 33, "batch_size": 64, "device": "cpu",
                         "network_filename": "lenet.prototxt", "iters_per_epoch": 22, "validation_seconds": 1.2})
    layer = json.dumps({"module": "digits_python_layers", "original_filename": "my_layers.py",
                        "classes": ["AccuracyLayer"]})
    metrics = json.dumps({"train": {"loss": 0.0123}, "val": {"accuracy": 0.981, "loss": 0.061}})
    snaps = json.dumps([{"iteration": 220 * k, "epoch": 10.0 * k} for k in range(1, 4)])
    rows = []
    for i in range(start, start + n):
        at = (base + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        rows.append({"id": f"{at[:10].replace('-', '')}-{i:06d}-bench", "name": f"LeNet run {i}",
                     "owner": "bench-user" if i % owner_every == 0 else "admin", "status": "done",
                     "created_at": at, "started_at": at, "finished_at": at, "dataset": "sample-digits",
                     "device": "cpu", "params": params, "python_layer": layer, "progress": 1.0,
                     "iteration": 660, "max_iter": 660, "epoch": 30.0, "metrics": metrics, "snapshots": snaps,
                     "abort_requested": False})
    return rows


def _insert(store, n: int, start: int) -> float:
    """Insert ``n`` jobs in one transaction; seconds taken."""
    from app.store import jobs
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(jobs.insert(), _rows(n, start))
    return time.perf_counter() - t0


def _once(client, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    resp = client.get(url)
    body = resp.get_data()
    ms = (time.perf_counter() - t0) * 1000
    assert resp.status_code == 200, (url, body[:200])
    return ms, len(body)


def _stats(lat: list[float], size: int) -> dict:
    lat = sorted(lat)
    return {"median_ms": round(statistics.median(lat), 2), "p95_ms": round(lat[int(0.95 * len(lat))], 2),
            "bytes": size}


def _time(client, url: str, n: int = 200) -> dict:
    """Median and p95 ms of ``n`` GETs of ``url`` (after 10 warm-up calls)."""
    for _ in range(10):
        _once(client, url)
    lat, size = [], 0
    for _ in range(n):
        ms, size = _once(client, url)
        lat.append(ms)
    return _stats(lat, size)


def _user_client(app, name: str):
    """A test client with the API token of a new non-admin user."""
    from app.web import auth
    with app.app_context():
        auth.create_user(name, "bench-password", False)
        token = auth.new_token(name)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return c


def run(rounds: int = 8, per_round: int = 50) -> dict:
    """Two stores side by side (100 jobs, 20,000 jobs), timed in alternating
    rounds so that warm-up and other load on the machine hit both alike."""
    roots = [temp_root(), temp_root()]
    try:
        apps = [make_app(r) for r in roots]
        clients = [admin_client(a) for a in apps]
        _insert(apps[0].extensions["store"], SMALL, 0)
        insert_s = _insert(apps[1].extensions["store"], LARGE, 0)
        url = f"/api/v1/jobs?limit={PAGE}"
        lat: list[list[float]] = [[], []]
        sizes = [0, 0]
        for c in clients:
            for _ in range(10):
                _once(c, url)
        for _ in range(rounds):
            for k, c in enumerate(clients):
                for _ in range(per_round):
                    ms, sizes[k] = _once(c, url)
                    lat[k].append(ms)
        small, large = _stats(lat[0], sizes[0]), _stats(lat[1], sizes[1])
        admin = clients[1]
        body = admin.get(url).get_json()
        assert len(body["jobs"]) == PAGE and body["next_cursor"]
        # A cursor 19,000 jobs down (the position of the 19,000th newest job).
        from app.services.jobs.listing import encode_cursor
        deep_row = _rows(1, LARGE - 19_000)[0]
        deep = _time(admin, f"{url}&cursor={encode_cursor((deep_row['created_at'], deep_row['id']))}")
        mine = _time(_user_client(apps[1], "bench-user"), url)
        ids = ",".join(j["id"] for j in body["jobs"][:5])
        live = _time(admin, f"/api/v1/jobs?limit=5&ids={ids}")
        page = _time(admin, "/", n=50)
        ratio = large["median_ms"] / small["median_ms"]
        return {"jobs_small": SMALL, "jobs_large": LARGE, "page_size": PAGE,
                "small": small, "large": large, "ratio": round(ratio, 2),
                "large_deep_page": deep, "large_non_admin": mine, "large_live_refresh_5_ids": live,
                "large_html_page": page, "insert_s": round(insert_s, 2),
                "targets_met": ratio <= TARGET_RATIO and large["median_ms"] <= TARGET_MS}
    finally:
        for r in roots:
            cleanup(r)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
