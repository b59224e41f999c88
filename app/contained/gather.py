"""Read files under the server's data roots, executed inside the sandbox:

    python -m app.contained.gather PATHS_JSON OUT_DIR MAX_EACH MAX_TOTAL

PATHS_JSON holds {"paths": [...], "roots": [...]}: real paths the web
accepted, and the roots bound read-only into this sandbox (nothing else of
the server's data is visible here). Writes OUT_DIR/files.tar, member ``i``
holding the i-th path's bytes, for each path that is a regular file inside
a root (links resolved), at most MAX_EACH bytes, until MAX_TOTAL bytes are
taken; then OUT_DIR/result.json. What could not be read is simply absent
(the caller reports it per line).
"""
from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile

from app.core.workspace import RESULT_FILE

TAR = "files.tar"     # app.services.runtime.data_roots.GATHER_TAR


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def gather(paths: list[str], roots: list[str], out: str, max_each: int, max_total: int) -> dict:
    """Write the tar; {"read": n, "missing": [indices]}."""
    missing, total = [], 0
    with tarfile.open(os.path.join(out, TAR), "w") as tf:
        for i, path in enumerate(paths):
            try:
                if not _inside(path, roots):
                    raise OSError("outside the data roots")
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode) or st.st_size > max_each:
                        raise OSError("not a regular file, or too large")
                    data = fh.read(max_each + 1)
            except OSError:
                missing.append(i)
                continue
            if len(data) > max_each or total + len(data) > max_total:
                missing.append(i)
                continue
            total += len(data)
            info = tarfile.TarInfo(str(i))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return {"read": len(paths) - len(missing), "missing": missing}


def main(argv: list[str]) -> None:
    """Entry point: always writes result.json."""
    spec = json.loads(open(argv[0]).read())
    out = argv[1]
    try:
        result = {"ok": True, **gather(list(spec["paths"]), list(spec["roots"]), out, int(argv[2]), int(argv[3]))}
    except (OSError, ValueError, KeyError) as exc:
        result = {"ok": False, "message": str(exc)[:500]}
    with open(os.path.join(out, RESULT_FILE), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
