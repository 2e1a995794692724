"""The tappable features of a detector's backbone, shared by the detection meta-architectures
(:class:`DistillRetinaNet`, :class:`DistillGeneralizedRCNN`): the FPN levels it returns and the
bottom-up stages they are built from, read in one backbone pass."""

from __future__ import annotations

from typing import Dict

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from torch import nn

from radkd_d2.errors import ConfigError

__all__ = ["backbone_tap_shapes", "backbone_taps", "check_same_padding"]


def backbone_tap_shapes(backbone: nn.Module) -> Dict[str, ShapeSpec]:
    """Every tappable position of a detector backbone: its outputs (RetinaNet ``p3``..``p7``,
    R-CNN ``p2``..``p6``) and, for an FPN, the bottom-up stages it consumes (``res2``..``res5``,
    the ResNet's OUT_FEATURES)."""
    shapes = dict(backbone.output_shape())
    if isinstance(backbone, FPN):
        for name, shape in backbone.bottom_up.output_shape().items():
            shapes.setdefault(name, shape)
    return shapes


def backbone_taps(
    backbone: nn.Module, images: torch.Tensor, with_bottom_up: bool
) -> Dict[str, torch.Tensor]:
    """Backbone outputs (the FPN levels) for a normalised, padded B x 3 x H x W batch, plus the
    bottom-up stages (res2..res5) when ``with_bottom_up``: Detectron2's own ``FPN.forward``
    runs once, and a forward hook on its ``bottom_up`` keeps the stages it computes."""
    if not with_bottom_up:
        return backbone(images)
    stages: Dict[str, torch.Tensor] = {}
    handle = backbone.bottom_up.register_forward_hook(lambda _m, _in, out: stages.update(out))
    try:
        outputs = backbone(images)
    finally:
        handle.remove()
    return {**stages, **outputs}


def check_same_padding(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a pair whose backbones pad their inputs differently: their feature maps would not
    align, and the boxes given to the losses are in the student's padded frame."""
    s_pad = (student.size_divisibility, student.padding_constraints)
    t_pad = (teacher.size_divisibility, teacher.padding_constraints)
    if s_pad != t_pad:
        raise ConfigError(
            f"student and teacher pad their inputs differently (size divisibility, "
            f"constraints: {s_pad} vs {t_pad}); their feature maps would not align"
        )
