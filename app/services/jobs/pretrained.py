"""Pretrained models: ``.caffemodel`` files a user keeps under a name and
starts new jobs from (fine-tuning by layer name).

Each lives in ``<jobs_dir>/pretrained/<id>/`` as ``weights.caffemodel`` plus
``meta.json`` (id, name, owner, size, sha256 and the layers it holds). The
upload is parsed in the sandbox (``app.contained.weights``): a hostile file
can only exhaust that run's limits. Visibility is ``access.may_see``, as for
jobs and datasets.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO

from app.core import untrusted
from app.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from app.core.workspace import PRETRAINED_DIR, WEIGHTS_FILE, Workspace
from app.services.runtime import sandbox
from app.services.access import may_see, only_visible
from app.services.context import Context
from app.store import new_job_id, now_iso
from app.core.config import Settings

META = "meta.json"


def weights_limit(cfg: Settings) -> int:
    """Bytes a .caffemodel upload may have."""
    return cfg.max_weights_bytes


def save_upload(c: Context, stream: IO[bytes], dest: Path) -> tuple[int, str]:
    """Stream an uploaded .caffemodel to ``dest`` under the size cap; its
    size and sha256. 413 when too large, 400 when empty."""
    limit = weights_limit(c.cfg)
    try:
        size = Workspace.save_stream(dest, stream, limit)
    except ValueError:
        raise PayloadTooLarge(f"The weights file is larger than {limit >> 20} MiB "
                           "(LAYERBENCH_MAX_WEIGHTS_MB).",
                           [{"field": "weights", "message": "too large"}]) from None
    if size == 0:
        dest.unlink()
        raise InvalidRequest("The weights file is empty.",
                           [{"field": "weights", "message": "empty"}])
    with untrusted.open_file(dest, max_size=limit) as fh:
        return size, untrusted.sha256_of(fh)


def inspect(c: Context, path: Path) -> dict:
    """What a caffemodel holds, parsed in the sandbox; 400 when it is not one.
    The parser writes only into a scratch directory, never beside the file."""
    work = c.ws.scratch_dir()
    try:
        return _inspect(c, path, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _inspect(c: Context, path: Path, work: Path) -> dict:
    report = work / "weights-report.json"
    spec = sandbox.Spec([c.cfg.caffe_python, "-m", "app.contained.weights", str(path), str(report)],
                        read_only=[path.parent], writable=[work], cwd=work)
    limit = c.cfg.memory_limit_bytes
    result = sandbox.run(spec, c.containment, sandbox.Limits(
        wall_seconds=120, cpu_seconds=240, address_space=limit, memory_bytes=limit))
    try:
        out = json.loads(Workspace.read_capped(report, 8 << 20))
    except (OSError, ValueError):
        raise InvalidRequest("The weights file could not be read as a Caffe model "
                           f"(the parser stopped with exit status {result.returncode}).",
                           [{"field": "weights", "message": "not a .caffemodel"}]) from None
    if not out.get("ok"):
        raise InvalidRequest(f"The weights file is {out.get('message')}.",
                           [{"field": "weights", "message": str(out.get("message"))[:300]}])
    return out


def create(c: Context, user: dict, name: str, stream: IO[bytes] | None) -> dict:
    """Keep an uploaded .caffemodel as a named pretrained model of ``user``."""
    name = (name or "").strip()[:200]
    if not name:
        raise InvalidRequest("Give the pretrained model a name.",
                           [{"field": "name", "message": "required"}])
    if stream is None:
        raise InvalidRequest("The weights file (.caffemodel) is missing.",
                           [{"field": "weights", "message": "required"}])
    model_id = new_job_id()
    root = c.ws.pretrained_dir(model_id)
    root.mkdir(parents=True)
    root.chmod(0o755)   # readable by the sandbox's uid, like a job's input
    try:
        size, sha = save_upload(c, stream, root / WEIGHTS_FILE)
        (root / WEIGHTS_FILE).chmod(0o644)
        held = inspect(c, root / WEIGHTS_FILE)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    meta = {"id": model_id, "name": name, "owner": user["name"], "created_at": now_iso(),
            "size": size, "sha256": sha, "net_name": held.get("name"), "layers": held["layers"]}
    Workspace.write_json(root / META, meta)
    return meta


def _read(c: Context, model_id: str) -> dict | None:
    try:
        return json.loads(Workspace.read_capped(c.ws.pretrained_dir(model_id) / META, 8 << 20))
    except (OSError, ValueError):
        return None


def get(c: Context, model_id: str, user: dict) -> dict:
    """A pretrained model ``user`` may see, else not_found."""
    meta = _read(c, model_id) if isinstance(model_id, str) else None
    if not may_see(user, meta):
        raise NotFound("No such pretrained model.")
    return meta


def list_for(c: Context, user: dict) -> list[dict]:
    """The pretrained models ``user`` may see, newest first."""
    base = c.ws.root / PRETRAINED_DIR
    found = [m for m in (_read(c, p.name) for p in base.iterdir() if p.is_dir()) if m] if base.is_dir() else []
    return sorted(only_visible(user, found), key=lambda m: m["created_at"], reverse=True)


def weights_path(c: Context, meta: dict) -> Path:
    """The kept file of a pretrained model."""
    return c.ws.pretrained_dir(meta["id"]) / WEIGHTS_FILE


def delete(c: Context, model_id: str, user: dict) -> None:
    """Delete a pretrained model (jobs started from it keep their copy)."""
    meta = get(c, model_id, user)
    shutil.rmtree(c.ws.pretrained_dir(meta["id"]), ignore_errors=True)


def summary(meta: dict) -> dict:
    """The public view of a pretrained model (no file paths)."""
    return {k: meta.get(k) for k in ("id", "name", "owner", "created_at", "size", "sha256", "net_name")} | {
        "layers": [{"name": la["name"], "type": la["type"], "shapes": la["blobs"]} for la in meta["layers"]]}
