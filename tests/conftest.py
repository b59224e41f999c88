"""Shared fixtures: an app on tmp_path (its own SQLite file and jobs dir)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SEED_PAGE = ROOT.parent / "shared" / "seed" / "python-layers.txt"

# Caffe logs every layer it builds; keep test output readable. Must be set
# before pycaffe initialises glog.
os.environ.setdefault("GLOG_minloglevel", "2")


def _traversable(path: Path) -> None:
    # pytest makes its temp dirs 0700; the sandbox runs user code as an
    # unprivileged uid that must reach the job directories inside them.
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        mode = p.stat().st_mode
        if mode & 0o011 != 0o011:
            p.chmod(mode | 0o011)


@pytest.fixture(scope="session")
def sample_datasets(tmp_path_factory) -> Path:
    """sample-digits built once per test session (copied into each app)."""
    from app.datasets import ensure_sample_digits
    root = tmp_path_factory.mktemp("sample") / "datasets"
    ensure_sample_digits(root)
    return root


def make_app(tmp_path: Path, sample_datasets: Path, **overrides):
    """An app on ``tmp_path`` with sample-digits already in place."""
    import shutil
    from app import create_app
    _traversable(tmp_path)
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(sample_datasets, jobs_dir / "datasets")
    return create_app({"INSTANCE_DIR": str(tmp_path / "instance"), "JOBS_DIR": str(jobs_dir),
                       "TESTING": True, "WORKER_POLL_SECONDS": 0.1, **overrides})


@pytest.fixture
def app(tmp_path, sample_datasets):
    """A fresh app with its own database and jobs directory."""
    application = make_app(tmp_path, sample_datasets)
    yield application
    application.extensions["store"].engine.dispose()


@pytest.fixture
def client(app):
    """Flask test client of ``app``."""
    return app.test_client()


@pytest.fixture
def seed_layer_source() -> str:
    """The seed page's AccuracyLayer, byte for byte."""
    return (DATA / "seed_accuracy_layer.py").read_text()


@pytest.fixture
def fresh_layer_module():
    """Forget any imported `digits_python_layers` between tests."""
    sys.modules.pop("digits_python_layers", None)
    saved = list(sys.path)
    yield
    sys.modules.pop("digits_python_layers", None)
    sys.path[:] = saved
