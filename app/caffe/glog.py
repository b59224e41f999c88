"""Reading Caffe's glog output: what killed the process, and where."""
from __future__ import annotations

_LAYER_MARKERS = ("] Creating Layer ", "] Setting up ")


def _glog_message(line: str) -> str | None:
    # glog lines look like "F1125 20:55:00.123456  1234 net.cpp:473] message".
    if len(line) > 1 and line[0] in "FE" and line[1:5].isdigit() and "] " in line:
        return line.split("] ", 1)[1].strip()
    return None


def fatal_from_log(log: str) -> dict:
    """The fatal message (CHECK failure or LOG(FATAL)) and the layer Caffe was
    building or running when it happened; either may be None."""
    message, layer = None, None
    for line in log.splitlines():
        for marker in _LAYER_MARKERS:
            if marker in line:
                layer = line.split(marker, 1)[1].strip()
        if line.startswith("F"):
            message = _glog_message(line) or message
        elif "Check failed" in line and message is None:
            message = line.strip()
    return {"message": message, "layer": layer}
