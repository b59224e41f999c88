"""DIGITS's image preprocessing, shared by the dataset builder and inference:
one resize for both, so a model sees at inference what it saw in training."""
from __future__ import annotations

import numpy as np

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")


def _noise(size: tuple[int, int], mode: str, rng):
    from PIL import Image
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def resize(img, width: int, height: int, mode: str, rng):
    """DIGITS's four resize modes."""
    from PIL import Image
    w, h = img.size
    if (w, h) == (width, height):
        return img      # every mode leaves it as it is (and Pillow would copy it)
    if mode == "squash":
        return img.resize((width, height), Image.BILINEAR)
    fit, cover = min(width / w, height / h), max(width / w, height / h)
    scale = {"crop": cover, "fill": fit, "half_crop": (fit + cover) / 2}[mode]
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = max(0, (nw - width) // 2), max(0, (nh - height) // 2)
    img = img.crop((left, top, left + min(nw, width), top + min(nh, height)))
    if img.size == (width, height):
        return img
    canvas = _noise((width, height), img.mode, rng)      # DIGITS fills with noise
    canvas.paste(img, ((width - img.size[0]) // 2, (height - img.size[1]) // 2))
    return canvas
