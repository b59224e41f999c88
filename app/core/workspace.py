"""Per-job directories: the only module that builds job and dataset paths.

``<jobs_dir>/<job_id>/input``  what the sandbox reads (read-only there):
                               the network as sent, digits_python_layers.py,
                               train_val / deploy / solver prototxts, job.json
``<jobs_dir>/<job_id>/output`` the one directory user code may write:
                               train.log (written by the worker, see
                               joblog.py), metrics.jsonl, snapshots
``<jobs_dir>/datasets/<id>``   datasets
Writes are atomic (temp file + rename); reads of anything user code could
have touched never follow symlinks and are size-capped.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from app.core import untrusted

LAYER_FILE = "digits_python_layers.py"
# A Python 2 layer file as uploaded, kept beside LAYER_FILE when the DIGITS
# routes (or python2=convert) stored its conversion (app.caffe.py2convert).
# Not a .py: nothing imports it.
LAYER_PY2_ORIGINAL = "digits_python_layers.py2.orig"
NETWORK_FILE = "network.prototxt"
# Written by the validator beside its report just before user code runs: a
# validator that dies without a report and without this file never reached
# the upload (the server's fault, not the user's).
VALIDATION_STARTED = "user-code-started"
# The training runner's output (runner protocol). Caffe writes a snapshot pair
# into SNAPSHOT_STAGING; publish_snapshot moves it to its final names and only
# then writes the marker that makes it complete (see complete_snapshots).
SNAPSHOT_PREFIX = "snapshot"
SNAPSHOT_STAGING = ".snapshot-staging"
SNAPSHOT_MARKER = ".complete"
SNAPSHOT_FILES = (".caffemodel", ".solverstate")
# ---- the job/dataset layout and the worker<->runner protocol ----------------
# Every file name both sides use, defined once. A job directory holds input/
# (read-only to the sandbox), output/ (the runner's, writable), control/ (the
# worker's channel to the runner, read-only to it), validation/ and the log.
CONTROL_DIR = "control"
ABORT_FILE = "abort"                   # CONTROL_DIR/abort: stop with a snapshot
RESUME_FILE = "resume.json"            # CONTROL_DIR: {"solverstate": name} to restore
RESULT_FILE = "result.json"            # written last by a runner: how it ended
PROGRESS_FILE = "progress.json"        # iteration, progress, eta (replaced atomically)
METRICS_FILE = "metrics.jsonl"         # one record per line: train, val, lr, snapshot, resumed,
#                                        and restarted (written by app.worker.heartbeat)
JOB_META_FILE = "job.json"             # input/: max_iter, iters_per_epoch, dataset, device
TRAIN_VAL_FILE = "train_val.prototxt"  # input/: the train and val nets
DEPLOY_FILE = "deploy.prototxt"        # input/: the deploy net
SOLVER_FILE = "solver.prototxt"        # input/: the generated solver
WEIGHTS_FILE = "weights.caffemodel"    # input/: starting weights (fine-tuning), copied by layer name
SHUFFLED_TRAIN_DB = "train_db_shuffled"  # output/: the job's shuffled copy of the train LMDB
PRETRAINED_DIR = "pretrained"          # ROOT/pretrained/<id>/: kept pretrained models
VALIDATION_DIR = "validation"          # the validator's report and log
REPORT_FILE = "report.json"
VALIDATE_LOG = "validate.log"
SANDBOX_LOG = "sandbox.log"            # what bwrap itself printed
DOWNLOAD_FILE = "download.tar.gz"
DATASET_INFO_FILE = "info.json"        # a dataset's counts, labels, shape
DATASET_PARAMS_FILE = "params.json"    # a dataset build's parameters
# CONTROL_DIR/run.json: {"run": N}, the run generation allowed to write
# OUTPUT_DIR; a training process whose generation is no longer there stops.
RUN_FILE = "run.json"
LOG_FILE = "train.log"
LOG_LAYOUT = "train.log.layout"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def snapshot_name(iteration: int, suffix: str) -> str:
    """The file name of one snapshot file, e.g. ``snapshot_iter_42.solverstate``."""
    return f"{SNAPSHOT_PREFIX}_iter_{iteration}{suffix}"


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot pair: weights and solver state of one iteration."""

    iteration: int
    caffemodel: Path
    solverstate: Path
    sizes: tuple[int, int] | None = None   # (caffemodel, solverstate) as the marker records them


class Workspace:
    """Paths and file operations under one data root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # ---- paths ----------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """The job's directory (not created)."""
        return self._child(self.root, job_id)

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        """(train.log, its layout file). They live in the job directory, not in
        the output directory the sandbox may write: contained code can then
        neither replace, grow nor truncate the log the worker keeps for it.
        (Jobs from before kept it in output/; read there when it is.)"""
        for base in (self.job_dir(job_id), self.output_dir(job_id)):
            if (base / LOG_FILE).exists():
                return base / LOG_FILE, base / LOG_LAYOUT
        return self.job_dir(job_id) / LOG_FILE, self.job_dir(job_id) / LOG_LAYOUT

    def dataset_dir(self, dataset_id: str) -> Path:
        """A dataset's directory (not created)."""
        return self._child(self.root / "datasets", dataset_id)

    def pretrained_dir(self, model_id: str) -> Path:
        """A kept pretrained model's directory (not created)."""
        return self._child(self.root / PRETRAINED_DIR, model_id)

    def scratch_dir(self) -> Path:
        """A fresh private directory for a validation run."""
        base = self.root / ".scratch"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base))
        path.chmod(0o755)  # traversable by the sandbox uid
        return path

    @staticmethod
    def _child(parent: Path, name: str) -> Path:
        if not _ID.match(name or "") or name in {"datasets", ".scratch", PRETRAINED_DIR}:
            raise ValueError(f"invalid id {name!r}")
        path = (parent / name).resolve()
        if path.parent != parent.resolve():
            raise ValueError(f"invalid id {name!r}")
        return path

    # ---- lifecycle ---------------------------------------------------------------
    def create_job(self, job_id: str) -> Path:
        """Create the job's directory tree; fails if it already exists."""
        d = self.job_dir(job_id)
        d.mkdir(parents=True)
        (d / "input").mkdir()
        (d / "output").mkdir()
        return d

    def delete(self, path: Path) -> None:
        """Remove a job or dataset directory (never follows links out). It is
        renamed away first, in one step: a build that ended a moment ago may
        still be removing its own leftovers inside it, and the two removals
        must not trip over each other's vanished entries."""
        path = Path(path)
        if not (path.resolve().is_relative_to(self.root) and path.exists()):
            return
        gone = path.with_name(f".deleted-{path.name}-{os.urandom(4).hex()}")
        try:
            os.rename(path, gone)
        except FileNotFoundError:
            return

        def vanished(_fn, _name, exc_info):
            if not issubclass(exc_info[0], FileNotFoundError):
                raise exc_info[1]
        shutil.rmtree(gone, onerror=vanished)

    # ---- writes --------------------------------------------------------------------
    @staticmethod
    def write_atomic(path: Path, data: bytes | str) -> None:
        """Write ``data`` to ``path`` via a temp file and rename."""
        raw = data.encode() if isinstance(data, str) else data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o644)  # the sandbox uid reads job inputs
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def write_json(path: Path, obj: object) -> None:
        Workspace.write_atomic(path, json.dumps(obj, indent=1))

    @staticmethod
    def save_stream(path: Path, stream: IO[bytes], limit: int) -> int:
        """Copy ``stream`` to ``path`` atomically in chunks; at most ``limit`` bytes."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        total = 0
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(64 * 1024):
                    total += len(chunk)
                    if total > limit:
                        raise ValueError(f"larger than {limit} bytes")
                    fh.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return total

    # ---- reads of untrusted output ---------------------------------------------------
    # Everything here goes through app.core.untrusted: no link below the
    # (resolved) workspace root is followed, the open descriptor is checked.
    @staticmethod
    def read_capped(path: Path, limit: int, offset: int = 0) -> bytes:
        """At most ``limit`` bytes of a regular file (untrusted.read_bytes)."""
        return untrusted.read_bytes(path, limit, offset=offset)

    @staticmethod
    def open_regular(path: Path, max_size: int | None = None) -> IO[bytes]:
        """A regular file opened for reading (untrusted.open_file)."""
        return untrusted.open_file(path, max_size=max_size)

    @staticmethod
    def file_size(path: Path) -> int:
        """Size of a regular file (0 for anything else, links included)."""
        return untrusted.size_of(path)

    @staticmethod
    def snapshots(directory: Path, suffix: str) -> dict[int, Path]:
        """Caffe snapshots (``*_iter_N<suffix>``, regular files only) by iteration."""
        out = {}
        for p in Workspace.regular_files(directory, suffix):
            tail = p.name[:-len(suffix)].rsplit("_", 1)[-1]
            if tail.isdigit():
                out[int(tail)] = p
        return out

    @staticmethod
    def complete_snapshots(directory: Path) -> dict[int, Snapshot]:
        """Snapshot pairs that are whole, by iteration: both files regular and
        of the sizes their completion marker records. What resume, download
        and inference may use; a pair torn by a kill or a full disk is not.
        A pair listed here is only a candidate: whoever reads one opens it
        with ``open_snapshot``, which checks the open descriptor again (the
        files may have been swapped since this listing).

        A directory without any marker holds snapshots from before markers
        existed: there every pair present under its final names counts."""
        entries = {e.name: e for e in untrusted.list_dir(directory) if not e.is_dir}
        markers = {it: n for it, n in _by_iteration(entries, SNAPSHOT_MARKER).items()}
        out = {}
        if not markers:
            states = _by_iteration(entries, ".solverstate")
            for it, model in _by_iteration(entries, ".caffemodel").items():
                if it in states and entries[model].size and entries[states[it]].size:
                    out[it] = Snapshot(it, directory / model, directory / states[it])
            return out
        for it, marker in markers.items():
            try:
                sizes = json.loads(untrusted.read_bytes(directory / marker, 4096))
            except (OSError, ValueError):
                continue
            names = [snapshot_name(it, sfx) for sfx in SNAPSHOT_FILES]
            if isinstance(sizes, dict) and all(
                    type(sizes.get(sfx)) is int and sizes[sfx] > 0 and name in entries
                    and entries[name].size == sizes[sfx] for sfx, name in zip(SNAPSHOT_FILES, names)):
                out[it] = Snapshot(it, *(directory / n for n in names),
                                   sizes=(sizes[".caffemodel"], sizes[".solverstate"]))
        return out

    @staticmethod
    def open_snapshot(snap: Snapshot, suffix: str = ".caffemodel") -> IO[bytes]:
        """One file of a complete pair, opened and checked on its descriptor:
        regular, one link, and exactly the size its marker recorded."""
        path = snap.caffemodel if suffix == ".caffemodel" else snap.solverstate
        want = None
        if snap.sizes is not None:
            want = snap.sizes[0] if suffix == ".caffemodel" else snap.sizes[1]
        return untrusted.open_file(path, size=want)

    @staticmethod
    def publish_snapshot(staging: Path, directory: Path, iteration: int) -> Snapshot:
        """Give a pair Caffe wrote into ``staging`` its final names in
        ``directory``, durably: each file is synced before its rename, and the
        marker that makes the pair complete is written last. A kill at any
        point leaves either the previous state or a complete pair."""
        sizes = {}
        for sfx in SNAPSHOT_FILES:
            fd = os.open(staging / snapshot_name(iteration, sfx), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
                sizes[sfx] = os.fstat(fd).st_size
            finally:
                os.close(fd)
        marker = directory / snapshot_name(iteration, SNAPSHOT_MARKER)
        # A marker left from an earlier pair of this iteration must not vouch
        # for the files while they are being replaced.
        marker.unlink(missing_ok=True)
        for sfx in SNAPSHOT_FILES:
            os.replace(staging / snapshot_name(iteration, sfx), directory / snapshot_name(iteration, sfx))
        _fsync_dir(directory)
        tmp = staging / (marker.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, json.dumps(sizes).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, marker)
        _fsync_dir(directory)
        return Snapshot(iteration, *(directory / snapshot_name(iteration, sfx) for sfx in SNAPSHOT_FILES))

    @staticmethod
    def display_name(name: str | None, fallback: str) -> str:
        """A client-sent file name reduced to printable metadata (never a path)."""
        base = (name or fallback).replace("\\", "/").rsplit("/", 1)[-1]
        return "".join(ch for ch in base if ch.isprintable())[:200] or fallback

    @staticmethod
    def regular_files(directory: Path, suffix: str) -> Iterator[Path]:
        """Regular files (never links) directly in ``directory`` ending in ``suffix``."""
        for e in untrusted.list_dir(directory):
            if not e.is_dir and e.name.endswith(suffix):
                yield Path(directory) / e.name


def _by_iteration(entries, suffix: str) -> dict[int, str]:
    # ``snapshot_iter_N<suffix>`` names among listed entries, by N.
    out = {}
    for name in entries:
        if name.endswith(suffix):
            tail = name[:-len(suffix)].rsplit("_", 1)[-1]
            if tail.isdigit():
                out[int(tail)] = name
    return out


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once its directory is synced.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def user_line(tb) -> int | None:
    """The innermost traceback line that lies in the uploaded layer file."""
    line = None
    for frame in traceback.extract_tb(tb):
        if Path(frame.filename).name == LAYER_FILE:
            line = frame.lineno
    return line
