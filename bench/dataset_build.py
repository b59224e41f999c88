"""Dataset build speed (issue 24 part 2): 30,000 28x28 grey PNGs in 10 class
folders, zipped (scikit-learn's digits, shifted and speckled by a seeded
generator: the same bytes every run), built

* bare: by one fresh Python process doing what the builder does, serially,
  outside the sandbox and the service: zip read, PIL decode, resize, a
  Caffe Datum per image into an LMDB (timed inside it: its start-up and
  imports are not counted);
* service: through the REST API of a served instance (`flask --app wsgi
  serve`, as `make run`), from the first byte of the upload until GET says
  done (polled every 50 ms): upload, queue, sandbox, decoding pool, LMDBs,
  mean, publish;
* service_serial: the same, served with LAYERBENCH_DATASET_WORKERS=1.

Bare and service rounds are interleaved; medians. ``ratio``: service
images/s over bare images/s. Target (issue 24): >= 1.2 on the 2-core box.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .common import ROOT, cleanup, free_port, make_app, median, stop, temp_root
from .inference import _Api, _multipart, _serve

IMAGES, CLASSES, SIDE = 30_000, 10, 28


def archive(path: Path, n: int = IMAGES, classes: int = CLASSES) -> int:
    """Write the benchmark's zip to ``path``; its size in bytes."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for c in range(classes):
            base = [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((SIDE, SIDE),
                                                                                        Image.BILINEAR))
                    for im in digits.images[digits.target == c]]
            for k in range(n // classes):
                img = np.roll(base[k % len(base)], tuple(int(v) for v in rng.integers(-2, 3, 2)), (0, 1))
                speckle = rng.integers(0, 16, img.shape) * (rng.random(img.shape) < 0.03)
                buf = io.BytesIO()
                Image.fromarray(np.clip(img.astype(int) + speckle, 0, 255).astype(np.uint8)).save(buf, "PNG")
                zf.writestr(f"digit_{c}/{k:05d}.png", buf.getvalue())
    return path.stat().st_size


def bare(zip_path: str, out: str) -> float:
    """One process, serially: zip read, PIL decode, resize, Datum, LMDB;
    the seconds it took (imports done before the clock starts)."""
    import lmdb
    import numpy as np
    from PIL import Image

    from app.caffe.proto import caffe_pb2
    datum = caffe_pb2().Datum
    t0 = time.perf_counter()
    with zipfile.ZipFile(zip_path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        label = {name: k for k, name in enumerate(sorted({i.filename.split("/")[0] for i in infos}))}
        env = lmdb.open(out, map_size=1 << 30)
        with env.begin(write=True) as txn:
            for k, info in enumerate(infos):
                with Image.open(io.BytesIO(zf.read(info))) as im:
                    im.load()
                    arr = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BILINEAR))
                txn.put(f"{k:08d}".encode(), datum(channels=1, height=SIDE, width=SIDE, data=arr.tobytes(),
                                                   label=label[info.filename.split("/")[0]]).SerializeToString())
        env.close()
    return time.perf_counter() - t0


def _bare_run(zip_path: Path, scratch: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=scratch))
    code = "import sys; from bench.dataset_build import bare; print(bare(sys.argv[1], sys.argv[2]))"
    done = subprocess.run([sys.executable, "-c", code, str(zip_path), str(out)], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    cleanup(out)
    return float(done.stdout.split()[-1])


def _service_run(api: _Api, root: Path, body: bytes, ctype: str) -> tuple[float, str]:
    """Upload to done, in seconds; how the builder decoded (its build.log)."""
    t0 = time.perf_counter()
    ds = api.call("POST", "/api/v1/datasets", body, ctype)
    while ds["status"] not in ("done", "error"):
        time.sleep(0.05)
        ds = api.call("GET", f"/api/v1/datasets/{ds['id']}")
    seconds = time.perf_counter() - t0
    if ds["status"] != "done" or ds["progress_images"] != {"done": IMAGES, "total": IMAGES}:
        raise RuntimeError(f"the benchmark's dataset ended {ds['status']}: {ds.get('error')} {ds['progress_images']}")
    log = (root / "jobs" / "datasets" / ds["id"] / "build.log").read_text()
    _delete(api, ds["id"])
    how = re.search(r"decoding \d+ files in (.*)", log)
    return seconds, how.group(1) if how else "?"


def _delete(api: _Api, ds_id: str) -> None:
    # 204, no JSON: not through _Api.call
    api.conn.request("DELETE", f"/api/v1/datasets/{ds_id}", headers=api.auth)
    api.conn.getresponse().read()


def run(rounds: int = 3) -> dict:
    """``rounds`` interleaved bare and service builds, then ``rounds``
    serial service builds; medians, images/s and the ratio."""
    root = temp_root()
    scratch = Path(tempfile.mkdtemp(prefix="layerbench-bench-ds-"))
    zip_path = scratch / "digits30k.zip"
    size = archive(zip_path)
    body, ctype = _multipart([("name", None, b"bench 30k"), ("image_width", None, str(SIDE).encode()),
                              ("image_height", None, str(SIDE).encode()), ("channels", None, b"1"),
                              ("resize_mode", None, b"squash"), ("val_percent", None, b"25"),
                              ("archive", "digits30k.zip", zip_path.read_bytes())])
    port = free_port()
    make_app(root)
    token = next(line.split()[-1] for line in (root / "instance" / "initial-credentials.txt")
                 .read_text().splitlines() if line.startswith("token:"))
    proc = None
    try:
        bare_s, service_s, serial_s, how = [], [], [], set()
        proc = _serve(root, port)
        api = _Api(port, token)
        for _ in range(rounds):
            bare_s.append(_bare_run(zip_path, scratch))
            seconds, used = _service_run(api, root, body, ctype)
            service_s.append(seconds)
            how.add(used)
        stop(proc)
        proc = _serve(root, port, LAYERBENCH_DATASET_WORKERS="1")
        api = _Api(port, token)
        for _ in range(rounds):
            seconds, used = _service_run(api, root, body, ctype)
            serial_s.append(seconds)
            how.add(used)
        bare_rate, service_rate = IMAGES / median(bare_s), IMAGES / median(service_s)
        return {"images": IMAGES, "zip_mb": round(size / 2 ** 20, 1), "rounds": rounds,
                "bare_s": [round(s, 3) for s in bare_s], "service_s": [round(s, 3) for s in service_s],
                "service_serial_s": [round(s, 3) for s in serial_s],
                "bare_images_per_s": round(bare_rate), "service_images_per_s": round(service_rate),
                "service_serial_images_per_s": round(IMAGES / median(serial_s)),
                "ratio": round(service_rate / bare_rate, 2), "decoding": sorted(how), "target_ratio": 1.2}
    finally:
        if proc is not None:
            stop(proc)
        cleanup(root)
        cleanup(scratch)


if __name__ == "__main__":
    print(json.dumps(run()))
