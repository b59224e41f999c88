"""Helpers the tests share (import them: ``from helpers import post``); the
fixtures live in conftest.py, which pytest loads by itself."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


DATA = Path(__file__).resolve().parent / "data"


# A copy of seed/python-layers.txt from the project's shared folder (the
# original DIGITS "Python layers" page this product is built from), kept in the
# repo so the suite runs from any clone.
SEED_PAGE = DATA / "python-layers.txt"


def make_app(tmp_path: Path, sample_datasets: Path, **overrides):
    """An app on ``tmp_path`` with sample-digits already in place."""
    import shutil
    from app.web import create_app
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(sample_datasets, jobs_dir / "datasets")
    return create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(jobs_dir),
                       "TESTING": True, "WORKER_POLL_SECONDS": 0.1, **overrides})


def client_for(app, name: str = "admin", admin: bool = False, password: str = "pw-for-tests"):
    """A test client sending ``name``'s API token (the user is created if new)."""
    from app.web import auth
    with app.app_context():
        if app.extensions["store"].get_user(name) is None:
            auth.create_user(name, password, admin)
        token = auth.new_token(name)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    c.token = token
    return c


LENET_SEED = (DATA / "lenet_seed.prototxt").read_text()


SEED_LAYER = (DATA / "seed_accuracy_layer.py").read_text()


def layer_line(text: str, name: str) -> int:
    """1-based line of the `layer {` that holds `name: "<name>"`."""
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if f'name: "{name}"' in line)
    while not lines[idx].lstrip().startswith("layer"):
        idx -= 1
    return idx + 1


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def post(client, url: str, network: str | None = LENET_SEED, layer: str | None = SEED_LAYER,
         layer_name: str = "my_layers.py", **fields):
    """POST a multipart job/validate request like an API client would."""
    import io
    data = {k: str(v) for k, v in fields.items()}
    data.setdefault("dataset", "sample-digits")
    if network is not None:
        data["network"] = (io.BytesIO(network.encode()), "network.prototxt")
    if layer is not None:
        data["python_layer"] = (io.BytesIO(layer.encode()), layer_name)
    return client.post(url, data=data, content_type="multipart/form-data")


class WorkerProcess:
    """The real local worker (`flask --app wsgi worker`) as a subprocess."""

    def __init__(self, app, **extra_env: str) -> None:
        import subprocess
        env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=app.config["INSTANCE_DIR"],
                   LAYERBENCH_JOBS_DIR=app.config["JOBS_DIR"],
                   LAYERBENCH_DATABASE_URL=app.config["DATABASE_URL"],
                   LAYERBENCH_WORKER_POLL_SECONDS="0.1", **extra_env)
        self.log = open(Path(app.config["INSTANCE_DIR"]) / "worker.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"],
                                     cwd=str(ROOT), env=env, stdout=self.log, stderr=self.log)

    def kill(self) -> None:
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.kill()
        self.log.close()


class Workers:
    """Worker processes of one test; ``start()`` adds one."""

    def __init__(self, app) -> None:
        self.app, self.procs = app, []

    def start(self, **extra_env: str) -> WorkerProcess:
        w = WorkerProcess(self.app, **extra_env)
        self.procs.append(w)
        return w


def wait_for(client, job_id: str, statuses, timeout: float = 120.0) -> dict:
    """Poll the job JSON until its status is in ``statuses``."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {job['status']}: {job}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_live_sandbox_processes(within: Path, timeout: float = 10.0) -> bool:
    """No live process of any sandbox uid is left whose working directory
    lies under ``within`` (the test's own tmp_path: tests of other pytest
    workers run their own sandboxes meanwhile). Zombies, state Z, are exited
    processes waiting for PID 1 to reap them: they cannot run."""
    from app.services import sandbox
    uids = set(sandbox.uid_range()) | {sandbox.NOBODY}
    root = str(Path(within).resolve())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
                state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except (OSError, StopIteration, ValueError):
                continue   # gone meanwhile
            if uid in uids and state != "Z" and (cwd == root or cwd.startswith(root + "/")):
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def training_pid(out: Path, timeout: float = 30.0) -> int:
    """The host pid of the sandboxed `python -m app.contained.train ... OUT`
    (not bwrap's, whose command line holds the same words further on)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue   # not a process, or gone
            if argv[1:3] == [b"-m", b"app.contained.train"] and str(out).encode() in argv:
                found.append(int(proc.name))
        if len(found) == 1:
            return found[0]
        assert time.monotonic() < deadline, f"training processes of {out}: {found}"
        time.sleep(0.1)


def initial_token(instance: Path) -> str:
    """The first admin's API token, as a served instance wrote it."""
    creds = dict(line.split(": ", 1) for line in (Path(instance) / "initial-credentials.txt").read_text().splitlines())
    return creds["token"]


def api(url: str, token: str, method: str, path: str, fields: dict | None = None, timeout: float = 60) -> dict:
    """One call to a live server's API; ``fields`` become multipart/form-data
    ({name: (filename or None, bytes)}). The decoded JSON answer."""
    import json
    import urllib.request
    import uuid
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
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


@contextlib.contextmanager
def serve(root: Path, sample_datasets: Path, extra_env: dict[str, str] | None = None):
    """`flask --app wsgi serve` on a free port with its own data root under
    ``root`` (conftest's ``server`` fixture, for a module-scoped one);
    ``extra_env``: more settings (e.g. LAYERBENCH_DATA_ROOTS)."""
    import shutil
    import urllib.request
    shutil.copytree(sample_datasets, root / "jobs" / "datasets")
    port = free_port()
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(root / "instance"),
               LAYERBENCH_JOBS_DIR=str(root / "jobs"), LAYERBENCH_WORKER_POLL_SECONDS="0.1",
               HOST="127.0.0.1", PORT=str(port), **(extra_env or {}))
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT, env=env,
                                stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError((root / "server.log").read_text()[-3000:])
                    time.sleep(0.2)
            yield url, root / "instance"
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- a newcomer's first minutes (test_newcomer*.py) ----------------------------

def _clone(dest: Path) -> Path:
    """The working tree as `git clone` would give it (tracked + new, not ignored)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


def _as(uid: int | None) -> list[str]:
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _chown_tree(path: Path, uid: int) -> None:
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(path)], check=True)


def caffe_cache() -> Path:
    return Path(os.environ.get("CAFFE_CACHE_DIR", Path.home() / ".cache" / "caffe-service"))


def newcomer_trains_the_seed_job(home: Path, uid: int | None, env: dict[str, str]) -> None:
    """A clone in ``home`` set up with scripts/setup.sh (as ``uid``, None:
    as we are), served with `flask serve`, trains the seed job over the API."""
    import json
    import urllib.request
    clone = _clone(home / "layerbench")
    if uid is not None:
        _chown_tree(home, uid)
    setup = subprocess.run(_as(uid) + ["bash", "scripts/setup.sh"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stderr[-3000:]
    port = free_port()
    log = open(home / "serve.log", "wb")
    proc = subprocess.Popen(_as(uid) + [str(clone / ".venv" / "bin" / "flask"), "--app", "wsgi", "serve"],
                            cwd=clone, env={**env, "HOST": "127.0.0.1", "PORT": str(port)},
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (home / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
        # Anyone reads only the status; the admin's token the details:
        # full containment, and a real contained validation passed at start.
        assert health == {"status": "ok"}, health
        token = initial_token(clone / "instance")
        health = api(url, token, "GET", "/healthz")
        assert health["containment"] == "bwrap", health
        assert health["selftest"]["ok"] is True and health["ok"] is True, health
        job = api(url, token, "POST", "/api/v1/jobs", {
            "dataset": (None, b"sample-digits"), "max_iter": (None, b"30"), "name": (None, b"seed"),
            "network": ("lenet.prototxt", LENET_SEED.encode()), "python_layer": ("layers.py", SEED_LAYER.encode())})
        deadline = time.monotonic() + 240
        while job["status"] not in ("done", "error", "aborted", "interrupted"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
            job = api(url, token, "GET", f"/api/v1/jobs/{job['id']}")
        assert job["status"] == "done", (job["error"], job.get("history"), (home / "serve.log").read_text()[-3000:])
        assert job["iteration"] == 30 and "accuracy" in json.dumps(job["metrics"])
        if uid is not None:   # everything the service wrote belongs to the user
            owners = {p.stat().st_uid for p in (clone / "jobs").rglob("*")}
            assert owners == {uid}, owners
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
