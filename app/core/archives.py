"""Reading uploaded archives (zip or tar) safely: the one place that knows how.

Used by the dataset builder (inside the sandbox) and by the Python layer
upload (a zip of layer files, in the web process). The archive is read
member by member from a file on disk, never extracted: entries with absolute
paths, ``..`` or links are refused, and the entry count and the total
uncompressed bytes are capped while reading (zip bombs: a header's size is
never trusted, at most what is left of the cap is read).
"""
from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from pathlib import PurePosixPath
from typing import Callable, Iterator


class ArchiveError(Exception):
    """The archive cannot be used; the message says why (safe to show)."""


def check_name(name: str) -> PurePosixPath:
    """An entry's path; ArchiveError for an absolute path or one with ``..``."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")) or name[1:3] in (":/", ":\\"):
        raise ArchiveError(f"refused entry '{name[:200]}': absolute path or '..'")
    return p


def members(path: str, max_files: int, max_bytes: int, zip_only: bool = False
            ) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Yield (path, bytes) of the archive's regular files, checked and capped.

    ``zip_only``: anything but a zip is refused (the layer upload takes zips).
    """
    total = count = 0

    def account(size: int) -> None:
        nonlocal total, count
        total += size
        count += 1
        if count > max_files:
            raise ArchiveError(f"the archive has more than {max_files} files")
        if total > max_bytes:
            raise too_big(max_bytes)

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    p = check_name(info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise ArchiveError(f"refused entry '{info.filename[:200]}': symbolic link")
                    if info.is_dir():
                        continue
                    with zf.open(info) as fh:
                        # Never trust the header's size: read at most what is left.
                        data = fh.read(max_bytes - total + 1)
                    account(len(data))
                    yield p, data
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise ArchiveError(f"the zip archive cannot be read ({exc})") from None
        return
    if zip_only:
        raise ArchiveError("the upload is not a zip archive")
    try:
        tf = tarfile.open(path, mode="r:*")
    except tarfile.TarError:
        raise ArchiveError("the upload is not a zip or tar(.gz) archive") from None
    with tf:
        for info in tf:
            p = check_name(info.name)
            if info.issym() or info.islnk():
                raise ArchiveError(f"refused entry '{info.name[:200]}': link")
            if info.isdir():
                continue
            if not info.isfile():
                raise ArchiveError(f"refused entry '{info.name[:200]}': not a regular file")
            account(info.size)
            yield p, tf.extractfile(info).read()


def too_big(max_bytes: int) -> ArchiveError:
    """The error for an archive past its uncompressed-bytes cap."""
    return ArchiveError(f"the archive unpacks to more than {_size(max_bytes)} (zip bomb?)")


Reader = Callable[[int], bytes]     # read(limit): a member's bytes, at most ``limit`` of them
_open_zips: dict[tuple[int, str], zipfile.ZipFile] = {}    # (pid, path): see _read_zip


def indexed(path: str, max_files: int, max_bytes: int) -> list[tuple[PurePosixPath, Reader]]:
    """(path, read) of the archive's regular files, checked as ``members``
    checks them, for readers that may run in processes forked after this
    call (the dataset builder's decoding pool): a zip's names, links and
    file count are checked here from its index and nothing is read yet;
    ``read(limit)`` reads at most ``limit`` bytes from the zip opened once
    per process, and the caller caps the total (``too_big``). A tar has no
    index to seek in: it is read here, capped, as ``members`` reads it."""
    if not zipfile.is_zipfile(path):
        return [(p, lambda limit, d=data: d) for p, data in members(path, max_files, max_bytes)]
    try:
        # Kept open for this process's own reads (a short-lived builder's).
        zf = _open_zips[(os.getpid(), path)] = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise ArchiveError(f"the zip archive cannot be read ({exc})") from None
    out = []
    for index, info in enumerate(infos):
        p = check_name(info.filename)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ArchiveError(f"refused entry '{info.filename[:200]}': symbolic link")
        if info.is_dir():
            continue
        if len(out) >= max_files:
            raise ArchiveError(f"the archive has more than {max_files} files")
        out.append((p, lambda limit, i=index: _read_zip(path, i, limit)))
    return out


def _read_zip(path: str, index: int, limit: int) -> bytes:
    # One ZipFile per process: a forked worker must not share its parent's
    # file offset, so it opens the archive again on its first read. By
    # index, not name: a zip may hold one name twice.
    key = (os.getpid(), path)
    try:
        zf = _open_zips.get(key)
        if zf is None:
            zf = _open_zips[key] = zipfile.ZipFile(path)
        with zf.open(zf.infolist()[index]) as fh:
            return fh.read(limit)      # never trust the header's size
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, IndexError, zlib.error,
            RuntimeError) as exc:      # RuntimeError: an encrypted member
        raise ArchiveError(f"the zip archive cannot be read ({exc})") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
