"""Parse an uploaded ``.caffemodel`` inside the sandbox:

    python -m app.contained.weights WEIGHTS REPORT_JSON

writes what it holds (layer names, types, blob shapes) to REPORT_JSON; the
pretrained-model service keeps that beside the file. A hostile file can at
worst exhaust this run's limits. Knows nothing of Flask.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from app.caffe.weights import describe


def main(argv: list[str]) -> int:
    """Entry point: REPORT_JSON gets {"ok": true, ...} or {"ok": false, "message"}."""
    path, report = Path(argv[0]), Path(argv[1])
    try:
        out = {"ok": True, **describe(path)}
    except (ValueError, OSError) as exc:
        out = {"ok": False, "message": str(exc)}
    report.write_text(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
