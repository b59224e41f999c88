"""The pipe protocol between the host and a warm contained inference process
(app.services.inference.warm_pool on the host, app.contained.infer_server in the sandbox).

One frame each way per request, strictly alternating (the host holds a lock
per process, so one request at a time):

    frame  = u32 big-endian N, N bytes of a JSON object (the header),
             then one raw byte string per entry of header["blobs"] (their sizes)

Host -> process: {"images": ["a.png", ...], "visualize": bool, "blobs": [size, ...]}
with the images' bytes as the blobs (no file is staged anywhere: the host
never writes into a directory the process owns). Process -> host: first
{"ready": true} once the net is loaded (or a failure), then per request
{"ok": true, "predictions": [...], "visuals": [record, ...], "blobs": [...]}
with one PNG blob per visual record, or {"ok": false, "message", "traceback"}.

What the process sends is hostile: the host reads it with ``read_frame``,
which bounds every size before it reads, takes strict JSON only (no NaN or
Infinity, an object at the top) and gives up at a deadline.
"""
from __future__ import annotations

import json
import math
import os
import select
import struct
import time

_LEN = struct.Struct(">I")
MAX_HEADER = 8 << 20       # a reply's JSON: 100 predictions x 1000 probabilities fit with room
MAX_BLOBS = 512            # visual records of one reply (two per layer of a large net)
MAX_BLOB = 4 << 20         # one visualization picture
MAX_BLOB_TOTAL = 32 << 20  # all pictures of one reply (the cold path's budget too)


class Broken(Exception):
    """The other side died (``kind`` "died"), missed its deadline ("timeout")
    or sent something that is not a valid frame ("garbage")."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def encode(header: dict, blobs: list[bytes] = ()) -> bytes:
    """One frame: ``header`` (its "blobs" set to the blobs' sizes) and the
    blobs. Strict JSON: a NaN or infinite number (a diverged net's output)
    becomes null, as in every JSON this service sends."""
    header = dict(header, blobs=[len(b) for b in blobs])
    try:
        head = json.dumps(header, allow_nan=False).encode()
    except ValueError:
        head = json.dumps(_finite(header), allow_nan=False).encode()
    return b"".join([_LEN.pack(len(head)), head, *blobs])


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise Broken("timeout", "no answer in time")
        try:
            data = os.read(fd, min(left, 1 << 20))
        except BlockingIOError:
            continue
        except OSError as exc:
            raise Broken("died", f"the pipe broke ({exc.strerror})") from None
        if not data:
            raise Broken("died", "the process ended")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None, max_header: int = MAX_HEADER,
               max_blobs: int = MAX_BLOBS, max_blob: int = MAX_BLOB,
               max_total: int = MAX_BLOB_TOTAL) -> tuple[dict, list[bytes]]:
    """(header, blobs) of the next frame on ``fd``, every size checked
    before it is read; ``Broken`` when the writer died, ``deadline``
    (time.monotonic) passed, or the frame is not what the protocol allows."""
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if size > max_header:
        raise Broken("garbage", f"a header of {size} bytes")
    try:
        header = json.loads(_read_exact(fd, size, deadline), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Broken("garbage", f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise Broken("garbage", "the header is not an object")
    sizes = header.get("blobs", [])
    if not (isinstance(sizes, list) and len(sizes) <= max_blobs
            and all(type(s) is int and 0 <= s <= max_blob for s in sizes) and sum(sizes) <= max_total):
        raise Broken("garbage", "blob sizes out of bounds")
    return header, [_read_exact(fd, s, deadline) for s in sizes]


def write_all(fd: int, data: bytes, deadline: float | None) -> None:
    """Write ``data`` to ``fd`` (non-blocking on the host, so a reader that
    stopped reading cannot hold the writer past ``deadline``)."""
    view = memoryview(data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise Broken("timeout", "the process stopped reading")
        try:
            n = os.write(fd, view[:1 << 20])
        except BlockingIOError:
            continue
        except OSError as exc:     # EPIPE: the reader is gone
            raise Broken("died", f"the pipe broke ({exc.strerror})") from None
        view = view[n:]
