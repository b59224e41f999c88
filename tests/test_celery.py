"""The celery queue, end to end: real Redis, real PostgreSQL, real Celery
workers as separate processes with distinct host names, real sandboxed
Caffe training; every fault injected for real (SIGKILL, a Redis restart that
loses every message, a web restart, an abort from the web).

What must hold: every job ends where it should, no job ever runs twice at
once (each run is a ``running`` event in its history, naming its worker),
a dead worker's job resumes from its last snapshot on another worker.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import CeleryWorker, Redis
from helpers import LENET_SEED, ROOT, SEED_LAYER, api, client_for, free_port, initial_token, make_app, post, wait_for
from helpers import GATE, NETWORK

from app.core import config
from app.core.workspace import Workspace
from app.services.context import Context
from app.store import Store

pytestmark = pytest.mark.slow
ENDED = {"done", "error", "interrupted", "aborted"}
HANDOVER_S = 3.0


def _celery_app(tmp_path, sample_datasets, broker: str, database: str | None = None):
    extra = {"DATABASE_URL": database} if database else {}
    return make_app(tmp_path, sample_datasets, QUEUE="celery", BROKER_URL=broker, HEARTBEAT_SECONDS=0.5,
                    HANDOVER_SECONDS=HANDOVER_S, **extra)


def _runs(client, job_id: str) -> list[str]:
    """The workers of each run of a job, from its history."""
    history = client.get(f"/api/v1/jobs/{job_id}").get_json()["history"]
    return [e["message"].removeprefix("on ") for e in history if e["status"] == "running"]


def _gated(client, hold: int, **fields) -> dict:
    resp = post(client, "/api/v1/jobs", network=NETWORK, layer=GATE.replace("HOLD", str(hold)), **fields)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def pg_cluster(tmp_path, sample_datasets, redis_server, postgres):
    """A web app on PostgreSQL + Redis and two workers, w1@hostA and w2@hostB."""
    app = _celery_app(tmp_path, sample_datasets, redis_server.url.replace("/0", "/1"),
                      postgres.create_db(f"t{os.getpid()}_{time.monotonic_ns()}"))
    workers = [CeleryWorker(app.config, name, tmp_path) for name in ("w1@hostA", "w2@hostB")]
    yield app, workers
    for w in workers:
        w.stop()
    app.extensions["store"].engine.dispose()


def _copies(ctx, job: dict, n: int, released: bool = False, owner: str | None = None) -> list[str]:
    """``n`` more queued jobs like ``job`` (its validated inputs copied), each
    rung on the queue by the function submit uses. Validating each again
    would only add seconds: validation is not what these tests are about."""
    from app.services.runtime import broker as queue
    from app.store import new_job_id
    store = ctx.store
    src = store.get_job(job["id"])
    ids = []
    for i in range(n):
        job_id = new_job_id()
        shutil.copytree(ctx.ws.job_dir(job["id"]) / "input", ctx.ws.job_dir(job_id) / "input")
        for f in (ctx.ws.job_dir(job_id) / "input").rglob("*.prototxt"):   # they name their own job
            f.write_text(f.read_text().replace(job["id"], job_id))
        if released:     # a copy of a gated job that runs through (test_recovery.GATE)
            (ctx.ws.job_dir(job_id) / "input" / "release").touch()
        (ctx.ws.job_dir(job_id) / "output").mkdir()
        row = store.insert_job(id=job_id, name=f"copy {i}", owner=owner or src["owner"], dataset=src["dataset"],
                               device=src["device"], params=src["params"], python_layer=src["python_layer"],
                               max_iter=src["max_iter"])
        queue.enqueue_job(ctx, row)
        ids.append(job_id)
    return ids


def test_two_workers_share_eight_jobs_then_a_sigkilled_workers_job_resumes_on_the_other(pg_cluster):
    app, workers = pg_cluster
    client = client_for(app)
    resp = post(client, "/api/v1/jobs", max_iter=4, name="job 0")
    assert resp.status_code == 201, resp.get_json()
    ids = [resp.get_json()["id"], *_copies(app.extensions["ctx"], resp.get_json(), 7)]
    ran_on = {}
    for job_id in ids:
        job = wait_for(client, job_id, ENDED, timeout=90)
        assert job["status"] == "done", (job["error"], job["id"])
        runs = _runs(client, job_id)
        assert len(runs) == 1 and runs == [job["worker"]], runs      # once, on the worker it names
        ran_on[job_id] = job["worker"]
    assert set(ran_on.values()) == {"w1@hostA", "w2@hostB"}, ran_on
    # What the workers wrote (metrics, the log) streams from the web's SSE.
    with client.get(f"/api/v1/jobs/{ids[0]}/events") as resp:
        events = re.findall(r"^event: (\w+)$", resp.get_data(as_text=True), flags=re.M)
    assert "metrics" in events and "log" in events and events[-1] == "end", events
    health = client.get("/healthz").get_json()
    assert health["queue"] == "celery" and health["broker_ok"] is True and health["store"]["backend"] == "postgresql"
    assert {(w["name"], w["host"]) for w in health["workers"]} == {("w1@hostA", "hostA"), ("w2@hostB", "hostB")}
    assert all(w["gpus"] == [] and w["slots"] == 1 for w in health["workers"])
    # Inference runs on a worker too (the web host runs no user code for it):
    # the answer names the worker that ran it, and a Python layer's failure
    # there is still the upload's fault.
    sample = sorted((Path(app.config["JOBS_DIR"]) / "datasets" / "sample-digits" / "samples").glob("*.png"))[0]
    resp = _infer(client, ids[0], sample)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["worker"] in {"w1@hostA", "w2@hostB"}
    assert len(resp.get_json()["predictions"][0]["top"]) >= 1
    # A side node SIGKILLed mid-build: the build is handed over and done by
    # a side node (the other host's, or this host's, started again).
    from helpers import digit_pngs as _pngs, zip_of as _zip
    from io import BytesIO
    resp = client.post("/api/v1/datasets", content_type="multipart/form-data", data={
        "name": "killed mid-build", "image_width": "28", "image_height": "28", "channels": "1",
        "val_percent": "25", "archive": (BytesIO(_zip(_pngs(classes=range(10), per_class=80))), "d.zip")})
    assert resp.status_code == 202, resp.get_json()
    ds_id, store = resp.get_json()["id"], app.extensions["store"]
    builder = _wait(lambda: store.get_dataset(ds_id)["build_worker"], 60, "no build")
    side = _side_node_of(next(w for w in workers if w.name == builder))
    os.kill(side, signal.SIGKILL)
    built = _wait(lambda: (d := client.get(f"/api/v1/datasets/{ds_id}").get_json())["status"] in ("done", "error")
                  and d, 90, "the build never ended")
    assert built["status"] == "done" and built["train_count"] + built["val_count"] == 800, built
    assert [h["worker"] for h in store.get_dataset(ds_id)["handovers"]] == [builder]
    _wait(lambda: _side_node_of(next(w for w in workers if w.name == builder), fail=False), 30,
          "the killed side node was not started again")

    # Then one worker is SIGKILLed mid-training (the same two workers: their
    # start-up is the slow part of this test).
    # 12 iterations, snapshots every 4 (0.2 of sample-digits' 21-iteration
    # epoch), held at iteration 6 until released: it dies holding snapshot 4.
    job = _gated(client, 6, max_iter=12, snapshot_interval=0.2)
    inp = Path(app.config["JOBS_DIR"]) / job["id"] / "input"
    deadline = time.monotonic() + 120
    while 4 not in [s["iteration"] for s in client.get(f"/api/v1/jobs/{job['id']}").get_json()["snapshots"]]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first = client.get(f"/api/v1/jobs/{job['id']}").get_json()["worker"]
    victim = next(w for w in workers if w.name == first)
    other = next(w for w in workers if w.name != first)
    # /healthz counts what each worker runs; the Workers page names it to
    # whoever may see the job, and to nobody else.
    live = {w["name"]: w["running"] for w in client.get("/healthz").get_json()["workers"]}
    assert live == {first: 1, next(w.name for w in workers if w.name != first): 0}
    page = client.get("/workers").get_data(as_text=True)
    assert first in page and f'/jobs/{job["id"]}"' in page
    assert f'/jobs/{job["id"]}"' not in client_for(app, "someone-else").get("/workers").get_data(as_text=True)
    victim.kill()
    (inp / "release").touch()
    done = wait_for(client, job["id"], ENDED, timeout=90)
    assert done["status"] == "done", done
    assert done["worker"] == other.name and done["iteration"] == 12
    history = client.get(f"/api/v1/jobs/{job['id']}").get_json()["history"]
    assert [e["status"] for e in history] == ["queued", "running", "queued", "running", "done"], history
    assert f"worker {first} stopped heart-beating" in history[2]["message"]
    assert "resuming from snapshot 4" in history[2]["message"]
    assert _runs(client, job["id"]) == [first, other.name]
    from helpers import metric_records as _records
    assert _records(inp.parent / "output", "resumed") == [{"type": "resumed", "iteration": 4, "run": 2}]
    assert app.extensions["store"].list_jobs(status="running") == []
    # A Python layer that fails at inference on the worker (the gated net's
    # Probe, put into its deploy net) is still the upload's fault: 400, with
    # the error from the worker's run.
    from helpers import PROBE
    deploy = inp / "deploy.prototxt"
    probe = PROBE.replace('  include { stage: "train" }\n', "")
    deploy.write_text(deploy.read_text().replace('layer {\n  name: "conv1"', probe + 'layer {\n  name: "conv1"', 1))
    layer = inp / "digits_python_layers.py"
    layer.write_text(layer.read_text().replace("        self.n += 1\n", "        self.n += 1\n        1 / 0\n", 1))
    resp = _infer(client, job["id"], sample)
    assert resp.status_code == 400 and "ZeroDivisionError" in resp.get_json()["message"], resp.get_json()
    assert resp.get_json()["details"][0]["file"] == "digits_python_layers.py"

    # A worker stopped with SIGTERM stops its job with a snapshot and puts it
    # back on the queue to resume there (here: no worker is left to take it).
    resp = post(client, "/api/v1/jobs", max_iter=100000, snapshot_interval=0.2, name="long")
    long = resp.get_json()
    _wait(lambda: client.get(f"/api/v1/jobs/{long['id']}").get_json()["snapshots"], 120, "no snapshot")
    other.proc.terminate()
    assert other.proc.wait(60) == 0
    after = client.get(f"/api/v1/jobs/{long['id']}").get_json()
    assert after["status"] == "queued", after
    assert [e["status"] for e in after["history"]][-3:] == ["running", "interrupted", "queued"], after["history"]
    assert app.extensions["store"].get_job(long["id"])["resume_from"] in [s["iteration"] for s in after["snapshots"]]
    # No worker left: inference is refused at once as the service's fault.
    t0 = time.monotonic()
    resp = _infer(client, ids[0], sample)
    assert resp.status_code == 503 and "no worker is running" in resp.get_json()["message"], resp.get_json()
    assert time.monotonic() - t0 < 5


def _side_node_of(worker: CeleryWorker, role: str = "datasets", fail: bool = True) -> int | None:
    """The pid of a worker's ``role`` side node (app.worker.side_nodes)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == worker.proc.pid and b"--side-for" in argv and argv[argv.index(b"--role") + 1] == role.encode():
            return int(proc.name)
    assert not fail, f"no side node under {worker.name}"
    return None


def _infer(client, job_id: str, image: Path):
    return client.post(f"/api/v1/jobs/{job_id}/infer", data={"image": (open(image, "rb"), image.name)},
                       content_type="multipart/form-data")


README = ROOT / "docs" / "SCALE_OUT.md"   # the operator manual of several machines


def readme_blocks(tmp_path, pg_url: str, broker_url: str, port: int) -> list[str]:
    """The README's "Several machines" shell blocks (web host, gpu1, gpu2),
    with the lab's addresses and paths replaced by this test's."""
    section = README.read_text().split("\n## Several machines\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3, blocks
    # What make runs once setup is done (make -n proves it).
    run = subprocess.run(["make", "-n", "run", "HOST=0.0.0.0"], cwd=ROOT, capture_output=True, text=True).stdout
    work = subprocess.run(["make", "-n", "worker"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "HOST=0.0.0.0 PORT=5000 exec .venv/bin/flask --app wsgi serve" in run, run
    assert "exec .venv/bin/python -m app.worker.celery_app" in work, work
    subs = {"redis://web.lab:6379/0": broker_url,
            "postgresql+psycopg://layerbench@web.lab/layerbench": pg_url,
            "/srv/layerbench/jobs": str(tmp_path / "jobs"),
            "make run HOST=0.0.0.0": f"HOST=127.0.0.1 PORT={port} exec .venv/bin/flask --app wsgi serve",
            "make worker": "exec .venv/bin/python -m app.worker.celery_app --loglevel WARNING",
            "LAYERBENCH_WORKER_GPUS=0,1": "LAYERBENCH_WORKER_GPUS=none",
            # gpu1's metrics port: a free one here (other tests' workers share this host)
            "LAYERBENCH_METRICS_PORT=9101": f"LAYERBENCH_METRICS_PORT={free_port()}",
            "LAYERBENCH_WORKER_GPUS=0\n": "LAYERBENCH_WORKER_GPUS=none\n"}
    out = []
    for block in blocks:
        lines = [line for line in block.splitlines() if not line.startswith("sudo -u postgres create")]
        text = "\n".join(lines) + "\n"
        for old, new in subs.items():
            text = text.replace(old, new)
        out.append("set -e\n" + text)
    assert "createdb" in blocks[0] and "make worker" in blocks[1] and "gpu2.lab" in blocks[2]
    return out


class Host:
    """One README block run by bash, as a host would run it."""

    def __init__(self, name: str, script: str, root: Path, env: dict[str, str]) -> None:
        self.name, self.script, self.root, self.env = name, script, root, env
        self.proc = None

    def start(self) -> None:
        with open(self.root / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(["bash", "-c", self.script], cwd=ROOT, stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)

    def crash(self) -> None:
        """SIGKILL the host's whole process group (serve, gunicorn, nginx),
        then remove the private socket dir serve had no chance to."""
        private = set()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and os.getpgid(int(proc.name)) == self.proc.pid:
                    for arg in (proc / "cmdline").read_bytes().split(b"\0"):
                        if arg.startswith(b"unix:") and b"layerbench-nginx-" in arg:
                            private.add(Path(arg[5:].decode()).parent)
            except OSError:
                continue
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        time.sleep(0.5)           # the group's last processes gone
        for d in private:
            shutil.rmtree(d, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Web(Host):
    """The web host's block: db-upgrade, then `serve` (nginx, gunicorn)."""

    def __init__(self, script: str, root: Path, env: dict[str, str], port: int) -> None:
        super().__init__("web", script, root, env)
        self.url = f"http://127.0.0.1:{port}"

    def wait_up(self) -> None:
        def up():
            try:
                return urllib.request.urlopen(self.url + "/healthz", timeout=2).status == 200
            except OSError:
                assert self.proc.poll() is None, (self.root / "web.log").read_text()[-3000:]
                return False
        _wait(up, 90, "web did not start")


def _job(web: Web, token: str, job_id: str) -> dict:
    return api(web.url, token, "GET", f"/api/v1/jobs/{job_id}")


def _submit(web: Web, token: str, layer: str, network: str = NETWORK, **fields) -> dict:
    parts = {k: (None, str(v).encode()) for k, v in dict(dataset="sample-digits", **fields).items()}
    parts.update(network=("network.prototxt", network.encode()), python_layer=("my_layers.py", layer.encode()))
    return api(web.url, token, "POST", "/api/v1/jobs", parts)


def test_readme_hosts_survive_redis_and_web_restarts_and_abort_crosses_hosts(tmp_path, sample_datasets,
                                                                              postgres):
    # The README's three hosts, on PostgreSQL and a jobs directory they share.
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(sample_datasets, jobs_dir / "datasets")
    broker = Redis(tmp_path / "redis2")       # its own Redis: this test restarts it
    broker.start()
    port = free_port()
    pg_url = postgres.create_db(f"readme{time.monotonic_ns()}")
    web_block, gpu1, gpu2 = readme_blocks(tmp_path, pg_url, broker.url, port)
    # The test's own hand on the shared store and directory (for _copies).
    ctx = Context(cfg=config.load(overrides={"QUEUE": "celery", "BROKER_URL": broker.url}), store=Store(pg_url),
                  ws=Workspace(str(jobs_dir)), containment="none")
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(tmp_path / "instance"),
               LAYERBENCH_HEARTBEAT_SECONDS="0.5", LAYERBENCH_HANDOVER_SECONDS=str(HANDOVER_S))
    web = Web(web_block, tmp_path, env, port)
    workers = [Host("gpu1", gpu1, tmp_path, env), Host("gpu2", gpu2, tmp_path, env)]
    names = {"layerbench@gpu1.lab", "layerbench@gpu2.lab"}
    try:
        for host in (web, *workers):      # the three hosts start at once
            host.start()
        web.wait_up()
        token = initial_token(tmp_path / "instance")
        health = api(web.url, token, "GET", "/healthz")
        assert health["queue"] == "celery" and health["store"]["backend"] == "postgresql"
        _wait(lambda: {w["name"] for w in api(web.url, token, "GET", "/healthz")["workers"]} == names, 60,
              "the workers never showed on /healthz")
        # Both workers busy (one job held in its layer, one training for
        # long); the other two wait queued.
        held = _submit(web, token, GATE.replace("HOLD", "3"), max_iter=8, name="held")
        long = _submit(web, token, SEED_LAYER, network=LENET_SEED, max_iter=100000, name="long")
        queued = [{"id": i} for i in _copies(ctx, held, 2, released=True)]
        _wait(lambda: all(_job(web, token, j["id"])["status"] == "running" for j in (held, long)), 90,
              "the first two jobs never ran")
        assert {_job(web, token, j["id"])["worker"] for j in (held, long)} == names
        assert all(_job(web, token, j["id"])["status"] == "queued" for j in queued)
        # A dataset uploaded now builds at once on a host's side node, though
        # every training slot is taken (it would wait for one otherwise).
        from helpers import digit_pngs as _pngs, zip_of as _zip
        fields = {k: (None, v.encode()) for k, v in {"name": "busy", "image_width": "28", "image_height": "28",
                                                     "channels": "1", "val_percent": "25"}.items()}
        ds = api(web.url, token, "POST", "/api/v1/datasets",
                 dict(fields, archive=("d.zip", _zip(_pngs(classes=(0, 1), per_class=20)))))
        built = _wait(lambda: (d := api(web.url, token, "GET", f"/api/v1/datasets/{ds['id']}"))["status"]
                      in ("done", "error") and d, 60, "the dataset never built while the workers trained")
        assert built["status"] == "done", built
        assert [_job(web, token, j["id"])["status"] for j in (held, long)] == ["running", "running"]

        broker.stop()            # every queued message is gone with it (no persistence)
        broker.start()
        web.crash()              # and the web crashes and restarts while both workers train
        web.script = "\n".join(line for line in web_block.splitlines() if "db-upgrade" not in line)
        web.start()              # (restarted as an operator would: `make run` again)
        web.wait_up()
        assert [(_job(web, token, j["id"])["status"]) for j in (held, long)] == ["running", "running"]

        # Abort through the new web process reaches the worker training it.
        t0 = time.monotonic()
        api(web.url, token, "POST", f"/api/v1/jobs/{long['id']}/abort")
        aborted = _wait(lambda: (j := _job(web, token, long["id"]))["status"] in ENDED and j, 10, "abort")
        assert aborted["status"] == "aborted" and time.monotonic() - t0 < 5.0, (aborted, time.monotonic() - t0)
        (jobs_dir / held["id"] / "input" / "release").touch()
        for j in [held, *queued]:
            _wait(lambda: _job(web, token, j["id"])["status"] in ENDED, 90, f"{j['id']} never ended")
            job = _job(web, token, j["id"])
            assert job["status"] == "done", (job["error"], job["id"])
            assert len([e for e in job["history"] if e["status"] == "running"]) == 1, job["history"]
    finally:
        for w in workers:
            w.stop()
        web.stop()
        broker.stop()
        ctx.store.engine.dispose()


# ---- one worker, one slot: fair share and the worker's own metrics port ----------

@pytest.fixture(scope="module")
def solo(tmp_path_factory, sample_datasets, redis_server, postgres):
    """A web app on PostgreSQL + Redis and one CPU worker with one slot,
    serving its metrics on a port of its own (shared by the tests below:
    a worker's start is the slow part)."""
    root = tmp_path_factory.mktemp("solo")
    app = _celery_app(root, sample_datasets, redis_server.url.replace("/0", "/3"),
                      postgres.create_db(f"solo{os.getpid()}_{time.monotonic_ns()}"))
    port = free_port()
    worker = CeleryWorker(app.config, "solo@hostM", root, LAYERBENCH_METRICS_PORT=str(port))

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).status == 200
        except OSError:
            assert worker.proc.poll() is None, worker.log_path.read_text()[-2000:]
            return False
    _wait(up, 60, "the worker's metrics port never answered")
    yield app, worker, port, root
    worker.stop()
    app.extensions["store"].engine.dispose()


def _first_start(client, job_id: str) -> str:
    return next(e["at"] for e in client.get(f"/api/v1/jobs/{job_id}").get_json()["history"]
                if e["status"] == "running")


def test_fair_share_holds_in_the_celery_queue(solo):
    # Alice queues four jobs, then Bob one, on one worker with one slot:
    # Bob's starts second (Redis alone would hand the messages out in the
    # order they were sent, Bob's last).
    app, _, _, _ = solo
    alice, bob = client_for(app, "alice"), client_for(app, "bob")
    first = _gated(alice, 1, max_iter=4, name="alice 0")      # holds the slot until released
    wait_for(alice, first["id"], {"running"}, timeout=90)
    ctx = app.extensions["ctx"]
    mine = _copies(ctx, first, 3, released=True)
    theirs = _copies(ctx, first, 1, released=True, owner="bob")
    assert bob.get(f"/api/v1/jobs/{theirs[0]}").get_json()["queue"]["position"] == 1
    (Path(app.config["JOBS_DIR"]) / first["id"] / "input" / "release").touch()
    ids = [first["id"], *mine, *theirs]
    admin = client_for(app, "root", admin=True)          # sees both users' jobs
    for job_id in ids:
        job = wait_for(admin, job_id, ENDED, timeout=120)
        assert job["status"] == "done", (job["error"], job_id)
        assert len(_runs(admin, job_id)) == 1
    order = sorted(ids, key=lambda j: _first_start(admin, j))
    assert order[:2] == [first["id"], theirs[0]], order


def test_a_worker_serves_its_own_metrics_and_refuses_a_taken_port(solo):
    from prometheus_client.parser import text_string_to_metric_families
    from app.services.runtime import gpus
    app, worker, port, root = solo
    client = client_for(app)

    def scrape() -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}
    runs = lambda m, kind, outcome: m.get(("layerbench_sandbox_runs_total",      # noqa: E731
                                           (("kind", kind), ("outcome", outcome))), 0)
    before = scrape()
    done = [j for j in app.extensions["store"].list_jobs(status="done")]
    if not done:      # one to infer with (when run without the test above)
        first = post(client, "/api/v1/jobs", max_iter=4, name="tiny").get_json()
        done = [wait_for(client, first["id"], ENDED, timeout=90)]
        before = scrape()
    assert runs(before, "train", "done") == len(done)          # all trained here
    # An inference request on this host's infer side node (a process of its
    # own, counting in the worker's multiprocess files), answered by the
    # job's warm process there (app.services.inference.staged).
    sample = sorted((Path(app.config["JOBS_DIR"]) / "datasets" / "sample-digits" / "samples").glob("*.png"))[0]
    resp = _infer(client, done[0]["id"], sample)
    assert resp.status_code == 200 and resp.get_json()["worker"] == "solo@hostM", resp.get_json()
    after = scrape()
    assert runs(after, "infer_warm", "ok") == runs(before, "infer_warm", "ok") + 1
    assert after[("layerbench_worker_running_jobs", ())] == 0
    # The speed of the job it trains now, by job id.
    long = post(client, "/api/v1/jobs", max_iter=100000, name="long").get_json()
    _wait(lambda: (client.get(f"/api/v1/jobs/{long['id']}").get_json()["eta_seconds"] or 0) > 0, 90, "no speed")
    during = scrape()
    assert during[("layerbench_train_iterations_per_second", (("job", long["id"]),))] > 0
    assert during[("layerbench_worker_running_jobs", ())] == 1
    client.post(f"/api/v1/jobs/{long['id']}/abort")
    wait_for(client, long["id"], ENDED, timeout=30)
    _wait(lambda: runs(scrape(), "train", "aborted") == 1, 10, "the aborted run was not counted")
    # GPU gauges where NVML answers; none on a host without a GPU.
    assert bool([k for k in during if k[0].startswith("layerbench_gpu_")]) == bool(gpus.detect())
    # A second worker on this host with the same port stops at once, saying
    # why, before it claims a name or starts a side node.
    dup = CeleryWorker(app.config, "dup@hostM", root, LAYERBENCH_METRICS_PORT=str(port))
    try:
        assert dup.proc.wait(60) == 2
    finally:
        dup.stop()
    log = dup.log_path.read_text()
    assert f"LAYERBENCH_METRICS_PORT {port} on 127.0.0.1 cannot be bound" in log, log[-2000:]
    assert "dup@hostM" not in {w["name"] for w in client.get("/healthz").get_json()["workers"]}
