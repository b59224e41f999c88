"""DIGITS 6's routes, fields, status words and JSON keys, so that DIGITS
scripts and bookmarks keep working. Thin, like every view: translate DIGITS's
fields, call the services /api/v1 and the pages use, answer as DIGITS did.

One module per part: ``models`` (create, model JSON and pages, downloads),
``datasets``, ``jobs`` (status, edit, listings) and ``classify``;
``common`` holds the status words and the JSON shapes.
"""
from __future__ import annotations

# The route modules register themselves on bp (app.web.digits.blueprint).
from app.web.digits import classify, datasets, jobs, models  # noqa: F401
from app.web.digits.blueprint import bp

__all__ = ["bp", "classify", "datasets", "jobs", "models"]
