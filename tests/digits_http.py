"""A DIGITS-script-like HTTP client for the live server (the ``server``
fixture): every status code and redirect seen as is, multipart uploads,
PUT and DELETE, an API token like a DIGITS script would send its cookie."""
from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Reply:
    """status, headers, body of one answer; ``json`` and ``text`` decoded."""

    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Digits:
    """Calls a live server the way DIGITS's view tests call DIGITS."""

    def __init__(self, url: str, token: str | None = None, basic: tuple[str, str] | None = None) -> None:
        import base64
        self.url = url
        self.authorization = f"Bearer {token}" if token else \
            "Basic " + base64.b64encode(":".join(basic).encode()).decode()
        self.opener = urllib.request.build_opener(_NoRedirect)

    def call(self, method: str, path: str, data: dict | None = None, timeout: float = 120) -> Reply:
        """``data`` values: text, numbers, or (filename, bytes) for a file."""
        headers = {"Authorization": self.authorization}
        body = None
        if data is not None:
            boundary = uuid.uuid4().hex
            parts = []
            for k, v in data.items():
                if isinstance(v, tuple):
                    disp, blob = f'form-data; name="{k}"; filename="{v[0]}"', v[1]
                else:
                    disp, blob = f'form-data; name="{k}"', str(v).encode()
                parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + blob + b"\r\n")
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def post(self, path: str, data: dict | None = None) -> Reply:
        return self.call("POST", path, data if data is not None else {})

    def status(self, kind: str, job_id: str) -> str:
        reply = self.get(f"/{kind}/{job_id}/status")
        assert reply.status == 200, (reply.status, reply.text[:500])
        return reply.json["status"]

    def wait(self, kind: str, job_id: str, timeout: float = 120) -> str:
        """DIGITS's job_wait_completion: poll until Done, Abort or Error."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            word = self.status(kind, job_id)
            if word in ("Done", "Abort", "Error"):
                return word
            assert time.monotonic() < deadline, f"{kind} {job_id} stayed {word}"
            time.sleep(0.2)


def png(array: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) or (H, W, 3) uint8 array."""
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return out.getvalue()


def members(blob: bytes, fmt: str) -> list[str]:
    """The file names inside a downloaded archive of ``fmt``."""
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return zf.namelist()
    with tarfile.open(fileobj=io.BytesIO(blob), mode={"tar": "r:", "tar.gz": "r:gz", "tar.bz2": "r:bz2"}[fmt]) as tf:
        return tf.getnames()


def colour_imageset(per_class: int = 8, size: int = 10) -> dict[str, bytes]:
    """DIGITS's test imageset in spirit: three classes of solid-colour images
    with noise (red, green, blue), as class folders."""
    rng = np.random.default_rng(0)
    files = {}
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[:, :, k] = 200 + rng.integers(0, 55, (size, size), dtype=np.uint8)
            files[f"imageset/{name}/{i}.png"] = png(img)
    return files


def serve(root: Path, sample_datasets: Path, extra_env: dict[str, str] | None = None):
    """helpers.serve (kept under this name for the DIGITS tests)."""
    from helpers import serve as _serve
    return _serve(root, sample_datasets, extra_env)
