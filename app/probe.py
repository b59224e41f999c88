"""What pycaffe this install has: run as ``python -m app.probe``.

The web process never imports caffe (it would load libcaffe and BLAS into
every gunicorn worker); it runs this once in a subprocess instead.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
import time


def main() -> None:
    """Print one JSON object describing the caffe package."""
    t0 = time.perf_counter()
    try:
        import caffe
    except Exception as exc:  # report any import failure, never crash
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return
    types = list(caffe.layer_type_list())
    print(json.dumps({
        "ok": True,
        "version": str(caffe.__version__),
        "python_layer": "Python" in types,
        "layer_types": len(types),
        "gpu_build": _gpu_build(caffe),
        "import_seconds": round(time.perf_counter() - t0, 3),
    }))


def _gpu_build(caffe) -> bool:
    # A CPU_ONLY build aborts on set_mode_gpu only when a net runs; the
    # build key written by scripts/build_caffe.sh says which variant this is.
    key = Path(caffe.__file__).with_name(".build-key")
    return key.exists() and key.read_text().startswith("gpu-")


def probe(python: str, timeout: float = 60) -> dict:
    """Run the probe with ``python`` and return its report."""
    try:
        out = subprocess.run([python, "-m", "app.probe"], capture_output=True,
                             text=True, timeout=timeout, check=False,
                             cwd=str(Path(__file__).resolve().parent.parent))
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        return {"ok": False, "error": f"probe failed: {exc}"}


if __name__ == "__main__":
    main()


def caffe_info(app) -> dict:
    """This install's pycaffe report, probed once per process (the web
    process never imports caffe itself)."""
    info = app.extensions.get("caffe_info")
    if info is None or not info.get("ok"):
        info = probe(str(app.config["CAFFE_PYTHON"]))
        app.extensions["caffe_info"] = info
    return info
