"""DIGITS 6's routes, fields, status words and JSON keys, so that DIGITS
scripts and bookmarks keep working. Thin, like every view: translate DIGITS's
fields, call the services /api/v1 and the pages use, answer as DIGITS did.

One module per part: ``models`` (create, model JSON and pages, downloads),
``datasets``, ``jobs`` (status, edit, listings) and ``classify``;
``common`` holds the status words and the JSON shapes.
"""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("digits", __name__)

# The route modules register themselves on bp.
from app.web.digits import classify, datasets, jobs, models  # noqa: E402,F401

__all__ = ["bp", "classify", "datasets", "jobs", "models"]
