"""What layer code can import, asked inside the sandbox exactly as a job runs:

    python -m app.contained.envprobe OUT_JSON

The same sys.path a job's layer code gets (app.core.layer_code.activate: the
administrator's packages after the service's), then every installed
distribution with its version and where it comes from, the Python version,
and what this Caffe build has. Never imports user code.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from app.core.tracebacks import LAYER_ENV_VAR



def packages() -> list[dict]:
    """Installed distributions on sys.path: name, version, origin (service or
    admin); where one name is installed twice, the first on the path wins."""
    extra = os.environ.get(LAYER_ENV_VAR) or ""
    seen: dict[str, dict] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if not name:
            continue
        key = name.lower().replace("_", "-")
        origin = "admin" if extra and str(dist.locate_file("")).startswith(extra) else "service"
        if key in seen:
            seen[key].setdefault("shadowed", []).append({"version": dist.version, "origin": origin})
            continue
        seen[key] = {"name": name, "version": dist.version, "origin": origin}
    return sorted(seen.values(), key=lambda d: d["name"].lower())


def caffe_build() -> dict:
    """Version, CPU/GPU variant and layer types of the pycaffe in use."""
    try:
        import caffe
    except Exception as exc:   # report, never crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    types = sorted(caffe.layer_type_list())
    key_file = Path(caffe.__file__).with_name(".build-key")
    key = key_file.read_text().strip() if key_file.exists() else ""
    return {"ok": True, "version": str(caffe.__version__), "variant": key.split("-")[0] or "unknown",
            "gpu_build": key.startswith("gpu-"), "with_python_layer": "Python" in types,
            # Compile-time switches this build is known to use (scripts/build_caffe.sh).
            "flags": ["USE_LMDB", "USE_LEVELDB", "USE_HDF5", "WITH_PYTHON_LAYER"]
            + (["USE_CUDA"] if key.startswith("gpu-") else ["CPU_ONLY"]),
            "layer_types": types}


def main(argv: list[str]) -> None:
    """Write the report to OUT_JSON."""
    extra = os.environ.get(LAYER_ENV_VAR)
    if extra and os.path.isdir(extra) and extra not in sys.path:
        sys.path.append(extra)   # as app.core.layer_code.activate does for a job
    report = {"python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
              "packages": packages(), "caffe": caffe_build()}
    Path(argv[0]).write_text(json.dumps(report))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
