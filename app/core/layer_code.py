"""What the uploaded Python layer code is made of and what it may import
(runner protocol, shared by the services that store it and the contained
runners that import it).

A job's input directory holds the main layer file (``digits_python_layers.py``)
and, when the user sent several files or a zip, their helper modules and
packages beside it under sanitised names; ``layer_files.json`` lists every
one of them (paths relative to the input directory, the main file first).
The runners put the input directory first on ``sys.path`` (helpers import as
``import tools``) and the administrator's package directory (see
app.services.layers.environments) *last*: added packages never shadow the service's own.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from app.core import tracebacks
from app.core.tracebacks import LAYER_ENV_VAR
from app.core.workspace import LAYER_FILE

MANIFEST = "layer_files.json"          # input/: ["digits_python_layers.py", "tools.py", "pkg/__init__.py"]
__all__ = ["MANIFEST", "LAYER_ENV_VAR", "files", "activate"]


def files(input_dir: Path) -> list[str]:
    """The layer files of a job (relative paths, main file first); just the
    main file for jobs from before multi-file uploads, [] without layers."""
    try:
        names = json.loads((input_dir / MANIFEST).read_text())
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return [n for n in names if _safe(n)]
    except (OSError, ValueError):
        pass
    return [LAYER_FILE] if (input_dir / LAYER_FILE).is_file() else []


def _safe(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def activate(input_dir: Path) -> None:
    """Make the layer code importable: its directory first, the administrator's
    packages (when mounted) after everything the service has."""
    sys.path.insert(0, str(input_dir))
    tracebacks.set_input_dir(input_dir)
    extra = os.environ.get(LAYER_ENV_VAR)
    if extra and os.path.isdir(extra) and extra not in sys.path:
        sys.path.append(extra)
