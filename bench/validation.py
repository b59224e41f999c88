"""Validation time of LeNet + the seed's layer, contained vs uncontained,
and submit -> first training iteration beyond validation."""
from __future__ import annotations

import threading
import time

from .common import client as common_client, cleanup, make_app, median, records, temp_root, upload, wait


def _validate_times(app, n: int) -> list[float]:
    client = common_client(app)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.post("/api/v1/validate", data=upload(), content_type="multipart/form-data").get_json()
        out.append(time.perf_counter() - t)
        assert r["ok"], r
    return out


def run(n: int = 7) -> dict:
    """Medians in seconds, and the sandbox's overhead ratio."""
    from app.worker.supervisor import LocalSupervisor
    root = temp_root()
    try:
        contained = make_app(root)
        assert contained.extensions["containment"] == "bwrap"
        bare = make_app(root, SANDBOX="none", ALLOW_UNCONTAINED=True)
        _validate_times(contained, 1)  # warm the page cache once
        c_times, b_times = [], []
        for _ in range(n):  # alternate to share any drift
            c_times += _validate_times(contained, 1)
            b_times += _validate_times(bare, 1)
        client = common_client(contained)
        sup = LocalSupervisor(contained.extensions["ctx"], 1)
        threading.Thread(target=sup.serve_forever, daemon=True).start()
        beyond = []
        for _ in range(3):
            t0 = time.time()
            job = client.post("/api/v1/jobs", data=upload(max_iter=20),
                              content_type="multipart/form-data").get_json()
            validation = job and (time.time() - t0)
            wait(client, job["id"])
            first = records(contained, job["id"], "first_iteration")[0]["at"]
            beyond.append(first - t0 - validation)
        sup.stopping.set()
        return {"validate_contained_s": round(median(c_times), 3),
                "validate_uncontained_s": round(median(b_times), 3),
                "sandbox_overhead_ratio": round(median(c_times) / median(b_times), 3),
                "submit_to_first_iteration_beyond_validation_s": round(median(beyond), 3),
                "runs": n}
    finally:
        cleanup(root)
