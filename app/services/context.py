"""What services and workers are handed instead of a Flask app."""
from __future__ import annotations

from dataclasses import dataclass

from app.core.config import Settings
from app.core.workspace import Workspace
from app.store import Store


@dataclass
class Context:
    """What a worker needs: no Flask, just settings, store and workspace."""

    cfg: Settings
    store: Store
    ws: Workspace
    containment: str
