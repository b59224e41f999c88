"""The one way the host reads what a sandbox could have written.

User code writes a job's ``output/``, its ``validation/`` directory, scratch
directories, dataset build directories and probe output. Anything there may
be a symlink to a host file, a hard link, a FIFO, a directory where a file
belongs, a sparse file of terabytes, or a regular file that a process still
alive swaps for a link between a check and a use. The host runs with more
privilege than the code that wrote it, so every such read:

* walks the path one component at a time from a trusted anchor (by default
  ``/``; the workspace root is fully resolved, so its paths hold no link the
  host did not make), each component opened relative to its parent's
  descriptor with ``O_NOFOLLOW`` (``..`` refused): no link anywhere below
  the anchor is followed, not only in the last component;
* opens the file itself ``O_NONBLOCK`` (a FIFO never hangs) and checks the
  *open descriptor* with ``fstat``: a regular file, one link, within the
  caller's size cap and, for snapshots, exactly the size its marker records;
* reads, copies, hashes, streams and archives **from that descriptor**; no
  path is ever checked and reopened.

``tests/test_untrusted_rule.py`` fails when host code (app/services,
app/worker, app/web) opens, copies or archives a file by path outside this
module and the allow-list of host-only files kept there.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
CHUNK = 1 << 20


class Refused(OSError):
    """A file that is not what the host may read (a link, a FIFO, a
    directory, a hard link, too large, or not the size it should be)."""


@dataclass(frozen=True)
class Entry:
    """One listed directory entry: a regular file or a plain directory."""

    name: str
    is_dir: bool
    size: int
    mtime: float


def _parts(path: Path, beneath: Path | None) -> tuple[Path, list[str]]:
    path = Path(path)
    anchor = Path(beneath) if beneath is not None else Path("/")
    if not path.is_absolute():
        path = anchor / path
    try:
        rel = path.relative_to(anchor)
    except ValueError:
        raise Refused(f"{path.name} does not lie under {anchor}") from None
    parts = list(rel.parts)
    if any(p in ("..", ".", "") for p in parts):
        raise Refused(f"{path.name}: '..' is not allowed")
    return anchor, parts


def _open_dir_fd(anchor: Path, parts: list[str]) -> int:
    """An O_PATH descriptor of ``anchor/parts...``, no link below the anchor followed."""
    fd = os.open(anchor, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def _refuse_unless_regular(fd: int, name: str, max_size: int | None, size: int | None) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f"{name} is not a regular file")
    if st.st_nlink != 1:
        raise Refused(f"{name} has {st.st_nlink} links")
    if max_size is not None and st.st_size > max_size:
        raise Refused(f"{name} is larger than {max_size} bytes")
    if size is not None and st.st_size != size:
        raise Refused(f"{name} is {st.st_size} bytes, not the {size} recorded")
    return st


def open_fd(path: Path, beneath: Path | None = None, *, max_size: int | None = None,
            size: int | None = None) -> int:
    """A read-only descriptor of the regular file ``path`` (see the module
    docstring for every check). Raises ``FileNotFoundError`` when it is not
    there and ``Refused`` (an OSError) when it is not acceptable."""
    anchor, parts = _parts(path, beneath)
    if not parts:
        raise Refused(f"{anchor} is a directory")
    parent = _open_dir_fd(anchor, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (40, 20, 21, 6):   # ELOOP (a link), ENOTDIR, EISDIR, ENXIO (a socket)
                raise Refused(f"{parts[-1]} is not a regular file") from None
            raise
    finally:
        os.close(parent)
    try:
        _refuse_unless_regular(fd, parts[-1], max_size, size)
        # A regular file never blocks; clear O_NONBLOCK for ordinary reads.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path, beneath: Path | None = None) -> int:
    """A write-only, append-only descriptor of an existing regular file in a
    sandbox-writable directory (never created, never through a link, never a
    FIFO, never a hard link to something else)."""
    anchor, parts = _parts(path, beneath)
    parent = _open_dir_fd(anchor, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        _refuse_unless_regular(fd, parts[-1], None, None)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: Path, beneath: Path | None = None, *, max_size: int | None = None,
              size: int | None = None) -> IO[bytes]:
    """``open_fd`` as a binary file object (close it, or use ``with``)."""
    return os.fdopen(open_fd(path, beneath, max_size=max_size, size=size), "rb")


def read_bytes(path: Path, limit: int, beneath: Path | None = None, offset: int = 0) -> bytes:
    """At most ``limit`` bytes of ``path`` from ``offset`` (a larger file is
    read only up to the limit, never refused for its size)."""
    fd = open_fd(path, beneath)
    try:
        out = bytearray()
        while len(out) < limit:
            chunk = os.pread(fd, min(CHUNK, limit - len(out)), offset + len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def read_text(path: Path, limit: int, beneath: Path | None = None) -> str:
    """``read_bytes`` decoded as UTF-8 (undecodable bytes replaced)."""
    return read_bytes(path, limit, beneath).decode("utf-8", "replace")


def read_all(path: Path, max_size: int, beneath: Path | None = None) -> bytes:
    """The whole file; ``Refused`` when it is larger than ``max_size``."""
    with open_file(path, beneath, max_size=max_size) as fh:
        return fh.read(max_size + 1)[:max_size]


def size_of(path: Path, beneath: Path | None = None) -> int:
    """Size of a regular file (0 when missing or not acceptable)."""
    try:
        fd = open_fd(path, beneath)
    except OSError:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def list_dir(path: Path, beneath: Path | None = None) -> list[Entry]:
    """Regular files (one link) and plain directories directly in ``path``;
    links, FIFOs, sockets and devices are left out and never opened."""
    anchor, parts = _parts(path, beneath)
    try:
        pfd = _open_dir_fd(anchor, parts)
    except OSError:   # missing, or a link / file where a directory belongs
        return []
    try:
        # scandir needs a readable descriptor: reopen "." of the O_PATH one.
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    out = []
    try:
        with os.scandir(fd) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    out.append(Entry(e.name, True, 0, st.st_mtime))
                elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    out.append(Entry(e.name, False, st.st_size, st.st_mtime))
    finally:
        os.close(fd)
    return sorted(out, key=lambda e: e.name)


MAX_DEPTH = 128   # directory levels disk_usage walks; a deeper tree is refused


def disk_usage(path: Path, beneath: Path | None = None, stop_at: int | None = None) -> int:
    """Bytes allocated to everything under ``path`` (blocks, so a sparse file
    counts what it really uses; a file hard-linked several times once),
    never following a link; stops early once past ``stop_at``; 0 when
    ``path`` is missing. Depth-first, holding descriptors only along the
    current branch: a directory of millions of subdirectories cannot run the
    host out of descriptors and so hide what lies in the ones not opened. A
    tree deeper than ``MAX_DEPTH`` is ``Refused`` (no one may vouch for it)."""
    anchor, parts = _parts(path, beneath)
    try:
        top = _open_dir_fd(anchor, parts)
    except OSError:
        return 0
    total, seen = 0, set()
    stack: list[tuple[int, int, object]] = []   # (O_PATH fd, readable fd, its scandir) per level

    def enter(pfd: int) -> None:
        # Takes ownership of pfd: pushed, or closed when it cannot be read.
        try:
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        except OSError:
            os.close(pfd)
            return
        try:
            stack.append((pfd, dfd, os.scandir(dfd)))
        except OSError:
            os.close(dfd)
            os.close(pfd)

    try:
        enter(top)
        while stack:
            pfd, dfd, it = stack[-1]
            e = next(it, None)
            if e is None:
                it.close()
                os.close(dfd)
                os.close(pfd)
                stack.pop()
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stop_at is not None and total > stop_at:
                break
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_DEPTH:
                    raise Refused(f"{Path(path).name}: deeper than {MAX_DEPTH} directory levels")
                try:
                    enter(os.open(e.name, _DIR_FLAGS, dir_fd=pfd))   # a link swapped in: ELOOP
                except OSError:
                    pass
    finally:
        for pfd, dfd, it in stack:
            it.close()
            os.close(dfd)
            os.close(pfd)
    return total


def copy_fd(src: IO[bytes], dest: Path, limit: int | None = None) -> tuple[int, str]:
    """Copy an open file (from ``open_file``) to the host path ``dest``
    atomically (temp file + rename in dest's directory); (size, sha256)."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=Path(dest).parent, prefix=".tmp-")
    total = 0
    try:
        os.fchmod(fd, 0o644)   # the sandbox uid reads job inputs
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                total += len(chunk)
                if limit is not None and total > limit:
                    raise Refused(f"{dest.name}: larger than {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return total, digest.hexdigest()


def sha256_of(src: IO[bytes]) -> str:
    """The sha256 of an open file, read from where it stands to its end."""
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


ARCHIVE_FORMATS = ("tar.gz", "tar", "tar.bz2", "zip")


class Archive:
    """A tar / tar.gz / tar.bz2 / zip written to an open file, holding only
    regular-file members whose bytes come from descriptors this module
    opened (or from the host's own memory). No link is ever stored."""

    def __init__(self, out: IO[bytes], fmt: str) -> None:
        if fmt not in ARCHIVE_FORMATS:
            raise ValueError(f"unknown archive format {fmt!r}")
        self.fmt, self._now = fmt, int(time.time())
        if fmt == "zip":
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1)
            self._tar = None
        else:
            mode = {"tar.gz": "w:gz", "tar": "w", "tar.bz2": "w:bz2"}[fmt]
            kw = {"compresslevel": 1} if fmt != "tar" else {}
            self._tar = tarfile.open(fileobj=out, mode=mode, **kw)
            self._zip = None

    def add_open(self, fh: IO[bytes], arcname: str) -> None:
        """A member from an open regular file (from ``open_file``); exactly
        the size its descriptor had when it was checked is stored."""
        size = os.fstat(fh.fileno()).st_size
        if self._tar is not None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode, info.type = size, self._now, 0o644, tarfile.REGTYPE
            self._tar.addfile(info, _Exactly(fh, size))
        else:
            with self._zip.open(self._zinfo(arcname), "w", force_zip64=size > (1 << 31)) as out:
                left = size
                while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                    out.write(chunk)
                    left -= len(chunk)

    def add_file(self, path: Path, arcname: str, beneath: Path | None = None,
                 max_size: int | None = None, size: int | None = None) -> bool:
        """``add_open`` of ``path`` opened by ``open_file``; False (nothing
        added) when it is missing or refused."""
        try:
            fh = open_file(path, beneath, max_size=max_size, size=size)
        except OSError:
            return False
        with fh:
            self.add_open(fh, arcname)
        return True

    def add_bytes(self, data: bytes, arcname: str) -> None:
        """A member made by the host itself (e.g. info.json)."""
        self.add_open_bytes(io.BytesIO(data), len(data), arcname)

    def add_open_bytes(self, buf: IO[bytes], size: int, arcname: str) -> None:
        if self._tar is not None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = size, self._now, 0o644
            self._tar.addfile(info, buf)
        else:
            self._zip.writestr(self._zinfo(arcname), buf.read())

    def _zinfo(self, arcname: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(arcname, time.localtime(self._now)[:6])
        info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o100644 << 16
        return info

    def close(self) -> None:
        """Finish the archive (the output file stays open for the caller)."""
        (self._tar or self._zip).close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Exactly:
    """A reader that yields exactly ``size`` bytes (zero-padded if the file
    shrank): a tar member's header was already written with that size, and a
    file truncated by a still-running process must not corrupt the archive."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(n)
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def iter_files(path: Path, beneath: Path | None = None, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """(relative name, entry) of every regular file below ``path``,
    depth-first, never through a link."""
    for e in list_dir(path, beneath):
        rel = f"{prefix}{e.name}"
        if e.is_dir:
            yield from iter_files(Path(path) / e.name, beneath, rel + "/")
        else:
            yield rel, e
