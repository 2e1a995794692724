#!/usr/bin/env python
"""Write ADE20K ``annotations_detectron2`` (150 classes 0..149, 255 = ignore) from the official
``annotations`` (0 = "other", 1..150), for ``ade20k_sem_seg_{train,val}``.

Expected layout (``ADEChallengeData2016.zip`` unpacked)::

    <root>/ADEChallengeData2016/images/{training,validation}/<name>.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/<name>.png

Writes ``annotations_detectron2/{training,validation}/<name>.png`` (label - 1, so 0 becomes 255,
as Detectron2's ``prepare_ade20k_sem_seg.py`` does) and, when a split is done,
``annotations_detectron2/<split>.txt`` (the list of written files; the start-up check of a
training run looks for it). Existing outputs are kept unless ``--overwrite``; rerunning is safe.

    python datasets/prepare_ade20k.py --root datasets
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
  <root>/ADEChallengeData2016/images/{training,validation}/<name>.jpg
  <root>/ADEChallengeData2016/annotations/{training,validation}/<name>.png"""
NUM_CLASSES = 150
EXPECTED = {"training": 20210, "validation": 2000}


def convert(label: np.ndarray, path: Path) -> np.ndarray:
    """Official label (0 = other, 1..150) -> 0..149 with 0 mapped to 255."""
    if int(label.max()) > NUM_CLASSES:
        raise LayoutError(f"{path}: label value {int(label.max())} > {NUM_CLASSES}")
    return (label.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def prepare_split(folder: Path, split: str, overwrite: bool = False) -> int:
    """Convert one split and write its list; returns the number of labels."""
    images = require_dir(folder / "images" / split, f"ADE20K {split} images", LAYOUT)
    annotations = require_dir(folder / "annotations" / split, f"ADE20K {split} annotations", LAYOUT)
    files = sorted(images.glob("*.jpg"))
    if not files:
        raise LayoutError(f"no .jpg image in {images}.\nExpected layout:\n{LAYOUT}")
    labels = [require_file(annotations / f"{f.stem}.png", f"label of {f}", LAYOUT) for f in files]
    out_dir = folder / "annotations_detectron2" / split
    written = []
    for label in progress(labels, f"ade20k {split}"):
        out = out_dir / label.name
        if overwrite or not out.is_file():
            write_label(out, convert(read_label(label), label))
        written.append(str(out.relative_to(folder)))
    write_lines(folder / "annotations_detectron2" / f"{split}.txt", written)
    return len(written)


def main(argv=None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    folder = require_dir(args.root / "ADEChallengeData2016", "ADE20K root", LAYOUT)
    for split in ("training", "validation"):
        n = prepare_split(folder, split, args.overwrite)
        note = "" if n == EXPECTED[split] else f" (the full data set has {EXPECTED[split]})"
        print(f"ade20k {split}: {n} labels{note}")


if __name__ == "__main__":
    sys.exit(run(main))
