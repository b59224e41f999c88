"""Server data roots (``LAYERBENCH_DATA_ROOTS``): the folders an
administrator lets requests name by path, as DIGITS users name their
datasets (``folder_train=/data/mnist/train``), classify-many lists and
``python_layer_server_file``.

The setting is ``:``-separated absolute folders, none by default; a
``{user}`` component (``/srv/data/{user}``) makes a per-user sub-root: each
user may name paths only under their own. A path is accepted when its real
path (links resolved) lies inside one of the asking user's roots; anything
else is a 400 naming those roots.

The host never reads what lies under a root: here a path is only resolved
and stat()ed (metadata). Contained runs get the user's roots bound
read-only and read there: the dataset builder reads a folder instead of an
uploaded archive, ``app.contained.gather`` reads listed files. Links under a
root that point out of it then lead nowhere, and the root launcher accepts
such binds only inside the configured roots (``launcher_allows``).
"""
from __future__ import annotations

import io
import json
import os
import pwd
import re
import stat
import tarfile
from pathlib import Path, PurePosixPath

from app.core import untrusted
from app.core.errors import InvalidRequest, ServerFault, ServiceError
from app.core.workspace import RESULT_FILE, Workspace
from app.services.runtime import sandbox
from app.services.context import Context
from app.core.config import Settings

USER = "{user}"
# A user name that is one harmless path component (no "/", no "..").
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,79}$")
GATHER_TAR = "files.tar"


def patterns(cfg: Settings) -> list[str]:
    """The configured roots as written (absolute ones, ``{user}`` only as a whole component)."""
    out = []
    for raw in (cfg.data_roots or "").split(":"):
        p = raw.strip()
        if not p.startswith("/"):
            continue
        before, _, after = p.partition(USER)
        if USER in p and (not before.endswith("/") or USER in after or (after and not after.startswith("/"))):
            continue   # "{user}" inside a component: ambiguous, ignored
        if _overlaps_service(cfg, Path(os.path.realpath(before.rstrip("/") or "/"))):
            continue   # never the service's own files (other users' jobs, the database)
        out.append(p.rstrip("/") or "/")
    return out


def _overlaps_service(cfg: Settings, prefix: Path) -> bool:
    for own in (cfg.jobs_dir.resolve(), cfg.instance_dir.resolve()):
        if own == prefix or own.is_relative_to(prefix) or prefix.is_relative_to(own):
            return True
    return False


def configured(cfg: Settings) -> bool:
    """Whether this server reads server paths at all (any root set)."""
    return bool(patterns(cfg))


def roots_for(cfg: Settings, user: str) -> list[Path]:
    """The roots ``user`` may name, links resolved. A per-user root exists
    only for a name that is one safe path component."""
    out: list[Path] = []
    for p in patterns(cfg):
        if USER in p:
            if not _NAME.fullmatch(user or "") or user in (".", ".."):
                continue
            p = p.replace(USER, user)
        real = Path(os.path.realpath(p))
        if real not in out:
            out.append(real)
    return out


def launcher_allows(cfg: Settings, path: Path) -> bool:
    """Whether ``path`` (absolute, already known to hold no link) lies
    inside a configured root, a ``{user}`` component matching any one name:
    the root launcher's check (which user asked is the web's to judge)."""
    for p in patterns(cfg):
        before, _, after = p.partition(USER)
        prefix = Path(os.path.realpath(before.rstrip("/") or "/"))
        if not (path == prefix or path.is_relative_to(prefix)):
            continue
        if USER not in p:
            return True
        rest = path.relative_to(prefix).parts
        suffix = PurePosixPath(after.strip("/")).parts if after.strip("/") else ()
        if rest and _NAME.fullmatch(rest[0]) and rest[0] not in (".", "..") \
                and len(rest) > len(suffix) and tuple(rest[1:1 + len(suffix)]) == suffix:
            return True
    return False


def where(cfg: Settings, user: str) -> str:
    """The user's roots in words, for error messages."""
    roots = roots_for(cfg, user)
    return ", ".join(map(str, roots)) if roots else "none for this user"


def _bad(field: str, message: str) -> ServiceError:
    return InvalidRequest(message, [{"field": field, "message": message}])


def _service_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _leased_uid(ctx: Context) -> bool:
    # Sandboxed runs get a uid of their own (no groups) when the sandbox is
    # started by root: here, or by the root launcher of privilege separation.
    from app.services.runtime import sandbox_client as sandbox_remote
    return ctx.containment != "none" and (os.geteuid() == 0 or bool(sandbox_remote.configured()))


def resolve(ctx: Context, raw: object, user: str, field: str, kind: str = "dir",
            lenient: bool = False) -> Path:
    """The real path of ``raw`` (``kind`` "dir" or "file") if it lies inside
    one of ``user``'s roots and the sandbox can read it; otherwise a 400
    naming the roots, or saying who cannot read what. ``lenient``: only the
    roots are checked (a list's missing file is that line's error, found by
    the sandbox). Metadata only: nothing under a root is read here."""
    roots = roots_for(ctx.cfg, user)
    if not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw or len(raw) > 4096:
        raise _bad(field, f"{field} must be an absolute path inside this server's data roots "
                   f"({where(ctx.cfg, user)}).")
    real = Path(os.path.realpath(raw))
    root = next((r for r in roots if real == r or real.is_relative_to(r)), None)
    if root is None:
        raise _bad(field, f"{field} '{raw[:300]}' is not inside this server's data roots "
                   f"({where(ctx.cfg, user)}), links resolved.")
    if lenient:
        return real
    try:
        st = os.stat(real)
    except PermissionError:
        raise _bad(field, f"{field} '{raw[:300]}': this service's user ({_service_user()}) cannot reach it; "
                   "the administrator must let it traverse the folders above it.") from None
    except OSError:
        raise _bad(field, f"{field} '{raw[:300]}' does not exist.") from None
    want_dir = kind == "dir"
    if want_dir and not stat.S_ISDIR(st.st_mode) or not want_dir and not stat.S_ISREG(st.st_mode):
        raise _bad(field, f"{field} '{raw[:300]}' is not a {'folder' if want_dir else 'regular file'}.")
    if not os.access(real, os.R_OK | (os.X_OK if want_dir else 0)):
        raise _bad(field, f"{field} '{raw[:300]}': this service's user ({_service_user()}) cannot read it; "
                   "the administrator must make it readable.")
    if _leased_uid(ctx):
        _sandbox_can_read(real, root, st, want_dir, field, raw)
    return real


def _sandbox_can_read(real: Path, root: Path, st: os.stat_result, want_dir: bool, field: str, raw: str) -> None:
    # The run's uid is nobody's and has no groups: the "others" bits decide,
    # on the path itself and on every folder between the root and it.
    need = stat.S_IROTH | (stat.S_IXOTH if want_dir else 0)
    blocked = None if st.st_mode & need == need else real
    folder = real.parent
    while blocked is None and (folder == root or folder.is_relative_to(root)):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            blocked = folder
        if folder == root:
            break
        folder = folder.parent
    if blocked is not None:
        raise _bad(field, f"{field} '{raw[:300]}': the sandbox cannot read '{blocked}' (user code and the "
                   "dataset builder run as an unprivileged user of their own, without groups): make it "
                   "readable by others (chmod o+rX).")


# Server folder fields (app.services.runtime.data_roots) -> the builder's split names.
FOLDER_FIELDS = {"folder": "train", "folder_val": "val", "folder_test": "test"}


def dataset_folders(ctx: Context, fields: dict[str, str], owner: str,
                    names: dict[str, str] | None = None) -> dict[str, str]:
    """The server folders a request names ({"train", "val", "test"} -> real
    path), each checked by ``resolve`` (400 naming the roots); {} when it
    names none. 400 when it names one and no data roots are set.
    ``names``: what the caller calls these fields, for its errors."""
    named = {k: (fields.get(k) or "").strip() for k in FOLDER_FIELDS if (fields.get(k) or "").strip()}
    names = names or {}
    if not named:
        return {}
    if not configured(ctx.cfg):
        field = names.get(next(iter(named)), next(iter(named)))
        raise InvalidRequest(f"{field}: this server reads no server folders (no data roots "
                           "are set): upload the folder itself as a zip or tar.gz archive.",
                           [{"field": field, "message": "no data roots"}])
    if "folder" not in named:
        field, train = names.get(next(iter(named)), next(iter(named))), names.get("folder", "folder")
        raise InvalidRequest(f"{field} needs the training folder ({train}) too.",
                           [{"field": train, "message": "required"}])
    return {FOLDER_FIELDS[k]: str(resolve(ctx, v, owner, names.get(k, k))) for k, v in named.items()}


def fetch(ctx: Context, user: str, paths: list[Path], max_each: int, max_total: int) -> dict[int, bytes]:
    """The bytes of files (real paths ``resolve`` accepted), read inside the
    sandbox with ``user``'s roots bound read-only: {index in ``paths``:
    bytes}; a file that is missing, unreadable or larger than ``max_each``
    is left out, and reading stops at ``max_total`` bytes."""
    if not paths:
        return {}
    work = ctx.ws.scratch_dir()
    try:
        roots = roots_for(ctx.cfg, user)
        Workspace.write_json(work / "paths.json", {"paths": [str(p) for p in paths],
                                                   "roots": [str(r) for r in roots]})
        spec = sandbox.Spec([ctx.cfg.caffe_python, "-m", "app.contained.gather", str(work / "paths.json"),
                             str(work), str(max_each), str(max_total)],
                            read_only=roots, writable=[work], cwd=work)
        limits = sandbox.Limits(wall_seconds=ctx.cfg.validate_timeout,
                                address_space=ctx.cfg.memory_limit_bytes,
                                memory_bytes=ctx.cfg.memory_limit_bytes)
        sandbox.run(spec, ctx.containment, limits)
        try:
            json.loads(Workspace.read_capped(work / RESULT_FILE, 1 << 20))
            data = untrusted.read_all(work / GATHER_TAR, max_total + (len(paths) + 2) * 1024)
        except (OSError, ValueError):
            raise ServerFault("Reading the server files failed (the reader left no result).") \
                from None
        out: dict[int, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
                for m in tf:
                    if m.isfile() and m.name.isdigit() and int(m.name) < len(paths) and m.size <= max_each:
                        out[int(m.name)] = tf.extractfile(m).read()
        except tarfile.TarError:
            raise ServerFault("Reading the server files failed (unreadable result).") from None
        return out
    finally:
        ctx.ws.delete(work)
