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


class _OldTail:
    """The near-copy of app.core.jsonl the runner kept until this bench
    compared the two (issue 24): the same reading, its own code. Swapped in
    for alternate rounds; the runner itself keeps only RunTail."""

    def __init__(self, path: Path, run: int | None = None) -> None:
        self.path, self.offset, self.buf, self.run = path, 0, b"", run

    def records(self) -> list[dict]:
        from app.core.workspace import Workspace
        if self.offset >= 64 << 20:
            return []
        try:
            chunk = Workspace.read_capped(self.path, 1 << 20, self.offset)
        except OSError:
            return []
        self.offset += len(chunk)
        self.buf += chunk
        *complete, self.buf = self.buf.split(b"\n")
        out = []
        for raw in complete:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                run = rec.pop("run", None)
                if self.run is None or run is None or run == self.run:
                    out.append(rec)
        return out


def _spread(values: list[float]) -> dict:
    """Median and interquartile range."""
    v = sorted(values)
    q = lambda f: v[min(len(v) - 1, max(0, round(f * (len(v) - 1))))]  # noqa: E731
    return {"median": round(median(v), 4), "q1": round(q(0.25), 4), "q3": round(q(0.75), 4),
            "iqr": round(q(0.75) - q(0.25), 4)}


def run(rounds: int = 20, iters: int = 300, compare_readers: bool = False) -> dict:
    """Iterations/second of the job and of bare pycaffe, alternated round by
    round (20 rounds; BENCH_ROUNDS), and the per-round ratio's median and
    spread. With ``compare_readers`` (BENCH_COMPARE_READERS=1) every other
    round's job uses the old metrics reader (_OldTail) instead of the
    runner's RunTail, as the rounds that chose RunTail did: both ratios are
    reported."""
    import os
    from app.worker import runner
    from app.worker.supervisor import LocalSupervisor
    rounds = int(os.environ.get("BENCH_ROUNDS", rounds))
    compare_readers = compare_readers or os.environ.get("BENCH_COMPARE_READERS") == "1"
    root = temp_root()
    current = runner.RunTail
    try:
        app = make_app(root)
        client = common_client(app)
        sup = LocalSupervisor(app.extensions["ctx"], 1)
        threading.Thread(target=sup.serve_forever, daemon=True).start()
        ratios: dict[str, list[float]] = {"RunTail": [], "_OldTail": []}
        job_ips, base_ips = [], []
        for i in range(rounds):
            reader = _OldTail if compare_readers and i % 2 else current
            runner.RunTail = reader
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
            ratios[reader.__name__ if reader is _OldTail else "RunTail"].append(job_ips[-1] / base_ips[-1])
        sup.stopping.set()
        mine = ratios["RunTail"]
        return {"job_ips": round(median(job_ips), 2), "bare_pycaffe_ips": round(median(base_ips), 2),
                "ratio": round(median(mine), 4), "ratio_spread": _spread(mine),
                "old_reader_ratio_spread": _spread(ratios["_OldTail"]) if ratios["_OldTail"] else None,
                "rounds": rounds, "iterations": iters,
                "all_ratios": {k: [round(x, 3) for x in v] for k, v in ratios.items()}}
    finally:
        runner.RunTail = current
        cleanup(root)
