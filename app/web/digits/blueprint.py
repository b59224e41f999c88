"""The DIGITS blueprint object, alone: the route modules register on it and
the package re-exports it (no module imports the package that imports it)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("digits", __name__)
