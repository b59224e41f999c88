"""What a user sees of an exception in their layer code: frames trimmed to
their own files and Caffe's calls into them, and never this server's paths.

Used inside the sandbox by the runners (validate, train, infer: they may not
import each other, so this lives in core) and by the services for what they
read back (logs, reports). Paths are rewritten, never just hidden: a frame
of the user's ``tools.py`` reads ``tools.py``, Caffe's reads
``caffe/pycaffe.py``, and what is left of a host path becomes a placeholder
(``<server>``, ``<python>``, ``<jobs>``).
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Callable

from app.core.config import ROOT

# Where the user learns what layer code can import (pages and /api/v1).
ENV_PAGE = "/layer-env"
ENV_ROUTE = "/api/v1/layer-env"
# Set by the sandbox spec (app.services.layers.environments.mount) to the read-only
# directory of administrator-added packages.
LAYER_ENV_VAR = "LAYERBENCH_LAYER_ENV"

# The input directory of the layer code this process runs (set by
# app.core.layer_code.activate), so that errors raised anywhere are trimmed.
_context: dict[str, str] = {}


def set_input_dir(input_dir: Path | str) -> None:
    """Remember where the user's files live in this process."""
    _context["input"] = os.path.abspath(str(input_dir))


def _replacements(input_dir: str | None, extra: dict[str, str] | None) -> list[tuple[str, str]]:
    pairs: dict[str, str] = {}
    if input_dir:
        pairs[input_dir.rstrip("/") + "/"] = ""
        pairs[input_dir.rstrip("/")] = "."
    for entry in sys.path:
        # site-packages/caffe/pycaffe.py reads caffe/pycaffe.py
        if entry.endswith(("site-packages", "dist-packages")):
            pairs[entry.rstrip("/") + "/"] = ""
    layer_env = os.environ.get(LAYER_ENV_VAR)
    if layer_env:
        pairs[layer_env.rstrip("/") + "/"] = ""
    for k, v in (extra or {}).items():
        if k:
            pairs[str(k).rstrip("/")] = v
    pairs[sys.prefix.rstrip("/")] = "<python>"
    if sys.base_prefix != "/usr":
        pairs[sys.base_prefix.rstrip("/")] = "<python>"
    pairs[str(ROOT).rstrip("/")] = "<server>"
    # Longest first: a job's input lies inside the checkout's jobs/.
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub(text: str, input_dir: Path | str | None = None, extra: dict[str, str] | None = None) -> str:
    """``text`` with every host path this server knows rewritten: the user's
    directory to relative names, site-packages away, the checkout to
    ``<server>``; ``extra`` maps further paths (a jobs root...) to labels."""
    if not text:
        return text
    base = os.path.abspath(str(input_dir)) if input_dir else _context.get("input")
    for old, new in _replacements(base, extra):
        if old in text:
            text = text.replace(old, new)
    return text


def _is_user(filename: str, input_dir: str | None) -> bool:
    return bool(input_dir) and os.path.abspath(filename).startswith(input_dir.rstrip("/") + "/")


def _is_caffe(filename: str) -> bool:
    caffe = sys.modules.get("caffe")
    root = os.path.dirname(getattr(caffe, "__file__", "") or "") if caffe else ""
    if root:
        return os.path.abspath(filename).startswith(root + "/")
    return "/caffe/" in filename and "site-packages" in filename


def user_frame(tb: TracebackType | None, input_dir: Path | str | None = None) -> tuple[str, int] | None:
    """(file relative to the input directory, line) of the innermost frame in
    the user's own files, or None."""
    base = os.path.abspath(str(input_dir)) if input_dir else _context.get("input")
    found = None
    for frame in traceback.extract_tb(tb):
        if _is_user(frame.filename, base):
            found = (os.path.relpath(os.path.abspath(frame.filename), base), frame.lineno)
    return found


def locate(exc: BaseException, input_dir: Path | str | None = None) -> tuple[str, int | None] | None:
    """(user file, line) an error is about: a syntax error's own place when it
    lies in the user's files (a helper module that does not compile), else
    the innermost frame in them; None when no user file is involved."""
    base = os.path.abspath(str(input_dir)) if input_dir else _context.get("input")
    if isinstance(exc, SyntaxError) and exc.filename and _is_user(exc.filename, base):
        return os.path.relpath(os.path.abspath(exc.filename), base), exc.lineno
    return user_frame(exc.__traceback__, base)


def format_exception(exc: BaseException, input_dir: Path | str | None = None) -> str:
    """The traceback of ``exc`` as the user should see it: only frames in
    their files and Caffe's (the call into their code), paths rewritten."""
    base = os.path.abspath(str(input_dir)) if input_dir else _context.get("input")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if _is_user(f.filename, base) or _is_caffe(f.filename)]
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return scrub("".join(lines), base)


def describe(exc: BaseException, where: str = "") -> str:
    """One line about ``exc`` (``where``: e.g. " in forward()"); a missing
    module names the package and says where to see what is installed."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        return (f"ModuleNotFoundError{where}: No module named '{exc.name}'. The package '{top}' is not "
                f"installed for layer code on this server: ask an administrator to add it, or see what "
                f"is available at {ENV_PAGE} ({ENV_ROUTE}). If '{top}' is a module of your own, upload it "
                "with the layer file (several .py files or one zip).")
    if not str(exc).strip():   # `raise Exception()`: no dangling colon
        return f"{type(exc).__name__}{where} (no message)"
    return scrub(f"{type(exc).__name__}{where}: {exc}")


def scrubber(paths: dict[str, str]) -> Callable[[bytes], bytes]:
    """A function rewriting host paths in raw output (a job's log): ``paths``
    (e.g. the job directory -> ``<job>``) plus this server's checkout and
    Python, longest first."""
    pairs = dict(paths)
    pairs.setdefault(sys.prefix, "<python>")
    pairs.setdefault(str(ROOT), "<server>")
    table = sorted(((k.rstrip("/").encode(), v.encode()) for k, v in pairs.items() if k and k != "/"),
                   key=lambda kv: -len(kv[0]))

    def run(data: bytes) -> bytes:
        for old, new in table:
            if old in data:
                data = data.replace(old, new)
        return data
    return run


def failure(exc: BaseException) -> dict:
    """A runner's result.json for an exception from user code: the message
    and the traceback trimmed to the user's files and Caffe's frames."""
    return {"ok": False, "message": describe(exc), "traceback": format_exception(exc)[-4000:]}
