"""A newcomer's first minutes, for real: the project copied as a clone would be
into a home directory (mode 0700) -- as root, and as an ordinary user -- set
up with scripts/setup.sh, served with `flask serve` (what `make run` runs), and
the seed job (LeNet + the seed page's AccuracyLayer) trained through the API.

Both were broken: as root the unprivileged sandbox uid could not reach the
venv under /root (every upload "The validator died"), and as a user the Caffe
build named the fork author's /root/miniconda3.
"""
from __future__ import annotations

import os

import pytest

from helpers import newcomer_trains_the_seed_job

pytestmark = pytest.mark.slow


def test_root_clone_in_a_0700_home_directory(tmp_path):
    home = tmp_path / "root"
    home.mkdir(mode=0o700)
    newcomer_trains_the_seed_job(home, None, dict(os.environ))
