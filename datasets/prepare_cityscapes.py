#!/usr/bin/env python
"""Generate Cityscapes ``*_gtFine_labelTrainIds.png`` (19 classes, 255 = ignore) from the
``*_gtFine_labelIds.png`` of the official download, for ``cityscapes_fine_sem_seg_{train,val}``.

Expected layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip`` unpacked)::

    <root>/cityscapes/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <root>/cityscapes/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png
                                              <name>_gtFine_instanceIds.png, _polygons.json

Writes ``<name>_gtFine_labelTrainIds.png`` next to each ``labelIds`` file and, when a split is
done, ``gtFine/<split>_labelTrainIds.txt`` (the list of written files; the start-up check of a
training run looks for it). Existing outputs are kept unless ``--overwrite``; rerunning is safe.

    python datasets/prepare_cityscapes.py --root datasets
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from _prepare_common import (
    LayoutError,
    base_parser,
    progress,
    read_label,
    require_dir,
    require_file,
    run,
    write_label,
    write_lines,
)

LAYOUT = """\
  <root>/cityscapes/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
  <root>/cityscapes/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png (+ _polygons.json)"""

# Cityscapes label id -> train id, as in cityscapesscripts/helpers/labels.py: the 19 evaluated
# classes get 0..18, every other id (void, and classes not evaluated) 255. "license plate"
# (id -1) is never written into labelIds images, so it needs no entry.
ID_TO_TRAIN_ID = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
IGNORE = 255


def train_id_lut() -> np.ndarray:
    """256-entry uint8 lookup table: label id -> train id (255 for ids not evaluated)."""
    lut = np.full(256, IGNORE, np.uint8)
    for label_id, train_id in ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def split_pairs(folder: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, labelIds) pairs of a split; fails naming the first image without its label files."""
    images = require_dir(folder / "leftImg8bit" / split, f"Cityscapes {split} images", LAYOUT)
    gt = require_dir(folder / "gtFine" / split, f"Cityscapes {split} fine labels", LAYOUT)
    files = sorted(images.glob("*/*_leftImg8bit.png"))
    if not files:
        raise LayoutError(
            f"no <city>/*_leftImg8bit.png under {images}.\nExpected layout:\n{LAYOUT}"
        )
    pairs = []
    for image in files:
        stem = image.name[: -len("_leftImg8bit.png")]
        city_gt = gt / image.parent.name
        label = require_file(city_gt / f"{stem}_gtFine_labelIds.png", f"label of {image}", LAYOUT)
        require_file(city_gt / f"{stem}_gtFine_polygons.json", f"polygons of {image}", LAYOUT)
        pairs.append((image, label))
    return pairs


def prepare_split(folder: Path, split: str, overwrite: bool = False) -> int:
    """Write the train-id labels of one split and its list; returns the number of labels."""
    pairs = split_pairs(folder, split)
    lut = train_id_lut()
    written = []
    for _, label in progress(pairs, f"cityscapes {split}"):
        out = label.with_name(label.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if overwrite or not out.is_file():
            write_label(out, lut[read_label(label)])
        written.append(str(out.relative_to(folder)))
    write_lines(folder / "gtFine" / f"{split}_labelTrainIds.txt", written)
    return len(written)


def main(argv=None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    args = parser.parse_args(argv)
    folder = require_dir(args.root / "cityscapes", "Cityscapes root", LAYOUT)
    for split in args.splits:
        n = prepare_split(folder, split, args.overwrite)
        expected = {"train": 2975, "val": 500}[split]
        note = "" if n == expected else f" (the full data set has {expected})"
        print(f"cityscapes {split}: {n} labelTrainIds files{note}")


if __name__ == "__main__":
    sys.exit(run(main))
