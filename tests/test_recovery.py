"""Recovery of training jobs, end to end (real worker, sandbox, Caffe and
signals): torn snapshots are never restored, a training process killed from
outside leaves the job resumable, the user's own failures end it in error."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import SEED_LAYER, line_of, post, training_pid, wait_for

from helpers import GATE, NETWORK, PROBE_BASE  # noqa: F401  (shared with other modules)


def _create(client, **fields) -> dict:
    resp = post(client, "/api/v1/jobs", network=NETWORK, **fields)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _wait_snapshot(client, job_id: str, iteration: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").get_json()
        if iteration in [s["iteration"] for s in job["snapshots"]]:
            return job
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"no snapshot {iteration}: {job}"
        time.sleep(0.1)


def _wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


from helpers import metric_records as _records  # noqa: E402


def test_torn_newest_snapshot_resumes_from_previous_complete_pair(app, client, worker):
    from app.core.workspace import Workspace
    job = _create(client, layer=GATE.replace("HOLD", "45"), train_epochs=3)   # 66 iterations (22 per epoch)
    inp = Path(app.config["JOBS_DIR"]) / job["id"] / "input"
    out = inp.parent / "output"
    _wait_snapshot(client, job["id"], 44)        # held at iteration 45 from here on
    assert client.post(f"/api/v1/jobs/{job['id']}/abort").status_code == 202
    _wait_file(inp.parent / "control" / "abort")   # the worker passed the abort on
    (inp / "release").touch()
    ended = wait_for(client, job["id"], {"aborted", "error", "done"})
    assert ended["status"] == "aborted", ended["error"]
    assert [s["iteration"] for s in ended["snapshots"]] == [22, 44, 45]

    # What a kill in the middle of writing the newest solverstate leaves.
    state = out / "snapshot_iter_45.solverstate"
    os.truncate(state, state.stat().st_size // 2)
    model = out / "snapshot_iter_45.caffemodel"
    os.truncate(model, model.stat().st_size // 2)
    # A download never carries the torn model: the newest whole one instead.
    import io
    import json
    import tarfile
    resp = client.get(f"/api/v1/jobs/{job['id']}/download")
    data = resp.data
    resp.close()
    assert resp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert "snapshot_iter_44.caffemodel" in tar.getnames()
        assert "snapshot_iter_45.caffemodel" not in tar.getnames()
        assert json.load(tar.extractfile("info.json"))["snapshot"] == "snapshot_iter_44.caffemodel"

    assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
    done = wait_for(client, job["id"], {"done", "error", "aborted", "interrupted"})
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == 66
    assert _records(out, "resumed") == [{"type": "resumed", "iteration": 44, "run": 2}]
    # The service chose the newest complete pair (the runner would also
    # have fallen back from 45 and said so in the log).
    assert app.extensions["store"].get_job(job["id"])["resume_from"] == 44
    assert sorted(Workspace.complete_snapshots(out)) == [22, 44, 66]


def test_sigkill_of_training_process_leaves_job_interrupted_and_resumable(app, client, worker):
    job = _create(client, layer=GATE.replace("HOLD", "30"), train_epochs=2)   # 44 iterations
    inp = Path(app.config["JOBS_DIR"]) / job["id"] / "input"
    out = inp.parent / "output"
    _wait_snapshot(client, job["id"], 22)        # held at iteration 30 from here on
    os.kill(training_pid(out), signal.SIGKILL)

    ended = wait_for(client, job["id"], {"interrupted", "error", "done", "aborted"})
    assert ended["status"] == "interrupted", ended["error"]
    assert "killed by signal 9" in ended["error"]["message"]
    assert not ended["error"].get("layer")

    (inp / "release").touch()
    assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
    done = wait_for(client, job["id"], {"done", "error", "aborted", "interrupted"})
    assert done["status"] == "done", done["error"]
    assert done["iteration"] == 44
    assert _records(out, "resumed") == [{"type": "resumed", "iteration": 22, "run": 2}]


def test_python_exception_in_layer_during_training_is_error(client, worker):
    layer = SEED_LAYER + PROBE_BASE + """
    def act(self, bottom):
        if self.n == 5:
            raise KeyError('no such thing')
"""
    job = _create(client, layer=layer, max_iter=50)
    ended = wait_for(client, job["id"], {"done", "error", "interrupted"})
    assert ended["status"] == "error"
    assert "no such thing" in ended["error"]["message"]
    assert ended["error"]["file"] == "digits_python_layers.py"
    assert ended["error"]["line"] == line_of(layer, "raise KeyError")
    assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 409


@pytest.mark.parametrize("allocate", [
    "bottom[0].reshape(1 << 30)\n            bottom[0].data",      # Caffe's malloc: a CHECK, SIGABRT
    "import numpy\n            numpy.ones(1 << 30)",               # Python: MemoryError
])
def test_out_of_memory_is_interrupted_with_the_limit(client, worker, allocate):
    worker.procs[0].stop()
    worker.start(LAYERBENCH_MEMORY_LIMIT_MB="2048")   # the worker reads its limits from its env
    layer = SEED_LAYER + PROBE_BASE + f"""
    def act(self, bottom):
        if self.n == 3:
            {allocate}
"""
    job = _create(client, layer=layer, max_iter=50)
    ended = wait_for(client, job["id"], {"done", "error", "interrupted"})
    assert ended["status"] == "interrupted", ended["error"]
    assert "out of memory: limit 2048 MiB" in ended["error"]["message"]


def test_a_job_killed_before_its_first_snapshot_resumes_from_the_start(app, client, worker):
    # Held at iteration 2, long before its first snapshot: SIGKILLed from
    # outside it is interrupted with nothing to continue from; resuming it
    # (the soak's kills and full disks do this) runs it again from the start.
    job = _create(client, layer=GATE.replace("HOLD", "2"), max_iter=6)
    out = Path(app.config["JOBS_DIR"]) / job["id"] / "output"
    os.kill(training_pid(out), signal.SIGKILL)
    ended = wait_for(client, job["id"], {"done", "error", "aborted", "interrupted"})
    assert ended["status"] == "interrupted" and not ended["snapshots"], ended
    (Path(app.config["JOBS_DIR"]) / job["id"] / "input" / "release").touch()
    resumed = client.post(f"/api/v1/jobs/{job['id']}/resume")
    assert resumed.status_code == 202 and resumed.get_json()["iteration"] == 0, resumed.get_json()
    done = wait_for(client, job["id"], {"done", "error", "aborted", "interrupted"})
    assert done["status"] == "done" and done["iteration"] == 6, done["error"]
    assert [e["status"] for e in done["history"]] == ["queued", "running", "interrupted", "queued", "running",
                                                      "done"]
