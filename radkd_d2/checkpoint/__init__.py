"""Checkpoint import: converters from torchvision, timm, CIRKD, mmsegmentation, mmdetection and
Detectron2 model-zoo files into this project's models (see :mod:`radkd_d2.checkpoint.convert`)."""

from .convert import (
    CONVERTERS,
    convert_checkpoint,
    convert_tf_deeplab_edgetpu,
    load_source_state_dict,
    mmdet_anchor_permutation,
    save_d2_checkpoint,
    to_source_naming,
    verify_loadable,
)
from .report import ConversionReport, WeightConversionError

__all__ = [
    "CONVERTERS",
    "ConversionReport",
    "WeightConversionError",
    "convert_checkpoint",
    "convert_tf_deeplab_edgetpu",
    "load_source_state_dict",
    "mmdet_anchor_permutation",
    "save_d2_checkpoint",
    "to_source_naming",
    "verify_loadable",
]
