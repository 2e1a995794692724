"""Dataset mappers: the semantic-segmentation training recipe of the paper (random scale
0.5-2.0, crop with ignore padding, horizontal flip) on top of Detectron2's DatasetMapper."""
from __future__ import annotations

import numpy as np
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform

from radkd_d2.errors import DataError, LabelRangeError

from .labels import check_label_range


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


class LabelRangeCheck(T.Augmentation):
    """First augmentation of the semantic-segmentation mapper: checks the whole label map as it
    was read (before any scale or crop, so a bad patch the crop would cut away is refused too)
    and changes nothing. Raises :class:`LabelRangeError`; the mapper adds the file name."""

    input_args = ("sem_seg",)  # a one-argument get_transform would otherwise be given the image

    def __init__(self, num_classes: int, ignore_label: int):
        super().__init__()
        self._init(locals())

    def get_transform(self, sem_seg):
        if sem_seg is not None:
            check_label_range(sem_seg, self.num_classes, self.ignore_label)
        return NoOpTransform()


class ReadableDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper; an image or label file that cannot be decoded fails with
    one error naming the file (instead of a PIL traceback from inside a data-loader worker), and
    so does a label map with values outside the classes (:class:`LabelRangeError`)."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except LabelRangeError as e:
            raise (e if e.file_name else e.naming(dataset_dict.get("sem_seg_file_name"))) from None
        except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
            files = [dataset_dict.get(k) for k in ("file_name", "sem_seg_file_name") if dataset_dict.get(k)]
            raise DataError(f"cannot read {' / '.join(files)}: {type(e).__name__}: {e}") from e


class SemSegDatasetMapper(ReadableDatasetMapper):
    """Detectron2's DatasetMapper for semantic segmentation, plus a label check: every value of
    the label map, read whole before any augmentation, must be a class index (< number of
    classes) or the dataset's ignore label; anything else is a :class:`LabelRangeError` naming
    the file, the values and the allowed range, instead of silent garbage in the loss."""

    @configurable
    def __init__(self, is_train: bool, *, num_classes: int, ignore_label: int, augmentations, **kwargs):
        augmentations = [LabelRangeCheck(num_classes, ignore_label), *augmentations]
        super().__init__(is_train, augmentations=augmentations, **kwargs)
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
