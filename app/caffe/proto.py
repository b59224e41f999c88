"""Caffe's protobuf schema without libcaffe.

``caffe/proto/caffe_pb2.py`` is plain generated protobuf code; loading it from
the installed package's file (not through ``import caffe``) gives the web
process prototxt parsing without loading _caffe.so, BLAS or user code.

Loaded once per process, completely, under a lock: a gunicorn worker's first
requests arrive on several threads at once, and a module published before it
finished loading (or loaded twice: "duplicate file name caffe/proto/
caffe.proto" in protobuf's default pool) broke the worker until restart.
``create_app`` loads it before serving.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

NAME = "caffe.proto.caffe_pb2"
_lock = threading.Lock()
_module: ModuleType | None = None


def caffe_pb2() -> ModuleType:
    """The caffe_pb2 module (shared with pycaffe's when caffe is imported)."""
    if _module is not None:
        return _module
    with _lock:
        return _load()


def _load() -> ModuleType:
    global _module
    if _module is not None:
        return _module
    existing = sys.modules.get(NAME)
    if existing is not None and hasattr(existing, "NetParameter"):
        _module = existing          # pycaffe got here first (inside a runner)
        return _module
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pycaffe is not installed in this environment (run `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "proto" / "caffe_pb2.py"
    mod_spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    # Registered under pycaffe's own name, and only once complete, so that a
    # later `import caffe` in this process reuses it instead of registering
    # caffe.proto a second time.
    sys.modules[NAME] = module
    _module = module
    return module
