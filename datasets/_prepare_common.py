"""Helpers shared by the ``prepare_*.py`` scripts: layout checks with clear errors, a plain
progress printer, atomic writes (so an interrupted run leaves no half-written file and a rerun
can skip what exists), and the common command-line skeleton.

Only numpy and Pillow are used, so the scripts start fast and need neither torch nor Detectron2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")


class LayoutError(RuntimeError):
    """The input folders do not have the expected layout; the message names what is missing."""


def require_dir(path: Path, what: str, layout: str = "") -> Path:
    """``path`` if it is a non-empty folder, else LayoutError naming it (and the layout)."""
    if not path.is_dir():
        raise LayoutError(f"missing folder {path} ({what}).{_layout(layout)}")
    if not any(path.iterdir()):
        raise LayoutError(f"folder {path} ({what}) is empty.{_layout(layout)}")
    return path


def require_file(path: Path, what: str, layout: str = "") -> Path:
    """``path`` if it is a file, else LayoutError naming it (and the layout)."""
    if not path.is_file():
        raise LayoutError(f"missing file {path} ({what}).{_layout(layout)}")
    return path


def _layout(layout: str) -> str:
    return f"\nExpected layout:\n{layout.rstrip()}" if layout else ""


def read_ids(path: Path, what: str, layout: str = "") -> list[str]:
    """Non-empty, stripped lines of an id list file."""
    require_file(path, what, layout)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def progress(items: Sequence[T], desc: str, every_s: float = 2.0) -> Iterator[T]:
    """Yield ``items``, printing ``desc: i/n`` to stderr at most every ``every_s`` seconds and
    once at the end."""
    n, last = len(items), time.monotonic()
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if i == n or now - last >= every_s:
            print(f"  {desc}: {i}/{n}", file=sys.stderr, flush=True)
            last = now


def read_label(path: Path) -> np.ndarray:
    """A label PNG as an H x W uint8 array (palette images give their indices)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise LayoutError(f"label {path} has image mode {img.mode}; expected one channel")
        arr = np.asarray(img)
    if arr.ndim != 2 or arr.min() < 0 or arr.max() > 255:
        raise LayoutError(f"label {path} is not a single-channel 8-bit label image")
    return arr.astype(np.uint8)


def write_label(path: Path, label: np.ndarray) -> None:
    """Write an H x W uint8 label as a grayscale PNG, atomically (temp file + rename)."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"write_label({path}): need an H x W uint8 array, got {label.shape} {label.dtype}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(label).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write one item per line, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with the options every script has: ``--root`` and ``--overwrite``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("DETECTRON2_DATASETS", "datasets")),
        help="data set root (DATASETS.ROOT); default: $DETECTRON2_DATASETS or ./datasets",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite outputs that already exist"
    )
    return parser


def run(main, argv=None) -> int:
    """Call ``main(argv)``; a LayoutError becomes a one-paragraph message and exit status 2."""
    try:
        main(argv)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
