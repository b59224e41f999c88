"""What a warm inference process may answer (app.services.inference.warm_pool): its reply
is hostile input, taken only in the shape app.contained.infer_server sends.

Every field is checked and copied into a fresh structure (nothing else of
the reply passes), file names are the host's own, never the reply's; any
deviation is ``infer_wire.Broken("garbage")``, and the process is replaced.
"""
from __future__ import annotations

from app.core.infer_wire import Broken

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TOP = 5
MAX_PROBABILITIES = 1000
MAX_TEXT = 1000


def _bad(what: str):
    raise Broken("garbage", f"a reply with {what}")


def _num(v) -> float | int | None:
    # Strict JSON numbers (NaN was sent as null); bool is no number here.
    if v is None or type(v) in (int, float):
        return v
    return _bad("a non-number")


def _text(v, limit: int = MAX_TEXT) -> str:
    if isinstance(v, str) and len(v) <= limit:
        return v
    return _bad("a bad string")


def _list(v, limit: int) -> list:
    if isinstance(v, list) and len(v) <= limit:
        return v
    return _bad("a bad list")


def _dict(v) -> dict:
    return v if isinstance(v, dict) else _bad("a non-object")


def _prediction(p, name: str, probabilities: bool) -> dict:
    p = _dict(p)
    if "error" in p:
        return {"filename": name, "error": _text(p["error"], 300)}
    out = {"filename": name, "top": [{"label": _text(_dict(t).get("label")), "probability": _num(t.get("probability"))}
                                     for t in _list(p.get("top"), MAX_TOP)]}
    if probabilities:
        out["probabilities"] = [_num(v) for v in _list(p.get("probabilities"), MAX_PROBABILITIES)]
    return out


def _visual(rec, png: bytes) -> dict:
    rec = _dict(rec)
    if rec.get("type") not in ("Activation", "Weights") or not png.startswith(PNG_MAGIC):
        _bad("a bad visualization")
    hist = _dict(rec.get("histogram"))
    counts = _list(hist.get("counts"), 256)
    if not all(type(c) is int for c in counts):
        _bad("bad histogram counts")
    shape = _list(rec.get("shape"), 8)
    if not all(type(n) is int for n in shape):
        _bad("a bad shape")
    return {"name": _text(rec.get("name")), "type": rec["type"], "shape": shape,
            "mean": _num(rec.get("mean")), "stddev": _num(rec.get("stddev")),
            "histogram": {"counts": counts, "edges": [_num(e) for e in _list(hist.get("edges"), 257)]},
            "png": png}


def checked(reply: dict, blobs: list[bytes], names: list[str], probabilities: bool
            ) -> tuple[list[dict], list[dict]]:
    """(predictions, visualizations) of a classification reply, one
    prediction per image sent (named ``names``), one picture per record."""
    predictions = _list(reply.get("predictions"), len(names))
    visuals = _list(reply.get("visuals", []), len(blobs))
    if len(predictions) != len(names) or len(visuals) != len(blobs):
        _bad("the wrong number of entries")
    return ([_prediction(p, name, probabilities) for p, name in zip(predictions, names)],
            [_visual(rec, png) for rec, png in zip(visuals, blobs)])


MAX_CLASSES = 256


def _segmentation(p, name: str, blobs: list[bytes], used: set[int]) -> dict:
    p = _dict(p)
    if "error" in p:
        return {"filename": name, "error": _text(p["error"], 300)}
    out = {"filename": name}
    for key in ("mask", "overlay"):
        k = p.get(key)
        if type(k) is not int or not 0 <= k < len(blobs) or k in used or not blobs[k].startswith(PNG_MAGIC):
            _bad(f"a bad {key} picture")
        used.add(k)
        out[f"{key}_png"] = blobs[k]
    shape = _list(p.get("shape"), 2)
    if len(shape) != 2 or not all(type(n) is int and n > 0 for n in shape):
        _bad("a bad shape")
    out["shape"] = shape
    classes = []
    for c in _list(p.get("classes"), MAX_CLASSES):
        c = _dict(c)
        colour = _list(c.get("color"), 3)
        if len(colour) != 3 or not all(type(v) is int and 0 <= v <= 255 for v in colour):
            _bad("a bad colour")
        share = _num(c.get("share"))
        if share is None or not 0 <= share <= 1:
            _bad("a bad share")
        classes.append({"label": _text(c.get("label"), 100), "share": float(share), "color": colour})
    out["classes"] = classes
    return out


def checked_segmentation(reply: dict, blobs: list[bytes], names: list[str]) -> list[dict]:
    """Per image sent (named ``names``) {"filename", "shape", "classes",
    "mask_png", "overlay_png"} or {"filename", "error"}: the shape
    app.services.inference.segment returns; every picture used once."""
    predictions = _list(reply.get("predictions"), len(names))
    if len(predictions) != len(names):
        _bad("the wrong number of entries")
    used: set[int] = set()
    out = [_segmentation(p, name, blobs, used) for p, name in zip(predictions, names)]
    if len(used) != len(blobs):
        _bad("pictures no entry names")
    return out
