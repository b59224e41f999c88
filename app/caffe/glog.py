"""Reading Caffe's glog output: what killed the process, and where."""
from __future__ import annotations

import re

from app.core.workspace import LAYER_FILE

_LAYER_MARKERS = ("] Creating Layer ", "] Setting up ")
# Printed by the training runner once every net is built: a fatal after it
# happened while training, not while building the layer named last.
NETS_BUILT = "layerbench: nets built, training"
_USER_FRAME = re.compile(r'File "[^"]*' + re.escape(LAYER_FILE) + r'", line (\d+)')


def _glog_message(line: str) -> str | None:
    # glog lines look like "F1125 20:55:00.123456  1234 net.cpp:473] message".
    if len(line) > 1 and line[0] in "FE" and line[1:5].isdigit() and "] " in line:
        return line.split("] ", 1)[1].strip()
    return None


def fatal_from_log(log: str) -> dict:
    """The fatal message (CHECK failure or LOG(FATAL)) and the layer Caffe was
    building when it happened; either may be None (the layer is None for a
    fatal during training, where the log does not say which layer ran)."""
    message, layer = None, None
    for line in log.splitlines():
        for marker in _LAYER_MARKERS:
            if marker in line:
                layer = line.split(marker, 1)[1].strip()
        if line.startswith(NETS_BUILT):
            layer = None
        if line.startswith("F"):
            message = _glog_message(line) or message
        elif "Check failed" in line and message is None:
            message = line.strip()
    return {"message": message, "layer": layer}


def python_error_from_log(log: str) -> dict | None:
    """The last Python traceback in ``log``: {"message", "traceback", "line"}
    (``line`` in the uploaded layer file, or None); None when there is none."""
    start = log.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = log[start:].splitlines()
    end = next((i for i, line in enumerate(lines[1:], 1) if line and not line[0].isspace()), None)
    if end is None:
        return None   # cut off before its exception line
    block = "\n".join(lines[:end + 1])
    frames = _USER_FRAME.findall(block)
    return {"message": lines[end].strip(), "traceback": block,
            "line": int(frames[-1]) if frames else None}
