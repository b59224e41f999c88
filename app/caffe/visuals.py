"""DIGITS's "Show visualizations and statistics" for one classified image:
per layer, its activations and its weights as a tiled picture, with mean,
standard deviation and a histogram. Numpy and PIL only: the contained
inference runner calls it with the deploy net's arrays."""
from __future__ import annotations

import io
import math

import numpy as np

MAX_TILES = 64         # channels or filters drawn per layer (DIGITS drew a grid too)
MAX_SIDE = 512         # pixels of one picture at most
BINS = 20


def stats(array: np.ndarray) -> dict:
    """{"mean", "stddev", "histogram": {"counts", "edges"}} of ``array``."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return {"mean": None, "stddev": None, "histogram": {"counts": [], "edges": []}}
    counts, edges = np.histogram(flat, bins=BINS)
    return {"mean": round(float(flat.mean()), 6), "stddev": round(float(flat.std()), 6),
            "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}}


def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def tiles(array: np.ndarray) -> np.ndarray:
    """A 2-D uint8 picture of ``array``: (C, H, W) activations or (N, C, H, W)
    weights as a grid of their first MAX_TILES maps (weights: their first input
    channel); vectors as a near-square block."""
    a = np.asarray(array)
    if a.ndim == 4:
        a = a[:, 0]
    if a.ndim == 3 and a.shape[1] * a.shape[2] > 1:
        maps = a[:MAX_TILES]
        n, h, w = maps.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = np.full((rows * (h + 1), cols * (w + 1)), 0, np.uint8)
        for k in range(n):
            r, c = divmod(k, cols)
            grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = _normalise(maps[k])
        return grid
    flat = a.reshape(-1)[:MAX_SIDE * MAX_SIDE]
    side = max(1, math.ceil(math.sqrt(flat.size)))
    padded = np.zeros(side * side)
    padded[:flat.size] = flat
    return _normalise(padded.reshape(side, side))


def png(picture: np.ndarray) -> bytes:
    """PNG bytes of a uint8 picture, scaled up so small maps stay visible and
    down to MAX_SIDE."""
    from PIL import Image
    img = Image.fromarray(picture, mode="L")
    scale = max(1, min(8, MAX_SIDE // max(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def describe(name: str, kind: str, array: np.ndarray, picture_file: str) -> dict:
    """One visualization record (``kind``: "Activation" or "Weights"); the
    picture is written by the caller to ``picture_file``."""
    return {"name": name, "type": kind, "shape": list(np.asarray(array).shape), "picture": picture_file,
            **stats(array)}
