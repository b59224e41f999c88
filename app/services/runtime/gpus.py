"""GPUs on this machine: detection (NVML via nvidia-ml-py, else nvidia-smi),
live utilisation, and the device nodes a sandbox needs for one GPU."""
from __future__ import annotations

import glob
import shutil
import subprocess
import time
from functools import lru_cache


@lru_cache(maxsize=1)
def detect() -> tuple[dict, ...]:
    """The GPUs, as ({"index", "name", "memory_mb", "uuid"}, ...); () without any."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                            "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20),
                            "uuid": _text(pynvml.nvmlDeviceGetUUID(h))})
            return tuple(out)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library, no device: try nvidia-smi
        return _from_smi()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _from_smi() -> tuple[dict, ...]:
    if not shutil.which("nvidia-smi"):
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,uuid",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1],
                         "memory_mb": int(float(parts[2])), "uuid": parts[3]})
    return tuple(gpus)


_usage_cache: dict[int, tuple[float, dict]] = {}


def usage(index: int) -> dict | None:
    """Utilisation and memory of one GPU (cached 2 s); None when unknown."""
    now = time.monotonic()
    hit = _usage_cache.get(index)
    if hit and now - hit[0] < 2:
        return hit[1]
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            util, mem = pynvml.nvmlDeviceGetUtilizationRates(h), pynvml.nvmlDeviceGetMemoryInfo(h)
            value = {"utilization_percent": util.gpu, "memory_used_mb": mem.used // (1 << 20),
                     "memory_total_mb": mem.total // (1 << 20)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        value = None
    _usage_cache[index] = (now, value)
    return value


def device_nodes(index: int) -> list[str]:
    """The /dev nodes a process needs to use GPU ``index`` and no other."""
    nodes = [f"/dev/nvidia{index}", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
             "/dev/nvidia-modeset"]
    return [n for n in nodes if glob.glob(n)]


def parse_device(device: str, gpu_count: int, gpu_build: bool) -> str | None:
    """Check a job's ``device`` against this machine; the error message or None."""
    if device in ("auto", "cpu"):
        return None
    if gpu_count == 0:
        return f"device '{device}' asks for a GPU, but this machine has none (use auto or cpu)."
    if not gpu_build:
        return (f"device '{device}' asks for a GPU, but Caffe was built without CUDA here "
                "(rebuild with CAFFE_GPU=1 make run).")
    if device.startswith("gpu:") and int(device[4:]) >= gpu_count:
        return f"device '{device}': this machine has GPUs 0..{gpu_count - 1}."
    return None
