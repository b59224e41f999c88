"""A newcomer's first minutes, for real: the project copied as a clone would be
into a home directory (mode 0700) -- as root, and as an ordinary user -- set
up with scripts/setup.sh, served with `flask serve` (what `make run` runs), and
the seed job (LeNet + the seed page's AccuracyLayer) trained through the API.

Both were broken: as root the unprivileged sandbox uid could not reach the
venv under /root (every upload "The validator died"), and as a user the Caffe
build named the fork author's /root/miniconda3.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import LENET_SEED, ROOT, SEED_LAYER, api, free_port, initial_token

pytestmark = pytest.mark.slow

USER_UID = 2997   # an ordinary user with no passwd entry (none is needed)


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


def _caffe_cache() -> Path:
    return Path(os.environ.get("CAFFE_CACHE_DIR", Path.home() / ".cache" / "caffe-service"))


def _newcomer_trains_the_seed_job(home: Path, uid: int | None, env: dict[str, str]) -> None:
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


def test_root_clone_in_a_0700_home_directory(tmp_path):
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    _newcomer_trains_the_seed_job(home, None, dict(os.environ))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create the ordinary user's home")
def test_ordinary_user_clone_in_its_0700_home_directory(tmp_path):
    # The user's own Caffe build cache: the built package from this
    # machine's cache (the compile itself as a user is what
    # test_caffe_build's foreign-path test guards).
    import tempfile
    # Under /tmp itself: pytest's own temp dirs sit below a 0700 parent of root's.
    home = Path(tempfile.mkdtemp(prefix="layerbench-user-"))
    request_cleanup = lambda: shutil.rmtree(home, ignore_errors=True)  # noqa: E731
    cache = home / ".cache" / "caffe-service"
    cache.mkdir(parents=True)
    for entry in _caffe_cache().iterdir():
        if entry.is_dir() and (entry.name.startswith("build-cpu-") or entry.name == "sdist"):
            shutil.copytree(entry, cache / entry.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERBENCH_", "CAFFE_"))}
    env.update(HOME=str(home), USER="newcomer", LOGNAME="newcomer", CAFFE_CACHE_DIR=str(cache),
               PIP_CACHE_DIR=str(home / ".cache" / "pip"))
    try:
        _newcomer_trains_the_seed_job(home, USER_UID, env)
    finally:
        request_cleanup()
