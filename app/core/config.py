"""Settings, read from environment variables. The only module that reads env.

Every setting is ``LAYERBENCH_<NAME>`` in the environment and ``<NAME>`` in
``app.config``; ``create_app(overrides)`` wins over both.
"""
from __future__ import annotations

import os
from pathlib import Path

PREFIX = "LAYERBENCH_"
ROOT = Path(__file__).resolve().parents[2]   # the checkout: app/core/config.py

# name -> (default, parser). Defaults that depend on other settings are None
# and filled in by `load()`.
_SETTINGS: dict[str, tuple[object, type]] = {
    "JOBS_DIR": (str(ROOT / "jobs"), str),
    "INSTANCE_DIR": (str(ROOT / "instance"), str),
    "DATABASE_URL": (None, str),
    "QUEUE": ("local", str),                # local | celery (workers on any host: docs/SCALE_OUT.md)
    "REDIS_URL": ("redis://127.0.0.1:6379/0", str),
    "BROKER_URL": (None, str),              # celery's broker; default REDIS_URL
    "WORKER_NAME": (None, str),             # celery node name, default layerbench-<hex>@<hostname> (app.worker.identity)
    "WORKER_GPUS": (None, str),             # GPUs a celery worker offers: "0,1", "none"; default: all found
    "HEARTBEAT_SECONDS": (1.0, float),      # how often a celery worker writes its heartbeat
    "HANDOVER_SECONDS": (30.0, float),      # a running job whose heartbeat is older is handed over
    "INFER_QUEUE_SECONDS": (30.0, float),   # celery: how long an inference request may wait for a worker
    "INFER_CONCURRENCY": (2, int),          # celery: inference requests a worker host runs at once
    "INFER_WARM": (4, int),                 # warm inference processes kept per host process (app.services.inference.warm_pool); 0: one per request
    "INFER_IDLE_SECONDS": (300.0, float),   # a warm inference process idle this long is retired
    "INFER_REQUEST_SECONDS": (0.0, float),  # wall clock of one warm inference request; 0: VALIDATE_TIMEOUT x 2
    "MAX_UPLOAD_MB": (64, int),
    "MAX_LAYER_FILE_KB": (512, int),
    "MAX_NETWORK_FILE_KB": (1024, int),
    "MAX_WEIGHTS_MB": (64, int),            # a .caffemodel upload (also bounded by MAX_UPLOAD_MB)
    "SANDBOX": ("auto", str),               # auto | bwrap | none
    "SANDBOX_UIDS": ("3000000-3000999", str),  # uids leased one per sandboxed run (root only)
    "ALLOW_UNCONTAINED": (False, bool),
    "VALIDATE_TIMEOUT": (60, int),          # seconds, wall clock
    "TRAIN_TIMEOUT": (24 * 3600, int),      # seconds, wall clock per job
    "MEMORY_LIMIT_MB": (8192, int),          # address space of user code
    "LOG_MAX_MB": (64, int),                 # a job's train.log: first and latest output kept
    "DATASET_MAX_FILES": (200_000, int),     # entries in an uploaded archive
    "DATASET_MAX_MB": (4096, int),           # uncompressed bytes in an archive
    "DATASET_TIMEOUT": (3600, int),          # seconds to build one dataset
    "DATASET_WORKERS": (0, int),             # processes decoding one build's images; 0: one per core, 1: serial
    "DATA_ROOTS": (None, str),               # ":"-separated server folders datasets may be read from ({user}: per user); app.services.runtime.data_roots
    "WORKER_CONCURRENCY": (0, int),         # 0: one per GPU, else 1
    "WORKER_POLL_SECONDS": (0.2, float),
    "SECRET_KEY": (None, str),
    "SECURE_COOKIES": (False, bool),         # set behind HTTPS
    "DISK_LOW_MB": (1024, int),              # warn on /healthz and pages below this free space
    "JOB_DISK_MB": (10240, int),             # what one job's output dir may take on disk (app.worker.quota)
    "MONITOR_TOKEN": (None, str),            # bearer token that sees /healthz's details (besides admins)
    "METRICS_TOKEN": (None, str),            # bearer token for GET /metrics from off this host (app.web.metrics)
    "METRICS_PORT": (0, int),                # celery worker: serve its own metrics on this port (0: none; app.worker.metrics_port)
    "METRICS_ADDRESS": ("127.0.0.1", str),   # celery worker: the address that port listens on (loopback by default)
    # Failed sign-ins (login form, HTTP Basic, API tokens), app.web.throttle:
    # past LOGIN_FAILURES for one user name from one address, or
    # LOGIN_ADDRESS_FAILURES from one address for any names, within
    # LOGIN_WINDOW_SECONDS, that address is answered 429 for that name (or all).
    "LOGIN_FAILURES": (10, int),
    "LOGIN_ADDRESS_FAILURES": (50, int),
    "LOGIN_WINDOW_SECONDS": (300, int),
    "RATELIMIT_STORAGE_URL": (None, str),   # where they are counted; default memory://, Redis (BROKER_URL) in celery mode
    "TOKEN_DAYS": (0, int),                 # API tokens expire this many days after creation; 0: never
    "CAFFE_PYTHON": (None, str),            # interpreter with pycaffe
    "PRIVSEP": (True, bool),
    "AUTO_RESUME": (True, bool),            # after a restart, running jobs go on from their newest snapshot
    "USER_MAX_RUNNING": (0, int),           # jobs of one user running at once (0: no limit); the rest wait
    "USER_MAX_QUEUED": (0, int),            # jobs of one user queued or waiting at once (0: no limit); 429 past it                # as root, `serve` runs web + worker as the `layerbench` user
}


def _parse(kind: type, raw: str) -> object:
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    return kind(raw)


def load(environ: dict[str, str] | None = None) -> dict[str, object]:
    """Return the settings dict from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    cfg: dict[str, object] = {}
    for name, (default, kind) in _SETTINGS.items():
        raw = env.get(PREFIX + name)
        cfg[name] = _parse(kind, raw) if raw not in (None, "") else default
    instance = Path(str(cfg["INSTANCE_DIR"]))
    if not cfg["DATABASE_URL"]:
        cfg["DATABASE_URL"] = f"sqlite:///{instance / 'layerbench.sqlite3'}"
    if not cfg["BROKER_URL"]:
        cfg["BROKER_URL"] = cfg["REDIS_URL"]
    if not cfg["CAFFE_PYTHON"]:
        # The interpreter running the web app is the project venv's, which
        # also holds pycaffe (scripts/build_caffe.sh installs it there).
        import sys
        cfg["CAFFE_PYTHON"] = sys.executable
    return cfg


def flask_settings(cfg: dict[str, object]) -> dict[str, object]:
    """Flask/Werkzeug limits derived from our settings."""
    max_bytes = int(cfg["MAX_UPLOAD_MB"]) * 1024 * 1024
    return {
        "MAX_CONTENT_LENGTH": max_bytes,
        # Non-file form fields are held in memory: keep them small.
        "MAX_FORM_MEMORY_SIZE": 2 * 1024 * 1024,
        "MAX_FORM_PARTS": 200,
        "JSON_SORT_KEYS": False,
    }
