"""The chaos soak (``make soak``; docs/OPERATIONS.md, "The chaos soak").

Starts the real service (``flask --app wsgi serve``: nginx, gunicorn, the
local worker, sandboxed training) from a temporary directory, in the local
queue. Three users submit a steady stream of tiny LeNet jobs and ask for
inference on their finished ones while faults are injected at random:

* ``kill_trainer``: SIGKILL of a sandboxed trainer of this soak (its job
  is interrupted with the cause; resumed, it continues from its last
  snapshot, or starts again when it had none);
* ``kill_worker``: SIGKILL of the local job worker (``serve`` starts it
  again; the jobs it ran are interrupted with the cause);
* ``fill_disk``: the jobs directory lives on a tmpfs of its own
  (``SOAK_VOLUME_MB``, mounted by the soak; root only) and a file is
  fallocated over all its free space for ``SOAK_FILL_SECONDS``: a real
  ENOSPC for trainers and uploads alike. The database and instance stay on
  the ordinary disk, as an operator would keep them.

At the end (faults stopped, the file removed) it resumes every interrupted
job, waits for all to end and checks the invariants; any failure is printed
and makes the exit status 1:

* every job is done (after resuming the interrupted ones; an interrupted
  job must carry a reason);
* no job was trained by two runs at once (its history: never two
  ``running`` events without an end or requeue between them);
* every counter and histogram of ``/metrics`` (scraped every few seconds)
  never went down;
* no 5xx answer, but 507 (insufficient storage) while the disk was full
  (and a few seconds after), and 503 only with ``Retry-After``; no request
  that got no answer at all;
* ``PRAGMA integrity_check`` of the SQLite database says ok;
* the gunicorn workers' resident memory grew by at most 10 % from the
  first sample after warm-up to the last.

The last line is exactly ``soak: <jobs> jobs, <faults> faults, <requests>
requests, <lost> lost``. Settings (environment): SOAK_SECONDS (600),
SOAK_FAULT_EVERY (12 s on average), SOAK_FAULTS (the kinds, comma-separated;
default all three), SOAK_FILL_SECONDS (12), SOAK_VOLUME_MB
(8 MB per second of soak, at least 2048), SOAK_ITERS (24), SOAK_SEED (seeds the random choices; threads
interleave, so two runs still differ), SOAK_KEEP=1 keeps the directory.

Not pytest: it imports the shared data (networks, helpers) from
tests/helpers.py, which imports nothing of pytest.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from helpers import LENET_SEED, SEED_LAYER, free_port  # noqa: E402  (tests/ on the path first)

ENDED = {"done", "error", "aborted", "interrupted"}
USERS = ("ada", "bo", "cy")
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
FAULT_EVERY = float(os.environ.get("SOAK_FAULT_EVERY", "12"))
FILL_SECONDS = float(os.environ.get("SOAK_FILL_SECONDS", "12"))
# Each job keeps about 10 MB (three LeNet snapshot pairs), and the users make
# a job every ~3 s (a 600 s soak made 222 and filled a 2 GB volume for good:
# the queue then rightly waits for room, and the soak never settles), so the
# volume grows with the run. tmpfs takes memory only for what is written
# (and the fill).
VOLUME_MB = int(os.environ.get("SOAK_VOLUME_MB", str(max(2048, int(SECONDS * 8)))))
ITERS = int(os.environ.get("SOAK_ITERS", "24"))
FAULTS = os.environ.get("SOAK_FAULTS", "kill_trainer,kill_worker,fill_disk").split(",")
GRACE_507_S = 5.0      # a request that began while the disk was full can end just after


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Http:
    """Every request the soak makes, with what came back; the 5xx rule."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.bad: list[str] = []
        self.full: list[tuple[float, float]] = []      # (start, end) of disk-full windows
        self.lock = threading.Lock()

    def disk_was_full(self, t0: float, t1: float) -> bool:
        return any(t0 <= end + GRACE_507_S and t1 >= start for start, end in self.full)

    def call(self, method: str, path: str, token: str | None = None, fields: dict | None = None,
             timeout: float = 120) -> tuple[int, object]:
        """(status, decoded JSON or text); never raises for an HTTP status."""
        body, headers = None, {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if fields is not None:
            boundary = uuid.uuid4().hex
            parts = []
            for k, (name, data) in fields.items():
                disp = f'form-data; name="{k}"' + (f'; filename="{name}"' if name else "")
                parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n")
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, retry_after = resp.status, resp.read(), resp.headers.get("Retry-After")
        except urllib.error.HTTPError as exc:
            status, raw, retry_after = exc.code, exc.read(), exc.headers.get("Retry-After")
        except OSError as exc:     # no answer at all: refused, reset, timed out
            with self.lock:
                self.count += 1
                self.bad.append(f"{method} {path}: no answer ({exc!r})")
            return 0, None
        t1 = time.monotonic()
        with self.lock:
            self.count += 1
            if status >= 500 and not (status == 507 and self.disk_was_full(t0, t1)) \
                    and not (status == 503 and retry_after):
                self.bad.append(f"{method} {path}: {status} {raw[:300]!r}")
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode("utf-8", "replace")


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, pp in parent.items() if pp == cur]
        out += kids
        todo += kids
    return out


def _argv(pid: int) -> list[bytes]:
    try:
        # NUL-terminated arguments: no empty last one
        return (Path(f"/proc/{pid}/cmdline")).read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Soak:
    """One soak run (see the module docstring)."""

    def __init__(self) -> None:
        self.rng = random.Random(int(os.environ.get("SOAK_SEED") or time.time()))
        self.root = Path(tempfile.mkdtemp(prefix="lb-soak-", dir="/tmp"))
        self.vol = self.root / "vol"
        self.vol.mkdir()
        self.mounted = False
        self.jobs_dir = self.vol / "jobs"
        self.instance = self.root / "instance"
        self.stop = threading.Event()
        self.violations: list[str] = []
        self.faults: dict[str, int] = {}
        self.jobs: dict[str, tuple[str, str]] = {}       # id -> (user, token)
        self.tokens: dict[str, str] = {}
        self.serve: subprocess.Popen | None = None
        self.http: Http | None = None
        self.rss_first: dict[int, int] | None = None
        self.rss_last: dict[int, int] = {}
        self.scrapes = 0
        self.last_metrics: dict[tuple, float] = {}
        self.log_file = None
        self.lock = threading.Lock()

    # ---- set-up and tear-down ------------------------------------------------------

    def start(self) -> None:
        if os.geteuid() == 0:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MB}m,mode=0755", "tmpfs", str(self.vol)],
                           check=True)
            self.mounted = True
        else:
            log("not root: no tmpfs of its own for the jobs directory, so no fill_disk fault")
        from app.caffe.datasets import ensure_sample_digits
        ensure_sample_digits(self.jobs_dir / "datasets")
        port = free_port()
        self.env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(self.instance), LAYERBENCH_JOBS_DIR=str(self.jobs_dir),
                        LAYERBENCH_WORKER_POLL_SECONDS="0.2", HOST="127.0.0.1", PORT=str(port))
        self.log_file = open(self.root / "serve.log", "wb")
        self.serve = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT,
                                      env=self.env, stdout=self.log_file, stderr=self.log_file,
                                      start_new_session=True)
        self.http = Http(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(self.http.url + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.serve.poll() is not None:
                    raise SystemExit("soak: the service did not start:\n"
                                     + (self.root / "serve.log").read_text()[-3000:])
                time.sleep(0.3)
        for name in USERS:
            made = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "users", "create", name],
                                  cwd=ROOT, env=self.env, capture_output=True, text=True, check=True)
            self.tokens[name] = next(line.split(": ", 1)[1] for line in made.stdout.splitlines()
                                     if line.startswith("token: "))
        log(f"serving {self.http.url} from {self.root} (jobs on {'a tmpfs of ' + str(VOLUME_MB) + ' MB' if self.mounted else 'the disk'})")

    def stop_service(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.terminate()
            try:
                self.serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.serve.pid, signal.SIGKILL)
                self.serve.wait(10)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def cleanup(self) -> None:
        self._unfill()
        if os.environ.get("SOAK_KEEP") == "1":
            log(f"kept {self.root}")
            return
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.vol)], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- the users -----------------------------------------------------------------

    def user(self, name: str) -> None:
        """Submit tiny jobs (at most two of this user's unfinished at once)
        and ask for inference with finished ones, until the soak ends."""
        token = self.tokens[name]
        mine: dict[str, str] = {}
        sample = sorted((self.jobs_dir / "datasets" / "sample-digits" / "samples").glob("*.png"))[0].read_bytes()
        while not self.stop.is_set():
            for job_id in [j for j, s in mine.items() if s not in ENDED]:
                status, job = self.http.call("GET", f"/api/v1/jobs/{job_id}", token)
                if status == 200:
                    mine[job_id] = job["status"]
            if sum(1 for s in mine.values() if s not in ENDED) < 2:
                status, job = self.http.call("POST", "/api/v1/jobs", token, {
                    "dataset": (None, b"sample-digits"), "max_iter": (None, str(ITERS).encode()),
                    "snapshot_interval": (None, b"0.5"), "name": (None, f"{name} soak".encode()),
                    "network": ("network.prototxt", LENET_SEED.encode()),
                    "python_layer": ("my_layers.py", SEED_LAYER.encode())})
                if status == 201:
                    mine[job["id"]] = job["status"]
                    with self.lock:
                        self.jobs[job["id"]] = (name, token)
            done = [j for j, s in mine.items() if s == "done"]
            if done:
                self.http.call("POST", f"/api/v1/jobs/{self.rng.choice(done)}/infer", token,
                               {"image": ("digit.png", sample)})
            self.stop.wait(self.rng.uniform(0.5, 2.0))

    # ---- faults ----------------------------------------------------------------------

    def _trainers(self) -> list[tuple[int, str]]:
        """(pid, job id) of this soak's sandboxed trainers (``python -m
        app.contained.train INPUT OUTPUT CONTROL``, the paths under this
        soak's jobs dir: other people's trainers on the host are never hit)."""
        out = []
        mark = str(self.jobs_dir) + "/"
        for p in Path("/proc").iterdir():
            argv = _argv(int(p.name)) if p.name.isdigit() else []
            if argv[1:3] == [b"-m", b"app.contained.train"] and len(argv) > 3 and argv[3].decode().startswith(mark):
                out.append((int(p.name), argv[3].decode()[len(mark):].split("/")[0]))
        return out

    def _job_worker(self) -> int | None:
        """The pid of serve's `flask --app wsgi worker` child."""
        for pid in _children(self.serve.pid):
            argv = _argv(pid)
            if b"wsgi" in argv and argv[-1:] == [b"worker"]:
                return pid
        return None

    def _unfill(self) -> None:
        fill = self.vol / "fill"
        if fill.exists():
            fill.unlink()
            with self.http.lock:
                start, _ = self.http.full[-1]
                self.http.full[-1] = (start, time.monotonic())

    def faults_loop(self) -> None:
        kinds = [k for k in FAULTS if k != "fill_disk" or self.mounted]
        self.stop.wait(10)       # the first jobs start first
        while not self.stop.is_set():
            kind = self.rng.choice(kinds)
            done = False
            if kind == "kill_trainer":
                found = self._trainers()
                if found:
                    pid, job_id = self.rng.choice(found)
                    os.kill(pid, signal.SIGKILL)
                    log(f"fault: SIGKILL trainer {pid} of job {job_id}")
                    done = True
            elif kind == "kill_worker":
                pid = self._job_worker()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    log(f"fault: SIGKILL the job worker {pid}")
                    done = True
            else:
                free = os.statvfs(self.vol)
                with self.http.lock:
                    self.http.full.append((time.monotonic(), float("inf")))
                with open(self.vol / "fill", "wb") as fh:
                    try:
                        os.posix_fallocate(fh.fileno(), 0, free.f_bavail * free.f_frsize)
                    except OSError:
                        pass   # as full as it gets
                log(f"fault: jobs volume full for {FILL_SECONDS:.0f} s")
                self.stop.wait(FILL_SECONDS)
                self._unfill()
                done = True
            if done:
                with self.lock:
                    self.faults[kind] = self.faults.get(kind, 0) + 1
            self.stop.wait(self.rng.uniform(FAULT_EVERY * 0.5, FAULT_EVERY * 1.5))

    # ---- metrics and memory ----------------------------------------------------------

    def _gunicorn_workers(self) -> list[int]:
        pids = _children(self.serve.pid)
        masters = [p for p in pids if b"gunicorn" in b" ".join(_argv(p))]
        return [p for p in masters if any(p in _children(m) for m in masters)]

    def watch(self, warm_until: float) -> None:
        """Scrape /metrics every 3 s: counters must never go down; sample
        the gunicorn workers' memory (first after warm-up, and last)."""
        from prometheus_client.parser import text_string_to_metric_families
        while not self.stop.wait(3):
            self.check_metrics(text_string_to_metric_families, self.last_metrics)
            if time.monotonic() >= warm_until:
                rss = {p: _rss_kb(p) for p in self._gunicorn_workers()}
                if self.rss_first is None:
                    self.rss_first = rss
                self.rss_last = rss

    def check_metrics(self, parse, last: dict) -> None:
        status, text = self.http.call("GET", "/metrics")
        if status != 200:
            return
        self.scrapes += 1
        for fam in parse(text):
            if fam.type not in ("counter", "histogram"):
                continue
            for s in fam.samples:
                if s.name.endswith("_created") or (fam.type == "histogram" and s.name.endswith("_gsum")):
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                if key in last and s.value < last[key]:
                    self.violations.append(f"metrics: {s.name}{dict(s.labels)} went down {last[key]} -> {s.value}")
                last[key] = s.value

    # ---- the end -----------------------------------------------------------------------

    def job(self, job_id: str) -> dict | None:
        _, token = self.jobs[job_id]
        status, job = self.http.call("GET", f"/api/v1/jobs/{job_id}", token)
        return job if status == 200 else None

    def settle(self, timeout: float) -> None:
        """Resume interrupted jobs and wait until every job is done (or
        cannot get there)."""
        deadline = time.monotonic() + timeout
        resumed: dict[str, int] = {}
        while time.monotonic() < deadline:
            states = {j: self.job(j) for j in list(self.jobs)}
            open_ = [j for j, job in states.items() if job and job["status"] not in ENDED]
            for j, job in states.items():
                if job and job["status"] == "interrupted" and resumed.get(j, 0) < 3:
                    if not (job.get("error") or {}).get("message"):
                        self.violations.append(f"job {j} interrupted without a reason")
                    status, _ = self.http.call("POST", f"/api/v1/jobs/{j}/resume", self.jobs[j][1])
                    resumed[j] = resumed.get(j, 0) + 1
                    open_.append(j)
            if not open_:
                return
            time.sleep(1)
        free = shutil.disk_usage(self.jobs_dir).free >> 20
        log(f"settle: timed out with {len(open_)} jobs not ended ({free} MiB free on the jobs volume)")

    def check_jobs(self) -> int:
        lost = 0
        for j in sorted(self.jobs):
            job = self.job(j)
            if job is None or job["status"] != "done":
                lost += 1
                self.violations.append(f"job {j} not done: {job and job['status']} "
                                       f"{json.dumps((job or {}).get('error'))[:300]}")
                continue
            running = False
            for e in job.get("history") or []:
                if e["status"] == "running" and running:
                    self.violations.append(f"job {j}: two runs at once in its history {job['history']}")
                running = e["status"] == "running"
        return lost

    def check_database(self) -> None:
        db = self.instance / "layerbench.sqlite3"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
        if verdict != "ok":
            self.violations.append(f"database integrity_check: {verdict}")

    def check_memory(self) -> None:
        if not self.rss_first or not self.rss_last:
            self.violations.append("memory: no gunicorn worker sampled")
            return
        if set(self.rss_first) != set(self.rss_last):
            self.violations.append(f"memory: gunicorn workers changed {sorted(self.rss_first)} -> "
                                   f"{sorted(self.rss_last)} (one died?)")
            return
        first, last = sum(self.rss_first.values()), sum(self.rss_last.values())
        log(f"gunicorn workers' RSS: {first} kB after warm-up, {last} kB at the end ({(last / first - 1) * 100:+.1f} %)")
        if last > first * 1.10:
            self.violations.append(f"memory: gunicorn workers grew {first} -> {last} kB (> 10 %)")

    def run(self) -> int:
        t0 = time.monotonic()
        self.start()
        threads = [threading.Thread(target=self.user, args=(u,), daemon=True) for u in USERS]
        threads.append(threading.Thread(target=self.faults_loop, daemon=True))
        threads.append(threading.Thread(target=self.watch, args=(time.monotonic() + min(60.0, SECONDS / 4),),
                                        daemon=True))
        for t in threads:
            t.start()
        lost = 0
        try:
            self.stop.wait(SECONDS)
            self.stop.set()
            for t in threads:
                t.join(180)
            self._unfill()
            log(f"load stopped; {len(self.jobs)} jobs, faults {self.faults}; settling")
            self.settle(timeout=max(180.0, len(self.jobs) * 10.0))
            lost = self.check_jobs()
            from prometheus_client.parser import text_string_to_metric_families
            self.check_metrics(text_string_to_metric_families, self.last_metrics)
            self.check_memory()
            self.stop_service()
            self.check_database()       # the service stopped: nothing writes it now
        finally:
            self.stop_service()
            self.cleanup()
        self.violations += self.http.bad
        for v in self.violations:
            log(f"FAILED: {v}")
        log(f"{self.scrapes} scrapes of /metrics; wall time {time.monotonic() - t0:.0f} s")
        print(f"soak: {len(self.jobs)} jobs, {sum(self.faults.values())} faults, {self.http.count} requests, "
              f"{lost} lost", flush=True)
        return 1 if self.violations else 0


def main() -> int:
    """Run the soak; the exit status says whether every invariant held."""
    return Soak().run()


if __name__ == "__main__":
    sys.exit(main())
