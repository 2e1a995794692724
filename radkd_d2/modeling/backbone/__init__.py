"""Backbones; importing registers their builders in ``BACKBONE_REGISTRY``."""

from .dilated_resnet import (
    DeepStem,
    DilatedBasicBlock,
    DilatedResNet,
    build_dilated_resnet_backbone,
)

__all__ = ["DeepStem", "DilatedBasicBlock", "DilatedResNet", "build_dilated_resnet_backbone"]
