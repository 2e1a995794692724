"""Register Cityscapes fine (19 classes, ignore 255) with Detectron2's own loader.

Expected layout under ``<root>/cityscapes`` (the official download)::

    leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
    gtFine/{train,val}/<city>/*_gtFine_{labelIds,instanceIds,labelTrainIds}.png, *_polygons.json

``*_gtFine_labelTrainIds.png`` is not in the download: ``datasets/prepare_cityscapes.py`` writes
it, and last ``gtFine/<split>_labelTrainIds.txt`` (the list of files it wrote), whose presence
the start-up check requires, so data that was downloaded but not prepared fails early.

Names: ``cityscapes_fine_sem_seg_{train,val}`` -- Detectron2's built-in names, re-registered here
under ``DATASETS.ROOT`` with ``evaluator_type="sem_seg"`` (Detectron2's
``cityscapes_sem_seg`` evaluator needs cityscapesscripts; mIoU over the 19 train ids is the same).
"""

from __future__ import annotations

from pathlib import Path

from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

from .common import datasets_root, register, require_folder

CITYSCAPES_IGNORE = 255
SPLITS = ("train", "val")


def cityscapes_prepare_hint(root: Path) -> str:
    return (
        f"Prepare Cityscapes with: python datasets/prepare_cityscapes.py --root {root} "
        "(needs cityscapes/leftImg8bit and cityscapes/gtFine from cityscapes-dataset.com; "
        "see datasets/README.md)."
    )


def prepared_list(folder: Path, split: str) -> Path:
    """List of the train-id label files, written by the preparation script when it is done."""
    return folder / "gtFine" / f"{split}_labelTrainIds.txt"


def load_cityscapes_fine(folder: Path, split: str, hint: str) -> list[dict]:
    """Detectron2's ``load_cityscapes_semantic`` for one split, after checking the folders and
    that the train-id labels were generated (its own check is a bare assert)."""
    image_dir, gt_dir = folder / "leftImg8bit" / split, folder / "gtFine" / split
    require_folder(image_dir, f"Cityscapes {split} images", hint)
    require_folder(gt_dir, f"Cityscapes {split} labels", hint)
    if not prepared_list(folder, split).is_file():
        raise FileNotFoundError(
            f"Cityscapes {split}: {prepared_list(folder, split)} does not exist, so the "
            f"*_gtFine_labelTrainIds.png files were not generated. {hint}"
        )
    return load_cityscapes_semantic(str(image_dir), str(gt_dir))


def register_cityscapes(root: str = "") -> None:
    """Register ``cityscapes_fine_sem_seg_{train,val}`` from ``<root>/cityscapes``."""
    base = datasets_root(root)
    folder = base / "cityscapes"
    hint = cityscapes_prepare_hint(base)
    meta = _get_builtin_metadata("cityscapes")
    for split in SPLITS:
        register(
            f"cityscapes_fine_sem_seg_{split}",
            lambda split=split: load_cityscapes_fine(folder, split, hint),
            stuff_classes=list(meta["stuff_classes"]),
            ignore_label=CITYSCAPES_IGNORE,
            evaluator_type="sem_seg",
            image_dir=str(folder / "leftImg8bit" / split),
            gt_dir=str(folder / "gtFine" / split),
            required_paths=[
                str(folder / "leftImg8bit" / split),
                str(folder / "gtFine" / split),
                str(prepared_list(folder, split)),
            ],
            prepare_hint=hint,
        )
