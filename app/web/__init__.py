"""Layerbench: a DIGITS-style service for training Caffe nets with Python layers.

``create_app()`` builds the Flask app; nothing happens at import time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from app.core.workspace import DATASET_INFO_FILE
from app.core import config


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, store, blueprints, CLI commands."""
    overrides = dict(overrides or {})
    # Settings are parsed once, here; other keys (TESTING, WTF_CSRF_ENABLED,
    # ...) are Flask's own and go to app.config only.
    cfg = config.load(overrides={k: v for k, v in overrides.items() if k in config.NAMES})
    flask_only = {k: v for k, v in overrides.items() if k not in config.NAMES}

    if cfg.queue not in ("local", "celery"):
        # Refusing beats queueing jobs nobody runs.
        raise RuntimeError(f"LAYERBENCH_QUEUE={cfg.queue!r} is not supported; use 'local' or 'celery'.")
    app = Flask(__name__, instance_path=str(cfg.instance_dir.resolve()),
                template_folder=str(config.ROOT / "templates"),
                static_folder=str(config.ROOT / "static"))
    app.config.update(cfg)     # the settings under their names, for Flask and its extensions
    app.config.update(config.flask_settings(cfg))
    app.config.update(flask_only)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    _private_dir(Path(app.instance_path))
    cfg.jobs_dir.mkdir(parents=True, exist_ok=True)
    app.secret_key = cfg.secret_key or _instance_secret(Path(app.instance_path))

    from app.core.workspace import Workspace
    from app.services.runtime import sandbox
    from app.services.context import Context
    from app.store import Store
    store = Store(cfg.database_url)
    store.create_schema()
    ws = Workspace(cfg.jobs_dir)
    containment = sandbox.mode(cfg.sandbox)
    # Services read the Settings (ctx.cfg), not app.config: changing a
    # setting of a running app means a new Settings (Settings.replace).
    app.extensions.update(store=store, settings=cfg,
                          ctx=Context(cfg=cfg, store=store, ws=ws, containment=containment),
                          containment=containment)
    _ensure_sample_dataset(store, ws)
    # Loaded here, once, before any request thread can race for it.
    from app.caffe.proto import caffe_pb2
    caffe_pb2()

    from app.web import api, auth, cli, digits, errors, jsonsafe, pages, security
    jsonsafe.register(app)   # no NaN/Infinity in any JSON the app writes
    errors.register(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    from app.web import pretrained
    app.register_blueprint(pretrained.bp)
    app.register_blueprint(digits.bp)
    from app.web import admin
    from app.web.users_cli import users_cli
    app.register_blueprint(admin.bp)     # user and token administration
    app.cli.add_command(users_cli)
    security.register(app)
    auth.register(app)
    cli.register(app)
    from app.web import metrics
    metrics.register(app)   # GET /metrics and request timing (issue 27)
    auth.ensure_initial_admin(app)
    return app


def _ensure_sample_dataset(store, ws) -> None:
    # The built-in dataset exists on every install (built once per data root).
    from app.caffe.datasets import SAMPLE_ID, ensure_sample_digits
    from app.core.status import DatasetStatus
    # The record alone is not enough: a data root lost or replaced under an
    # intact database would list a dataset whose files are gone.
    if (store.get_dataset(SAMPLE_ID) or {}).get("status") == DatasetStatus.DONE and \
            (ws.dataset_dir(SAMPLE_ID) / DATASET_INFO_FILE).is_file():
        return
    info = ensure_sample_digits(ws.dataset_dir(SAMPLE_ID).parent)
    store.upsert_dataset(SAMPLE_ID, name=info["name"], owner=None, status=DatasetStatus.DONE.value, info=info)


def _private_dir(instance: Path) -> None:
    # The instance dir holds the database, the secret key and the initial
    # credentials: 0700, whatever the umask made it (or an older install
    # left). Sandboxed runs never need it: bwrap binds the one folder they
    # read (layer-env) as root and creates its parents 0755 inside.
    try:
        instance.chmod(0o700)
    except PermissionError:
        import logging
        logging.getLogger(__name__).warning("cannot make %s private (0700): not its owner", instance)


def _instance_secret(instance: Path) -> str:
    # Generated once and kept (0600) so sessions survive restarts and all
    # gunicorn workers agree on it.
    import os
    import secrets
    path = instance / "secret_key"
    if not path.exists():
        tmp = instance / f".secret_key.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic; the first of several workers wins
        except FileExistsError:
            pass
        os.unlink(tmp)
    return path.read_text().strip()
