"""Register ADE20K (SceneParsing, 150 classes, ignore 255) with Detectron2's own loader.

Expected layout under ``<root>/ADEChallengeData2016`` (the official ``ADEChallengeData2016.zip``)::

    images/{training,validation}/*.jpg
    annotations/{training,validation}/*.png              (0 = other, 1..150 = classes)
    annotations_detectron2/{training,validation}/*.png   (written: 0..149, 255 = ignore)
    annotations_detectron2/{training,validation}.txt     (written last: the converted files)

Names: ``ade20k_sem_seg_{train,val}`` -- Detectron2's built-in names and metadata, re-registered
here under ``DATASETS.ROOT`` with the start-up metadata (``required_paths``, ``prepare_hint``).
"""

from __future__ import annotations

from pathlib import Path

from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

from .common import datasets_root, register, require_folder

ADE20K_IGNORE = 255
SPLITS = {"train": "training", "val": "validation"}


def ade20k_prepare_hint(root: Path) -> str:
    return (
        f"Prepare ADE20K with: python datasets/prepare_ade20k.py --root {root} "
        f"(needs {root}/ADEChallengeData2016 from the ADEChallengeData2016.zip download; see "
        "datasets/README.md)."
    )


def prepared_list(folder: Path, dirname: str) -> Path:
    """List of the converted label files, written by the preparation script when it is done."""
    return folder / "annotations_detectron2" / f"{dirname}.txt"


def load_ade20k(folder: Path, dirname: str, hint: str) -> list[dict]:
    """Detectron2's ``load_sem_seg`` for one split, after checking both folders."""
    images, labels = folder / "images" / dirname, folder / "annotations_detectron2" / dirname
    require_folder(images, f"ADE20K {dirname} images", hint)
    require_folder(labels, f"ADE20K {dirname} labels", hint)
    if not prepared_list(folder, dirname).is_file():
        raise FileNotFoundError(
            f"ADE20K {dirname}: {prepared_list(folder, dirname)} does not exist, so the label "
            f"conversion did not finish. {hint}"
        )
    return load_sem_seg(str(labels), str(images), gt_ext="png", image_ext="jpg")


def register_ade20k(root: str = "") -> None:
    """Register ``ade20k_sem_seg_{train,val}`` from ``<root>/ADEChallengeData2016``."""
    base = datasets_root(root)
    folder = base / "ADEChallengeData2016"
    hint = ade20k_prepare_hint(base)
    for split, dirname in SPLITS.items():
        images, labels = folder / "images" / dirname, folder / "annotations_detectron2" / dirname
        register(
            f"ade20k_sem_seg_{split}",
            lambda dirname=dirname: load_ade20k(folder, dirname, hint),
            stuff_classes=list(ADE20K_SEM_SEG_CATEGORIES),
            ignore_label=ADE20K_IGNORE,
            evaluator_type="sem_seg",
            image_root=str(images),
            sem_seg_root=str(labels),
            required_paths=[str(images), str(labels), str(prepared_list(folder, dirname))],
            prepare_hint=hint,
        )
