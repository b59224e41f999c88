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


@pytest.fixture
def app(tmp_path):
    """A fresh app with its own database and jobs directory."""
    from app import create_app
    application = create_app({
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "JOBS_DIR": str(tmp_path / "jobs"),
        "TESTING": True,
    })
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
