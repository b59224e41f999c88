"""What pycaffe this install has: run as ``python -m app.contained.probe``.

The web process never imports caffe (it would load libcaffe and BLAS into
every gunicorn worker); it runs this once in a subprocess instead.
"""
from __future__ import annotations

import json
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


if __name__ == "__main__":
    main()
