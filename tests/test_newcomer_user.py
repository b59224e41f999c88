"""The newcomer's first minutes as an ordinary user (test_newcomer.py has
the root case and says what both prove): a clone in the user's own 0700 home
directory, set up, served and training the seed job, everything it writes
the user's own."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import caffe_cache, newcomer_trains_the_seed_job

pytestmark = pytest.mark.slow

USER_UID = 2997   # an ordinary user with no passwd entry (none is needed)


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
    for entry in caffe_cache().iterdir():
        if entry.is_dir() and (entry.name.startswith("build-cpu-") or entry.name == "sdist"):
            shutil.copytree(entry, cache / entry.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYERBENCH_", "CAFFE_"))}
    env.update(HOME=str(home), USER="newcomer", LOGNAME="newcomer", CAFFE_CACHE_DIR=str(cache),
               PIP_CACHE_DIR=str(home / ".cache" / "pip"))
    try:
        newcomer_trains_the_seed_job(home, USER_UID, env)
    finally:
        request_cleanup()
