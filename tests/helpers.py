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


_TEMPLATE_INSTANCE: list[Path] = []


def _template_instance() -> Path:
    """An instance dir made once per test process by a real first start
    (Alembic's migrations run, the initial admin created): each app copies
    it instead of paying both again (~0.15 s, most of it the admin's scrypt).
    The first start itself is tested on a fresh dir (test_auth.py)."""
    if not _TEMPLATE_INSTANCE:
        import atexit
        import tempfile
        from app.web import create_app
        base = Path(tempfile.mkdtemp(prefix="lb-template-"))
        atexit.register(shutil.rmtree, base, True)
        first = create_app({"INSTANCE_DIR": str(base / "instance"), "JOBS_DIR": str(base / "jobs"), "TESTING": True})
        first.extensions["store"].engine.dispose()
        _TEMPLATE_INSTANCE.append(base / "instance")
    return _TEMPLATE_INSTANCE[0]


def make_app(tmp_path: Path, sample_datasets: Path, **overrides):
    """An app on ``tmp_path`` with sample-digits already in place; its
    instance (SQLite database at the newest revision, the admin) is a copy of
    a template made by a real first start, unless the database is elsewhere."""
    from app.web import create_app
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(sample_datasets, jobs_dir / "datasets")
    if "DATABASE_URL" not in overrides and "INSTANCE_DIR" not in overrides:
        shutil.copytree(_template_instance(), tmp_path / "instance")
    return create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(jobs_dir),
                       "TESTING": True, "WORKER_POLL_SECONDS": 0.1, **overrides})


_PASSWORD_HASHES: dict[str, str] = {}


def password_hash(password: str) -> str:
    """The stored form of ``password``, hashed once per test process: a real
    scrypt hash (sign-ins check it as ever) without paying its ~60 ms for
    each of the suite's hundreds of users (measured with py-spy: a sixth of
    the test processes' CPU). Creating a user the service's way
    (app.services.accounts.users.create) is tested on its own (test_auth*)."""
    if password not in _PASSWORD_HASHES:
        from app.services.accounts.users import hash_password
        _PASSWORD_HASHES[password] = hash_password(password)
    return _PASSWORD_HASHES[password]


def client_for(app, name: str = "admin", admin: bool = False, password: str = "pw-for-tests"):
    """A test client sending ``name``'s API token (the user is created if new)."""
    from app.web import auth
    store = app.extensions["store"]
    with app.app_context():
        if store.get_user(name) is None:
            store.add_user(name, password_hash(password), admin)
        token = auth.new_token(name)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    c.token = token
    return c


LENET_SEED = (DATA / "lenet_seed.prototxt").read_text()


SEED_LAYER = (DATA / "seed_accuracy_layer.py").read_text()


# DIGITS's Python-layer tutorial (examples/python-layer), verbatim: the
# BlankSquareLayer (Python 2: `height/2` as a slice bound) and the prototxt
# snippet it inserts into LeNet; source and licence in tests/data/digits/README.md.
BLANK_SQUARE = (DATA / "digits" / "blank_square_layer.py").read_text()


def lenet_with_blank_square() -> str:
    """DIGITS's LeNet with the tutorial's blank_square layer between its
    scale and conv1 layers, as the tutorial inserts it (DIGITS's LeNet
    names scale's top "scaled"; the tutorial's LeNet said "scale")."""
    snippet = (DATA / "digits" / "blank_square_snippet.prototxt").read_text().replace('"scale"', '"scaled"')
    net = (DATA / "digits" / "lenet.prototxt").read_text()
    return net.replace('layer {\n  name: "conv1"', snippet + 'layer {\n  name: "conv1"', 1)


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
                   LAYERBENCH_WORKER_POLL_SECONDS="0.1")
        env.update(extra_env)
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


class InProcessWorker:
    """The local worker's supervisor (app.worker.supervisor.for_this_host,
    what `flask worker` runs) on a thread of this test process, for tests
    whose subject is not supervision: a worker process costs ~0.7 CPU-s to
    start (its interpreter, imports and app), paid ~60 times a suite.
    Settings come as the process's environment would give them
    (``LAYERBENCH_TRAIN_TIMEOUT="6"``) over the app's own; runs are the real
    sandboxed subprocesses either way. Tests that kill, freeze or count the
    worker use WorkerProcess (``Workers(app, process=True)``)."""

    def __init__(self, app, **extra_env: str) -> None:
        import dataclasses
        import threading
        from app.worker.supervisor import for_this_host
        ctx = app.extensions["ctx"]
        changes = {k.removeprefix("LAYERBENCH_"): v for k, v in extra_env.items()}
        self.ctx = dataclasses.replace(ctx, cfg=ctx.cfg.replace(**changes)) if changes else ctx
        self.sup = for_this_host(self.ctx)
        self.thread = threading.Thread(target=self.sup.serve_forever, daemon=True, name="in-process worker")
        self.thread.start()
        deadline = time.monotonic() + 10    # ready once its doorbell is up, as a started process would be
        while getattr(self.sup, "bell_path", None) is None and self.thread.is_alive():
            assert time.monotonic() < deadline, "the in-process worker did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        """As SIGTERM does: running jobs stop with a snapshot; returns once they have."""
        self.sup.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the in-process worker did not stop"


class Workers:
    """Workers of one test; ``start()`` adds one: in this process unless
    ``process`` (a real `flask worker` subprocess, WorkerProcess)."""

    def __init__(self, app, process: bool = False) -> None:
        self.app, self.process, self.procs = app, process, []

    def start(self, **extra_env: str):
        w = (WorkerProcess if self.process else InProcessWorker)(self.app, **extra_env)
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
    from app.services.runtime import sandbox
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
    # (into a jobs dir a restore filled too: the same sample files)
    shutil.copytree(sample_datasets, root / "jobs" / "datasets", dirs_exist_ok=True)
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


@contextlib.contextmanager
def serve_with_data_root(sample_datasets: Path, prefix: str, fill):
    """A served instance (``serve``) whose one data root
    (LAYERBENCH_DATA_ROOTS) ``fill(data)`` wrote first, readable by the
    sandbox's own uid (umask 022, 0755 dirs): yields (url, instance, data).
    Its base lives outside pytest's directory, whose mode a concurrent
    pytest session resets (cutting the service user off)."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    data = base / "data"
    old = os.umask(0o022)
    try:
        data.mkdir()
        fill(data)
    finally:
        os.umask(old)
    for d in (base, data):
        d.chmod(0o755)
    try:
        with serve(base, sample_datasets, {"LAYERBENCH_DATA_ROOTS": str(data)}) as (url, instance):
            yield url, instance, data
    finally:
        shutil.rmtree(base, ignore_errors=True)


def infer_server_pids(job_dir: Path) -> list[int]:
    """Host pids of the warm inference processes (`python -m
    app.contained.infer_server`) of the job in ``job_dir``, sorted."""
    inp = str(Path(job_dir).resolve() / "input").encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"app.contained.infer_server"] and inp in argv:
            found.append(int(proc.name))
    return sorted(found)


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
            assert time.monotonic() < deadline, (job, (home / "serve.log").read_text()[-3000:])
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


# ---- Chromium (the browser tests) ---------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chrome(user_data_dir: Path, size: str = "1280,1600"):
    """Headless Debian Chromium driven by the system chromedriver (quit it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={size}", f"--user-data-dir={user_data_dir}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait_in_browser(fn, timeout=90.0, every=0.2):
    """Poll ``fn`` until truthy; a page still navigating counts as "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting in the browser")
        time.sleep(every)


def sign_in(driver, base_url: str, name: str, password: str) -> None:
    """Sign ``driver`` in through the login form."""
    from selenium.webdriver.common.by import By
    driver.get(base_url + "/login")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait_in_browser(lambda: "/login" not in driver.current_url, timeout=20, every=0.1)


def browser_login(browser, server, instance: Path) -> None:
    """Sign the initial admin of a served ``instance`` in, from a page that asks for it."""
    from selenium.webdriver.common.by import By
    creds = dict(line.split(": ", 1) for line in (instance / "initial-credentials.txt").read_text().splitlines())
    assert (instance / "initial-credentials.txt").stat().st_mode & 0o777 == 0o600
    browser.get(server + "/jobs/new")
    assert "/login" in browser.current_url          # pages need a login
    browser.find_element(By.ID, "username").send_keys(creds["user"])
    browser.find_element(By.ID, "password").send_keys(creds["password"])
    browser.find_element(By.ID, "login").click()
    # The redirected page itself, not just its URL: a get() issued while it
    # still loads would race it.
    wait_in_browser(lambda: browser.current_url.endswith("/jobs/new") and browser.find_elements(By.ID, "job-form")
          and browser.execute_script("return document.readyState") == "complete")


# ---- shared test data: networks, layers, datasets, forms -------------------------

# An in-place Python layer on the train net's input: it sees every training
# iteration (one forward each) and leaves the data alone.
PROBE = """layer {
  name: "probe"
  type: "Python"
  bottom: "scaled"
  top: "scaled"
  python_param { module: "digits_python_layers" layer: "Probe" }
  include { stage: "train" }
}
"""
NETWORK = LENET_SEED.replace('layer {\n  name: "conv1"', PROBE + 'layer {\n  name: "conv1"', 1)
# Training runs get LAYERBENCH_DEVICE, validation does not: the probe acts in
# training only. `self.n` is the training iteration this process is on.
PROBE_BASE = """
import os as _os


class Probe(caffe.Layer):
    TRAINING = "LAYERBENCH_DEVICE" in _os.environ

    def setup(self, bottom, top):
        self.n = 0

    def reshape(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass

    def forward(self, bottom, top):
        self.n += 1
        if self.TRAINING:
            self.act(bottom)
"""
# Holds training at iteration HOLD until a file "release" appears beside the
# layer file (the job's input directory, which the test can write to).
GATE = SEED_LAYER + PROBE_BASE + """
    def act(self, bottom):
        import time
        release = _os.path.join(_os.path.dirname(__file__), "release")
        while self.n >= HOLD and not _os.path.exists(release):
            time.sleep(0.02)
"""


def metric_records(out: Path, kind: str) -> list[dict]:
    """The records of ``kind`` a run wrote to its metrics.jsonl."""
    import json
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


def digit_pngs(classes=(0, 1, 2), per_class=60, size=8):
    """PNGs of scikit-learn's digits, one folder per class: {path: bytes}."""
    import io
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    out = {}
    for c in classes:
        idx = np.flatnonzero(d.target == c)[:per_class]
        for k, i in enumerate(idx):
            buf = io.BytesIO()
            img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((size * 3, size * 3))
            img.save(buf, format="PNG")
            out[f"digit_{c}/{k:03d}.png"] = buf.getvalue()
    return out


def zip_of(files: dict[str, bytes], wrap: str = "") -> bytes:
    """A zip of ``files`` (names under ``wrap``)."""
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(wrap + name, data)
    return buf.getvalue()


def csrf_token_of(client, url: str) -> str:
    """The CSRF token of the form on page ``url``."""
    import re
    html = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def new_job_form(token: str, action: str, **extra) -> dict:
    """The new-job form's fields for the seed job, plus ``extra``."""
    import io
    data = {"csrf_token": token, "action": action, "dataset": "sample-digits", "train_epochs": "1",
            "solver_type": "SGD", "lr_policy": "fixed", "learning_rate": "0.01", "device": "cpu",
            "network": (io.BytesIO(LENET_SEED.encode()), "lenet.prototxt"),
            "python_layer": (io.BytesIO(SEED_LAYER.encode()), "accuracy_layer.py")}
    data.update(extra)
    return data


CAFFE_NETWORK = """
layer {
    name: "hidden"
    type: 'InnerProduct'
    bottom: "data"
    top: "output"
}
layer {
    name: "loss"
    type: "SoftmaxWithLoss"
    bottom: "output"
    bottom: "label"
    top: "loss"
    exclude { stage: "deploy" }
}
layer {
    name: "accuracy"
    type: "Accuracy"
    bottom: "output"
    bottom: "label"
    top: "accuracy"
    include { stage: "val" }
}
layer {
    name: "softmax"
    type: "Softmax"
    bottom: "output"
    top: "softmax"
    include { stage: "deploy" }
}
"""


def upload_dataset(client, archive: bytes, filename="digits.zip", **fields):
    """POST an image archive to /api/v1/datasets (28x28 grey, 25 % val)."""
    import io
    data = {"name": "three digits", "image_width": "28", "image_height": "28", "channels": "1",
            "resize_mode": "squash", "val_percent": "25", **{k: str(v) for k, v in fields.items()}}
    data["archive"] = (io.BytesIO(archive), filename)
    return client.post("/api/v1/datasets", data=data, content_type="multipart/form-data")


def change_settings(app, **changes) -> None:
    """Change settings of a running ``app``: Settings are read-only, so its
    services get a new one (``Settings.replace``; values parsed as at
    start), and ``app.config`` the same values under their names."""
    new = app.extensions["ctx"].cfg.replace(**changes)
    app.extensions["ctx"].cfg = app.extensions["settings"] = new
    app.config.update({name: new[name] for name in changes})
