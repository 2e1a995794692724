"""The label-range check shared by the training/test mapper and the evaluator: every value of a
semantic-segmentation label map is a class index (0..num_classes-1) or the ignore label."""
from __future__ import annotations

from typing import Optional

import numpy as np

from radkd_d2.errors import LabelRangeError


def check_label_range(label: np.ndarray, num_classes: int, ignore_label: int,
                      file_name: Optional[str] = None) -> None:  # fmt: skip
    """Raise :class:`LabelRangeError` (naming ``file_name``, the bad values, their pixel count
    and the allowed range) when ``label`` holds a value that is neither in 0..num_classes-1 nor
    ``ignore_label``. A clean map costs one vectorised pass (``max``) when it holds no ignore
    pixels, a few more (a boolean mask) when it does; the bad values are listed only on failure."""
    label = np.asarray(label)
    if label.size == 0:
        return
    unsigned = label.dtype.kind in "ub"
    if label.max() < num_classes and (unsigned or label.min() >= 0):
        return  # no ignore pixels: one pass
    bad = label >= num_classes
    if not unsigned:
        bad |= label < 0
    if not 0 <= ignore_label < num_classes:
        bad &= label != ignore_label
    if not bad.any():
        return
    values = label[bad]
    raise LabelRangeError.of(file_name, np.unique(values), int(values.size), num_classes, ignore_label)
