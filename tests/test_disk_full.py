"""A full jobs volume is the server's fault, said plainly: a real small tmpfs."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from app.web import create_app
from helpers import client_for, post


@pytest.fixture
def small_volume(tmp_path):
    """A 64 MiB tmpfs as the jobs volume (mounted for the test, root only)."""
    mnt = tmp_path / "jobs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_submit_on_a_full_volume_is_a_507_and_leaves_nothing(tmp_path, sample_datasets, small_volume):
    shutil.copytree(sample_datasets, small_volume / "datasets")
    app = create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(small_volume),
                      "TESTING": True, "DISK_LOW_MB": 8})
    try:
        client = client_for(app)
        health = client.get("/healthz").get_json()
        assert health["disk"]["low"] is False and health["disk"]["free_mb"] > 8
        # Fill the volume to the last block.
        with open(small_volume / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
                    fh.flush()
            except OSError:
                pass
        before = sorted(p.name for p in small_volume.iterdir())
        resp = post(client, "/api/v1/jobs", max_iter=1, layer="# pad\n" * 20000)
        assert resp.status_code == 507, resp.get_data(as_text=True)[:500]
        body = resp.get_json()
        assert body["error"] == "insufficient_storage" and "no space left" in body["message"].lower()
        assert sorted(p.name for p in small_volume.iterdir()) == before      # nothing half-made
        assert client.get("/api/v1/jobs").get_json()["jobs"] == []
        health = client.get("/healthz").get_json()
        assert health["disk"]["low"] is True
        page = client.get("/").get_data(as_text=True)
        assert 'id="disk-low"' in page
    finally:
        app.extensions["store"].engine.dispose()


def _fill(volume, leave_bytes: int) -> None:
    """Fill ``volume`` until only ``leave_bytes`` are free."""
    free = shutil.disk_usage(volume).free
    with open(volume / "filler", "ab") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_training_that_fills_the_volume_is_interrupted_and_keeps_its_snapshot(tmp_path, sample_datasets,
                                                                             small_volume):
    # Caffe's answer used to be "Check failed: proto.SerializeToOstream" and
    # the job ended `error`; the half-written pair then broke resume.
    from helpers import InProcessWorker, wait_for
    shutil.copytree(sample_datasets, small_volume / "datasets")
    app = create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(small_volume),
                      "TESTING": True, "WORKER_POLL_SECONDS": 0.1})
    worker = InProcessWorker(app)
    try:
        client = client_for(app)
        job = post(client, "/api/v1/jobs", max_iter=100, snapshot_interval=1).get_json()   # ~5 pairs
        out = small_volume / job["id"] / "output"
        wait_for(client, job["id"], {"running"})
        # Room for about one LeNet snapshot pair (~3.4 MB), not two.
        _fill(small_volume, 5 << 20)
        ended = wait_for(client, job["id"], {"done", "error", "interrupted", "aborted"}, timeout=180)
        assert ended["status"] == "interrupted", ended
        assert "no space left on the jobs volume" in ended["error"]["message"].lower()
        from app.core.workspace import Workspace
        kept = Workspace.complete_snapshots(out)
        assert kept, "the last complete snapshot is kept"
        (small_volume / "filler").unlink()
        assert client.post(f"/api/v1/jobs/{job['id']}/resume").status_code == 202
        done = wait_for(client, job["id"], {"done", "error", "interrupted", "aborted"}, timeout=180)
        assert done["status"] == "done", done["error"]
    finally:
        worker.stop()
        app.extensions["store"].engine.dispose()


def test_a_queued_job_waits_for_room_instead_of_failing(tmp_path, sample_datasets, small_volume):
    # Found by the chaos soak: a job started while the volume was full ended
    # `error` with no reason (its run file could not be written). Now the
    # local queue starts nothing while the volume is full, and runs the job
    # once there is room again.
    from helpers import InProcessWorker, wait_for
    shutil.copytree(sample_datasets, small_volume / "datasets")
    app = create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(small_volume),
                      "TESTING": True, "WORKER_POLL_SECONDS": 0.1})
    worker = None
    try:
        client = client_for(app)
        job = post(client, "/api/v1/jobs", max_iter=4).get_json()
        _fill(small_volume, 0)
        worker = InProcessWorker(app)
        time.sleep(3)       # many polls of a worker that could take it
        held = client.get(f"/api/v1/jobs/{job['id']}").get_json()
        assert held["status"] == "queued" and [e["status"] for e in held["history"]] == ["queued"], held
        (small_volume / "filler").unlink()
        done = wait_for(client, job["id"], {"done", "error", "interrupted", "aborted"}, timeout=120)
        assert done["status"] == "done", done["error"]
    finally:
        if worker is not None:
            worker.stop()
        app.extensions["store"].engine.dispose()
