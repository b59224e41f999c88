"""Python layers in several files: the upload of several ``.py`` files or one
zip of them, stored in a job's input directory.

The file that holds the layers (the user marks it with ``python_layer_main``;
by default the one defining the classes the network names) is stored as
``digits_python_layers.py`` as a single upload is; the others keep their
names, sanitised to importable ones, beside it (``tools.py``,
``helpers/__init__.py``), so that ``from tools import SimpleTransformer``
works. ``layer_files.json`` lists them all (app.core.layer_code). A zip is
read with the dataset archives' rules (app.core.archives): streamed to disk
under a size cap, entry count and unpacked bytes capped, ``..``, absolute
paths and links refused.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import IO

from app.caffe import network
from app.core import archives
from app.core.errors import InvalidPythonLayer, InvalidRequest, PayloadTooLarge, ServiceError
from app.core.layer_code import MANIFEST
from app.core.workspace import LAYER_FILE, Workspace
from app.core.config import Settings

MAX_FILES = 200                 # .py files (and other entries) in one upload
MAX_TOTAL_BYTES = 16 << 20      # unpacked bytes of a zip
MAIN_FIELD = "python_layer_main"
_CLASS = re.compile(r"^[ \t]*class[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.M)
_SKIP_DIRS = {"__MACOSX", "__pycache__"}


def _bad(message: str, file: str | None = None, **extra) -> ServiceError:
    detail = {"field": "python_layer", "file": file, "layer": None, "stage": "upload", "message": message}
    detail.update(extra)
    return InvalidPythonLayer(message, [detail])


def _identifier(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
    return "_" + out if out[0].isdigit() else out


def sanitise(path: PurePosixPath) -> str:
    """An importable relative path: every folder and the file's stem made a
    Python identifier (``my-tools.py`` becomes ``my_tools.py``)."""
    *dirs, last = path.parts
    stem = last[:-3] if last.endswith(".py") else last
    return "/".join([_identifier(d) for d in dirs] + [_identifier(stem) + ".py"])


def _is_zip(name: str, head: bytes) -> bool:
    return name.lower().endswith(".zip") or head.startswith(b"PK\x03\x04")


def _read(stream: IO[bytes], name: str, limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The Python layer file '{name}' is larger than "
                           f"{limit // 1024} KiB.", [{"field": "python_layer", "file": name, "message": "too large"}])
    return data


def collect(parts: list[tuple[IO[bytes], str | None]], work: Path, limit: int, zip_limit: int
            ) -> tuple[dict[PurePosixPath, bytes], list[str]]:
    """Every uploaded ``.py`` file by its path as sent (zips unpacked, capped,
    checked), and the names of the entries skipped (not Python)."""
    found: dict[PurePosixPath, bytes] = {}
    skipped: list[str] = []
    for k, (stream, filename) in enumerate(parts):
        name = Workspace.display_name(filename, f"layer{k}.py")
        head = stream.read(4)
        rest = _Prefixed(head, stream)
        if not _is_zip(name, head):
            if PurePosixPath(name) in found:
                raise _bad(f"'{name}' was sent twice.", name)
            found[PurePosixPath(name)] = _read(rest, name, limit)
            continue
        tmp = work / f".layers-{k}.zip"
        try:
            try:
                Workspace.save_stream(tmp, rest, zip_limit)
            except ValueError:
                raise PayloadTooLarge(f"The zip '{name}' is larger than "
                                   f"{zip_limit >> 20} MiB.") from None
            try:
                for path, data in archives.members(str(tmp), MAX_FILES, MAX_TOTAL_BYTES, zip_only=True):
                    if path.suffix != ".py" or any(p.startswith(".") or p in _SKIP_DIRS for p in path.parts):
                        skipped.append(str(path))
                        continue
                    if len(data) > limit:
                        raise _bad(f"'{path}' in the zip is larger than {limit // 1024} KiB.", name)
                    found[path] = data
            except archives.ArchiveError as exc:
                raise _bad(f"The zip of layer files was refused: {exc}.", name) from None
        finally:
            tmp.unlink(missing_ok=True)
        if len(found) > MAX_FILES:
            raise _bad(f"More than {MAX_FILES} layer files.")
    return _strip_wrapper(found), skipped


class _Prefixed:
    """A stream whose first bytes were already read (to sniff a zip)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        head, self.head = self.head, b""
        if n is not None and 0 <= n <= len(head):
            self.head = head[n:]
            return head[:n]
        return head + self.stream.read(-1 if n is None or n < 0 else n - len(head))


def _strip_wrapper(found: dict[PurePosixPath, bytes]) -> dict[PurePosixPath, bytes]:
    # "mylayers/layers.py", "mylayers/tools.py": one wrapping folder (not a
    # package: no __init__.py) is how zips are usually made; look inside it.
    roots = {p.parts[0] for p in found}
    if len(roots) == 1 and all(len(p.parts) > 1 for p in found):
        root = next(iter(roots))
        if PurePosixPath(root, "__init__.py") not in found:
            return {PurePosixPath(*p.parts[1:]): d for p, d in found.items()}
    return found


def _check_text(rel: str, data: bytes) -> None:
    if b"\x00" in data:
        raise _bad(f"'{rel}' contains NUL bytes; it must be Python source.", rel,
                   line=data[:data.index(b"\x00")].count(b"\n") + 1)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"'{rel}' is not UTF-8 text: {exc}", rel, line=data[:exc.start].count(b"\n") + 1) from None


def _not_python2(name: str, data: bytes) -> None:
    # One converted file has one original to keep and one diff to show;
    # several (helpers importing each other) would need them per file.
    # Converting each alone is a request away: /api/v1/python-layers/convert.
    from app.caffe.py2convert import why_python2
    why = why_python2(data.decode("utf-8"))
    if why is not None:
        raise _bad(f"'{name}' counts as Python 2 ({why}), and python2=convert converts a single layer file "
                   "only: send it alone, or convert each file with /api/v1/python-layers/convert and upload "
                   "the results.", name, field="python2")


def choose_main(files: dict[str, bytes], originals: dict[str, str], wanted: str | None,
                classes: list[str]) -> str:
    """The sanitised path of the file that holds the layers: ``wanted`` (as
    sent or sanitised), else the one defining most of ``classes``, else one
    already named digits_python_layers.py."""
    names = sorted(files)
    if wanted and wanted.strip():
        w = wanted.strip().replace("\\", "/").lstrip("./")
        for rel in names:
            if w in (rel, originals[rel], PurePosixPath(rel).name, PurePosixPath(originals[rel]).name):
                return rel
        raise InvalidRequest(f"'{w[:200]}' ({MAIN_FIELD}) is not one of the uploaded files.",
                           [{"field": MAIN_FIELD, "message": "one of: " + ", ".join(originals[n] for n in names)[:1000]}])
    if len(names) == 1:
        return names[0]
    score = {rel: len(set(_CLASS.findall(files[rel].decode("utf-8", "replace"))) & set(classes)) for rel in names}
    best = max(score.values(), default=0)
    top = [rel for rel in names if score[rel] == best]
    if best and len(top) == 1:
        return top[0]
    if LAYER_FILE in files:
        return LAYER_FILE
    why = (f"several files define the network's layer classes ({', '.join(classes)})" if best
           else f"no file defines the network's layer classes ({', '.join(classes) or 'none named'})")
    raise InvalidRequest(f"Which file holds the Python layers? {why}; name it in {MAIN_FIELD}.",
                       [{"field": MAIN_FIELD, "message": "one of: " + ", ".join(originals[n] for n in names)[:1000]}])


def save(parts: list[tuple[IO[bytes], str | None]], wanted_main: str | None, input_dir: Path,
         net: network.Network, cfg: Settings, python2: str = "refuse") -> dict | None:
    """Store the uploaded layer files in ``input_dir``; the job's
    ``python_layer`` record (None when nothing but empty files came).
    ``python2`` "convert" is refused for a file of several that counts as
    Python 2 (the conversion takes one file, as DIGITS sent)."""
    limit = cfg.max_layer_file_bytes
    found, skipped = collect(parts, input_dir.parent, limit, cfg.max_upload_bytes)
    found = {p: d for p, d in found.items() if d.strip() or p.name == "__init__.py"}
    if not found:
        if skipped:
            raise _bad("The upload holds no .py file (found: " + ", ".join(skipped[:10]) + ").")
        return None
    files: dict[str, bytes] = {}
    originals: dict[str, str] = {}
    for path, data in found.items():
        rel = sanitise(path)
        if rel in files:
            raise _bad(f"'{originals[rel]}' and '{path}' would both be stored as '{rel}'.", str(path))
        _check_text(str(path), data)
        files[rel], originals[rel] = data, str(path)
        if python2 == "convert":
            _not_python2(str(path), data)
    classes = list(dict.fromkeys(lay.python_param.layer for lay in network.python_layers(net.net)))
    main = choose_main(files, originals, wanted_main, classes)
    if main != LAYER_FILE and LAYER_FILE in files:
        raise _bad(f"'{originals[LAYER_FILE]}' would be replaced by the layer file '{originals[main]}': "
                   f"rename it ({LAYER_FILE} is the name the layer file is stored under).", originals[LAYER_FILE])
    stored = [LAYER_FILE] + sorted(rel for rel in files if rel != main)
    for rel in stored:
        dest = input_dir / (rel if rel != LAYER_FILE else LAYER_FILE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(dest.parent, 0o755)   # the sandbox uid imports from here
        Workspace.write_atomic(dest, files[main if rel == LAYER_FILE else rel])
    Workspace.write_json(input_dir / MANIFEST, stored)
    return {"module": network.LAYER_MODULE, "original_filename": PurePosixPath(originals[main]).name,
            "classes": [], "files": stored, "main": originals[main],
            **({"skipped": skipped[:50]} if skipped else {})}


def read_all(input_dir: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of a job's layer files, main first (clone and
    download carry them all); regular files only, never links."""
    from app.core.layer_code import files as listed
    out = []
    for rel in listed(input_dir):
        try:
            with Workspace.open_regular(input_dir / rel) as fh:
                out.append((rel, fh.read()))
        except OSError:
            continue
    return out


def carry(input_dir: Path, python_layer: dict | None) -> tuple[list[tuple[IO[bytes], str]], str | None]:
    """What a new job built from this one (clone, fine-tuning) uploads to get
    every layer file back: ([(a zip of them, name)], the main file's name in
    it); ([], None) for a job with one file or none (its layer_stream does)."""
    import io
    import zipfile
    files = read_all(input_dir)
    if len(files) < 2:
        return [], None
    others = {rel for rel, _ in files[1:]}
    main = sanitise(PurePosixPath(PurePosixPath((python_layer or {}).get("main") or LAYER_FILE).name))
    if main in others:
        main = LAYER_FILE
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files:
            zf.writestr(main if rel == LAYER_FILE else rel, data)
    buf.seek(0)
    return [(buf, "layers.zip")], main


def split(parts: list[tuple[IO[bytes], str | None]]
          ) -> tuple[IO[bytes] | None, str | None, list[tuple[IO[bytes], str | None]]]:
    """The uploaded ``python_layer`` parts as an Upload takes them: one
    ``.py`` file as ever (stream, name, []), several files or a zip as
    (None, None, parts)."""
    if not parts:
        return None, None, []
    if len(parts) == 1 and not (parts[0][1] or "").lower().endswith(".zip"):
        return parts[0][0], parts[0][1], []
    return None, None, parts
