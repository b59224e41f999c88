"""The service end to end from the GPU bundle: serve, train a job through the
REST API, compare with bare pycaffe. Run with the bundle's interpreter by
scripts/gpu_check.sh (see docs/GPU.md):

    python scripts/gpu_service_check.py --bundle R --work DIR --device gpu --json OUT

What it records: /healthz (containment in force and why it is degraded,
GPUs, the start-up self-test), one seed-layer LeNet job with ``device`` set,
polled to ``done`` with every NVML sample the job JSON showed, then
``--rounds`` timed jobs alternated with bare pycaffe on each job's own solver
(same device): the service/bare ratio of iterations/s, measured like
bench/train_speed.py (first iteration excluded on both sides).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

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
if sys.argv[3] == "gpu":
    caffe.set_device(0)
    caffe.set_mode_gpu()
else:
    caffe.set_mode_cpu()
s = caffe.get_solver(sys.argv[2])
s.step(1)
t = time.perf_counter()
s.step(sp.max_iter - 1)
print(json.dumps({"iterations": sp.max_iter - 1, "seconds": time.perf_counter() - t}))
"""


def api(url: str, token: str, method: str, path: str, fields: dict | None = None, timeout: float = 60):
    """One API call; ``fields`` become multipart/form-data. (status, decoded JSON)."""
    body, headers = None, {"Authorization": f"Bearer {token}"}
    if fields is not None:
        boundary = uuid.uuid4().hex
        parts = []
        for k, (name, data) in fields.items():
            disp = f'form-data; name="{k}"' + (f'; filename="{name}"' if name else "")
            parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    req = urllib.request.Request(url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``flask --app wsgi serve --no-proxy`` from the bundle, in its own session."""

    def __init__(self, bundle: Path, work: Path, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.instance = work / "instance"
        env = {k: v for k, v in os.environ.items() if k in ("LD_LIBRARY_PATH", "OPENBLAS_NUM_THREADS")}
        env.update(PATH=f"{bundle / 'bin'}:/usr/bin:/bin", HOME=str(work), LANG="C.UTF-8",
                   PYTHONUNBUFFERED="1", LAYERBENCH_INSTANCE_DIR=str(self.instance),
                   LAYERBENCH_JOBS_DIR=str(work / "jobs"), **extra_env)
        self.log = open(work / "service.log", "ab")
        self.proc = subprocess.Popen([str(bundle / "bin" / "python3"), "-m", "flask", "--app", "wsgi", "serve",
                                      "--no-proxy", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "1", "--threads", "4"],
                                     cwd=bundle / "src", env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode} (see service.log)")
            try:
                # The details (containment and why) are for admins: send the
                # initial admin's token once the service has written it.
                creds = self.instance / "initial-credentials.txt"
                headers = {"Authorization": f"Bearer {self.token()}"} if creds.exists() else {}
                req = urllib.request.Request(self.url + "/healthz", headers=headers)
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:   # 503: up, but not healthy: still an answer
                return json.loads(exc.read() or b"{}")
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"no /healthz answer in {timeout} s")

    def token(self) -> str:
        text = (self.instance / "initial-credentials.txt").read_text()
        return dict(line.split(": ", 1) for line in text.splitlines())["token"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def submit(svc: Service, token: str, device: str, max_iter: int) -> dict:
    fields = {"network": ("lenet.prototxt", (DATA / "lenet_seed.prototxt").read_bytes()),
              "python_layer": ("my_layers.py", (DATA / "seed_accuracy_layer.py").read_bytes()),
              "dataset": (None, b"sample-digits"), "device": (None, device.encode()),
              "max_iter": (None, str(max_iter).encode()),
              "val_interval": (None, b"1000"), "snapshot_interval": (None, b"1000")}
    status, job = api(svc.url, token, "POST", "/api/v1/jobs", fields)
    if status != 201:
        raise RuntimeError(f"POST /api/v1/jobs answered {status}: {job}")
    return job


def follow(svc: Service, token: str, job_id: str, timeout: float) -> tuple[dict, list[dict]]:
    """Poll the job to its end; (final job JSON, the NVML samples seen while running)."""
    samples, deadline = [], time.monotonic() + timeout
    while True:
        _, job = api(svc.url, token, "GET", f"/api/v1/jobs/{job_id}")
        if job.get("gpu"):
            samples.append({"t": round(time.monotonic(), 2), "iteration": job.get("iteration"), **job["gpu"]})
        if job["status"] in ("done", "error", "aborted", "interrupted"):
            return job, samples
        if time.monotonic() > deadline:
            return job, samples
        time.sleep(0.2)


def timing(jobs_dir: Path, job_id: str) -> dict | None:
    recs = [json.loads(line) for line in (jobs_dir / job_id / "output" / "metrics.jsonl").read_text().splitlines()]
    t = [r for r in recs if r.get("type") == "timing"]
    return t[-1] if t else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--first-iters", type=int, default=2000, help="iterations of the NVML-sampled job")
    ap.add_argument("--iters", type=int, default=1000, help="iterations of each timed job")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    bundle, work = args.bundle.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)   # the sandbox's uid walks into the jobs below
    jobs_dir = work / "jobs"
    shutil.copytree(bundle / "data" / "datasets", jobs_dir / "datasets", dirs_exist_ok=True)
    result: dict = {"ok": False, "device": args.device}

    def save() -> None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    # Uncontained runs are allowed so that figures come back even where the
    # sandbox cannot start; whether it did is reported, loudly, below.
    svc = Service(bundle, work, {"LAYERBENCH_ALLOW_UNCONTAINED": "1"})
    try:
        t0 = time.monotonic()
        health = svc.wait_ready(180)
        result["start_seconds"] = round(time.monotonic() - t0, 1)
        result["healthz"] = health
        result["containment"] = health.get("containment")
        if health.get("containment") != "bwrap":
            result["LOUD_WARNING"] = (f"the sandbox is NOT bubblewrap here: containment "
                                      f"{health.get('containment')!r} because "
                                      f"{health.get('containment_degraded')!r}")
            print(f"!!!!! {result['LOUD_WARNING']} !!!!!", file=sys.stderr, flush=True)
        save()
        token = svc.token()

        # 1. One job to done, NVML samples collected while it runs.
        job = submit(svc, token, args.device, args.first_iters)
        final, samples = follow(svc, token, job["id"], 240)
        result["job"] = {"id": final["id"], "status": final["status"], "device": final.get("device"),
                         "metrics": final.get("metrics"), "error": final.get("error"),
                         "iteration": final.get("iteration"), "timing": timing(jobs_dir, final["id"]),
                         "nvml_samples": samples[:50], "nvml_sample_count": len(samples)}
        result["job_done"] = final["status"] == "done"
        result["nvml_seen"] = bool(samples)
        if args.device.startswith("gpu"):
            sys.path.insert(0, str(bundle / "src"))
            from app.services.runtime.gpus import device_nodes   # the bundle's own app
            result["device_nodes_bound"] = device_nodes(0)
        log_path = jobs_dir / final["id"] / "output" / "train.log"
        if log_path.is_file():
            text = log_path.read_text(errors="replace")
            result["job"]["train_log_mentions_gpu"] = any(w in text for w in ("GPU", "gpu", "CUDA", "cuda"))
        save()

        # 2. Service vs bare pycaffe on the same device, alternated.
        job_ips, bare_ips = [], []
        for _ in range(args.rounds):
            job = submit(svc, token, args.device, args.iters)
            final, _ = follow(svc, token, job["id"], 240)
            t = timing(jobs_dir, job["id"]) if final["status"] == "done" else None
            if not t:
                result.setdefault("round_errors", []).append({"status": final["status"], "error": final.get("error")})
                continue
            job_ips.append(t["iterations"] / t["seconds"])
            solver = jobs_dir / job["id"] / "input" / "solver.prototxt"
            out = subprocess.run([sys.executable, "-c", BASELINE, str(solver), str(work / "bare.prototxt"),
                                  "gpu" if args.device.startswith("gpu") else "cpu"],
                                 capture_output=True, text=True, cwd=bundle / "src", timeout=240)
            if out.returncode:
                result.setdefault("round_errors", []).append({"bare_stderr": out.stderr[-2000:]})
                continue
            b = json.loads(out.stdout.strip().splitlines()[-1])
            bare_ips.append(b["iterations"] / b["seconds"])
        if job_ips and bare_ips:
            result["service_vs_bare"] = {
                "job_ips": round(statistics.median(job_ips), 2),
                "bare_pycaffe_ips": round(statistics.median(bare_ips), 2),
                "ratio": round(statistics.median(job_ips) / statistics.median(bare_ips), 4),
                "rounds": len(job_ips), "iterations": args.iters,
                "all_job_ips": [round(x, 2) for x in job_ips], "all_bare_ips": [round(x, 2) for x in bare_ips]}
        result["ok"] = bool(result.get("job_done") and "service_vs_bare" in result
                            and (result["nvml_seen"] or not args.device.startswith("gpu")))
    except Exception as exc:   # recorded, never lost: the device run is one-shot
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        svc.stop()
        save()
    print(json.dumps({k: result.get(k) for k in ("ok", "containment", "job_done", "nvml_seen",
                                                 "service_vs_bare", "error")}), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
