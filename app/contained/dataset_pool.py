"""Decoding a dataset's images on every core, inside the sandbox: a helper
of app.contained.build_dataset (no runner).

The entries are cut into chunks of consecutive indices. With one worker
the chunks are decoded here, in order. With more, processes forked from
this one (``fork``: they inherit the entries, the readers and Pillow
already loaded, so nothing but chunk bounds is sent to them) take chunks as
they free up, read and decode them, and send back each image's outcome and
pixels; the chunks are taken back in chunk order. An image's pixels depend
on nothing but its bytes and its index (the fill modes' noise is seeded per
image), so the images come back the same bytes in the same order whatever
the number of workers, and the LMDB written from them (by this process
alone, afterwards) is identical to a serial build's.

Limits: no more workers than cores this process may run on
(``sched_getaffinity``), than ``LAYERBENCH_DATASET_WORKERS`` asks for, or
than the process limit leaves room for; a fork the limits refuse
(RLIMIT_NPROC, the run's cgroup) leaves the pool smaller, at worst serial.
An archive's uncompressed-bytes cap holds across the workers: each chunk is
sent with what is left of it. A worker that dies (out of memory, an image
that crashes the decoder) fails the build with a message saying so.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import resource
import sys
from multiprocessing.connection import wait
from typing import Callable

import numpy as np

from app.core.archives import ArchiveError, too_big

OK, NOT_READABLE, NOT_AN_IMAGE, TOO_MANY_PIXELS = range(4)
SKIPPED = {NOT_READABLE: "not readable", NOT_AN_IMAGE: "not an image", TOO_MANY_PIXELS: "too many pixels"}
WORKERS_VAR = "LAYERBENCH_DATASET_WORKERS"    # 1: serial; unset or 0: one per core
MIN_PER_WORKER = 200    # automatic count: a smaller share gains less than a fork costs
MAX_WORKERS = 64
CHUNK_BYTES = 16 << 20  # decoded pixels per chunk, at most (large images: fewer per chunk)
UNCAPPED = 1 << 62      # read limit of a server folder's files (capped per file by their reader)
DIED = ("a process decoding the images died (out of memory, or an image that crashes the decoder); "
        "the dataset was not built")

# What the chunks decode: set by ``decode`` before the workers fork, inherited by them.
_job: dict = {}


def worker_count(items: int) -> int:
    """How many processes decode ``items`` images: LAYERBENCH_DATASET_WORKERS
    when set (1: serial), else one per core for builds large enough to gain;
    never more than the cores this process may use or the process limit
    leaves room for."""
    raw = os.environ.get(WORKERS_VAR, "").strip()
    asked = int(raw) if raw.isdigit() else 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    n = min(asked, cores) if asked else min(cores, items // MIN_PER_WORKER)
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        n = min(n, soft // 2)    # it counts the run's threads as well
    return max(1, min(n, MAX_WORKERS, items))


def decode(reads: list[Callable[[int], bytes]], shape: tuple[int, int, int], resize_mode: str, seed: int,
           progress: Callable[[int], None], max_bytes: int | None = None,
           workers: int | None = None) -> tuple[np.ndarray, bytes]:
    """Read (``reads[i](limit)``), decode and resize every entry's image to
    ``shape`` (C, H, W); (the images that decoded, (k, C, H, W) uint8 in
    entry order; one outcome code per entry, see SKIPPED). ``progress(n)``:
    the first n entries are done. ``max_bytes``: cap on all bytes read (an
    archive's), ArchiveError past it. ``seed``: of the fill modes' noise."""
    from PIL import Image

    from app.caffe.images import resize
    Image.preinit()     # the usual formats' plugins, loaded before the fork, not once per worker
    n, (c, h, w) = len(reads), shape
    workers = worker_count(n) if workers is None else workers
    # Some 8 chunks per worker (one slowed by a large image is caught up
    # by the others), each at most CHUNK_BYTES of pixels on their way back.
    size = max(1, min(max(16, min(512, -(-n // (workers * 8)))), CHUNK_BYTES // (c * h * w)))
    bounds = [(lo, min(n, lo + size)) for lo in range(0, n, size)]
    _job.update(pil=(Image, resize), reads=reads, shape=shape, mode="L" if c == 1 else "RGB",
                resize_mode=resize_mode, seed=seed, max_bytes=max_bytes)
    # Chunk by chunk, not one array for every entry: most of an upload may
    # be files that are no images.
    parts: list[np.ndarray] = [np.empty((0, c, h, w), np.uint8)]
    codes = bytearray()

    def take(k: int, got: bytes, pixels: bytes) -> None:
        parts.append(np.frombuffer(pixels, np.uint8).reshape(got.count(OK), c, h, w))
        codes.extend(got)
        progress(bounds[k][1])

    try:
        _run(bounds, workers, take, max_bytes)
    finally:
        _job.clear()
    return np.concatenate(parts), bytes(codes)


def _run(bounds: list[tuple[int, int]], workers: int, take: Callable, max_bytes: int | None) -> None:
    """Decode every chunk, here or in ``workers`` forked processes;
    ``take(k, codes, pixels)`` in chunk order."""
    used = 0

    def account(read: int) -> None:
        nonlocal used
        used += read
        if max_bytes is not None and used > max_bytes:
            raise too_big(max_bytes)

    def left() -> int | None:
        return None if max_bytes is None else max_bytes - used

    procs = _start(workers) if workers > 1 and len(bounds) > 1 else []
    # build.log: how it ran (a fork the limits refused shows here)
    print(f"decoding {bounds[-1][1] if bounds else 0} files "
          + (f"in {len(procs)} worker process{'es' if len(procs) > 1 else ''}" if procs else "in one process"),
          file=sys.stderr, flush=True)
    if not procs:
        for k, (lo, hi) in enumerate(bounds):
            got, pixels, read = _chunk(lo, hi, left())
            account(read)
            take(k, got, pixels)
        return
    try:
        busy = {conn: 0 for _, conn in procs}
        ahead: dict[int, tuple[bytes, bytes]] = {}
        sent = taken = 0

        def send(conn) -> None:
            nonlocal sent
            conn.send((sent, *bounds[sent], left()))
            busy[conn] += 1
            sent += 1

        for _ in range(2):      # two chunks each: a worker never waits for its next one
            for conn in busy:
                if sent < len(bounds):
                    send(conn)
        while taken < len(bounds):
            for conn in wait([conn for conn, n in busy.items() if n]):
                try:
                    kind, k, payload = conn.recv()
                except (EOFError, OSError):
                    raise ArchiveError(DIED) from None
                busy[conn] -= 1
                if kind == "archive":
                    raise ArchiveError(payload)
                if kind == "memory":
                    raise MemoryError
                account(payload[2])
                ahead[k] = payload[:2]
                if sent < len(bounds):
                    send(conn)
            while taken in ahead:
                take(taken, *ahead.pop(taken))
                taken += 1
    finally:
        _stop(procs)


def _start(workers: int) -> list:
    """Fork up to ``workers`` decoding processes; (process, connection)
    pairs, fewer when the process limit refuses a fork."""
    ctx = multiprocessing.get_context("fork")
    procs: list = []
    for _ in range(workers):
        here, there = ctx.Pipe()
        # The child closes every parent end it inherits: it sees EOF (and
        # stops) as soon as this process closes its end or dies.
        proc = ctx.Process(target=_serve, args=(there, [c for _, c in procs] + [here]), daemon=True)
        try:
            proc.start()
        except OSError:
            here.close()
            there.close()
            break
        there.close()
        procs.append((proc, here))
    return procs


def _stop(procs: list) -> None:
    for _, conn in procs:
        conn.close()        # EOF: the worker returns
    for proc, _ in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _serve(conn, inherited: list) -> None:
    """A worker: decode the chunks it is sent until its connection closes."""
    for c in inherited:
        c.close()
    while True:
        try:
            k, lo, hi, budget = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", k, _chunk(lo, hi, budget))
        except ArchiveError as exc:
            reply = ("archive", k, str(exc))
        except MemoryError:
            reply = ("memory", k, None)
        try:
            conn.send(reply)
        except OSError:     # the builder stopped listening (it failed, or is gone): nothing left to do
            return


def _chunk(lo: int, hi: int, budget: int | None) -> tuple[bytes, bytes, int]:
    """Entries lo..hi-1: (one outcome code each, the decoded images' pixels
    in order, bytes read). ``budget``: what is left of the archive's cap."""
    reads = _job["reads"]
    codes, pixels, used = bytearray(), [], 0
    for i in range(lo, hi):
        try:
            data = reads[i](UNCAPPED if budget is None else budget - used + 1)
        except OSError:
            codes.append(NOT_READABLE)
            continue
        used += len(data)
        if budget is not None and used > budget:
            raise too_big(_job["max_bytes"])
        code, arr = _decode_one(data, i)
        codes.append(code)
        if code == OK:
            pixels.append(arr)
    return bytes(codes), b"".join(pixels), used


def _decode_one(data: bytes, index: int) -> tuple[int, bytes]:
    Image, resize = _job["pil"]
    c, h, w = _job["shape"]
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im if im.mode == _job["mode"] else im.convert(_job["mode"])
            raw = resize(img, w, h, _job["resize_mode"], _Noise(_job["seed"], index)).tobytes()
    except Image.DecompressionBombError:
        return TOO_MANY_PIXELS, b""
    except Exception:       # anything Pillow cannot decode is "not an image"
        return NOT_AN_IMAGE, b""
    # Pillow's bytes are (H, W, C); Caffe's Datum wants (C, H, W).
    return OK, raw if c == 1 else np.frombuffer(raw, np.uint8).reshape(h, w, c).transpose(2, 0, 1).tobytes()


class _Noise:
    """The fill modes' noise for one image, seeded by its index: drawn from
    one generator in decoding order, it would differ with the pool's order."""

    def __init__(self, *seed: int) -> None:
        self.seed = seed

    def integers(self, *args, **kwargs):
        return np.random.default_rng(self.seed).integers(*args, **kwargs)
