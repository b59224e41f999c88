"""Layerbench: a DIGITS-style service for training Caffe nets with Python layers.

``create_app()`` builds the Flask app; nothing happens at import time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from . import config


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, store, blueprints, CLI commands."""
    cfg = config.load()
    cfg.update(overrides or {})
    if overrides and "INSTANCE_DIR" in overrides and "DATABASE_URL" not in overrides:
        cfg["DATABASE_URL"] = f"sqlite:///{Path(cfg['INSTANCE_DIR']) / 'layerbench.sqlite3'}"

    app = Flask(__name__, instance_path=str(Path(cfg["INSTANCE_DIR"]).resolve()),
                template_folder=str(config.ROOT / "templates"),
                static_folder=str(config.ROOT / "static"))
    app.config.update(cfg)
    app.config.update(config.flask_settings(cfg))
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    Path(cfg["JOBS_DIR"]).mkdir(parents=True, exist_ok=True)

    from .store import Store
    store = Store(str(cfg["DATABASE_URL"]))
    store.create_schema()
    app.extensions["store"] = store

    from . import cli, errors, web
    errors.register(app)
    app.register_blueprint(web.bp)
    cli.register(app)
    return app
