"""What a Python layer does to real data, seen at validation (inside the sandbox).

`capture` runs one more forward pass of a stage net, one layer at a time, and
keeps what the chosen layers read and wrote: for each of their bottoms (taken
just before the layer runs, so an in-place layer's input is not lost) and
tops, the statistics of the whole blob and a copy of its first examples.
`view` turns that into the report's `layer_views` entry: shape, mean, std,
min, max and NaN/Inf counts per blob; for image-shaped blobs (N×C×H×W,
C 1 or 3, H and W at least 8) per-channel statistics and up to three examples
as small PNG data URIs, bottom beside top, so a user sees an occlusion square
or a colour jitter before an hour of training. The gradient check
(gradcheck.py) feeds on the same copies.
"""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

EXAMPLES = 3          # examples shown per image-shaped blob
KEEP_ROWS = 4         # rows copied per blob: the examples, and the gradient check's small batch
MAX_SIDE = 96         # longer PNGs are subsampled to this many pixels a side (the report stays small)
FULL_COPY = 1 << 18   # blobs up to this many values are copied whole (a layer that needs its full batch)
MAX_PICTURE_BYTES = 1 << 20   # data URIs per report


def stats(a: np.ndarray) -> dict:
    """shape, mean, std, min, max and NaN/Inf counts of one array (over its finite values)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    vals = a[finite] if (nan or inf) else a.ravel()
    out = {"shape": list(a.shape), "nan": nan, "inf": inf}
    if vals.size:
        out.update(mean=_r(vals.mean()), std=_r(vals.std()), min=_r(vals.min()), max=_r(vals.max()))
    else:
        out.update(mean=None, std=None, min=None, max=None)
    return out


def _r(x: float) -> float:
    return float(f"{float(x):.6g}")


def is_image(shape) -> bool:
    """N×C×H×W with C in (1, 3) and H, W >= 8: worth showing as pictures."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[2] >= 8 and shape[3] >= 8


def _snapshot(blob) -> dict:
    data = blob.data
    keep = data if data.size <= FULL_COPY or not data.ndim else data[:KEEP_ROWS]
    return {"shape": list(data.shape), "stats": stats(data), "data": np.array(keep, copy=True),
            "whole": keep.shape == data.shape,
            "channels": [stats(data[:, c]) for c in range(data.shape[1])] if is_image(data.shape) else None}


def capture(net, indices: set[int]) -> dict[int, dict]:
    """One forward pass of ``net``; for each layer in ``indices``
    {"bottoms": [snapshot], "tops": [snapshot], "error": str|None}.
    A layer (any) that raises ends the pass; the layers after it keep no record.
    When nothing wrote over the chosen layers' blobs since the validator's
    last pass (no in-place layer at or after them), the blobs still hold
    that pass's values: they are read as they are, with no pass at all."""
    def overwritten(i: int) -> bool:
        later = {t for j in range(i + 1, len(net.layers)) for t in net._top_ids(j)}
        return bool(later & {*net._bottom_ids(i), *net._top_ids(i)} or
                    set(net._bottom_ids(i)) & set(net._top_ids(i)))
    if not any(overwritten(i) for i in indices):
        return {i: {"bottoms": [_snapshot(net._blobs[b]) for b in net._bottom_ids(i)],
                    "tops": [_snapshot(net._blobs[t]) for t in net._top_ids(i)], "error": None}
                for i in indices}
    out: dict[int, dict] = {}
    for i in range(len(net.layers)):
        if i in indices:
            rec = out[i] = {"bottoms": [_snapshot(net._blobs[b]) for b in net._bottom_ids(i)],
                            "tops": [], "error": None}
        try:
            net._forward(i, i)
        except BaseException as exc:  # user code: anything, SystemExit included
            if i in out:
                out[i]["error"] = f"{type(exc).__name__}: {exc}"[:300]
            break
        if i in indices:
            rec["tops"] = [_snapshot(net._blobs[t]) for t in net._top_ids(i)]
    return out


def _png(img: np.ndarray) -> bytes:
    """A minimal PNG encoder (8-bit grey or RGB), so the sandbox needs no imaging library."""
    h, w = img.shape[:2]
    colour = 2 if img.ndim == 3 else 0
    rows = img.reshape(h, -1)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _picture(example: np.ndarray, lo: float, hi: float) -> str:
    """One C×H×W example as a data URI, scaled from [lo, hi] to 0..255 (NaN shows black)."""
    step = max(1, -(-max(example.shape[1:]) // MAX_SIDE))
    x = np.nan_to_num(example[:, ::step, ::step].astype(np.float64), nan=lo, posinf=hi, neginf=lo)
    x = np.clip((x - lo) / (hi - lo) if hi > lo else x * 0, 0, 1)
    img = (x * 255 + 0.5).astype(np.uint8)
    img = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
    return "data:image/png;base64," + base64.b64encode(_png(img)).decode()


def _blob_view(role: str, name: str, snap: dict, pictures: bool) -> dict:
    entry = {"role": role, "blob": name, **snap["stats"]}
    if snap["channels"] is not None:
        entry["channels"] = snap["channels"]
    if pictures and snap["channels"] is not None:
        shown = snap["data"][:EXAMPLES]
        fin = shown[np.isfinite(shown)]
        lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        entry["images"] = [_picture(ex, lo, hi) for ex in shown]
        entry["scale"] = [_r(lo), _r(hi)]
    return entry


def cap_pictures(views: list[dict], limit: int = MAX_PICTURE_BYTES) -> None:
    """Keep the report small (the service reads at most 4 MiB of it): once
    the pictures pass ``limit`` bytes, later layers keep only statistics."""
    total = 0
    for v in views:
        size = sum(len(src) for b in v["blobs"] for src in b.get("images", ()))
        if total + size > limit:
            for b in v["blobs"]:
                b.pop("images", None)
            v["image"], v["pictures_left_out"] = False, "the report's pictures reached their size limit"
        else:
            total += size


def blob_name(net, blob: int) -> str:
    """A blob's name as the prototxt has it: a bottom read by several layers
    is, in the built net, the top of a Split layer Caffe inserted."""
    for i, kind in enumerate(net.layers):
        if kind.type == "Split" and blob in net._top_ids(i):
            return net._blob_names[net._bottom_ids(i)[0]]
    return net._blob_names[blob]


def view(net, index: int, stage: str, rec: dict) -> dict:
    """The report's `layer_views` entry for one captured Python layer."""
    # Pictures only for layers that make pictures (augmentation, occlusion,
    # normalisation): then their image-shaped bottoms are shown beside.
    pictures = any(s["channels"] is not None for s in rec["tops"])
    blobs = [_blob_view("bottom", blob_name(net, b), s, pictures)
             for b, s in zip(net._bottom_ids(index), rec["bottoms"])]
    blobs += [_blob_view("top", net._blob_names[t], s, pictures) for t, s in zip(net._top_ids(index), rec["tops"])]
    return {"layer": net._layer_names[index], "stage": stage, "error": rec["error"], "image": pictures,
            "blobs": blobs}
