"""Segmentation datasets, the DIGITS way (``digits/extensions/data/imageSegmentation``):
pairs of a feature image and a label image whose pixels are class indices.

An archive holds ``images/`` and ``labels/`` (matching file stems), optionally
a ``val/images`` + ``val/labels`` pair (else a percentage is split off) and
``classes.txt`` (one class per line: ``name`` or ``name R G B``). Label
images are palette PNGs (the palette index is the class, as DIGITS reads
them), grayscale class indices, or RGB pictures in the colours of
``classes.txt``. Features are resized bilinearly, labels nearest-neighbour
(a class index must never be blended). Written as DIGITS writes a
segmentation dataset: ``train_db/features`` and ``train_db/labels`` (LMDB of
Caffe ``Datum``: features C x H x W uint8, labels 1 x H x W class indices),
the same under ``val_db/``, ``mean.binaryproto`` of the train features,
``labels.txt`` (class names) and sample pairs. Every refusal names the file.
"""
from __future__ import annotations

import io
import json
from pathlib import Path, PurePosixPath

import numpy as np

from app.core.archives import ArchiveError
from app.core.workspace import DATASET_INFO_FILE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
FEATURES, LABELS = "features", "labels"
MAX_CLASSES = 255
# 255 marks pixels to ignore (PASCAL VOC's borders; `ignore_label: 255` in
# the loss): never a class, never "beyond the class list".
IGNORE = 255


def default_palette(n: int) -> list[list[int]]:
    """The PASCAL VOC colour map DIGITS uses (class 0 black, 1 dark red, ...)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def parse_classes(text: str, filename: str = "classes.txt") -> tuple[list[str], list[list[int]] | None]:
    """(class names, colours or None) from ``classes.txt``; colours only when
    every line gives ``name R G B``."""
    names, colours = [], []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            rgb = [int(p) for p in parts[-3:]]
            if max(rgb) > 255:
                raise ArchiveError(f"{filename} line {n}: colour values go from 0 to 255")
            names.append(" ".join(parts[:-3]))
            colours.append(rgb)
        else:
            names.append(" ".join(parts))
            colours.append(None)
    if len(names) < 2:
        raise ArchiveError(f"{filename} must list at least two classes (background first)")
    if len(names) > MAX_CLASSES:
        raise ArchiveError(f"{filename} lists more than {MAX_CLASSES} classes")
    if all(c is not None for c in colours):
        return names, colours
    return names, None


def label_indices(img, name: str, colours: list[list[int]] | None) -> np.ndarray:
    """A label image as an (H, W) array of class indices: palette index,
    gray value, or (RGB) the class whose colour the pixel has."""
    if img.mode == "P":
        return np.asarray(img, dtype=np.uint8)
    if img.mode == "1":     # bilevel: white is class 1
        return np.asarray(img).astype(np.uint8)
    if img.mode in ("L", "I", "I;16"):
        arr = np.asarray(img.convert("I") if img.mode != "L" else img).astype(np.int64)
        if arr.max(initial=0) > IGNORE:
            raise ArchiveError(f"{name}: label value {int(arr.max())} is not a class index (0-255)")
        return arr.astype(np.uint8)
    rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    if colours is None:
        raise ArchiveError(f"{name}: an RGB label image needs colours in classes.txt ('name R G B'); "
                           "or save labels as palette PNGs or grayscale class indices")
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
    out = np.full(code.shape, -1, dtype=np.int64)
    for value, cls in lookup.items():
        out[code == value] = cls
    if (out < 0).any():
        y, x = np.argwhere(out < 0)[0]
        raise ArchiveError(f"{name}: pixel ({x}, {y}) has colour {tuple(int(v) for v in rgb[y, x])}, "
                           "which is no class colour of classes.txt")
    return out.astype(np.uint8)


def _split_entries(entries: list[tuple[PurePosixPath, bytes]]) -> tuple[dict, bytes | None]:
    """{(split, kind): {stem: (path, bytes)}} and classes.txt's bytes; one
    wrapping folder is looked through."""
    roots = {p.parts[0] for p, _ in entries if len(p.parts) > 1}
    strip = 1 if len(roots) == 1 and not roots & {"images", "labels", "val", "train"} else 0
    groups: dict = {}
    classes = None
    for path, data in entries:
        parts = path.parts[strip:]
        if not parts or parts[-1].startswith("."):
            continue
        if parts == ("classes.txt",):
            classes = data
            continue
        split = "train"
        if parts[0] in ("train", "val") and len(parts) > 2:
            split, parts = parts[0], parts[1:]
        if len(parts) != 2 or parts[0] not in ("images", LABELS):
            continue
        if PurePosixPath(parts[1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        kind = "images" if parts[0] == "images" else LABELS
        stem = PurePosixPath(parts[1]).stem
        shown = str(path)
        groups.setdefault((split, kind), {})[stem] = (shown, data)
    return groups, classes


def _pairs(groups: dict, split: str) -> list[tuple[str, bytes, str, bytes]]:
    images, labels = groups.get((split, "images"), {}), groups.get((split, LABELS), {})
    prefix = "val/" if split == "val" else ""
    for stem in sorted(images):
        if stem not in labels:
            raise ArchiveError(f"{images[stem][0]} has no label image ({prefix}labels/{stem}.png missing)")
    for stem in sorted(labels):
        if stem not in images:
            raise ArchiveError(f"{labels[stem][0]} has no feature image ({prefix}images/{stem}.* missing)")
    return [(images[s][0], images[s][1], labels[s][0], labels[s][1]) for s in sorted(images)]


def decode_pairs(entries: list[tuple[PurePosixPath, bytes]], params: dict, progress=lambda v: None) -> dict:
    """Decode, check and resize every pair; {"train": (X, Y), "val": (X, Y) or
    None, "names", "palette", "files": {split: [label file names]}}."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = int(params.get("max_pixels", 40_000_000))
    width, height, channels = int(params["image_width"]), int(params["image_height"]), int(params["channels"])
    groups, classes_txt = _split_entries(entries)
    names, colours = (parse_classes(classes_txt.decode("utf-8", "replace")) if classes_txt is not None
                      else (None, None))
    splits = {"train": _pairs(groups, "train"), "val": _pairs(groups, "val") if (
        ("val", "images") in groups or ("val", LABELS) in groups) else []}
    if not splits["train"]:
        raise ArchiveError("no image pairs found: put feature images in images/ and label images "
                           "with the same file names in labels/")
    total = sum(len(v) for v in splits.values())
    palette_seen = None
    out: dict = {"files": {}}
    done = 0
    for split, pairs in splits.items():
        xs, ys, files = [], [], []
        for img_name, img_data, lab_name, lab_data in pairs:
            try:
                with Image.open(io.BytesIO(img_data)) as im:
                    im.load()
                    feat = im.convert("L" if channels == 1 else "RGB")
                with Image.open(io.BytesIO(lab_data)) as lab:
                    lab.load()
                    if lab.mode == "P" and palette_seen is None:
                        pal = lab.getpalette() or []
                        palette_seen = [pal[i:i + 3] for i in range(0, len(pal), 3)]
                    idx = label_indices(lab, lab_name, colours)
            except ArchiveError:
                raise
            except Image.DecompressionBombError:
                raise ArchiveError(f"{img_name} or {lab_name}: too many pixels") from None
            except Exception:
                raise ArchiveError(f"{img_name} or {lab_name} is not a readable image") from None
            if idx.shape != (feat.size[1], feat.size[0]):
                raise ArchiveError(f"{lab_name} is {idx.shape[1]}x{idx.shape[0]} but its feature image "
                                   f"{img_name} is {feat.size[0]}x{feat.size[1]}: a label must match its image")
            top_value = int(idx[idx != IGNORE].max(initial=0))
            if names is not None and top_value >= len(names):
                raise ArchiveError(f"{lab_name} holds class {top_value}, beyond the {len(names)} "
                                   "classes of classes.txt (0 to " f"{len(names) - 1})")
            feat = feat.resize((width, height), Image.BILINEAR)
            idx = np.asarray(Image.fromarray(idx).resize((width, height), Image.NEAREST))
            xs.append(np.asarray(feat, dtype=np.uint8).reshape(height, width, -1).transpose(2, 0, 1))
            ys.append(idx[None].astype(np.uint8))
            files.append(lab_name)
            done += 1
            if done % 50 == 0:
                progress(0.8 * done / total)
        out[split] = (np.stack(xs), np.stack(ys)) if xs else None
        out["files"][split] = files
    all_y = [out[s][1] for s in ("train", "val") if out[s] is not None]
    top = max(int(y[y != IGNORE].max(initial=0)) for y in all_y)
    if top == 0:
        first = out["files"]["train"][0]
        raise ArchiveError(f"every label image is all background (class 0), e.g. {first}: "
                           "there is nothing to segment (255 marks pixels to ignore: in a black and white "
                           "mask, give the object the value 1)")
    if names is None:
        n = max(2, top + 1)
        names = ["background"] + [f"class {i}" for i in range(1, n)]
    if colours is None:
        base = palette_seen if palette_seen and len(palette_seen) >= len(names) else default_palette(len(names))
        colours = [list(map(int, c)) for c in base[:len(names)]]
    out["names"], out["palette"] = names, colours
    return out


def write_segmentation(out: Path, decoded: dict, val_percent: float, name: str, seed: int = 0) -> dict:
    """Write the DIGITS layout (see module doc) into ``out``; the dataset info."""
    from app.caffe.datasets import write_lmdb, write_mean
    rng = np.random.default_rng(seed)
    x, y = decoded["train"]
    files = decoded["files"]["train"]
    order = rng.permutation(len(x))
    if decoded.get("val") is not None:
        vx, vy = decoded["val"]
    else:
        k = int(round(len(x) * val_percent / 100.0))
        if k == 0 and val_percent > 0 and len(x) > 1:
            k = 1
        vx, vy = x[order[:k]], y[order[:k]]
        order = order[k:]
    # Written in a shuffled order: Caffe reads an LMDB in key order, and the
    # features and labels databases must stay in step (same keys, same order).
    x, y = x[order], y[order]
    for split, (fx, fy) in (("train", (x, y)), ("val", (vx, vy))):
        db = out / f"{split}_db"
        db.mkdir(exist_ok=True)
        zeros = np.zeros(len(fx), dtype=np.int64)
        write_lmdb(db / FEATURES, fx, zeros)
        write_lmdb(db / LABELS, fy, zeros)
    mean = write_mean(out / "mean.binaryproto", x)
    names, palette = decoded["names"], decoded["palette"]
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in names))
    _previews(out, mean, x, y, palette)
    counts = np.bincount(y.ravel(), minlength=len(names)).astype(np.float64)
    info = {
        "type": "segmentation", "name": name, "num_classes": len(names), "labels": names,
        "palette": palette, "train_count": int(len(x)), "val_count": int(len(vx)),
        "image_shape": [int(s) for s in x.shape[1:]], "label_shape": [int(s) for s in y.shape[1:]],
        "backend": "LMDB", "resize_mode": "squash",
        "class_share": {c: round(float(counts[i] / counts.sum()), 6) for i, c in enumerate(names)},
        "first_label_file": files[0] if files else None,
    }
    (out / DATASET_INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours (unknown classes grey)."""
    table = np.full((256, 3), 128, dtype=np.uint8)
    table[:len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[mask.astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> np.ndarray:
    """The image (H, W, 3 or H, W) with every non-background pixel tinted in
    its class colour (DIGITS's segmentation visualization)."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    rgb = rgb.astype(np.float32)
    tint = colorize(mask, palette).astype(np.float32)
    fg = (mask > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * tint, rgb).clip(0, 255).astype(np.uint8)


def palette_png(mask: np.ndarray, palette: list[list[int]]) -> bytes:
    """A palette PNG of class indices: its pixel values are the classes (what
    a label image is), its palette shows them in the dataset's colours."""
    from PIL import Image
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for c in palette[:256] for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice coefficient of the foreground (class > 0): 2|P∩L| / (|P| + |L|)
    (1.0 when both are empty)."""
    p, lab = pred > 0, label > 0
    denom = int(p.sum()) + int(lab.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & lab).sum()) / denom


def _previews(dest: Path, mean: np.ndarray, x: np.ndarray, y: np.ndarray, palette: list, n: int = 6) -> None:
    # mean.png; samples/0_<k>.png = feature, samples/1_<k>.png = its label in colour.
    from PIL import Image

    def image(arr: np.ndarray) -> Image.Image:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))

    image(mean).save(dest / "mean.png")
    (dest / "samples").mkdir(exist_ok=True)
    for k in range(min(n, len(x))):
        image(x[k]).save(dest / "samples" / f"0_{k}.png")
        Image.fromarray(colorize(y[k][0], palette)).save(dest / "samples" / f"1_{k}.png")
