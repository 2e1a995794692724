"""Detectron2's SemSegEvaluator with every ground-truth label map checked as it is read."""
from __future__ import annotations

import numpy as np
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from radkd_d2.data.labels import check_label_range


def load_label(path: str, dtype=None) -> np.ndarray:
    """A label file as a numpy array (its own dtype when ``dtype`` is None). Detectron2's default
    loader calls np.array(..., copy=False), which numpy 2 rejects."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=dtype)


class LabelCheckedSemSegEvaluator(SemSegEvaluator):
    """SemSegEvaluator whose ground-truth loader checks each label file before it is scored: a
    value that is neither a class index (0..K-1, K = len(stuff_classes)) nor the data set's
    ignore_label raises :class:`radkd_d2.errors.LabelRangeError` naming the file, the values and
    the allowed range. (Unchecked, such a value is counted as a wrong cell of the confusion
    matrix, silently changing mIoU, or crashes np.reshape in ``process`` without naming the
    file.) The check runs on the file's own dtype (uint8 for PNG labels), before the cast to the
    evaluator's int dtype."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, *,
                 sem_seg_loading_fn=load_label, **kwargs):  # fmt: skip
        super().__init__(
            dataset_name, distributed, output_dir, sem_seg_loading_fn=self._load_checked, **kwargs
        )
        self._read_label = sem_seg_loading_fn  # (path, dtype) -> array, as Detectron2's

    def _load_checked(self, path: str, dtype=int) -> np.ndarray:
        label = self._read_label(path, dtype=None)
        check_label_range(label, self._num_classes, self._ignore_label, file_name=path)
        return np.array(label, dtype=dtype)  # a writable copy: process() edits it in place
