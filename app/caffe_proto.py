"""Caffe's protobuf schema without libcaffe.

``caffe/proto/caffe_pb2.py`` is plain generated protobuf code; loading it from
the installed package's file (not through ``import caffe``) gives the web
process prototxt parsing without loading _caffe.so, BLAS or user code.
"""
from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType


@lru_cache(maxsize=1)
def caffe_pb2() -> ModuleType:
    """The caffe_pb2 module (shared with pycaffe's when caffe is imported)."""
    if "caffe.proto.caffe_pb2" in sys.modules:
        return sys.modules["caffe.proto.caffe_pb2"]
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pycaffe is not installed in this environment (run `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "proto" / "caffe_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("caffe.proto.caffe_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    # Registered under pycaffe's own name so that a later `import caffe` in the
    # same process reuses it instead of registering caffe.proto twice.
    sys.modules["caffe.proto.caffe_pb2"] = module
    mod_spec.loader.exec_module(module)
    return module
