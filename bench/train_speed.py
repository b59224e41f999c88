"""Job training speed vs bare pycaffe on the same net, solver and data.

The job runs through the service (contained runner, metrics, progress);
the baseline is `solver.step(N)` in a plain pycaffe process on the job's own
generated solver. Alternated, several rounds; first iteration excluded on
both sides, and the job's own validation/snapshot passes excluded (the
bench job validates/snapshots only at the end anyway)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from .common import client as common_client, ROOT, cleanup, make_app, median, records, temp_root, upload, wait

BASELINE = r"""
import os, sys, time, json
sys.path.insert(0, os.path.dirname(sys.argv[1]))  # digits_python_layers.py
import caffe
from caffe.proto import caffe_pb2
from google.protobuf import text_format
sp = caffe_pb2.SolverParameter()
text_format.Parse(open(sys.argv[1]).read(), sp)
sp.test_interval, sp.snapshot = sp.max_iter + 1, 0
open(sys.argv[2], "w").write(text_format.MessageToString(sp))
caffe.set_mode_cpu()
s = caffe.get_solver(sys.argv[2])
s.step(1)
t = time.perf_counter()
s.step(sp.max_iter - 1)
print(json.dumps({"iterations": sp.max_iter - 1, "seconds": time.perf_counter() - t}))
"""


def run(rounds: int = 3, iters: int = 300) -> dict:
    """Return iterations/second of job and baseline, and their ratio."""
    from app.worker.supervisor import LocalSupervisor
    root = temp_root()
    try:
        app = make_app(root)
        client = common_client(app)
        sup = LocalSupervisor(app.extensions["ctx"], 1)
        threading.Thread(target=sup.serve_forever, daemon=True).start()
        job_ips, base_ips = [], []
        for _ in range(rounds):
            job = client.post("/api/v1/jobs", data=upload(max_iter=iters, val_interval=1000,
                                                          snapshot_interval=1000),
                              content_type="multipart/form-data").get_json()
            done = wait(client, job["id"])
            assert done["status"] == "done", done
            t = records(app, job["id"], "timing")[-1]
            job_ips.append(t["iterations"] / t["seconds"])
            solver = Path(app.config["JOBS_DIR"]) / job["id"] / "input" / "solver.prototxt"
            out = subprocess.run([sys.executable, "-c", BASELINE, str(solver), str(root / "bare.prototxt")],
                                 capture_output=True, text=True, cwd=ROOT, check=True)
            b = json.loads(out.stdout.strip().splitlines()[-1])
            base_ips.append(b["iterations"] / b["seconds"])
        sup.stopping.set()
        return {"job_ips": round(median(job_ips), 2), "bare_pycaffe_ips": round(median(base_ips), 2),
                "ratio": round(median(job_ips) / median(base_ips), 4),
                "rounds": rounds, "iterations": iters,
                "all_job_ips": [round(x, 2) for x in job_ips], "all_bare_ips": [round(x, 2) for x in base_ips]}
    finally:
        cleanup(root)
