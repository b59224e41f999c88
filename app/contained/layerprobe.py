"""One Python layer set up alone for the gradient check (gradcheck.py): a
net of Input layers shaped like its real bottoms and the layer itself,
driven directly (reshape, forward, backward) like Caffe's GradientChecker
drives a layer, with the objective measured per top value in float64."""
from __future__ import annotations

import random
import tempfile
import time

import numpy as np

from app.contained import layerview

SEED = 1701            # Caffe's GradientChecker default seed, re-applied before every forward
ROUNDING = 2.0 ** -21  # float32 rounding allowed per changed top value (a few ulps)
UNSET = np.float32(3 * 2.0 ** -13)   # a marker no backward writes by chance, exact in float32
FAST_FORWARD_S = 0.01  # CPU seconds: a layer this fast gets its few values checked even past the budget


def _seed() -> None:
    # Caffe's checker re-seeds before every pass; a Python layer draws from numpy's or Python's generator.
    np.random.seed(SEED)
    random.seed(SEED)


class Unchecked(Exception):
    """The layer cannot be checked; the message says why (the report's reason)."""


class Probe:
    """One Python layer set up alone, its bottoms and parameters at the real values."""

    def __init__(self, lp, rec: dict, real, weights: list[float], prop: list[bool], deadline: float) -> None:
        import caffe
        from caffe.proto import caffe_pb2
        from google.protobuf import text_format
        snaps = rec["bottoms"]
        # The real shapes when the copies are whole (setup and reshape are then
        # known to work); else the first rows, a small batch.
        rows = None if all(s["whole"] for s in snaps) else layerview.KEEP_ROWS
        self.base = [np.array(s["data"] if rows is None else s["data"][:rows], dtype=np.float32) for s in snaps]
        p = caffe_pb2.NetParameter(name="gradient-check")
        inp = p.layer.add(name="gradient-check-input", type="Input") if snaps else None
        lay = p.layer.add()
        lay.CopyFrom(lp)
        for field in ("include", "exclude", "propagate_down", "bottom", "top"):
            lay.ClearField(field)
        for j, arr in enumerate(self.base):
            inp.top.append(f"bottom{j}")
            inp.input_param.shape.add().dim.extend(arr.shape)
            lay.bottom.append(f"bottom{j}")
        lay.top.extend(f"top{k}" for k in range(len(weights)))   # never in place: the inputs must stay
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt") as f:
            f.write(text_format.MessageToString(p))
            f.flush()
            self.net = caffe.Net(f.name, caffe.TRAIN)
        at = list(self.net._layer_names).index(lay.name)
        self.obj = self.net.layers[at]
        self.bottoms = [self.net._blobs[b] for b in self.net._bottom_ids(at)]
        self.tops = [self.net._blobs[t] for t in self.net._top_ids(at)]
        for mine, theirs in zip(self.obj.blobs, real.blobs):
            if mine.data.shape == theirs.data.shape:
                mine.data[...] = theirs.data
        self.params = [np.array(b.data, dtype=np.float32) for b in self.obj.blobs]
        self.weights, self.prop = weights, prop
        wall, cpu = self._timed_forward()
        if wall > 1.0 and time.perf_counter() + 2 * wall > deadline:   # slow beyond doubt
            raise Unchecked(f"over the time budget (one forward takes {wall * 1000:.0f} ms)")
        self.t0 = [np.array(t.data, dtype=np.float64) for t in self.tops]
        wall2, cpu2 = self._timed_forward()
        # The faster of two (a first call pays for caches and allocations),
        # in CPU time too: on a loaded machine the wall clock says little.
        self.took, self.fast = min(wall, wall2), min(cpu, cpu2) <= FAST_FORWARD_S and min(wall, wall2) < 0.1
        if not self.fast and time.perf_counter() + 2 * self.took > deadline:
            raise Unchecked(f"over the time budget (one forward takes {self.took * 1000:.0f} ms)")
        if any(not np.array_equal(t.data, t0, equal_nan=True) for t, t0 in zip(self.tops, self.t0)):
            raise Unchecked("forward gives different tops for the same input (randomness not from "
                            "numpy's or Python's global generator, which are re-seeded?)")
        for t, t0, w in zip(self.tops, self.t0, weights):
            t.diff[...] = w if w else t0
        for b in self.bottoms:
            b.diff[...] = 0
        for b in self.obj.blobs:
            b.diff[...] = 0
        _seed()
        self.obj.backward(self.tops, list(prop), self.bottoms)
        self.grads = {("bottom", j): np.array(b.diff, dtype=np.float64) for j, b in enumerate(self.bottoms)}
        self.grads.update({("param", k): np.array(b.diff, dtype=np.float64) for k, b in enumerate(self.obj.blobs)})
        self.overwrite = self._overwrite(prop)

    def _overwrite(self, prop: list[bool]) -> dict[int, tuple[str, int]]:
        """Caffe never zeroes a bottom's diff (only parameter diffs, once per
        iteration): backward must set every value. Run again over a marker:
        bottom j -> ("unwritten", n) when n values keep the marker, or
        ("accumulates", n) when backward added to n of them (+=)."""
        for b in self.bottoms:
            b.diff[...] = UNSET
        for b in self.obj.blobs:
            b.diff[...] = 0
        _seed()
        self.obj.backward(self.tops, list(prop), self.bottoms)
        out = {}
        for j, b in enumerate(self.bottoms):
            again, first = np.asarray(b.diff), self.grads[("bottom", j)].astype(np.float32)
            differ = (again != first) & ~(np.isnan(again) & np.isnan(first))
            if prop[j] and differ.any():
                kind = "unwritten" if np.all(again[differ] == UNSET) else "accumulates"
                out[j] = (kind, int(differ.sum()))
        return out

    def _timed_forward(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        self.forward()
        return time.perf_counter() - wall, time.process_time() - cpu

    def forward(self) -> None:
        """Caffe's Layer::Forward (reshape, then forward) on the base values, seeded like Caffe's checker."""
        for blob, arr in zip(self.bottoms, self.base):
            blob.data[...] = arr
        for blob, arr in zip(self.obj.blobs, getattr(self, "params", [])):
            blob.data[...] = arr
        _seed()
        self.obj.reshape(self.bottoms, self.tops)
        self.obj.forward(self.bottoms, self.tops)

    def analytic(self, kind: str, idx: int) -> np.ndarray:
        """backward()'s gradient for one bottom or parameter blob."""
        return self.grads[(kind, idx)]

    def values(self, kind: str, idx: int) -> np.ndarray:
        """The array that a perturbation changes (float32, restored after each use)."""
        return self.base[idx] if kind == "bottom" else self.params[idx]

    def objective(self, arr: np.ndarray, e: int, x: np.float32) -> tuple[float, float]:
        """Objective at arr.flat[e] = x, minus its base value, and its float32
        rounding noise. Differences are taken per top value in float64, so
        the values a change leaves alone add nothing (not even rounding)."""
        old = arr.flat[e]
        arr.flat[e] = x
        try:
            self.forward()
        finally:
            arr.flat[e] = old
        delta, noise = 0.0, 0.0
        for t, t0, w in zip(self.tops, self.t0, self.weights):
            t = np.asarray(t.data, dtype=np.float64)
            moved = t != t0
            if w:
                delta += w * float(np.sum(t[moved] - t0[moved]))
                noise += abs(w) * float(np.sum(np.abs(t[moved]) + np.abs(t0[moved])))
            else:
                delta += 0.5 * float(np.sum((t[moved] - t0[moved]) * (t[moved] + t0[moved])))
                noise += float(np.sum(np.abs(t[moved]) * (np.abs(t[moved]) + np.abs(t0[moved]))))
        return delta, noise * ROUNDING

    def estimate(self, arr: np.ndarray, e: int, step: float) -> tuple[float, float, float, float, float, float]:
        """(objective up, down, true steps up and down, noise up, down) at arr.flat[e] ± step."""
        x = arr.flat[e]
        up, down = np.float32(x + np.float32(step)), np.float32(x - np.float32(step))
        fu, nu = self.objective(arr, e, up)
        fd, nd = self.objective(arr, e, down)
        return fu, fd, float(up) - float(x), float(x) - float(down), nu, nd
