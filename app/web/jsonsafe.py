"""JSON the web produces is strict JSON: a non-finite float (NaN, Infinity,
-Infinity, e.g. a loss that diverged) becomes ``null``.

Python's ``json`` writes bare ``NaN`` / ``Infinity`` tokens, which no
browser's ``JSON.parse`` (and no strict parser) accepts: one diverged point
made a job's whole metrics answer unreadable. ``register`` installs the
provider behind ``jsonify``, every error body and the templates' ``tojson``
(the API, the DIGITS routes, the pages' embedded data); ``dumps`` is the
same for JSON written by hand (the event stream). Charts draw ``null`` as
a gap and flag the first one (static/js/job.js).
"""
from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _strict(encode, obj: Any, **kwargs: Any) -> str:
    # The common case costs one encoding: only an answer that holds a
    # non-finite number is encoded again. That second time goes through a
    # lenient encoding and back, so that what a ``default`` hook made of an
    # object (a dataclass with a NaN field) is cleaned as well.
    kwargs.pop("allow_nan", None)
    try:
        return encode(obj, **kwargs, allow_nan=False)
    except ValueError as exc:
        if "out of range float" not in str(exc).lower():
            raise
    plain = json.loads(encode(obj, **kwargs, allow_nan=True))
    return encode(finite(plain), **kwargs, allow_nan=False)


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null)."""
    return _strict(json.dumps, obj, **kwargs)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's default JSON, with non-finite floats written as null."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return _strict(super().dumps, obj, **kwargs)


def register(app: Flask) -> None:
    """Make ``app``'s JSON (jsonify, error bodies, ``tojson``) strict."""
    app.json = StrictJSONProvider(app)
    if "jinja_env" in app.__dict__:   # already built: its tojson follows too
        app.jinja_env.policies["json.dumps_function"] = app.json.dumps
