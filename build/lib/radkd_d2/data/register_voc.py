"""Register Pascal VOC 2012 with the SBD augmented training set (21 classes, ignore 255).

Expected layout under ``<root>`` after ``datasets/prepare_voc.py``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png      (written: class indices 0..20, 255)
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt  (written last: 10,582 ids)
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt        (VOC's own: 1,449 ids)

The start-up check requires ``train_aug.txt`` for both splits: the preparation script writes
it after every label (val included), so a finished preparation is what it detects.
Names: ``voc_aug_sem_seg_train`` (train_aug) and ``voc_aug_sem_seg_val`` (val).
"""

from __future__ import annotations

from pathlib import Path

from .common import datasets_root, register, require_folder

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IGNORE = 255
SPLIT_LISTS = {"train": "train_aug.txt", "val": "val.txt"}


def voc_prepare_hint(root: Path) -> str:
    return (
        f"Prepare VOC 2012 + SBD with: python datasets/prepare_voc.py --root {root} "
        f"--sbd <path to benchmark_RELEASE> (needs {root}/VOCdevkit/VOC2012; see "
        "datasets/README.md)."
    )


def load_voc_aug(voc: Path, split: str, hint: str) -> list[dict]:
    """Dataset dicts of one split, from its id list; fails naming the first missing file."""
    images, labels = voc / "JPEGImages", voc / "SegmentationClassAug"
    id_list = voc / "ImageSets" / "Segmentation" / SPLIT_LISTS[split]
    require_folder(images, "VOC images", hint)
    require_folder(labels, "VOC labels", hint)
    if not id_list.is_file():
        raise FileNotFoundError(f"VOC {split}: id list {id_list} does not exist. {hint}")
    ids = [line.strip() for line in id_list.read_text().splitlines() if line.strip()]
    if not ids:
        raise FileNotFoundError(f"VOC {split}: id list {id_list} is empty. {hint}")
    dicts = []
    for i in ids:
        image, label = images / f"{i}.jpg", labels / f"{i}.png"
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(
                    f"VOC {split}: {path} (listed in {id_list}) is missing. {hint}"
                )
        dicts.append({"file_name": str(image), "sem_seg_file_name": str(label), "image_id": i})
    return dicts


def register_voc(root: str = "") -> None:
    """Register ``voc_aug_sem_seg_{train,val}`` from ``<root>/VOCdevkit/VOC2012``."""
    base = datasets_root(root)
    voc = base / "VOCdevkit" / "VOC2012"
    hint = voc_prepare_hint(base)
    lists = voc / "ImageSets" / "Segmentation"
    for split, list_name in SPLIT_LISTS.items():
        register(
            f"voc_aug_sem_seg_{split}",
            lambda split=split: load_voc_aug(voc, split, hint),
            stuff_classes=list(VOC_CLASSES),
            ignore_label=VOC_IGNORE,
            evaluator_type="sem_seg",
            dataset_root=str(voc),
            required_paths=list(
                dict.fromkeys(  # ordered, without the duplicate for train
                    str(p)
                    for p in (
                        voc / "JPEGImages",
                        voc / "SegmentationClassAug",
                        lists / list_name,
                        lists / SPLIT_LISTS["train"],
                    )
                )
            ),
            prepare_hint=hint,
        )
