"""Register COCO-format folders: ``<root>/<name>/{annotations/instances_<split>.json, <split>/}``.

Used for ``tiny_coco`` (tiny_coco_train2017 / tiny_coco_val2017) and for COCO 2017 itself: the
Detectron2 names ``coco_2017_train``, ``coco_2017_val`` and ``coco_2017_val_100`` are registered
again under ``DATASETS.ROOT`` (else ``$DETECTRON2_DATASETS``, else ``./datasets``), in COCO's
own layout ``coco/{train2017,val2017}/`` + ``coco/annotations/instances_{train,val}2017.json``,
with Detectron2's COCO metadata and the paths the start-up checks require.
"""
from __future__ import annotations

import json
from pathlib import Path

from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from .common import datasets_root, register, require_folder


def load_coco_folder(json_file: Path, image_root: Path, name: str, check_boxes: bool = True) -> list[dict]:
    """Load one split with Detectron2's ``load_coco_json``; a missing folder or json, or a json
    that does not parse, fails with the path in the message. ``check_boxes``: parse the json
    once more first to name any box outside its image (:func:`check_boxes_inside`; left out for
    COCO 2017 itself, whose 450 MB train json is Detectron2's to read)."""
    fix = f"Check DATASETS.ROOT / $DETECTRON2_DATASETS (looked for {json_file} and {image_root})."
    require_folder(image_root, f"{name} images", fix)
    if not json_file.is_file():
        raise FileNotFoundError(f"{name}: annotation file {json_file} does not exist. {fix}")
    if not check_boxes:
        return load_coco_json(str(json_file), str(image_root), name)
    try:
        coco = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: {json_file} is not valid JSON ({e}).") from None
    check_boxes_inside(coco, json_file)
    return load_coco_json(str(json_file), str(image_root), name)


def check_boxes_inside(coco: dict, json_file, tolerance: float = 1.0) -> None:
    """Fail naming the annotation when a box has a non-positive size or leaves its image by
    more than ``tolerance`` pixels (COCO's own rounding stays inside that)."""
    sizes = {img["id"]: (img.get("width"), img.get("height")) for img in coco.get("images", [])}
    for ann in coco.get("annotations", []):
        x, y, w, h = ann["bbox"]
        iw, ih = sizes.get(ann["image_id"], (None, None))
        outside = iw is not None and (x < -tolerance or y < -tolerance or x + w > iw + tolerance or y + h > ih + tolerance)
        if w <= 0 or h <= 0 or outside:
            raise ValueError(
                f"{json_file}: annotation {ann.get('id')} of image {ann['image_id']} has bbox "
                f"{[x, y, w, h]} (xywh) outside the {iw}x{ih} image or of empty size"
            )


def register_coco_folder(name: str, root: str = "", splits=("train2017", "val2017")) -> None:
    """Register ``<name>_<split>`` for each split of ``<root>/<name>`` (evaluator_type coco)."""
    folder = datasets_root(root) / name
    for split in splits:
        json_file = folder / "annotations" / f"instances_{split}.json"
        image_root = folder / split
        ds = f"{name}_{split}"
        # thing_classes and the id map are filled in by load_coco_json on first load
        register(
            ds,
            lambda j=json_file, i=image_root, ds=ds: load_coco_folder(j, i, ds),
            json_file=str(json_file),
            image_root=str(image_root),
            evaluator_type="coco",
            required_paths=[str(json_file), str(image_root)],
            prepare_hint=f"Point DATASETS.ROOT or $DETECTRON2_DATASETS at the folder holding {name}/.",
        )


# Detectron2's COCO 2017 instance splits: name -> (image folder, annotation file) under coco/
COCO_2017 = {
    "coco_2017_train": ("train2017", "instances_train2017.json"),
    "coco_2017_val": ("val2017", "instances_val2017.json"),
    "coco_2017_val_100": ("val2017", "instances_val2017_100.json"),
}


def register_coco_2017(root: str = "") -> None:
    """Register Detectron2's ``coco_2017_*`` instance splits under ``<root>/coco`` (see the
    module docstring): the same names, metadata and evaluator as Detectron2's built-ins, found
    where DATASETS.ROOT says, and checked before any model is built."""
    folder = datasets_root(root) / "coco"
    meta = _get_builtin_metadata("coco")
    for name, (images, annotations) in COCO_2017.items():
        json_file, image_root = folder / "annotations" / annotations, folder / images
        register(
            name,
            lambda j=json_file, i=image_root, n=name: load_coco_folder(j, i, n, check_boxes=False),
            **meta,
            json_file=str(json_file),
            image_root=str(image_root),
            evaluator_type="coco",
            required_paths=[str(json_file), str(image_root)],
            prepare_hint=(
                "Point DATASETS.ROOT (or $DETECTRON2_DATASETS) at the folder holding coco/ in COCO's "
                "layout: coco/train2017/, coco/val2017/, coco/annotations/instances_{train,val}2017.json"
            ),
        )
