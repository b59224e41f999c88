"""`flask backup` / `flask restore` (issue 27, part 5), for real: a served
instance (nginx, gunicorn, the local worker, sandboxed training) backed up
while a job trains, restored into fresh directories and served again by a
second app, whose download of the finished job holds the same snapshot
bytes. On PostgreSQL, `flask backup` names the pg_dump to run instead.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request

import pytest

from helpers import LENET_SEED, ROOT, SEED_LAYER, api, initial_token

pytestmark = pytest.mark.slow
ENDED = {"done", "error", "aborted", "interrupted"}


def _flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _submit(url: str, token: str, **fields) -> dict:
    parts = {k: (None, str(v).encode()) for k, v in dict(dataset="sample-digits", **fields).items()}
    parts.update(network=("network.prototxt", LENET_SEED.encode()), python_layer=("my_layers.py", SEED_LAYER.encode()))
    return api(url, token, "POST", "/api/v1/jobs", parts)


def _until(url: str, token: str, job_id: str, pred, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while not pred(job := api(url, token, "GET", f"/api/v1/jobs/{job_id}")):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def _models(tarball: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".caffemodel")}


def test_backup_while_serving_restore_fresh_and_download_the_same_snapshot(server, tmp_path):
    url, instance = server
    jobs = instance.parent / "jobs"
    token = initial_token(instance)
    job = _submit(url, token, max_iter=4, name="tiny")
    done = _until(url, token, job["id"], lambda j: j["status"] in ENDED)
    assert done["status"] == "done" and done["snapshots"], done
    req = urllib.request.Request(f"{url}/api/v1/jobs/{job['id']}/download",
                                 headers={"Authorization": f"Bearer {token}"})
    served = _models(urllib.request.urlopen(req, timeout=60).read())
    assert served
    # What user code could leave in its output dir: a link out of the tree
    # and a FIFO. The backup neither follows nor hangs on them.
    out = jobs / job["id"] / "output"
    os.symlink("/etc/passwd", out / "planted-link")
    os.mkfifo(out / "planted-fifo")
    # A job trains (and writes the database every half second) during the backup.
    long = _submit(url, token, max_iter=100000, name="long")
    _until(url, token, long["id"], lambda j: j["status"] == "running" and j["iteration"] > 0)

    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(instance), LAYERBENCH_JOBS_DIR=str(jobs))
    dest = tmp_path / "backup"
    made = _flask(env, "backup", str(dest))
    assert made.returncode == 0, made.stderr
    assert api(url, token, "GET", f"/api/v1/jobs/{long['id']}")["status"] == "running"     # served on throughout
    api(url, token, "POST", f"/api/v1/jobs/{long['id']}/abort")
    manifest = json.loads((dest / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    snaps = [p for p in files if p.startswith(f"{job['id']}/output/") and p.endswith(".caffemodel")]
    assert snaps
    for p in snaps:     # size and sha256 of the live file, and the copy is that file
        data = (jobs / p).read_bytes()
        assert files[p]["size"] == len(data) and files[p]["sha256"] == hashlib.sha256(data).hexdigest()
        assert (dest / "jobs" / p).read_bytes() == data
    assert not [p for p in files if "planted" in p]
    assert not (dest / "jobs" / job["id"] / "output" / "planted-link").exists()
    assert manifest["database"]["sha256"] and oct((dest / "layerbench.sqlite3").stat().st_mode)[-3:] == "600"
    assert _flask(env, "backup", str(dest)).returncode == 1            # never over an earlier backup

    fresh = tmp_path / "restored"
    done_restore = _flask(env, "restore", str(dest), "--instance-dir", str(fresh / "instance"),
                          "--jobs-dir", str(fresh / "jobs"))
    assert done_restore.returncode == 0, done_restore.stderr
    again = _flask(env, "restore", str(dest), "--instance-dir", str(fresh / "instance"), "--jobs-dir",
                   str(tmp_path / "other-jobs"))
    assert again.returncode == 1 and "not empty" in again.stderr      # never over a used instance
    assert _flask(env, "restore", str(dest), "--instance-dir", str(instance), "--jobs-dir",
                  str(tmp_path / "x")).returncode == 1                  # nor over the live one

    # A second app on the restored directories: the same users and tokens,
    # the same job, the same snapshot bytes in its download.
    from app.web import create_app
    app = create_app({"INSTANCE_DIR": str(fresh / "instance"), "JOBS_DIR": str(fresh / "jobs"), "TESTING": True})
    try:
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        restored = client.get(f"/api/v1/jobs/{job['id']}").get_json()
        assert restored["status"] == "done" and restored["snapshots"] == done["snapshots"]
        with client.get(f"/api/v1/jobs/{job['id']}/download") as resp:    # closes the archive's temp file
            assert resp.status_code == 200
            assert _models(resp.data) == served
        # The job inputs now name the restored jobs dir, not the old one.
        train_val = (fresh / "jobs" / job["id"] / "input" / "train_val.prototxt").read_text()
        assert str(jobs.resolve()) not in train_val and str((fresh / "jobs").resolve()) in train_val
    finally:
        app.extensions["store"].engine.dispose()


def test_backup_on_postgresql_names_pg_dump_and_copies_the_jobs_dir(tmp_path, sample_datasets, postgres):
    jobs = tmp_path / "jobs"
    shutil.copytree(sample_datasets, jobs / "datasets")
    db = postgres.create_db(f"backup{time.monotonic_ns()}")
    env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(tmp_path / "instance"), LAYERBENCH_JOBS_DIR=str(jobs),
               LAYERBENCH_DATABASE_URL=db)
    refused = _flask(env, "backup", str(tmp_path / "b"))
    assert refused.returncode == 2 and not (tmp_path / "b").exists()
    assert "pg_dump --format=custom" in refused.stderr and db.rsplit("/", 1)[1] in refused.stderr, refused.stderr
    assert "--jobs-only" in refused.stderr
    files = _flask(env, "backup", "--jobs-only", str(tmp_path / "b"))
    assert files.returncode == 0, files.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["database"] is None and any(f["path"].startswith("datasets/") for f in manifest["files"])
