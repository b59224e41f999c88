"""Dataset services: create from an uploaded archive, build it contained
(app.dataset_build in the sandbox), publish it atomically, delete it."""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import IO

from app.core import untrusted
from app.services.datasets import textfile
from app.services.runtime import data_roots
from app.services.runtime import sandbox
from app.caffe.datasets import EXPLORE_DIR, EXPLORE_MAX_BYTES, storage, write_hdf5_list
from app.caffe.images import RESIZE_MODES
from app.services.access import may_see, only_visible
from app.services.context import Context
from app.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge, ServiceError
from app.core.status import DatasetStatus, RunOutcome
from app.store import new_job_id, now_iso
from app.core.workspace import DATASET_INFO_FILE, DATASET_PARAMS_FILE, PROGRESS_FILE, RESULT_FILE, Workspace

# What a finished build may contain; anything else (a link, a stray file) is refused.
PUBLISHED = ("train_db", "val_db", "test_db", "labels.txt", "mean.binaryproto", "mean.png", "mean.jpg", "samples",
             EXPLORE_DIR, DATASET_INFO_FILE)


def parse_fields(fields: dict[str, str]) -> dict:
    """Typed dataset parameters; 400 with every bad field."""
    details, out = [], {}
    out["name"] = (fields.get("name") or "").strip()[:200]
    if not out["name"]:
        details.append({"field": "name", "message": "required"})
    for name, lo, hi, default in (("image_width", 1, 1024, None), ("image_height", 1, 1024, None),
                                  ("channels", 1, 3, 3), ("val_percent", 0, 90, 25)):
        raw = (fields.get(name) or "").strip() or (str(default) if default is not None else "")
        try:
            value = float(raw) if name == "val_percent" else int(raw)
            if not lo <= value <= hi or (name == "channels" and value not in (1, 3)):
                raise ValueError
            out[name] = value
        except ValueError:
            details.append({"field": name, "message": f"must be a number from {lo} to {hi}"
                            + (" (1 or 3)" if name == "channels" else "")})
    out["resize_mode"] = (fields.get("resize_mode") or "squash").strip()
    if out["resize_mode"] not in RESIZE_MODES:
        details.append({"field": "resize_mode", "message": "use " + ", ".join(RESIZE_MODES)})
    # Segmentation (images/ + labels/ pairs, app.caffe.segmentation) or the default.
    out["type"] = (fields.get("type") or "classification").strip()
    if out["type"] not in ("classification", "segmentation"):
        details.append({"field": "type", "message": "use classification or segmentation"})
    details += _storage_fields(fields, out)
    if details:
        raise InvalidRequest("Some dataset fields are invalid.", details)
    return out


# DIGITS's storage options (create_db.py): what this server writes for each.
BACKENDS = ("lmdb", "hdf5")
ENCODINGS = ("none", "png", "jpg")
COMPRESSIONS = ("none", "gzip")
SPLITS = ("train", "val", "test")


def _storage_fields(fields: dict[str, str], out: dict) -> list[dict]:
    """DIGITS's ``backend`` / ``encoding`` / ``compression``, the test split
    of the training folder (``test_percent``) and the per-class limits
    (``<split>_min_per_class`` / ``<split>_max_per_class``) into ``out``;
    one detail per field that cannot apply."""
    details = []

    def word(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = (fields.get(name) or "").strip().lower() or default
        if value not in allowed:
            details.append({"field": name, "message": "use " + ", ".join(allowed)})
            return default
        return value

    out["backend"] = word("backend", BACKENDS, "lmdb")
    encoding = word("encoding", ENCODINGS, "none")
    out["compression"] = word("compression", COMPRESSIONS, "none")
    # Caffe decodes an encoded Datum only when built with OpenCV, and this
    # build (scripts/build_caffe.sh) has none: its Data layer aborts on one.
    # So png and jpg are honoured by what such a DB decodes to: the builder
    # encodes each image as DIGITS's create_db does (JPEG quality 90) and
    # stores the decoded pixels raw (app.caffe.datasets.encoding_round_trip);
    # the dataset reports the encoding asked, with a note. DIGITS writes HDF5
    # raw whatever the encoding (its create_db ignores it there): so do we,
    # and such a dataset reports none.
    out["encoding"] = encoding if out["backend"] == "lmdb" else "none"
    if out["compression"] == "gzip" and out["backend"] != "hdf5":
        details.append({"field": "compression", "message": "gzip applies to backend=hdf5 only (as in DIGITS)"})
    if out["type"] == "segmentation" and (out["backend"] != "lmdb" or (fields.get("test_percent") or "").strip()):
        details.append({"field": "backend" if out["backend"] != "lmdb" else "test_percent",
                        "message": "a segmentation dataset is LMDB with train and val splits only"})
    raw = (fields.get("test_percent") or "").strip() or "0"
    try:
        out["test_percent"] = float(raw)
        if not 0 <= out["test_percent"] <= 90:
            raise ValueError
    except ValueError:
        out["test_percent"] = 0.0
        details.append({"field": "test_percent", "message": "must be a number from 0 to 90"})
    if isinstance(out.get("val_percent"), float) and out["val_percent"] + out["test_percent"] >= 100:
        details.append({"field": "test_percent", "message": "val_percent + test_percent must leave images "
                        "to train on (below 100)"})
    limits = {}
    for split in SPLITS:
        for bound in ("min", "max"):
            name = f"{split}_{bound}_per_class"
            raw = (fields.get(name) or "").strip()
            if raw in ("", "None"):
                continue
            try:
                value = int(raw)
                if value < 1:
                    raise ValueError
            except ValueError:
                details.append({"field": name, "message": "must be a whole number of at least 1"})
                continue
            limits.setdefault(split, {})[bound] = value
        got = limits.get(split, {})
        if got.get("max") is not None and got.get("min") is not None and got["max"] < got["min"]:
            details.append({"field": f"{split}_max_per_class", "message": f"must be at least {split}_min_per_class"})
    out["per_class"] = limits
    return details


def create(ctx: Context, archive: IO[bytes] | None, fields: dict[str, str], owner: str,
           field_names: dict[str, str] | None = None, uploads: dict[str, bytes] | None = None) -> dict:
    """Store the archive, or note the server folders (``folder``,
    ``folder_val``, ``folder_test`` under the data roots), or DIGITS's
    textfile lists (``method=textfile``, app.services.datasets.textfile;
    ``uploads``: the request's uploaded list and labels files' bytes), and
    queue the build; the dataset record. ``field_names``: what the caller
    calls the folder fields (DIGITS: folder_train), for its errors."""
    params = parse_fields(fields)
    if textfile.wanted(fields):
        if archive is not None:
            raise InvalidRequest("A textfile dataset takes its image lists, not an archive.",
                                 [{"field": "method", "message": "textfile: no archive"}])
        return _create(ctx, params, owner, lists=textfile.sources(ctx, fields, uploads or {}, owner))
    folders = data_roots.dataset_folders(ctx, fields, owner, field_names or {})
    if archive is None and not folders:
        more = " or a server folder in 'folder'" if data_roots.configured(ctx.cfg) else ""
        raise InvalidRequest(f"The archive (zip or tar.gz){more} is missing.",
                       [{"field": "archive", "message": "required"}])
    if archive is not None and folders:
        raise InvalidRequest("Send either an archive or a server folder, not both.",
                           [{"field": "folder", "message": "or archive"}])
    return _create(ctx, params, owner, archive=archive, folders=folders)


def _create(ctx: Context, params: dict, owner: str, archive: IO[bytes] | None = None, folders: dict | None = None,
            lists: dict | None = None) -> dict:
    ds_id = new_job_id()
    upload = ctx.ws.dataset_dir(ds_id) / "upload"
    upload.mkdir(parents=True)
    if lists:
        # Uploaded lists are stored beside the params (the builder reads them
        # from its read-only upload dir); server ones stay where they are.
        def stored(source: dict, name: str) -> str:
            if "server" in source:
                return source["server"]
            (upload / name).write_bytes(source["upload"])
            return str(upload / name)
        params.update(textfile={"labels": stored(lists["labels"], "labels.txt"), "shuffle": lists["shuffle"],
                                "splits": {s: {"list": stored(v["list"], f"{s}.txt"), "folder": v["folder"]}
                                           for s, v in lists["splits"].items()}},
                      roots=[str(r) for r in data_roots.roots_for(ctx.cfg, owner)])
    elif folders:
        params.update(folders=folders, roots=[str(r) for r in data_roots.roots_for(ctx.cfg, owner)])
    else:
        try:
            Workspace.save_stream(upload / "archive", archive, ctx.cfg.max_upload_bytes)
        except ValueError:
            ctx.ws.delete(ctx.ws.dataset_dir(ds_id))
            raise PayloadTooLarge("The archive is too large.") from None
    params.update(max_files=ctx.cfg.dataset_max_files, max_bytes=ctx.cfg.dataset_max_bytes)
    Workspace.write_json(upload / DATASET_PARAMS_FILE, params)
    ctx.store.upsert_dataset(ds_id, name=params["name"], owner=owner, status=DatasetStatus.QUEUED.value,
                             info={"params": params, "progress": 0.0}, created_at=now_iso())
    from app.services.runtime import broker as queue
    accepted = ctx.store.get_dataset(ds_id)   # what was accepted: queued, however soon a worker takes it
    queue.enqueue_dataset(ctx, ds_id)   # the broker, or the local workers' doorbell
    return accepted


BEAT_EVERY_S = 1.0    # how often a build writes its heartbeat (celery: app.worker.heartbeat)
log = logging.getLogger(__name__)


def build(ctx: Context, ds_id: str, worker: str | None = None) -> str:
    """Run a queued dataset's build to its end; its final status ("skipped"
    when it was not queued). The claim gives the run a token, its worker and
    a heartbeat (the dataset's ``build_*`` columns), and every later write of
    the run is fenced by that token, so that, in the celery queue, a build
    whose worker died is handed over (app.worker.heartbeat) and a build that
    was only slow finds itself handed over, stops and leaves everything to
    the new one ("superseded"). Whatever fails, the build ends (``error``
    with why) and its sandboxed process is killed."""
    token = secrets.token_hex(8)
    if not ctx.store.claim_dataset_build(ds_id, token, worker, time.time()):
        return "skipped"
    root = ctx.ws.dataset_dir(ds_id)
    upload, out = root / "upload", root / "build"
    info = (ctx.store.get_dataset(ds_id) or {}).get("info") or {}
    info.pop("builder", None)     # where builds kept their token before build_token
    info.pop("progress_images", None)   # an earlier run's (handed over): this one counts anew
    proc = None
    try:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        # A server folder's build sees its owner's data roots, read-only, as
        # configured now (app.services.runtime.data_roots); an upload's sees none.
        folders = ((info.get("params") or {}).get("folders")) or (info.get("params") or {}).get("textfile")
        roots = data_roots.roots_for(ctx.cfg, (ctx.store.get_dataset(ds_id) or {}).get("owner") or "") \
            if folders else []
        spec = sandbox.Spec([ctx.cfg.caffe_python, "-m", "app.contained.build_dataset",
                             str(upload / "archive"), str(out), str(upload / DATASET_PARAMS_FILE)],
                            read_only=[upload, *roots], writable=[out], cwd=out,
                            # decoding processes (app.contained.dataset_pool); 0: one per core
                            env={"LAYERBENCH_DATASET_WORKERS": str(ctx.cfg.dataset_workers)})
        limits = sandbox.Limits(wall_seconds=ctx.cfg.dataset_timeout,
                                address_space=ctx.cfg.memory_limit_bytes,
                                memory_bytes=ctx.cfg.memory_limit_bytes)
        with open(root / "build.log", "ab") as build_log:
            t0 = time.monotonic()
            proc = sandbox.start(spec, ctx.containment, limits, build_log, build_log)
            if _watch(ctx, ds_id, token, info, proc, limits, t0, out) == "superseded":
                return "superseded"   # the new build owns the files now
            # Ended (or killed): give its uid and cgroup back now, not
            # whenever the Popen is collected.
            sandbox.wait(proc, limits, t0)
        _read_progress(out, info)     # its last word: a quick build ends between two looks
        status, error, built = _outcome(out, timed_out=time.monotonic() - t0 > limits.wall_seconds)
        now = _owner(ctx, ds_id, token)
        if now == "superseded":
            return "superseded"
        if now != "mine":
            status, error, built = DatasetStatus.ERROR.value, ABORTED, {}
        if status == DatasetStatus.DONE:
            _publish(out, root)
            _hdf5_lists(root)
    except BaseException as exc:
        # Never leave the builder running, nor its uid leased.
        if proc is not None and proc.poll() is None:
            sandbox.kill(proc)
        elif proc is not None:
            sandbox.wait(proc, limits, t0)
        if not isinstance(exc, Exception):
            raise
        if not isinstance(exc, OSError):
            log.exception("building dataset %s failed", ds_id)
        if _owner(ctx, ds_id, token) == "superseded":
            return "superseded"
        status, error, built = DatasetStatus.ERROR.value, f"the build failed: {exc}"[:2000], {}
    return _end(ctx, ds_id, token, root, status, error, info, built)


def _watch(ctx: Context, ds_id: str, token: str, info: dict, proc, limits: sandbox.Limits, t0: float,
           out: Path) -> str:
    """Follow the builder until it ends, writing the run's heartbeat and
    progress; kill it past its wall-clock limit or once the dataset is no
    longer this run's. Whose the dataset is then (see ``_owner``)."""
    last_beat = 0.0
    while proc.poll() is None:
        if time.monotonic() - t0 > limits.wall_seconds:
            sandbox.kill(proc)
            break
        if _read_progress(out, info) or time.monotonic() - last_beat >= BEAT_EVERY_S:
            last_beat = time.monotonic()
            mine = ctx.store.beat_dataset_build(ds_id, token, time.time(), info)
        else:
            mine = _owner(ctx, ds_id, token) == "mine"   # an abort is noticed within a poll
        if not mine:
            sandbox.kill(proc)      # aborted, or handed over: stop building
            return _owner(ctx, ds_id, token)
        # The store every 0.2 s, the process more often: a build's end is
        # seen (and published) within 20 ms, not up to a whole poll later.
        until = time.monotonic() + 0.2
        while proc.poll() is None and time.monotonic() < until:
            time.sleep(0.02)
    return "mine"


def _read_progress(out: Path, info: dict) -> bool:
    """Copy the builder's progress file (written by user-reachable code:
    read capped, checked) into ``info``: ``progress`` (0..1) and
    ``progress_images`` ({done, total} entries); whether it changed."""
    try:
        p = json.loads(Workspace.read_capped(out / PROGRESS_FILE, 4096))
        progress = min(1.0, max(0.0, float(p.get("progress", 0))))
        done, total = p.get("done"), p.get("total")
        images = {"done": done, "total": total} if type(done) is int and type(total) is int \
            and 0 <= done <= total else info.get("progress_images")
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    changed = (progress, images) != (info.get("progress"), info.get("progress_images"))
    info["progress"] = progress
    if images is not None:
        info["progress_images"] = images
    return changed


def _owner(ctx: Context, ds_id: str, token: str) -> str:
    """Whose build this is now: "mine" (running, this run's token),
    "superseded" (another token or none: handed over, perhaps built or
    failed since), or "ended" (this run's token but no longer running: its
    owner aborted it; or the dataset was deleted)."""
    ds = ctx.store.get_dataset(ds_id)
    if ds is None:
        return "ended"
    if ds.get("build_token") != token:
        return "superseded"
    return "mine" if ds["status"] == DatasetStatus.RUNNING else "ended"


def _end(ctx: Context, ds_id: str, token: str, root: Path, status: str, error: str | None, info: dict,
         built: dict) -> str:
    """Write the run's end (fenced by its token), then remove what is left
    of the build and move the jobs waiting on it on; the final status, or
    "superseded" when it was handed over meanwhile (nothing is touched)."""
    final = dict(built, progress=1.0, params=info.get("params"), progress_images=info.get("progress_images")) \
        if status == DatasetStatus.DONE else info
    written = ctx.store.end_dataset_build(ds_id, token, status=status, error=error, info=final)
    if not written and status == DatasetStatus.DONE and _owner(ctx, ds_id, token) == "ended":
        # Its owner aborted it after the last look: the abort wins.
        status, error = DatasetStatus.ERROR.value, ABORTED
        written = ctx.store.end_dataset_build(ds_id, token, status=status, error=error, info=info)
    if not written and _owner(ctx, ds_id, token) == "superseded":
        return "superseded"
    shutil.rmtree(root / "build", ignore_errors=True)
    shutil.rmtree(root / "upload", ignore_errors=True)   # nothing half-made is left
    # Jobs created while it built now validate and queue (or end in error).
    from app.services.jobs import waiting
    waiting.release(ctx, ds_id)
    return status


def _outcome(out: Path, timed_out: bool) -> tuple[str, str | None, dict]:
    if timed_out:
        return DatasetStatus.ERROR.value, "Building the dataset took too long.", {}
    try:
        result = json.loads(Workspace.read_capped(out / RESULT_FILE, 1 << 20))
    except (OSError, ValueError):
        return DatasetStatus.ERROR.value, "The dataset builder stopped without a result (out of memory?).", {}
    if result.get("status") == RunOutcome.DONE and isinstance(result.get("info"), dict):
        return DatasetStatus.DONE.value, None, result["info"]
    return DatasetStatus.ERROR.value, str(result.get("message") or "the build failed")[:2000], {}


def _publish(out: Path, root: Path) -> None:
    # The builder ran as untrusted-input code: accept only the expected
    # entries, regular files and directories, no links anywhere.
    for entry in os.scandir(out):
        if entry.name in (RESULT_FILE, PROGRESS_FILE, ".progress.tmp"):
            continue
        if entry.name not in PUBLISHED:
            raise OSError(f"unexpected file {entry.name!r} in the build")
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise OSError(f"refused {name!r}: not a regular file")
    for name in PUBLISHED:
        if (out / name).exists():
            os.replace(out / name, root / name)


H5_NAME = re.compile(r"\d{1,12}\.h5")


def _hdf5_lists(root: Path) -> None:
    # An HDF5 dataset's databases (DIGITS's backend=hdf5): the host writes
    # the lists Caffe's HDF5Data reads, from what the directories hold (names
    # checked, regular files only), never from the builder's own list.txt.
    for db in ("train_db", "val_db", "test_db"):
        names = sorted((e.name for e in untrusted.list_dir(root / db) if not e.is_dir and H5_NAME.fullmatch(e.name)),
                       key=lambda n: int(n[:-3]))
        if names:
            write_hdf5_list(root, db, names)


def delete(ctx: Context, ds: dict) -> None:
    """Remove a dataset. Refused (conflict) for built-in datasets, while it is
    being built, and while any job uses it: finished jobs need its labels and
    mean for inference, and their pages link to it."""
    if ds["owner"] is None:
        raise Conflict(f"'{ds['name']}' is built in and cannot be deleted.")
    using = ctx.store.jobs_using(ds["id"], active_only=False)
    if using:
        raise Conflict(f"Dataset is used by {len(using)} job(s); delete those jobs first.",
                           [{"field": "dataset", "message": f"job {j}"} for j in using[:10]])
    if ds["status"] in (DatasetStatus.QUEUED, DatasetStatus.RUNNING) or stopping(ds):
        raise Conflict("The dataset is still being built.")
    ctx.store.delete_dataset(ds["id"])
    ctx.ws.delete(ctx.ws.dataset_dir(ds["id"]))


def get(ctx: Context, dataset_id: str, user: dict) -> dict:
    """The dataset if ``user`` may see it (app.services.access), else not_found."""
    ds = ctx.store.get_dataset(dataset_id) if isinstance(dataset_id, str) else None
    if not may_see(user, ds):
        raise NotFound("No such dataset.")
    return ds


def list_for(ctx: Context, user: dict, status: str | None = None) -> list[dict]:
    """The datasets ``user`` may see (built-in ones and their own)."""
    return only_visible(user, ctx.store.list_datasets(status=status) if status else ctx.store.list_datasets())


def delete_as(ctx: Context, ds: dict, user: dict) -> None:
    """Delete ``ds`` for ``user`` (who must be able to see it)."""
    if not may_see(user, ds):
        raise NotFound("No such dataset.")
    delete(ctx, ds)


def sample_names(ctx: Context, ds: dict) -> list[str]:
    """File names of the dataset's preview samples (samples/*.png)."""
    # Listed like everything a sandbox wrote: regular files only, no links.
    return [e.name for e in untrusted.list_dir(ctx.ws.dataset_dir(ds["id"]) / "samples")
            if not e.is_dir and e.name.endswith(".png")]


def preview(ctx: Context, ds: dict, name: str) -> bytes | None:
    """A preview image's bytes (``mean.png`` or ``samples/<label>_<n>.png``), or None."""
    if not re.fullmatch(r"mean\.png|samples/\d+_\d+\.png", name):
        return None
    try:
        with Workspace.open_regular(ctx.ws.dataset_dir(ds["id"]) / name) as fh:
            return fh.read(8 << 20)
    except OSError:
        return None


def to_json(ds: dict) -> dict:
    """The dataset JSON of API.md (plus progress and per-class counts)."""
    info = ds.get("info") or {}
    return {"id": ds["id"], "name": ds["name"], "status": ds["status"], "owner": ds["owner"],
            "num_classes": info.get("num_classes"), "labels": info.get("labels"),
            "train_count": info.get("train_count"), "val_count": info.get("val_count"),
            "image_shape": info.get("image_shape"), "error": ds.get("error"),
            "progress": info.get("progress", 1.0 if ds["status"] == DatasetStatus.DONE else 0.0),
            # entries (image files) decoded of all: {done, total}; null until the builder has counted them
            "progress_images": info.get("progress_images"),
            "per_class": info.get("per_class"), "skipped": info.get("skipped"),
            "created_at": ds.get("created_at"),
            "type": info.get("type") or (info.get("params") or {}).get("type") or "classification",
            "palette": info.get("palette"), "class_share": info.get("class_share"),
            "test_count": info.get("test_count"), **storage(info)}


ABORTED = "Aborted by its owner."


def abort(ctx: Context, ds: dict) -> None:
    """Stop a queued or running build (it ends in error, ABORTED); conflict
    once it has ended. A running build notices within a poll and is killed."""
    for state in (DatasetStatus.QUEUED.value, DatasetStatus.RUNNING.value):
        if ctx.store.claim_dataset(ds["id"], state, DatasetStatus.ERROR.value):
            if state == DatasetStatus.QUEUED.value:
                ctx.store.upsert_dataset(ds["id"], error=ABORTED)
                from app.services.jobs import waiting
                waiting.release(ctx, ds["id"])   # no build will end to release them
            return
    raise Conflict(f"The dataset's build already ended ({ds['status']}).")


def wait_built(ctx: Context, ds_id: str, timeout: float = 30.0) -> dict | None:
    """The dataset once no build of it is under way any more (an aborted
    build has written its end: ``error`` is set); None if it is gone."""
    deadline = time.monotonic() + timeout
    while True:
        ds = ctx.store.get_dataset(ds_id)
        if ds is None or ds["status"] == DatasetStatus.DONE or (
                ds["status"] == DatasetStatus.ERROR and ds.get("error")) or time.monotonic() > deadline:
            return ds
        time.sleep(0.1)


def delete_aborting(ctx: Context, ds: dict, user: dict) -> None:
    """Delete as DIGITS does: refused (conflict) while any job uses it and
    for a built-in one, as ``delete``; a build under way is aborted first."""
    if not may_see(user, ds):
        raise NotFound("No such dataset.")
    if ds["owner"] is not None and ds["status"] in (DatasetStatus.QUEUED, DatasetStatus.RUNNING) \
            and not ctx.store.jobs_using(ds["id"], active_only=False):
        try:
            abort(ctx, ds)
        except ServiceError as err:
            if not isinstance(err, Conflict):    # it ended meanwhile: delete it as it is
                raise
        ds = wait_built(ctx, ds["id"]) or ds
    elif stopping(ds):
        # Aborted a moment ago (DIGITS's abort, then delete): its build is
        # still stopping and will write its end; let it, then delete.
        ds = wait_built(ctx, ds["id"]) or ds
    delete(ctx, ds)


def stopping(ds: dict) -> bool:
    """Whether ``ds`` was aborted while building and its build has not
    written its end yet: ``abort`` sets the status only, every other end
    of a build comes with its error."""
    return ds["status"] == DatasetStatus.ERROR and not ds.get("error")


def edit(ctx: Context, ds: dict, name: str | None = None, notes: str | None = None) -> dict:
    """Rename a dataset and/or set its notes (kept in its info); the dataset."""
    if ds["owner"] is None:
        raise Forbidden(f"'{ds['name']}' is built in and cannot be edited.")
    fields: dict = {}
    if name is not None:
        if not name.strip():
            raise InvalidRequest("The name must not be empty.",
                               [{"field": "name", "message": "required"}])
        fields["name"] = name.strip()[:200]
    if notes is not None:
        fields["info"] = dict(ds.get("info") or {}, notes=notes[:10000])
    if fields:
        ctx.store.upsert_dataset(ds["id"], **fields)
    return ctx.store.get_dataset(ds["id"])


# The options a dataset was made with (DIGITS kept its form_data): what a
# clone takes and the DIGITS JSON shows. The rest of ``params`` is where the
# images come from (folders, textfile lists, an archive) and the limits of
# the build, set anew for every dataset.
OPTION_KEYS = ("name", "type", "image_width", "image_height", "channels", "resize_mode", "val_percent",
               "test_percent", "backend", "encoding", "compression", "per_class")


def options(ds: dict) -> dict:
    """The options ``ds`` was made with (``OPTION_KEYS`` of its params, and
    the server folders it was made from)."""
    params = (ds.get("info") or {}).get("params") or {}
    out = {k: params[k] for k in OPTION_KEYS if k in params}
    if params.get("folders"):
        out["folders"] = params["folders"]
    return out


def clone(ctx: Context, source: dict, owner: str, field: str = "clone") -> dict:
    """A new dataset made as ``source`` was (DIGITS's ``clone=<id>``): its
    options, from its server folders or server lists, checked against
    ``owner``'s data roots as now configured; an uploaded archive or list
    only while it is still stored (the build removes it once it ends),
    otherwise 400 naming ``field``."""
    params = (source.get("info") or {}).get("params") or {}
    if not params:
        raise InvalidRequest("This dataset cannot be cloned (it was not made from a form: a built-in one).",
                             [{"field": field, "message": "not clonable"}])
    base = {k: params[k] for k in OPTION_KEYS if k in params}
    base["per_class"] = dict(base.get("per_class") or {})
    upload = ctx.ws.dataset_dir(source["id"]) / "upload"
    gone = InvalidRequest("The images of the dataset to clone were uploaded and are no longer stored (a build "
                          "keeps its upload only until it ends): upload them again.",
                          [{"field": field, "message": "its upload is no longer stored"}])
    if params.get("folders"):
        folders = {side: str(data_roots.resolve(ctx, path, owner, field)) for side, path in params["folders"].items()}
        return _create(ctx, base, owner, folders=folders)
    if params.get("textfile"):
        spec = params["textfile"]
        paths = [spec["labels"], *(v["list"] for v in spec["splits"].values())]
        if any(Path(p).is_relative_to(upload) for p in paths):
            raise gone
        for path in paths:
            data_roots.resolve(ctx, path, owner, field, kind="file")
        lists = {"labels": {"server": spec["labels"]}, "shuffle": spec.get("shuffle", True),
                 "splits": {s: {"list": {"server": v["list"]}, "folder": v.get("folder")}
                            for s, v in spec["splits"].items()}}
        return _create(ctx, base, owner, lists=lists)
    try:
        archive = untrusted.open_file(upload / "archive", ctx.ws.root, max_size=ctx.cfg.max_upload_bytes)
    except OSError:
        raise gone from None
    with archive:
        return _create(ctx, base, owner, archive=archive)


def mean_jpg(ctx: Context, ds: dict) -> bytes | None:
    """The dataset's mean image as JPEG (DIGITS's /files/<id>/mean.jpg),
    written by its build; None when it has none (built before, or not done)."""
    try:
        data = untrusted.read_bytes(ctx.ws.dataset_dir(ds["id"]) / "mean.jpg", 8 << 20, ctx.ws.root)
    except OSError:
        return None
    return data if data.startswith(b"\xff\xd8\xff") else None


_PNG = b"\x89PNG\r\n\x1a\n"


def explore_index(ctx: Context, ds: dict, db: str) -> dict:
    """A done dataset's explore index of ``db`` ("train", "val", "test"):
    {"count": entries in the DB, "items": [(label, base64 PNG), ...]} (the
    first ones, app.caffe.datasets.write_explore_index). Written by the
    sandboxed build, so read capped through app.core.untrusted and checked:
    labels in range, PNG bytes (the browser decodes them, the host never
    does). not_found when the DB or its index does not exist."""
    import base64
    import binascii
    if db not in SPLITS:
        raise InvalidRequest("db must be train, val or test.", [{"field": "db", "message": "train, val or test"}])
    path = ctx.ws.dataset_dir(ds["id"]) / EXPLORE_DIR / f"{db}.json"
    try:
        raw = untrusted.read_bytes(path, EXPLORE_MAX_BYTES + 1, ctx.ws.root)
    except OSError:     # none (no such DB, or built before), or not a regular file
        raise NotFound(f"The dataset has no {db} DB to explore (or was built before this server wrote "
                       "explore indexes: clone it to rebuild).") from None
    # Only a subverted build writes anything else: refused, not served.
    bad = Conflict(f"The {db} explore index is damaged (not what a build writes): clone the dataset to rebuild it.")
    try:
        if len(raw) > EXPLORE_MAX_BYTES:
            raise bad
        index = json.loads(raw)
        count, items = index["count"], index["items"]
        n_classes = len((ds.get("info") or {}).get("labels") or [])
        if type(count) is not int or not isinstance(items, list) or count < len(items):
            raise bad
        out = []
        for item in items:
            label, png = item
            if type(label) is not int or not 0 <= label < n_classes or not isinstance(png, str) \
                    or not base64.b64decode(png[:16], validate=True).startswith(_PNG):
                raise bad
            out.append((label, png))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad from None
    return {"count": count, "items": out}
