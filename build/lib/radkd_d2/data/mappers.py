"""Dataset mappers: the semantic-segmentation training recipe of the paper (random scale
0.5-2.0, crop with ignore padding, horizontal flip) on top of Detectron2's DatasetMapper."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform


class RandomScale(T.Augmentation):
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]`` of ``base_size``
    (long side) or, when ``base_size`` is 0, of the image's own size."""

    def __init__(self, min_scale: float, max_scale: float, base_size: int = 0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        if self.base_size > 0:
            scale *= self.base_size / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) == (h, w):
            return NoOpTransform()
        return T.ResizeTransform(h, w, nh, nw)


def build_sem_seg_train_augmentation(cfg) -> list[T.Augmentation]:
    """Random scale -> fixed-size crop (padded with the ignore label) -> horizontal flip."""
    lo, hi = cfg.INPUT.SEM_SEG.SCALE_RANGE
    augs = [
        RandomScale(lo, hi, cfg.INPUT.SEM_SEG.BASE_SIZE),
        T.FixedSizeCrop(
            tuple(cfg.INPUT.SEM_SEG.CROP_SIZE),
            pad=True,
            pad_value=0.0,
            seg_pad_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
    ]
    if cfg.INPUT.SEM_SEG.FLIP:
        augs.append(T.RandomFlip(horizontal=True))
    return augs


class ReadableDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper; an image or label file that cannot be decoded fails with
    one error naming the file (instead of a PIL traceback from inside a data-loader worker)."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
            files = [dataset_dict.get(k) for k in ("file_name", "sem_seg_file_name") if dataset_dict.get(k)]
            raise ValueError(f"cannot read {' / '.join(files)}: {type(e).__name__}: {e}") from e


class SemSegDatasetMapper(ReadableDatasetMapper):
    """Detectron2's DatasetMapper for semantic segmentation, plus a label check: every label
    value must be a class index (< number of classes) or the dataset's ignore label; anything
    else is an error naming the file, instead of silent garbage in the loss."""

    @configurable
    def __init__(self, is_train: bool, *, num_classes: int, ignore_label: int, **kwargs):
        super().__init__(is_train, **kwargs)
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = build_sem_seg_train_augmentation(cfg)
        elif cfg.INPUT.MIN_SIZE_TEST > 0:  # single scale, shortest edge resized; the model
            # resizes its prediction back to the image's height x width, which is what is scored
            ret["augmentations"] = [
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            ]
        else:  # single-scale test at the original resolution
            ret["augmentations"] = []
        ret["num_classes"] = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        # the trainer checks at start-up that this equals each data set's ignore_label
        ret["ignore_label"] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        return ret

    def __call__(self, dataset_dict):
        label_file = dataset_dict.get("sem_seg_file_name")
        out = super().__call__(dataset_dict)
        sem_seg = out.get("sem_seg")
        if sem_seg is not None:
            values = torch.unique(sem_seg)
            bad = values[(values >= self.num_classes) & (values != self.ignore_label)]
            if len(bad):
                raise ValueError(
                    f"label file {label_file} has values {bad.tolist()} outside "
                    f"0..{self.num_classes - 1} that are not the ignore label {self.ignore_label}"
                )
        return out
