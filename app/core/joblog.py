"""train.log: a training run's stdout and stderr, capped, as the worker writes it.

The sandboxed runner writes into a pipe; the worker copies it here
(``CappedLog``), so a layer that prints every iteration cannot fill the disk.
Up to ``max_bytes`` the file is the plain output. Past it, the file becomes

    head (the first max_bytes/8, byte for byte)
    "\\n... N bytes dropped (log capped at M MiB) ...\\n"
    tail (the latest output: at least max_bytes/2, at most max_bytes in all)

and stays so: each time it grows past ``max_bytes`` again, the oldest part of
the tail is dropped and N grows. The head size is kept beside the log
(``layout``), so a reader can tell the marker from user output and map
offsets (``read``): offsets count bytes of output since the job began, as if
nothing had been dropped, and stay valid across every rewrite.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Callable

MARKER = re.compile(rb"\n\.\.\. (\d{1,18}) bytes dropped \(log capped at \d{1,9} MiB\) \.\.\.\n")
MARKER_MAX = 120
COPY_CHUNK = 1 << 20
PIPE_CHUNK = 1 << 16


def _marker(dropped: int, max_bytes: int) -> bytes:
    return f"\n... {dropped} bytes dropped (log capped at {max(1, max_bytes >> 20)} MiB) ...\n".encode()


def _head_of(layout: Path) -> int | None:
    """The head size recorded for a capped log, or None."""
    try:
        fd = os.open(layout, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = json.loads(os.read(fd, 4096)).get("head")
    except (OSError, ValueError, AttributeError):
        return None
    finally:
        os.close(fd)
    return head if type(head) is int and head >= 0 else None


def _layout(fd: int, layout: Path) -> tuple[int, int, int] | None:
    """(head, dropped, marker length) of the log open as ``fd``, or None
    while it is plain output. Read through one descriptor: one version."""
    head = _head_of(layout)
    if head is None:
        return None
    m = MARKER.match(os.pread(fd, MARKER_MAX, head))
    return (head, int(m.group(1)), len(m.group(0))) if m else None


class CappedLog:
    """The worker's writer of one job's train.log (appends across resumes)."""

    def __init__(self, path: Path, layout: Path, max_bytes: int) -> None:
        self.path, self.layout_path = path, layout
        self.max = max(max_bytes, 1 << 16)
        self.lock = threading.Lock()
        self.fd = self._open(path)
        found = _layout(self.fd, layout)
        if found is None:
            layout.unlink(missing_ok=True)   # a stale one would misplace the marker
        self.head, self.dropped, self.mlen = found or (self.max // 8, 0, 0)
        self.capped = found is not None

    @staticmethod
    def _open(path: Path) -> int:
        # User code could leave anything under this name in the output dir
        # (a link to /etc/passwd, a FIFO): the worker only appends to a
        # regular file of its own, and replaces whatever else is there.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o644)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                return fd
            os.close(fd)
        except OSError:
            pass
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return os.open(path, flags | os.O_EXCL, 0o644)

    def write(self, data: bytes) -> None:
        """Append output, dropping the oldest tail once past the cap."""
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            size = os.fstat(self.fd).st_size
            if size > self.max and size - (self.head + self.mlen) > self.max // 2:
                self._rotate(size)

    def note(self, text: str) -> None:
        """A line of the worker's own, marked as such."""
        self.write(f"layerbench: {text}\n".encode())

    def _rotate(self, size: int) -> None:
        # Rewrite as head + marker + newest tail and rename over the log: a
        # reader holding the old file keeps a consistent (older) version.
        tail_start = self.head + self.mlen
        cut = size - self.max // 2
        nl = os.pread(self.fd, 4096, cut).find(b"\n")
        if nl >= 0:
            cut += nl + 1   # the kept tail starts at a line
        self.dropped += cut - tail_start
        marker = _marker(self.dropped, self.max)
        if not self.capped:
            # Before the rename: a reader that sees the layout but the old
            # file finds no marker at its head offset and reads it plain.
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as fh:
                json.dump({"head": self.head}, fh)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.layout_path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-log-")
        try:
            os.fchmod(fd, 0o644)
            self._copy(fd, 0, self.head)
            os.write(fd, marker)
            self._copy(fd, cut, size)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(self.fd)
        # Append mode like the first file: writes land at the end whatever
        # else touched the file.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self.fd, self.mlen, self.capped = fd, len(marker), True

    def _copy(self, dst: int, start: int, end: int) -> None:
        while start < end:
            chunk = os.pread(self.fd, min(COPY_CHUNK, end - start), start)
            if not chunk:
                return
            os.write(dst, chunk)
            start += len(chunk)

    def tail(self, limit: int) -> bytes:
        """The last ``limit`` bytes written (where crash reports are)."""
        with self.lock:
            size = os.fstat(self.fd).st_size
            return os.pread(self.fd, limit, max(0, size - limit))

    def pump(self, stream: IO[bytes], scrub: Callable[[bytes], bytes] | None = None) -> threading.Thread:
        """Copy ``stream`` (the runner's pipe) into the log until it closes;
        ``scrub`` rewrites each whole line first (host paths: app.core.tracebacks)."""
        def run() -> None:
            failed = False
            pending = b""
            try:
                while (chunk := os.read(stream.fileno(), PIPE_CHUNK)) or pending:
                    if scrub is not None:
                        # Whole lines only: a path split across two reads is still found.
                        pending += chunk
                        cut = pending.rfind(b"\n") + 1 if chunk and len(pending) < 4 * PIPE_CHUNK else len(pending)
                        chunk, pending = scrub(pending[:cut]), pending[cut:]
                    if failed or not chunk:
                        continue
                    try:
                        self.write(chunk)
                    except OSError:
                        # A full disk or a deleted job: keep draining, so the
                        # training process never blocks on a pipe nobody reads.
                        failed = True
            finally:
                stream.close()
        t = threading.Thread(target=run, name=f"log:{self.path.parent.parent.name}", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        """Close the file (the pump has ended)."""
        with self.lock:
            os.close(self.fd)


def read(path: Path, layout: Path, offset: int, limit: int) -> tuple[bytes, int, int]:
    """``(data, next_offset, size)`` of a log written by ``CappedLog``, from
    ``offset`` in output bytes. Where output was dropped, ``data`` starts
    with the marker line and ``next_offset`` jumps past the dropped range;
    ``size`` counts every byte of output. Never follows links."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b"", 0, 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b"", 0, 0
        found = _layout(fd, layout)
        if found is None:
            offset = max(0, min(offset, st.st_size))
            data = os.pread(fd, limit, offset)
            return data, offset + len(data), st.st_size
        head, dropped, mlen = found
        size = st.st_size - mlen + dropped
        offset = max(0, min(offset, size))
        if offset < head:
            data = os.pread(fd, min(limit, head - offset), offset)
            return data, offset + len(data), size
        if offset < head + dropped:
            data = os.pread(fd, max(limit, mlen + 1), head)
            return data, head + dropped + max(0, len(data) - mlen), size
        data = os.pread(fd, limit, offset - dropped + mlen)
        return data, offset + len(data), size
    finally:
        os.close(fd)
