"""Finite-difference check of every Python layer's backward, at validation
(inside the sandbox, after the nets ran).

Caffe checks gradients only in its C++ test suite
(include/caffe/test/test_gradient_check_util.hpp, GradientChecker); this is
the same check for uploaded layers. For each Python layer of the train net
that some loss depends on, the layer is set up again alone in a small net
(Input layers shaped like its real bottoms, filled with the values they held
in a real forward pass: the dataset's, when the bottom is data), and driven
directly: with Caffe's objective (half the sum of squares of a top, whose
diff is then the top itself; a loss top counts as its loss weight times its
sum, the diff Caffe gives it) the analytic gradient from backward() is
compared, for a sample of the values of each bottom and parameter blob Caffe
asks a gradient for, with central differences (step 1e-2): an error counts
when |analytic - estimated| > 1e-3 * max(|analytic|, |estimated|, 1) +
epsilon, Caffe's rule, with epsilon the float32 rounding of the objective
(Caffe's SetEpsilon). Kinks: Caffe skips values within kink_range of a kink
it is told about; an uploaded layer's kinks are unknown, so a value that
fails is looked at again with a ten times smaller step, and counts as a kink
(skipped, like Caffe's) when the analytic gradient then agrees, or agrees
with one side of a one-sided difference that the other side contradicts.
Beyond Caffe's checker: a backward that adds to a bottom's diff or leaves
values of it unset is wrong (Caffe never zeroes a bottom's diff; see
layerprobe.Probe._overwrite). Everything runs within a time budget; the
report says what was left out.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from app.caffe.network import filtered
from app.contained import layerview

if TYPE_CHECKING:   # imported when a layer is checked: a validation without one pays nothing
    from app.contained.layerprobe import Probe

STEP = 1e-2          # Caffe's stepsize in its layer tests
THRESHOLD = 1e-3     # Caffe's threshold
BUDGET_S = 1.0       # for all the checks of one validation
MAX_VALUES = 100     # values checked per blob (a random sample, seeded)
MIN_VALUES = 8       # ... and at least these, when the layer is fast (layerprobe.FAST_FORWARD_S)
MODULE = "digits_python_layers"


def examine(built: dict, train_val, budget_s: float = BUDGET_S) -> dict:
    """The report's `gradient_check` and `layer_views` for the built stage nets
    (`built`: stage -> caffe.Net, already run), and `layer_check_ms`."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    checks: list[dict] = []
    views: list[dict] = []
    try:
        params = {lay.name: lay for lay in filtered(train_val, "train")}
        seen: set[str] = set()
        for stage, net in built.items():
            py = sorted(i for i, lay in enumerate(net.layers)
                        if lay.type == "Python" and net._layer_names[i] not in seen)
            if not py:
                continue
            rec = layerview.capture(net, set(py))
            need = _needs(net, params, bool(train_val.force_backward)) if stage == "train" else None
            for n, i in enumerate(py):
                name = net._layer_names[i]
                seen.add(name)
                if i in rec:
                    views.append(layerview.view(net, i, stage, rec[i]))
                if need is None:
                    checks.append(_entry(name, None, "skipped", f"not in the train net (only {stage}): "
                                         "training never runs its backward"))
                    continue
                share = (t0 + budget_s - time.perf_counter()) / (len(py) - n)
                checks += check_layer(net, i, params.get(name), rec.get(i), need,
                                      time.perf_counter() + max(share, 0.0), cpu0 + 2 * budget_s)
    except BaseException as exc:  # user code, SystemExit included: never cost the user a validation
        checks.append(_entry(None, None, "skipped", f"the check itself failed: {type(exc).__name__}: {exc}"))
    layerview.cap_pictures(views)
    return {"gradient_check": checks, "layer_views": views,
            "layer_check_ms": round((time.perf_counter() - t0) * 1000, 3)}


def _entry(layer, blob, verdict: str, reason: str | None, error: float | None = None, **extra) -> dict:
    return {"layer": layer, "blob": blob, "max_rel_error": error, "verdict": verdict, "reason": reason, **extra}


def _lr(lp, k: int) -> float:
    return lp.param[k].lr_mult if lp is not None and k < len(lp.param) else 1.0


def _needs(net, params: dict, force: bool) -> dict:
    """Caffe's Net::Init rules, on the built net: which bottoms of each layer
    get a gradient ("bottoms": layer -> [bool]) and which layers some loss
    depends on ("loss": set of layer indices)."""
    blob = [False] * len(net._blobs)
    bottoms = {}
    for i, name in enumerate(net._layer_names):
        lp = params.get(name)
        flags = []
        for j, b in enumerate(net._bottom_ids(i)):
            flag = blob[b]
            if lp is not None and len(lp.propagate_down) > j:
                flag = lp.propagate_down[j]
            flags.append(flag or force)
        bottoms[i] = flags
        learns = any(_lr(lp, k) != 0 for k in range(len(net.layers[i].blobs)))
        for t in net._top_ids(i):
            blob[t] = any(flags) or learns
    weights = net._blob_loss_weights
    under = {b for b in range(len(net._blobs)) if weights[b] != 0}
    loss = set()
    for i in reversed(range(len(net._layer_names))):
        if any(t in under for t in net._top_ids(i)):
            loss.add(i)
            under.update(net._bottom_ids(i))
    return {"bottoms": bottoms, "loss": loss}


def _backward_line(obj) -> int | None:
    for cls in type(obj).__mro__:
        fn = cls.__dict__.get("backward")
        if fn is not None and getattr(cls, "__module__", "") == MODULE:
            return getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
    return None


def check_layer(net, i: int, lp, rec: dict | None, need: dict, deadline: float, cpu_until: float
                ) -> list[dict]:
    """The `gradient_check` entries of the train net's Python layer ``i``:
    values are sampled until ``deadline`` (wall clock), past it only the few
    a fast layer always gets; nothing starts past ``cpu_until`` (CPU time, a
    hard stop that a loaded machine does not bring forward)."""
    name = net._layer_names[i]
    if i not in need["loss"]:
        return [_entry(name, None, "skipped", "no loss of the train net depends on its tops: "
                       "its backward never runs")]
    if rec is None or rec["error"] or len(rec["tops"]) != len(net._top_ids(i)):
        return [_entry(name, None, "skipped", "the layer did not run again for the check"
                       + (f" ({rec['error']})" if rec and rec["error"] else ""))]
    obj = net.layers[i]
    line = _backward_line(obj)
    out, targets = [], []
    for j, b in enumerate(net._bottom_ids(i)):
        blob = layerview.blob_name(net, b)
        if need["bottoms"][i][j]:
            targets.append(("bottom", j, blob))
            continue
        data = rec["bottoms"][j]["data"]
        integral = data.size and np.all(np.isfinite(data)) and np.all(np.mod(data, 1) == 0)
        out.append(_entry(name, blob, "skipped", "integer values (labels): Caffe asks no gradient for them"
                          if integral else "Caffe asks no gradient for it (nothing below it learns)",
                          kind="bottom", line=line))
    for k in range(len(obj.blobs)):
        if _lr(lp, k) == 0:
            out.append(_entry(name, f"blobs[{k}]", "skipped", "lr_mult is 0: Caffe asks no gradient for it",
                              kind="param", line=line))
        else:
            targets.append(("param", k, f"blobs[{k}]"))
    if not targets:
        return out or [_entry(name, None, "skipped", "no bottom and no parameter blob: nothing to check")]
    if time.process_time() > cpu_until:
        return out + [_entry(name, blob, "skipped", "over the time budget", kind=kind, line=line)
                      for kind, _, blob in targets]
    from app.contained.layerprobe import Probe, Unchecked
    weights = [float(net._blob_loss_weights[t]) for t in net._top_ids(i)]
    try:
        probe = Probe(lp, rec, obj, weights, [need["bottoms"][i][j] for j in range(len(rec["bottoms"]))],
                       deadline)
    except BaseException as exc:  # user code: anything, SystemExit included
        why = str(exc) if isinstance(exc, Unchecked) else \
            f"could not run the layer alone: {type(exc).__name__}: {exc}"[:300]
        return out + [_entry(name, blob, "skipped", why, kind=kind, line=line) for kind, _, blob in targets]
    for n, (kind, idx, blob) in enumerate(targets):
        until = time.perf_counter() + (deadline - time.perf_counter()) / (len(targets) - n)
        try:
            out.append(_judge(name, blob, kind, probe, probe.analytic(kind, idx), probe.values(kind, idx),
                              until, line, weights, idx))
        except BaseException as exc:
            out.append(_entry(name, blob, "skipped", f"{type(exc).__name__} while checking: {exc}"[:300],
                              kind=kind, line=line))
    return out


def _kink(probe: Probe, arr, e: int, c: float, coarse: float, eps: float) -> bool:
    """Whether a value that failed (central difference ``coarse``, noise
    ``eps``) sits near a kink: the estimate changes with a ten times smaller
    step, and the analytic gradient then agrees with it, or with one side of
    a one-sided difference that the other side contradicts."""
    fu, fd, hu, hd, nu, nd = probe.estimate(arr, e, STEP / 10)
    central = (fu - fd) / (hu + hd)
    # A smooth function's central difference hardly depends on the step
    # (exact for a quadratic): a wrong gradient stays wrong at both steps,
    # while near a kink the smaller step explains much of the discrepancy.
    moved = abs(central - coarse) - (nu + nd) / (hu + hd) - eps
    if moved <= max(THRESHOLD / 2 * max(abs(central), abs(coarse), 1.0), abs(c - coarse) / 4):
        return False
    if abs(c - central) <= THRESHOLD * max(abs(c), abs(central), 1.0) + (nu + nd) / (hu + hd):
        return True
    right, left = fu / hu, -fd / hd
    tol = 10 * THRESHOLD * max(abs(c), 1.0) + max(nu / hu, nd / hd)
    return abs(right - left) > tol and min(abs(c - right), abs(c - left)) <= tol


def _judge(layer: str, blob: str, kind: str, probe: Probe, grad: np.ndarray, arr: np.ndarray,
           until: float, line, weights, blob_index: int) -> dict:
    """Check sampled values of one blob; one `gradient_check` entry."""
    extra = {"kind": kind, "line": line, "elements": int(arr.size)}
    if not np.all(np.isfinite(grad)):
        return _entry(layer, blob, "wrong", "backward wrote NaN or Inf into its gradient", None,
                      checked=0, kinks=0, **extra)
    from app.contained.layerprobe import SEED
    sample = np.sort(np.random.default_rng(SEED).choice(arr.size, min(arr.size, MAX_VALUES), replace=False))
    worst, worst_at, kinks, checked, raw = 0.0, None, 0, 0, 0.0
    pairs = []
    for e in sample:
        # A fast layer gets MIN_VALUES values checked whatever the budget:
        # a loaded machine must not turn a verdict into "skipped".
        if time.perf_counter() > until and (checked >= MIN_VALUES or not probe.fast):
            break
        fu, fd, hu, hd, nu, nd = probe.estimate(arr, int(e), STEP)
        est, eps = (fu - fd) / (hu + hd), (nu + nd) / (hu + hd)
        if not np.isfinite(est):
            continue
        checked += 1
        c = float(grad.flat[e])
        scale = max(abs(c), abs(est), 1.0)
        err = max(0.0, abs(c - est) - eps) / scale   # Caffe's rule, with its epsilon
        if err > THRESHOLD and _kink(probe, arr, int(e), c, est, eps):
            kinks += 1
            continue
        pairs.append((c, est))
        raw = max(raw, abs(c - est) / scale)
        if err > worst:
            worst, worst_at = err, (int(e), c, est)
    extra.update(checked=checked, kinks=kinks)
    partial = f"checked {checked} of {min(arr.size, MAX_VALUES)} sampled values (time budget)" \
        if checked < min(arr.size, MAX_VALUES) else None
    if not checked:
        return _entry(layer, blob, "skipped", "over the time budget", None, **extra)
    error = float(f"{raw:.4g}")
    issue = probe.overwrite.get(int(blob_index)) if kind == "bottom" else None
    if issue and issue[0] == "unwritten" and issue[1] == arr.size:
        return _entry(layer, blob, "not_implemented", "backward never writes this gradient (is backward a "
                      "no-op, or is propagate_down not honoured?)", error, **extra)
    if issue:
        why = (f"backward leaves {issue[1]} of {arr.size} values of this gradient unwritten"
               if issue[0] == "unwritten" else "backward adds to the bottom's diff (+=) instead of setting it")
        return _entry(layer, blob, "wrong", f"{why}: Caffe does not zero a bottom's diff, so they keep the "
                      "previous iteration's gradient", error, **extra)
    if not grad.any() and worst > THRESHOLD:
        return _entry(layer, blob, "not_implemented", "backward leaves this gradient at zero while the loss "
                      "depends on it (is backward a no-op, or is propagate_down not honoured?)", error, **extra)
    if worst > THRESHOLD:
        e, c, est = worst_at
        reason = f"value {e}: backward gives {c:.6g}, central differences {est:.6g}; {_hint(pairs, weights)}"
        return _entry(layer, blob, "wrong", reason + (f"; {partial}" if partial else ""), error, **extra)
    noise = "within the float32 rounding of the objective" if raw > THRESHOLD else None
    return _entry(layer, blob, "ok", "; ".join(r for r in (noise, partial) if r) or None, error, **extra)


def _hint(pairs: list[tuple[float, float]], weights: list[float]) -> str:
    c, e = np.array(pairs).T
    ratio = float(c @ e / (e @ e)) if e @ e else 0.0
    cos = float(c @ e / np.sqrt((c @ c) * (e @ e))) if (c @ c) and (e @ e) else 0.0
    if cos < -0.99 and abs(ratio + 1) < 0.05:
        return "the sign is flipped"
    if cos < 0.99:
        return "the gradient points elsewhere (a wrong axis, index or formula?)"
    loss = [w for w in weights if w and w != 1]
    if loss and abs(ratio * loss[0] - 1) < 0.05:
        return "top[0].diff (the loss weight) is not used"
    return f"backward gives {ratio:.3g} times the true gradient" + \
        (" (a factor of 2?)" if min(abs(ratio - 2), abs(ratio - 0.5)) < 0.05 else "")
