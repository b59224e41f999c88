"""`flask backup` / `flask restore` (issue 27, part 5), for real: a served
instance (nginx, gunicorn, the local worker, sandboxed training) backed up
while a job trains, restored into fresh directories and served again by a
second app, whose download of the finished job holds the same snapshot
bytes; the same round trip on PostgreSQL (pg_dump / pg_restore into a new
database).
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
from pathlib import Path

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


def test_postgresql_backup_while_serving_restores_into_a_fresh_database(tmp_path, sample_datasets, postgres):
    # Served on PostgreSQL; `flask backup` runs pg_dump while the service
    # serves; restored into a new database and jobs dir and served again,
    # every finished job's snapshots download byte for byte the same.
    import tempfile
    from helpers import serve
    live_root = Path(tempfile.mkdtemp(prefix="lb-pg-backup-", dir="/tmp"))   # see conftest's server fixture
    new_root = Path(tempfile.mkdtemp(prefix="lb-pg-restored-", dir="/tmp"))
    db, fresh_db = (postgres.create_db(f"{n}{time.monotonic_ns()}") for n in ("live", "restored"))
    try:
        with serve(live_root, sample_datasets, {"LAYERBENCH_DATABASE_URL": db}) as (url, instance):
            token = initial_token(instance)
            job = _submit(url, token, max_iter=4, name="tiny")
            assert _until(url, token, job["id"], lambda j: j["status"] in ENDED)["status"] == "done"
            ended = [j for j in api(url, token, "GET", "/api/v1/jobs")["jobs"] if j["status"] in ENDED]
            served = {j["id"]: _download(url, token, j["id"]) for j in ended}
            assert all(served.values()), served
            env = dict(os.environ, LAYERBENCH_INSTANCE_DIR=str(instance), LAYERBENCH_JOBS_DIR=str(live_root / "jobs"),
                       LAYERBENCH_DATABASE_URL=db)
            made = _flask(env, "backup", str(tmp_path / "b"))
            assert made.returncode == 0 and "and the database" in made.stdout, made.stderr
            files = _flask(env, "backup", "--jobs-only", str(tmp_path / "files"))    # the files alone
            assert files.returncode == 0 and json.loads((tmp_path / "files" / "manifest.json").read_text())[
                "database"] is None, files.stderr
            assert api(url, token, "GET", f"/api/v1/jobs/{job['id']}")["status"] == "done"     # served on
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        dump = (tmp_path / "b" / "layerbench.pgdump").read_bytes()
        assert manifest["database"]["backend"] == "postgresql"
        assert manifest["database"]["sha256"] == hashlib.sha256(dump).hexdigest() and dump[:5] == b"PGDMP"
        snaps = [f for f in manifest["files"] if f["path"].endswith(".caffemodel")]
        assert snaps and all(f["size"] and len(f["sha256"]) == 64 for f in snaps)

        args = ["restore", str(tmp_path / "b"), "--instance-dir", str(new_root / "instance"),
                "--jobs-dir", str(new_root / "jobs")]
        assert _flask(env, *args).returncode == 1            # a PostgreSQL dump needs --database-url
        done = _flask(env, *args, "--database-url", fresh_db)
        assert done.returncode == 0, done.stderr
        # Never over a database in use (this one now is).
        again = _flask(env, "restore", str(tmp_path / "b"), "--instance-dir", str(tmp_path / "i2"),
                       "--jobs-dir", str(tmp_path / "j2"), "--database-url", fresh_db)
        assert again.returncode == 1 and "not empty" in again.stderr, again.stderr
        with serve(new_root, sample_datasets, {"LAYERBENCH_DATABASE_URL": fresh_db}) as (url, _):
            listed = {j["id"]: j["status"] for j in api(url, token, "GET", "/api/v1/jobs")["jobs"]}
            assert {i: listed.get(i) for i in served} == {j["id"]: j["status"] for j in ended}
            for job_id, models in served.items():
                assert _download(url, token, job_id) == models, job_id
    finally:
        shutil.rmtree(live_root, ignore_errors=True)
        shutil.rmtree(new_root, ignore_errors=True)


def _download(url: str, token: str, job_id: str) -> dict[str, bytes]:
    req = urllib.request.Request(f"{url}/api/v1/jobs/{job_id}/download", headers={"Authorization": f"Bearer {token}"})
    return _models(urllib.request.urlopen(req, timeout=60).read())
