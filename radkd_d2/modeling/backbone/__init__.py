"""Backbones; importing registers their builders in ``BACKBONE_REGISTRY``."""

from .dilated_resnet import (
    DeepStem,
    DilatedBasicBlock,
    DilatedResNet,
    build_dilated_resnet_backbone,
)
from .edgetpu import MobileNetEdgeTPU, build_mobilenet_edgetpu_backbone
from .info import BACKBONE_INFO, BackboneInfo, register_backbone_info
from .mobilenetv2 import MobileNetV2, build_mobilenetv2_backbone
from .swin import SwinBackbone, build_swin_backbone

__all__ = [
    "BACKBONE_INFO",
    "BackboneInfo",
    "register_backbone_info",
    "DeepStem",
    "DilatedBasicBlock",
    "DilatedResNet",
    "MobileNetEdgeTPU",
    "MobileNetV2",
    "SwinBackbone",
    "build_dilated_resnet_backbone",
    "build_mobilenet_edgetpu_backbone",
    "build_mobilenetv2_backbone",
    "build_swin_backbone",
]
