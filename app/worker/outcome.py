"""How a training run ended: its final job status and error, from what the
runner left (result.json), how its process ended, and the end of its log.

Failures of the user's job are ``error``: a Python exception in a layer, a
Caffe CHECK failure, a crash in native code, a limit of the job (CPU time,
file size). Deaths that come from outside are ``interrupted``, resumable
from the last complete snapshot: a signal sent to the process (SIGKILL from
an operator or the kernel's OOM killer), and running out of memory.
"""
from __future__ import annotations

import signal

from app.caffe.glog import fatal_from_log, python_error_from_log
from app.core.status import JobStatus, RunOutcome
from app.core.workspace import LAYER_FILE

# Sent to a process from outside; nothing in the job raises them itself.
EXTERNAL = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE}
# What allocation failures print under RLIMIT_AS: C++ (Caffe's host
# allocations), Python, and libc's strerror(ENOMEM).
OOM_TEXT = ("std::bad_alloc", "host allocation of size", "MemoryError", "Cannot allocate memory")
OOM_WINDOW = 16 << 10   # the end of the log, where a death by OOM leaves its words
RESUME_HINT = "resume the job to continue from its last complete snapshot."
# A full jobs volume: what Python and Caffe (writing a snapshot) say.
DISK_FULL_TEXT = ("No space left on device", "[Errno 28]", "SerializeToOstream")


def disk_full(free_mb: int | None = None) -> dict:
    """The interrupted job's error when the jobs volume filled up."""
    where = f" ({free_mb} MiB free)" if free_mb is not None else ""
    return {"stage": "worker", "message": f"No space left on the jobs volume{where}: the last "
            f"complete snapshot is kept; after space is freed, {RESUME_HINT}"}


def describe_signal(signum: int) -> str:
    """'signal 9 (SIGKILL)'."""
    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"


def death_signal(returncode: int) -> int | None:
    """The signal that ended the process, from its exit status: Popen gives
    -N, bwrap (whose child it was) exits 128+N, as a shell does."""
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + signal.NSIG:
        return returncode - 128
    return None


def _clip(err: dict) -> dict:
    return {k: (v[:8000] if isinstance(v, str) else v) for k, v in err.items()
            if k in ("stage", "message", "traceback", "file", "line", "layer")}


def out_of_memory(limit_mib: int, detail: str | None = None, gpu: bool = False,
                  cgroup: bool = False) -> dict:
    """The interrupted job's error when an allocation failed."""
    if gpu:
        what = "out of GPU memory"
    elif cgroup:
        what = (f"out of memory: limit {limit_mib} MiB for all its processes together "
                "(LAYERBENCH_MEMORY_LIMIT_MB)")
    else:
        what = (f"out of memory: limit {limit_mib} MiB of address space "
                "(LAYERBENCH_MEMORY_LIMIT_MB)")
    err = {"stage": "train", "message": f"The training process ran {what}; after allowing more "
           f"(or in a clone with a smaller batch) {RESUME_HINT}"}
    if detail:
        err["traceback"] = detail
    return err


def classify(result: dict | None, returncode: int, aborting: bool, tail: str,
             memory_limit_mib: int, free_mb: int | None = None,
             oom_killed: bool = False) -> tuple[str, dict | None]:
    """(status, error) of a run whose process has ended. ``result`` is the
    runner's result.json (None when it wrote none), ``tail`` the end of its
    log, ``free_mb`` the space left on the jobs volume."""
    status = (result or {}).get("status")
    if status in (RunOutcome.DONE.value, RunOutcome.ABORTED.value):
        return status, None
    # The server's disk, not the job: resumable once there is room again.
    said = str(((result or {}).get("error") or {}).get("message", "")) + tail[-OOM_WINDOW:]
    if (any(text in said for text in DISK_FULL_TEXT) and (free_mb is None or free_mb < 64)) or \
            (free_mb == 0 and status != RunOutcome.ERROR.value):   # too full even to say so
        return JobStatus.INTERRUPTED.value, disk_full(free_mb)
    if status == RunOutcome.ERROR.value and isinstance(result.get("error"), dict):
        err = _clip(result["error"])
        if str(err.get("message", "")).startswith("MemoryError"):
            return JobStatus.INTERRUPTED.value, dict(out_of_memory(memory_limit_mib), **{
                k: err[k] for k in ("file", "line", "traceback") if k in err})
        return JobStatus.ERROR.value, err
    if aborting:
        return JobStatus.ABORTED.value, None
    if oom_killed:   # the run's cgroup hit its memory limit: the kernel said so
        return JobStatus.INTERRUPTED.value, out_of_memory(memory_limit_mib, tail[-4000:], cgroup=True)
    return _died(returncode, tail, memory_limit_mib)


def _died(returncode: int, tail: str, memory_limit_mib: int) -> tuple[str, dict | None]:
    """A run that ended without a result: the process died."""
    sig = death_signal(returncode)
    context = tail[-4000:]
    if sig in EXTERNAL:
        return JobStatus.INTERRUPTED.value, {"stage": "worker", "message": (
            f"The training process was killed by {describe_signal(sig)}, from outside the job "
            f"(an operator, or the system running out of memory); {RESUME_HINT}")}
    fatal = fatal_from_log(tail)
    if fatal["message"] and "out of memory" in fatal["message"]:   # cudaErrorMemoryAllocation
        return JobStatus.INTERRUPTED.value, out_of_memory(memory_limit_mib, context, gpu=True)
    if any(text in tail[-OOM_WINDOW:] for text in OOM_TEXT):
        return JobStatus.INTERRUPTED.value, out_of_memory(memory_limit_mib, context)
    if fatal["message"]:
        return JobStatus.ERROR.value, _clip({"stage": "caffe", "message": fatal["message"],
                                             "layer": fatal["layer"], "traceback": context})
    py = python_error_from_log(tail)
    if py:
        return JobStatus.ERROR.value, _clip({"stage": "train", "message": py["message"],
                                             "traceback": py["traceback"], "line": py["line"],
                                             "file": LAYER_FILE if py["line"] else None})
    if sig == signal.SIGXCPU:
        message = "The training process used up its CPU time limit."
    elif sig == signal.SIGXFSZ:
        message = "The training process wrote a file larger than its file-size limit."
    elif sig is not None:
        message = f"The training process crashed ({describe_signal(sig)})."
    else:
        message = f"The training process exited with status {returncode} without a result."
    return JobStatus.ERROR.value, {"stage": "train", "message": message, "traceback": context}
