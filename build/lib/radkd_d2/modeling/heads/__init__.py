"""Semantic-segmentation heads; importing registers them in ``SEM_SEG_HEADS_REGISTRY``."""

from .base import DilatedSegHead, FCNHead
from .deeplab import ASPP, DeepLabV3Head
from .psp import PSPHead
from .upernet import PyramidPooling, UPerNetHead

__all__ = [
    "ASPP",
    "DeepLabV3Head",
    "DilatedSegHead",
    "FCNHead",
    "PSPHead",
    "PyramidPooling",
    "UPerNetHead",
]
