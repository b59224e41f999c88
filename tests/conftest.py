"""Shared fixtures: an app on tmp_path (its own SQLite file and jobs dir)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from helpers import DATA, Workers, client_for, make_app, serve


# Caffe logs every layer it builds; keep test output readable. Must be set
# before pycaffe initialises glog.
os.environ.setdefault("GLOG_minloglevel", "2")

# One BLAS thread per process. OpenBLAS starts a thread per core and spins
# them between calls; with four pytest workers on two cores every contained
# run (validation, training, inference) then burned about twice the CPU it
# used (validation of LeNet + the seed layer: 0.47 CPU-s vs 0.27 with one
# thread, the same wall time). The sandbox passes the variable through
# (app.services.runtime.sandbox._env), so every run the suite starts gets it;
# the service itself leaves BLAS at its default, and bench/ measures that.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def sample_datasets(tmp_path_factory) -> Path:
    """sample-digits built once per test session (copied into each app)."""
    from app.caffe.datasets import ensure_sample_digits
    root = tmp_path_factory.mktemp("sample") / "datasets"
    ensure_sample_digits(root)
    return root


@pytest.fixture
def app(tmp_path, sample_datasets):
    """A fresh app with its own database and jobs directory."""
    application = make_app(tmp_path, sample_datasets)
    yield application
    from app.services.inference import warm_pool as warm
    warm.retire_all()   # warm inference processes live in this process: none outlives its test
    application.extensions["store"].engine.dispose()


@pytest.fixture
def client(app):
    """Flask test client of ``app``, authenticated as the initial admin."""
    return client_for(app, "admin")


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


@pytest.fixture
def worker(app):
    """The local worker for ``app`` (one started) on a thread of this process
    (helpers.InProcessWorker); stopped after the test."""
    workers = Workers(app)
    workers.start()
    yield workers
    for w in workers.procs:
        w.stop()


@pytest.fixture
def worker_process(app):
    """The real `flask worker` process for ``app`` (one started), for tests
    of supervision itself: killing, freezing or restarting the worker."""
    workers = Workers(app, process=True)
    workers.start()
    yield workers
    for w in workers.procs:
        w.stop()


@pytest.fixture(scope="module")
def server(sample_datasets):
    """`flask --app wsgi serve` on a free port with its own data root, one
    per test module (a start costs ~5 s; the module's tests share it, so
    each must look only at the jobs and users it made itself).

    As root, serve runs the web and worker as the `layerbench` user and
    grants it a way through 0700 ancestors (app.web.privsep): the data root
    lives outside pytest's own directory, whose mode every new pytest
    session resets (which would cut a running server off)."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="lb-server-", dir="/tmp"))
    try:
        with serve(base, sample_datasets) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium driven by the system chromedriver."""
    from helpers import chrome
    driver = chrome(tmp_path / "chrome")
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session (tests/cluster.py)."""
    from cluster import Redis
    server = Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster for the session; ``create_db`` gives each
    test its own database (tests/cluster.py)."""
    from cluster import Postgres
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def rgb_dataset(app):
    """A small 256x256 colour dataset (3 classes), as the service stores one
    (for AlexNet/GoogLeNet-sized inputs); its id."""
    import numpy as np
    from app.caffe.datasets import write_dataset
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 256, 256), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 4)
    dest = Path(app.config["JOBS_DIR"]) / "datasets" / "rgb256"
    info = write_dataset(dest, images, labels, ["a", "b", "c"], 25, "rgb 256")
    app.extensions["store"].upsert_dataset("rgb256", name="rgb 256", owner=None, status="done", info=info)
    return "rgb256"


# The longest modules first (measured: each module's wall time in a serial
# run, `--durations=0`). Pytest workers take whole modules (make test:
# --dist loadfile, in this order: --no-loadscope-reorder; xdist's own order
# is by test count, which started the one-test newcomer modules last and
# left a worker running alone at the end).
SLOW_FIRST = ("test_hostile", "test_celery", "test_newcomer", "test_newcomer_user", "test_browser",
              "test_digits_networks", "test_backup", "test_warm_inference", "test_worker_supervision", "test_api",
              "test_hostile_files", "test_auto_resume", "test_fuzz_api", "test_datasets",
              "test_digits_dataset_classes", "test_auth_hardening", "test_fencing", "test_digits_classes",
              "test_recovery", "test_validate", "test_live_charts", "test_finetune", "test_offload",
              "test_digits_views", "test_disk_full", "test_pages_more", "test_compare", "test_identity",
              "test_segmentation", "test_sandbox", "test_isolation", "test_pages_ux")


def pytest_collection_modifyitems(items):
    """Order the collected tests longest module first (stable within a module)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
