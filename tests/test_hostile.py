"""Hostile input through HTTP. Each case asserts its exact outcome (4xx in the
error shape, a valid report proving the attack had no effect, or the job
ending in error), and the guard checks after every case that the service
still answers, nothing appeared or changed outside job directories, other
jobs are untouched and no sandboxed process is left behind."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from app.services.runtime import doorbell

from helpers import (LENET_SEED, SEED_LAYER, change_settings, client_for, line_of, no_live_sandbox_processes, post,
                     wait_for)

MARK = "layerbench-pwned"


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def guard(app, client, tmp_path):
    """An innocent job of another user; after the test everything is checked."""
    other = client_for(app, "victim")
    victim = post(other, "/api/v1/jobs", max_iter=3).get_json()
    # Aborted while queued: it never runs, so its files must never change.
    assert other.post(f"/api/v1/jobs/{victim['id']}/abort").status_code == 202
    jobs_dir = Path(app.config["JOBS_DIR"])
    victim_dir = jobs_dir / victim["id"]
    before = _tree(victim_dir)
    outside_before = {p for p in tmp_path.rglob("*") if jobs_dir not in p.parents and p != jobs_dir}
    yield {"victim_dir": victim_dir, "db": app.config["DATABASE_URL"].removeprefix("sqlite:///")}
    assert client.get("/healthz").status_code == 200
    assert _tree(victim_dir) == before, "another job's files changed"
    outside_after = {p for p in tmp_path.rglob("*") if jobs_dir not in p.parents and p != jobs_dir}
    # The service's own files: the database, the worker's log, its doorbell (app.services.runtime.doorbell).
    wake = Path(app.config["INSTANCE_DIR"]) / doorbell.WAKE_DIR
    new = {p for p in outside_after - outside_before
           if not p.name.startswith("layerbench.sqlite3") and p.name != "worker.log" and p != wake}
    assert new == set(), f"written outside the job directories: {new}"
    assert not list(Path("/tmp").glob(f"{MARK}*")), "a marker reached the host's /tmp"
    assert no_live_sandbox_processes(tmp_path), "a sandboxed process outlived its run"


def _valid(client, layer: str, **kw) -> dict:
    report = post(client, "/api/v1/validate", layer=layer, **kw).get_json()
    assert report["ok"] is True, report["errors"]
    return report


def _invalid(client, code: str, layer=SEED_LAYER, network=LENET_SEED, url="/api/v1/jobs", **kw) -> dict:
    resp = post(client, url, layer=layer, network=network, **kw)
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["error"] == code and body["message"] and body["details"]
    return body["details"][0]


# ---- Python file -------------------------------------------------------------

def test_non_utf8_bytes(app, client, guard):
    data = {"dataset": "sample-digits", "network": (io.BytesIO(LENET_SEED.encode()), "n.prototxt"),
            "python_layer": (io.BytesIO(SEED_LAYER.encode() + b"\n# caf\xe9\n"), "l.py")}
    resp = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    assert resp.status_code == 400
    d = resp.get_json()["details"][0]
    assert resp.get_json()["error"] == "invalid_python_layer" and "UTF-8" in resp.get_json()["message"]
    assert d["line"] == SEED_LAYER.count("\n") + 2


def test_nul_bytes(client, guard):
    d = _invalid(client, "invalid_python_layer", layer=SEED_LAYER.replace("import json", "import json\x00"))
    assert d["line"] == 2 and "NUL" in d["message"]


def test_deeply_nested_parentheses(client, guard):
    d = _invalid(client, "invalid_python_layer", layer="x = " + "(" * 100_000 + ")" * 100_000 + "\n" + SEED_LAYER)
    assert d["stage"] == "import" and ("nested" in d["message"] or "Recursion" in d["message"]
                                       or "Memory" in d["message"])


def test_os_system_and_subprocess_at_import(client, guard, tmp_path):
    target = tmp_path / f"{MARK}-system"
    layer = (f"import os, subprocess\nos.system('echo hi > {target}; echo hi > /tmp/{MARK}-1')\n"
             f"subprocess.run(['sh', '-c', 'echo hi > {target}.2'])\n" + SEED_LAYER)
    _valid(client, layer)
    assert not target.exists() and not Path(f"{target}.2").exists()


class EchoServer:
    """A real TCP echo server on 127.0.0.1 that counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port, self.connections = self.sock.getsockname()[1], 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.sendall(conn.recv(100))
            conn.close()


CONNECT = """
def _phone_home():
    import socket
    try:
        s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
        s.sendall(b"leak")
        raise RuntimeError("LEAK: connected to the host")
    except OSError:
        pass
"""


def test_socket_to_host_at_import_and_in_forward(app, client, guard, worker):
    echo = EchoServer()
    layer = CONNECT.format(port=echo.port) + "_phone_home()\n" + SEED_LAYER.replace(
        "        num_correct = 0.0\n", "        num_correct = 0.0\n        _phone_home()\n")
    _valid(client, layer)
    job = post(client, "/api/v1/jobs", layer=layer, max_iter=10).get_json()
    assert wait_for(client, job["id"], {"done", "error"})["status"] == "done"
    assert echo.connections == 0
    probe = socket.create_connection(("127.0.0.1", echo.port))  # the server itself works
    probe.sendall(b"x")
    assert probe.recv(1) == b"x"
    probe.close()


def test_reading_secrets_and_other_jobs(app, client, guard, monkeypatch):
    monkeypatch.setenv("LAYERBENCH_TEST_SENTINEL", "s3cr3t-value")
    targets = ["/etc/shadow", guard["db"], str(Path(app.instance_path) / "secret_key"),
               str(Path(app.instance_path) / "initial-credentials.txt"),
               str(guard["victim_dir"] / "input" / "digits_python_layers.py"),
               str(guard["victim_dir"] / "input" / "network.prototxt")]
    layer = ("import os\n"
             f"for p in {targets!r}:\n"
             "    try:\n        data = open(p, 'rb').read()\n"
             "    except OSError:\n        continue\n"
             "    raise RuntimeError('LEAK: read ' + p)\n"
             "env = dict(os.environ)\n"
             "if any('s3cr3t' in v or 'LAYERBENCH_TEST' in k for k, v in env.items()):\n"
             "    raise RuntimeError('LEAK: environment ' + repr(env))\n"
             f"if os.path.exists({str(guard['victim_dir'])!r}):\n"
             "    raise RuntimeError('LEAK: another job is visible')\n"
             + SEED_LAYER)
    _valid(client, layer)


def test_writing_outside_the_job(app, client, guard, tmp_path):
    targets = [str(guard["victim_dir"] / "input" / "digits_python_layers.py"), guard["db"],
               str(Path(app.instance_path) / "evil"), str(tmp_path / f"{MARK}-w"), "/etc/cron.d/evil",
               str(Path(__file__).parent / "evil.py"), "/usr/lib/python3/dist-packages/evil.py"]
    layer = ("import os\n"
             f"for p in {targets!r}:\n"
             "    try:\n        open(p, 'a').write('pwned')\n"
             "    except OSError:\n        continue\n"
             "    if not p.startswith('/tmp/'):\n        raise RuntimeError('LEAK: wrote ' + p)\n"
             + SEED_LAYER)
    _valid(client, layer)
    assert not (tmp_path / f"{MARK}-w").exists()


def test_fork_bomb(app, client, guard):
    change_settings(app, VALIDATE_TIMEOUT=2)   # the bomb burns every core until then
    layer = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + SEED_LAYER
    t0 = time.monotonic()
    d = _invalid(client, "invalid_python_layer", layer=layer)
    assert d["stage"] == "timeout" and time.monotonic() - t0 < 30


def test_memory_bomb(app, client, guard):
    change_settings(app, MEMORY_LIMIT_MB=2048)
    layer = "hog = [bytearray(1 << 28) for _ in range(64)]\n" + SEED_LAYER
    d = _invalid(client, "invalid_python_layer", layer=layer)
    assert "MemoryError" in d["message"] and d["line"] == 1


@pytest.mark.parametrize("prefix", ["while True:\n    pass\n", "import time\ntime.sleep(10 ** 6)\n"])
def test_endless_import(app, client, guard, prefix):
    change_settings(app, VALIDATE_TIMEOUT=2)
    d = _invalid(client, "invalid_python_layer", layer=prefix + SEED_LAYER)
    assert d["stage"] == "timeout" and "2 s" in d["message"]


def test_endless_forward_during_validation(app, client, guard):
    change_settings(app, VALIDATE_TIMEOUT=4)
    layer = SEED_LAYER.replace("        num_correct = 0.0\n", "        num_correct = 0.0\n        while True: pass\n")
    assert _invalid(client, "invalid_python_layer", layer=layer)["stage"] == "timeout"


def test_endless_forward_during_training_hits_time_limit(app, client, guard, worker):
    layer = SEED_LAYER.replace(
        "        num_correct = 0.0\n",
        "        num_correct = 0.0\n        self.calls = getattr(self, 'calls', 0) + 1\n"
        "        if self.calls > 20:\n            import time\n            time.sleep(10 ** 6)\n")
    worker.procs[0].stop()
    worker.start(LAYERBENCH_TRAIN_TIMEOUT="6")   # the worker reads its limits from its env
    job = post(client, "/api/v1/jobs", layer=layer, max_iter=5000, val_interval=0.01).get_json()
    ended = wait_for(client, job["id"], {"done", "error"}, timeout=60)
    assert ended["status"] == "error" and "time limit" in ended["error"]["message"]


def test_abort_of_a_layer_that_never_returns_ends_aborted_after_the_grace(app, client, guard, worker):
    # The trainer looks for an abort between iterations; this layer's
    # training forward never returns, so only a kill can end the run (the
    # job used to stay running until TRAIN_TIMEOUT, and a delete waited 30 s).
    layer = SEED_LAYER.replace("        num_correct = 0.0\n", """        num_correct = 0.0
        import os, time
        if os.path.basename(os.getcwd()) == 'output':     # training, not validation
            open('hung', 'w').close()
            time.sleep(10 ** 6)
""")
    worker.procs[0].stop()
    worker.start(LAYERBENCH_ABORT_GRACE_SECONDS="2")
    job = post(client, "/api/v1/jobs", layer=layer, max_iter=5000, val_interval=0.01).get_json()
    hung = Path(app.config["JOBS_DIR"]) / job["id"] / "output" / "hung"
    deadline = time.monotonic() + 60
    while not hung.exists():
        assert time.monotonic() < deadline, client.get(f"/api/v1/jobs/{job['id']}").get_json()
        time.sleep(0.1)
    assert client.post(f"/api/v1/jobs/{job['id']}/abort").status_code == 202
    ended = wait_for(client, job["id"], {"aborted", "error", "done", "interrupted"}, timeout=30)
    assert ended["status"] == "aborted" and ended["error"] is None, ended
    log = client.get(f"/api/v1/jobs/{job['id']}/log").get_data(as_text=True)
    assert "of the abort (a layer that does not return?); killed" in log, log[-2000:]


def test_daemon_outliving_its_parent(client, guard, tmp_path):
    layer = ("import os, time\n"
             "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
             "        time.sleep(2)\n"
             f"        open('{tmp_path / MARK}-daemon', 'w').write('alive')\n"
             "        os._exit(0)\n    os._exit(0)\n" + SEED_LAYER)
    _valid(client, layer)
    # The positive signal: no sandboxed process is left alive to write later.
    assert no_live_sandbox_processes(tmp_path)
    assert not (tmp_path / f"{MARK}-daemon").exists()


def test_kill_everything(client, guard):
    layer = "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n" + SEED_LAYER
    _valid(client, layer)
    assert os.getpid() and client.get("/api/v1/jobs").status_code == 200


def test_symlinks_planted_as_snapshot_and_log(app, client, guard, worker):
    layer = SEED_LAYER.replace("        num_correct = 0.0\n", """        num_correct = 0.0
        import os
        if os.path.basename(os.getcwd()) == 'output' and not os.path.lexists('reach.txt'):   # training only
            os.symlink('/etc/passwd', 'snapshot_iter_99999.caffemodel')
            os.symlink('/etc/passwd', 'snapshot_iter_99999.solverstate')
            os.symlink('/etc/passwd', 'snapshot_iter_99999.complete')
            if os.path.exists('train.log'):
                os.unlink('train.log')
            os.symlink('/etc/passwd', 'train.log')
            try:   # the real log is beside output/: out of reach
                open('../train.log', 'a')
                open('reach.txt', 'w').write('reached')
            except OSError:
                open('reach.txt', 'w').write('denied')
""")
    job = post(client, "/api/v1/jobs", layer=layer, max_iter=20, val_interval=0.05).get_json()
    assert "id" in job, job
    ended = wait_for(client, job["id"], {"done", "error"})
    assert ended["status"] == "done", ended["error"]
    out = Path(app.config["JOBS_DIR"]) / job["id"] / "output"
    assert (out / "train.log").is_symlink()   # the attack happened...
    assert (out / "reach.txt").read_text() == "denied"
    passwd = Path("/etc/passwd").read_bytes()[:20]
    log = client.get(f"/api/v1/jobs/{job['id']}/log")
    # ...and missed: the log the service serves is the worker's own.
    assert log.status_code == 200 and passwd not in log.data and b"solver.cpp" in log.data
    with client.get(f"/api/v1/jobs/{job['id']}/download") as resp:
        tarball = resp.data
    import gzip
    assert passwd not in gzip.decompress(tarball)
    assert 99999 not in [s["iteration"] for s in ended["snapshots"]]
    client.post(f"/api/v1/jobs/{job['id']}/abort")
    assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 409  # done: not resumable


# ---- prototxt -------------------------------------------------------------------

@pytest.mark.parametrize("network,line", [("this is not a prototxt", 1),
                                          (LENET_SEED[:LENET_SEED.index('name: "conv2"') + 10], None)])
def test_not_a_prototxt_and_truncated(client, guard, network, line):
    d = _invalid(client, "invalid_network", network=network)
    assert d["stage"] == "parse" and d["line"] >= (line or 1)


@pytest.mark.parametrize("module", ["os", "subprocess"])
def test_python_layer_naming_other_module(client, guard, module):
    d = _invalid(client, "invalid_network", network=LENET_SEED.replace('module: "digits_python_layers"',
                                                                        f'module: "{module}"'))
    assert d["layer"] == "accuracy" and f"'{module}'" in d["message"]


def test_source_outside(client, guard):
    net = LENET_SEED.replace("  data_param { batch_size: 64 }", '  data_param { batch_size: 64 source: "/etc" }')
    d = _invalid(client, "invalid_network", network=net)
    assert d["layer"] == "train-data" and "/etc" in d["message"]
    assert d["line"] == line_of(net, 'name: "train-data"') - 1


def test_snapshot_prefix_outside_is_overridden(app, client, guard):
    data = {"dataset": "sample-digits", "max_iter": "3",
            "network": (io.BytesIO(LENET_SEED.encode()), "n.prototxt"),
            "python_layer": (io.BytesIO(SEED_LAYER.encode()), "l.py"),
            "solver": (io.BytesIO(b'snapshot_prefix: "/etc/cron.d/x" net: "/etc/passwd" base_lr: 0.01'), "s.prototxt")}
    resp = client.post("/api/v1/jobs", data=data, content_type="multipart/form-data")
    assert resp.status_code == 201
    solver = (Path(app.config["JOBS_DIR"]) / resp.get_json()["id"] / "input" / "solver.prototxt").read_text()
    assert "/etc" not in solver and str(Path(app.config["JOBS_DIR"]) / resp.get_json()["id"] / "output") in solver


def test_huge_blob(client, guard):
    net = LENET_SEED.replace('name: "LeNet"', 'name: "LeNet"\nlayer { name: "huge" type: "DummyData" top: "h" '
                             'dummy_data_param { shape { dim: 1000000 dim: 1000000 } } }')
    d = _invalid(client, "invalid_network", network=net)
    assert d["layer"] == "huge" and "1e+12" in d["message"]


def test_caffe_check_failure(client, guard):
    net = LENET_SEED.replace("    num_output: 50\n    kernel_size: 5", "    num_output: 50\n    kernel_size: 40")
    d = _invalid(client, "invalid_network", network=net)
    assert d["stage"] == "train" and d["layer"] == "conv2"   # the net Caffe was building


# ---- HTTP -------------------------------------------------------------------------

def test_one_gigabyte_body_is_413_without_reading_it(server):
    # Against the real gunicorn server: announce 1 GiB, send almost nothing.
    url, instance = server
    creds = dict(line.split(": ", 1) for line in (instance / "initial-credentials.txt").read_text().splitlines())
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"POST /api/v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {creds['token']}\r\n"
                   "Content-Type: multipart/form-data; boundary=x\r\n"
                   f"Content-Length: {1 << 30}\r\n\r\n--x\r\n").encode())
        reply = b""
        while b"payload_too_large" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413") and time.monotonic() - t0 < 5
    assert '"error":"payload_too_large"' in reply.replace(" ", "")


def test_ten_thousand_form_parts(client, guard):
    # Encoded by hand: the test client would spool this body to a temp file
    # it never closes.
    # The file part comes first, so the server has a temp file open when the
    # part limit stops the parse (ClosingRequest must close it).
    parts = ['--b\r\nContent-Disposition: form-data; name="network"; filename="n.prototxt"\r\n'
             f'Content-Type: text/plain\r\n\r\n{LENET_SEED}\r\n']
    parts += [f'--b\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(10_000)]
    parts.append("--b--\r\n")
    body = "".join(parts).encode()
    resp = client.post("/api/v1/jobs", input_stream=io.BytesIO(body), content_length=len(body),
                       content_type="multipart/form-data; boundary=b")
    assert resp.status_code == 413 and resp.get_json()["error"] == "payload_too_large"


@pytest.mark.parametrize("name", ["../../../../etc/cron.d/evil.py", "/etc/passwd", "..\\..\\evil.py",
                                  "digits_python_layers.py/../../x.py", "a\x00b.py"])
def test_path_traversal_upload_names(app, client, guard, name):
    resp = post(client, "/api/v1/jobs", layer_name=name, max_iter=3)
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()
    stored = job["python_layer"]["original_filename"]
    assert "/" not in stored and "\\" not in stored and "\x00" not in stored
    files = sorted(p.name for p in (Path(app.config["JOBS_DIR"]) / job["id"] / "input").iterdir())
    assert files == ["deploy.prototxt", "digits_python_layers.py", "job.json", "network.prototxt",
                     "solver.prototxt", "train_val.prototxt"]
