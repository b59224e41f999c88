"""Settings, read from environment variables. The only module that reads env.

Every setting is ``LAYERBENCH_<NAME>`` in the environment and ``<NAME>`` in
``app.config``; ``create_app(overrides)`` wins over both.

``load()`` parses each one once into a read-only ``Settings`` (what
``Context.cfg`` is): ``cfg.validate_timeout``, ``cfg.max_layer_file_bytes``,
``cfg.jobs_dir`` (a Path) are ready to use; no use site casts, scales or
defaults a setting again. ``cfg["NAME"]`` reads the same parsed values under
their names (what ``app.config`` is given).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

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
    "MAX_DOWNLOAD_FILE_MB": (4096, int),    # largest job file served for download (app.services.jobs.files)
    "SANDBOX": ("auto", str),               # auto | bwrap | none
    "SANDBOX_UIDS": ("3000000-3000999", str),  # uids leased one per sandboxed run (root only)
    "ALLOW_UNCONTAINED": (False, bool),
    "VALIDATE_TIMEOUT": (60, int),          # seconds, wall clock
    "TRAIN_TIMEOUT": (24 * 3600, int),      # seconds, wall clock per job
    "ABORT_GRACE_SECONDS": (30.0, float),   # an aborted run still going this long (x3 its iteration time) is killed (app.worker.runner)
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
    "USER_MAX_QUEUED": (0, int),            # jobs of one user queued or waiting at once (0: no limit); 429 past it
}

NAMES = frozenset(_SETTINGS)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse(name: str, kind: type, raw: object) -> object:
    """``raw`` (the environment's text, or an override's value) as ``kind``;
    a value that is not one raises ValueError naming its variable."""
    try:
        if isinstance(raw, str):
            text = raw.strip()
            if kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError("not one of " + ", ".join(sorted(_TRUE | _FALSE)))
            return kind(text)
        if kind is bool and isinstance(raw, bool):
            return raw
        if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if kind is str and isinstance(raw, os.PathLike):
            return os.fspath(raw)
        raise TypeError(f"a {type(raw).__name__} is not one")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{PREFIX}{name}={raw!r} is not a valid {kind.__name__}: {exc}") from None


def _uid_range(spec: str) -> range:
    lo, _, hi = spec.partition("-")
    try:
        found = range(int(lo), int(hi or lo) + 1)
    except ValueError:
        found = range(0)
    if not found:
        raise ValueError(f"{PREFIX}SANDBOX_UIDS={spec!r} is not a uid range such as 3000000-3000999")
    return found


class Settings(Mapping):
    """Every setting, parsed once by ``load()``; read-only.

    Attributes (snake_case) are the typed values: each setting under its
    lower-case name (``cfg.queue``, ``cfg.validate_timeout``; whole seconds
    stay int, ``*_SECONDS`` settings are float), plus what use sites need
    derived from them:

    * ``<name>_bytes`` for every ``*_MB``/``*_KB`` size (``max_upload_bytes``,
      ``max_layer_file_bytes``, ``memory_limit_bytes``, ``job_disk_bytes``, ...)
    * ``jobs_dir``, ``instance_dir``: Paths (``cfg["JOBS_DIR"]`` stays the str);
      ``caffe_python_dir``: the folder of CAFFE_PYTHON (``cfg.caffe_python``
      stays the str that is argv[0])
    * ``sandbox_uid_range``: SANDBOX_UIDS as a range

    ``cfg["NAME"]`` / ``cfg.get("NAME")`` read the parsed setting by its name
    (a Mapping, so ``app.config.update(settings)`` works). ``replace(**changes)``
    returns a new Settings with some settings changed.
    """

    __slots__ = ("_values", "_attrs")

    def __init__(self, values: Mapping[str, object]) -> None:
        attrs: dict[str, object] = {name.lower(): value for name, value in values.items()}
        for name, value in values.items():
            for unit, shift in (("_MB", 20), ("_KB", 10)):
                if name.endswith(unit):
                    attrs[name[: -len(unit)].lower() + "_bytes"] = int(value) << shift
        attrs["jobs_dir"] = Path(str(values["JOBS_DIR"]))
        attrs["instance_dir"] = Path(str(values["INSTANCE_DIR"]))
        attrs["caffe_python_dir"] = Path(str(values["CAFFE_PYTHON"])).parent
        attrs["sandbox_uid_range"] = _uid_range(str(values["SANDBOX_UIDS"]))
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_attrs", attrs)

    def __getitem__(self, name: str) -> object:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_attrs")[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"settings are read-only (cannot set {name}); "
                             "config.load(overrides=...) or Settings.replace() makes changed ones")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"settings are read-only (cannot delete {name})")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._attrs})

    def __repr__(self) -> str:
        # Names only: SECRET_KEY and the tokens stay out of logs and tracebacks.
        return f"Settings({', '.join(self._values)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values == other._values

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        return (Settings, (self._values,))

    def replace(self, **changes: object) -> "Settings":
        """A new Settings: these settings (by NAME) changed, parsed as load() would."""
        unknown = sorted(set(changes) - set(_SETTINGS))
        if unknown:
            raise KeyError(f"not settings: {', '.join(unknown)}")
        values = dict(self._values)
        for name, raw in changes.items():
            values[name] = _parse(name, _SETTINGS[name][1], raw)
        return Settings(values)


def load(environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, object] | None = None) -> Settings:
    """The settings from ``environ`` (default: ``os.environ``), with
    ``overrides`` (by NAME: str like the environment's, or the value's own
    type, a Path for a str) winning; each parsed once. An empty or None value
    means the default. Raises ValueError naming the variable of a bad value,
    KeyError for an override that is no setting."""
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_SETTINGS))
    if unknown:
        raise KeyError(f"not settings: {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name, (default, kind) in _SETTINGS.items():
        raw = overrides[name] if name in overrides else env.get(PREFIX + name)
        values[name] = _parse(name, kind, raw) if raw not in (None, "") else default
    if not values["DATABASE_URL"] or ("INSTANCE_DIR" in overrides and "DATABASE_URL" not in overrides):
        # An instance dir given in overrides brings its own database (a
        # test's app never opens the one the environment names).
        values["DATABASE_URL"] = f"sqlite:///{Path(str(values['INSTANCE_DIR'])) / 'layerbench.sqlite3'}"
    if not values["BROKER_URL"]:
        values["BROKER_URL"] = values["REDIS_URL"]
    if not values["CAFFE_PYTHON"]:
        # The interpreter running the web app is the project venv's, which
        # also holds pycaffe (scripts/build_caffe.sh installs it there).
        values["CAFFE_PYTHON"] = sys.executable
    return Settings(values)


def flask_settings(cfg: Settings) -> dict[str, object]:
    """Flask/Werkzeug limits derived from our settings."""
    return {
        "MAX_CONTENT_LENGTH": cfg.max_upload_bytes,
        # Non-file form fields are held in memory: keep them small.
        "MAX_FORM_MEMORY_SIZE": 2 * 1024 * 1024,
        "MAX_FORM_PARTS": 200,
        "JSON_SORT_KEYS": False,
    }
