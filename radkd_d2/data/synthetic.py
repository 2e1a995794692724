"""Deterministic synthetic scenes: the embedded default data of radkd-d2.

Each scene is a textured, noisy background with several objects of five shape classes drawn in
random order, so later objects occlude earlier ones. Object colours of different classes overlap,
so a model has to use shape, not only colour; a bigger model therefore does measurably better
than a tiny one. One generator produces both annotations from the same drawing:

* semantic segmentation: ``<split>/labels/*.png`` with values 0..5 (0 = background) and 255 only
  where a thin anti-aliasing border is ambiguous (the ignore value);
* a held-out ``test`` split when ``num_test > 0``, drawn from a seed sequence of its own;
* on request, a copy of a split's labels with some classes marked ignored
  (``<split>/labels_ignore_<ids>/``, :func:`ensure_partial_labels`): a model trained on it never
  learns those classes (the multi-teacher demo's teachers, each strong on half the classes);
* COCO-format detection and instance segmentation: ``annotations/instances_<split>.json`` with
  one box per *visible* object (the tight box of its visible pixels; objects mostly hidden are
  dropped) and its visible pixels as an RLE mask.

Files are written once per parameter set into ``<root>/synthetic_<hash>/`` (atomically: a
temporary folder renamed when complete), so every process and every run reads the same data.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

logger = logging.getLogger(__name__)

CLASSES = ("background", "disk", "square", "triangle", "ring", "cross")
IGNORE_VALUE = 255
# Mean colour (RGB) per object class; a random offset of +-60 is added per object, so the
# class colour ranges overlap and colour alone does not identify the class.
_CLASS_COLOURS = np.array(
    [[200, 60, 60], [60, 180, 70], [70, 90, 210], [200, 170, 50], [160, 70, 190]], dtype=np.float32
)
_MIN_VISIBLE_PIXELS = 12
# version of the files written: 2 added the instance masks (RLE) to the detection annotations;
# a new version gets a folder of its own, so no run reads files of an older layout
_FORMAT = 2


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters that fully determine a synthetic data set."""

    num_train: int = 64
    num_val: int = 16
    size: int = 96
    seed: int = 0
    num_test: int = 0  # held-out split, drawn from its own random stream; 0: none
    test_stream: int = 0  # which test stream: each value is a fresh, independent test set

    def __post_init__(self):
        for key in ("num_train", "num_val"):
            if getattr(self, key) < 1:
                raise ValueError(f"synthetic data: {key} must be >= 1, got {getattr(self, key)}")
        for key in ("num_test", "test_stream"):
            if getattr(self, key) < 0:
                raise ValueError(f"synthetic data: {key} must be >= 0, got {getattr(self, key)}")
        if self.size < 32:
            raise ValueError(f"synthetic data: size must be >= 32 pixels, got {self.size}")

    @property
    def splits(self) -> dict:
        """``{split: number of images}`` of the splits this spec generates."""
        return {"train": self.num_train, "val": self.num_val, **({"test": self.num_test} if self.num_test else {})}

    @property
    def folder_name(self) -> str:
        fields = {**asdict(self), "format": _FORMAT}
        # specs without a test split (or on test stream 0) keep the folders they always had
        if not self.num_test:
            del fields["num_test"]
        if not self.test_stream:
            del fields["test_stream"]
        digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
        return f"synthetic_{digest}"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random texture (sum of oriented sinusoids) plus pixel noise, float32 HxWx3."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    base = rng.uniform(70, 180, size=3)
    for c in range(3):
        tex = np.zeros((size, size), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(-12, 12, size=2)
            tex += rng.uniform(8, 30) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))
        img[..., c] = base[c] + tex
    return img


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Binary uint8 mask of one object of class ``cls`` (1..5) at a random pose."""
    mask = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.08, 0.2) * size
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, size=2)
    centre = (int(round(cx)), int(round(cy)))
    angle = rng.uniform(0, np.pi)
    if cls == 1:  # disk
        cv2.circle(mask, centre, int(round(r)), 1, -1)
    elif cls in (2, 3):  # square, triangle: rotated regular polygons
        k = 4 if cls == 2 else 3
        t = angle + 2 * np.pi * np.arange(k) / k
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    elif cls == 4:  # ring
        cv2.circle(mask, centre, int(round(r)), 1, max(2, int(round(r * 0.35))))
    else:  # cross: two rotated bars
        for a in (angle, angle + np.pi / 2):
            dx, dy = r * np.cos(a), r * np.sin(a)
            p0 = (int(round(cx - dx)), int(round(cy - dy)))
            p1 = (int(round(cx + dx)), int(round(cy + dy)))
            cv2.line(mask, p0, p1, 1, max(2, int(round(r * 0.4))))
    return mask


def render_scene(rng: np.random.Generator, size: int, with_masks: bool = False):
    """Draw one scene.

    Returns:
        image (H×W×3 uint8 RGB), label (H×W uint8, 0..5 or 255), and a list of visible objects
        ``(class_id 1..5, x0, y0, x1, y1)`` whose boxes are the tight boxes of visible pixels
        (x1/y1 exclusive), in drawing order; with ``with_masks`` also each listed object's
        visible pixels (H×W bool), in the same order.
    """
    img = _background(rng, size)
    instance = np.full((size, size), -1, np.int32)
    classes = []
    for i in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(rng, cls, size).astype(bool)
        colour = _CLASS_COLOURS[cls - 1] + rng.uniform(-60, 60, size=3)
        shade = 1.0 + 0.25 * rng.standard_normal((size, size, 1)).astype(np.float32) * 0.3
        img[mask] = (colour * shade[mask]).astype(np.float32)
        instance[mask] = i
        classes.append(cls)
    img += rng.normal(0, 12, size=img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)

    label = np.zeros((size, size), np.uint8)
    objects, masks = [], []
    for i, cls in enumerate(classes):
        visible = instance == i
        label[visible] = cls
        if visible.sum() < _MIN_VISIBLE_PIXELS:
            continue
        ys, xs = np.nonzero(visible)
        objects.append((cls, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        masks.append(visible)
    # pixels on object borders are ambiguous after the noise: mark a 1-px seam as ignore
    edges = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8)) > 0
    label[edges] = IGNORE_VALUE
    return (image, label, objects, masks) if with_masks else (image, label, objects)


def _write_split(folder: Path, split: str, n: int, spec: SyntheticSpec) -> dict:
    (folder / split / "images").mkdir(parents=True)
    (folder / split / "labels").mkdir(parents=True)
    # each split draws from its own seed sequence (spec seed, split, index): the test split's
    # scenes are independent of everything a run may have been tuned on; test stream k > 0
    # appends k, so a fresh test set is drawn once a stream has been looked at
    split_seed = {"train": 0, "val": 1, "test": 2}[split]
    stream = [spec.test_stream] if split == "test" and spec.test_stream else []
    images, annotations = [], []
    for idx in range(n):
        rng = np.random.default_rng([spec.seed, split_seed, idx, *stream])
        image, label, objects, masks = render_scene(rng, spec.size, with_masks=True)
        name = f"{idx:05d}.png"
        cv2.imwrite(str(folder / split / "images" / name), image[:, :, ::-1])
        cv2.imwrite(str(folder / split / "labels" / name), label)
        images.append({"id": idx + 1, "file_name": name, "height": spec.size, "width": spec.size})
        for (cls, x0, y0, x1, y1), mask in zip(objects, masks):
            w, h = x1 - x0, y1 - y0
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": idx + 1,
                    "category_id": cls,
                    "bbox": [x0, y0, w, h],
                    # the box's area, as before masks were written: COCOeval's size ranges
                    # (AP_S/M/L) for boxes and masks alike stay those of earlier runs
                    "area": float(w * h),
                    "iscrowd": 0,
                    # the visible pixels as compressed RLE (Mask R-CNN: INPUT.MASK_FORMAT bitmask)
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
    categories = [{"id": i, "name": c} for i, c in enumerate(CLASSES) if i > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def ensure_synthetic(root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Generate the data set for ``spec`` under ``root`` unless it is already there.

    Returns:
        the data set folder. Concurrent callers (several ranks) are safe: each writes into its
        own temporary folder and the first rename wins.
    """
    root = Path(root)
    folder = root / spec.folder_name
    if (folder / "COMPLETE").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_synthetic_", dir=root))
    try:
        (tmp / "annotations").mkdir()
        for split, n in spec.splits.items():
            coco = _write_split(tmp, split, n, spec)
            with open(tmp / "annotations" / f"instances_{split}.json", "w") as f:
                json.dump(coco, f)
        (tmp / "spec.json").write_text(json.dumps(asdict(spec)))
        (tmp / "COMPLETE").write_text("ok\n")
        try:
            tmp.rename(folder)
            logger.info("Wrote synthetic data set %s to %s", spec, folder)
        except OSError:  # another process finished first
            if not (folder / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def partial_labels_name(ignore) -> str:
    """Folder name of a split's labels with the classes ``ignore`` marked ignored."""
    return "labels_ignore_" + "-".join(str(c) for c in sorted(set(ignore)))


def ensure_partial_labels(folder: str | os.PathLike, split: str, ignore) -> Path:
    """``<folder>/<split>/labels_ignore_<ids>/``: the split's labels (of the data set
    ``folder``, :func:`ensure_synthetic`) with every pixel of the classes ``ignore`` set to
    :data:`IGNORE_VALUE`, file for file; written once, atomically, like the data set itself.

    Returns:
        the label folder.
    """
    ignore = sorted(set(int(c) for c in ignore))
    bad = [c for c in ignore if not 0 <= c < len(CLASSES)]
    if not ignore or bad or len(ignore) == len(CLASSES):
        raise ValueError(
            f"synthetic data: classes to ignore must be some, not all, of 0..{len(CLASSES) - 1} "
            f"({', '.join(CLASSES)}), got {ignore}"
        )
    src = Path(folder) / split / "labels"
    out = src.parent / partial_labels_name(ignore)
    if (out / "COMPLETE").is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{out.name}_", dir=src.parent))
    try:
        for f in sorted(src.glob("*.png")):
            label = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            label[np.isin(label, ignore)] = IGNORE_VALUE
            cv2.imwrite(str(tmp / f.name), label)
        (tmp / "COMPLETE").write_text("ok\n")
        try:
            tmp.rename(out)
            logger.info("Wrote %s labels without classes %s to %s", split, ignore, out)
        except OSError:  # another process finished first
            if not (out / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
