"""The services' context for the current app (what views hand to services)."""
from __future__ import annotations

from flask import current_app

from app.core.config import Settings
from app.services.context import Context


def ctx() -> Context:
    """Settings, store, workspace and containment of the current app."""
    return current_app.extensions["ctx"]


def settings() -> Settings:
    """The current app's typed settings (what services get as ``ctx().cfg``)."""
    return ctx().cfg
