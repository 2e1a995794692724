#!/usr/bin/env python
"""Build Pascal VOC 2012 + SBD "train_aug" (10,582 train / 1,449 val ids, 21 classes, 255 =
ignore) for ``voc_aug_sem_seg_{train,val}``.

Expected layout (VOCtrainval_11-May-2012.tar and SBD's benchmark.tgz unpacked)::

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png        (palette PNGs)
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    <sbd>/dataset/cls/<id>.mat  <sbd>/dataset/{train,val}.txt   (<sbd>: --sbd, default
                                                                <root>/benchmark_RELEASE)

Writes, under ``VOCdevkit/VOC2012``:

* ``SegmentationClassAug/<id>.png``: grayscale class indices for every train_aug and val id. A
  VOC annotation is used where one exists (it is the finer one, with 255 on object borders),
  otherwise the SBD one, converted from ``GTcls.Segmentation`` of its MATLAB file.
* ``ImageSets/Segmentation/train_aug.txt`` (written last): SBD train + SBD val + VOC train,
  minus VOC val -- the usual 10,582 ids.

The SBD ``.mat`` files are MATLAB v5; scipy is not a dependency, so a minimal v5 reader
(numeric arrays, structs, cells; compressed or not) is included below. Existing outputs are kept
unless ``--overwrite``; rerunning is safe.

    python datasets/prepare_voc.py --root datasets --sbd datasets/benchmark_RELEASE
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from _prepare_common import (
    LayoutError,
    base_parser,
    progress,
    read_ids,
    require_dir,
    require_file,
    run,
    write_label,
    write_lines,
)

LAYOUT = """\
  <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png
  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  <sbd>/dataset/cls/<id>.mat   <sbd>/dataset/{train,val}.txt"""
NUM_CLASSES, IGNORE = 21, 255


# --------------------------------------------------------------------------- MATLAB v5 reader
# Data types (miXXX) and array classes (mxXXX) of the MAT-file format, level 5
# (MathWorks, "MAT-File Format", chapter 1).
_MI_DTYPES = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
    16: "u1", 17: "u2", 18: "u4",  # utf8 / utf16 / utf32 text
}  # fmt: skip
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_NUMERIC = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}  # fmt: skip
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4


class MatFormatError(LayoutError):
    """A .mat file this reader cannot parse."""


class _Reader:
    def __init__(self, data: bytes, endian: str, source: str):
        self.data, self.endian, self.source, self.pos = data, endian, source, 0

    def element(self) -> tuple[int, bytes]:
        """Next data element (type, payload); handles the small (4-byte) element format."""
        if self.pos + 8 > len(self.data):
            raise MatFormatError(f"{self.source}: truncated data element")
        word, nbytes = struct.unpack_from(self.endian + "II", self.data, self.pos)
        if word >> 16:  # small element: size in the upper half, data in the next 4 bytes
            payload = self.data[self.pos + 4 : self.pos + 4 + (word >> 16)]
            self.pos += 8
            return word & 0xFFFF, payload
        payload = self.data[self.pos + 8 : self.pos + 8 + nbytes]
        if len(payload) != nbytes:
            raise MatFormatError(f"{self.source}: truncated data element")
        self.pos += 8 + nbytes
        if word != _MI_COMPRESSED:
            self.pos += -nbytes % 8  # elements are padded to 8 bytes
        return word, payload

    def numbers(self, mi_type: int, payload: bytes) -> np.ndarray:
        if mi_type not in _MI_DTYPES:
            raise MatFormatError(f"{self.source}: unsupported data type {mi_type}")
        return np.frombuffer(payload, np.dtype(_MI_DTYPES[mi_type]).newbyteorder(self.endian))

    def matrix(self, payload: bytes):
        """Decode one miMATRIX payload: ndarray, str, dict (1x1 struct), list (struct array or
        cell), or None for classes not needed here (sparse, objects)."""
        if not payload:
            return np.zeros((0, 0))
        sub = _Reader(payload, self.endian, self.source)
        flags = sub.numbers(*sub.element())
        mx_class, is_complex = int(flags[0]) & 0xFF, bool(int(flags[0]) & 0x800)
        dims = tuple(int(d) for d in sub.numbers(*sub.element()))
        sub.element()  # array name; unused (names are read from the top-level element)
        count = int(np.prod(dims))
        if mx_class in _MX_NUMERIC:
            real = sub.numbers(*sub.element()).astype(_MX_NUMERIC[mx_class])
            if is_complex:
                real = real + 1j * sub.numbers(*sub.element())
            return real.reshape(dims, order="F")
        if mx_class == _MX_CHAR:
            return "".join(chr(c) for c in sub.numbers(*sub.element()))
        if mx_class == _MX_CELL:
            return [sub.matrix(sub.expect_matrix()) for _ in range(count)]
        if mx_class == _MX_STRUCT:
            name_len = int(sub.numbers(*sub.element())[0])
            raw = sub.element()[1]
            names = [
                raw[i : i + name_len].split(b"\0", 1)[0].decode("ascii")
                for i in range(0, len(raw), name_len)
            ]
            items = [{n: sub.matrix(sub.expect_matrix()) for n in names} for _ in range(count)]
            return items[0] if count == 1 else items
        return None

    def expect_matrix(self) -> bytes:
        mi_type, payload = self.element()
        if mi_type != _MI_MATRIX:
            raise MatFormatError(f"{self.source}: expected a matrix element, got type {mi_type}")
        return payload


def read_mat(path: Path) -> dict:
    """Variables of a MATLAB v5 .mat file: {name: value} (see ``_Reader.matrix``)."""
    data = path.read_bytes()
    if len(data) < 128 or data[:6] != b"MATLAB":
        raise MatFormatError(f"{path} is not a MATLAB .mat file")
    if b"7.3 MAT-file" in data[:116]:
        raise MatFormatError(f"{path} is a MATLAB v7.3 (HDF5) file; SBD ships v5 files")
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None:
        raise MatFormatError(f"{path}: bad endian indicator {data[126:128]!r}")
    top = _Reader(data[128:], endian, str(path))
    out = {}
    while top.pos < len(top.data):
        mi_type, payload = top.element()
        if mi_type == _MI_COMPRESSED:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as e:
                raise MatFormatError(f"{path}: corrupt compressed element ({e})") from None
            mi_type, payload = _Reader(payload, endian, str(path)).element()
        if mi_type != _MI_MATRIX:
            continue
        sub = _Reader(payload, endian, str(path))
        sub.element()
        sub.element()
        name = bytes(sub.element()[1]).decode("ascii")
        out[name] = top.matrix(payload)
    return out


def sbd_label(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as an H x W uint8 array."""
    gt = read_mat(path).get("GTcls")
    if not isinstance(gt, dict) or "Segmentation" not in gt:
        raise MatFormatError(f"{path}: no GTcls.Segmentation (is this an SBD cls/*.mat file?)")
    seg = np.asarray(gt["Segmentation"])
    if seg.ndim != 2:
        raise MatFormatError(f"{path}: GTcls.Segmentation has shape {seg.shape}")
    return seg.astype(np.uint8)


# --------------------------------------------------------------------------- VOC annotations
def voc_colormap() -> np.ndarray:
    """256 x 3 VOC palette (bit-interleaved class index), used to decode RGB copies of labels."""
    cmap = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def voc_label(path: Path) -> np.ndarray:
    """A VOC ``SegmentationClass`` PNG as class indices (palette PNG, or an RGB copy of one)."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.asarray(img).astype(np.uint8)
        rgb = np.asarray(img.convert("RGB"))
    cmap = voc_colormap()
    keys = cmap.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    lookup = dict(zip(keys.tolist(), range(256)))
    flat = rgb.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    values, inverse = np.unique(flat, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in lookup]
    if unknown:
        raise LayoutError(f"{path}: {len(unknown)} colours are not in the VOC palette")
    return np.array([lookup[v] for v in values.tolist()], np.uint8)[inverse].reshape(rgb.shape[:2])


def check_values(label: np.ndarray, path: Path) -> np.ndarray:
    bad = sorted(set(np.unique(label).tolist()) - set(range(NUM_CLASSES)) - {IGNORE})
    if bad:
        raise LayoutError(f"{path}: label values {bad} are not VOC classes 0..20 or 255")
    return label


def prepare(root: Path, sbd: Path, overwrite: bool = False) -> tuple[int, int]:
    """Write SegmentationClassAug and train_aug.txt; returns (#train_aug, #val)."""
    voc = require_dir(root / "VOCdevkit" / "VOC2012", "VOC 2012 devkit", LAYOUT)
    images = require_dir(voc / "JPEGImages", "VOC images", LAYOUT)
    voc_seg = require_dir(voc / "SegmentationClass", "VOC annotations", LAYOUT)
    lists = voc / "ImageSets" / "Segmentation"
    voc_train = read_ids(lists / "train.txt", "VOC train ids", LAYOUT)
    voc_val = read_ids(lists / "val.txt", "VOC val ids", LAYOUT)
    cls = require_dir(sbd / "dataset" / "cls", "SBD class annotations (.mat)", LAYOUT)
    sbd_ids = read_ids(sbd / "dataset" / "train.txt", "SBD train ids", LAYOUT)
    sbd_ids += read_ids(sbd / "dataset" / "val.txt", "SBD val ids", LAYOUT)

    val_set = set(voc_val)
    train_aug = sorted(set(sbd_ids + voc_train) - val_set)
    out_dir = voc / "SegmentationClassAug"
    for i in progress(train_aug + sorted(val_set), "voc labels"):
        require_file(images / f"{i}.jpg", f"image of id {i}", LAYOUT)
        out = out_dir / f"{i}.png"
        if out.is_file() and not overwrite:
            continue
        if (voc_seg / f"{i}.png").is_file():
            src, label = voc_seg / f"{i}.png", voc_label(voc_seg / f"{i}.png")
        elif i in val_set:
            raise LayoutError(f"missing file {voc_seg / f'{i}.png'} (VOC annotation of val id {i})")
        else:
            src = require_file(cls / f"{i}.mat", f"SBD annotation of id {i}", LAYOUT)
            label = sbd_label(src)
        write_label(out, check_values(label, src))
    write_lines(lists / "train_aug.txt", train_aug)
    return len(train_aug), len(val_set)


def main(argv=None) -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sbd", type=Path, default=None,
        help="SBD folder holding dataset/cls (default: <root>/benchmark_RELEASE)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    n_train, n_val = prepare(args.root, args.sbd or args.root / "benchmark_RELEASE", args.overwrite)
    full = "" if (n_train, n_val) == (10582, 1449) else " (the full data sets give 10582 / 1449)"
    print(f"voc: train_aug {n_train} ids, val {n_val} ids{full}")


if __name__ == "__main__":
    sys.exit(run(main))
