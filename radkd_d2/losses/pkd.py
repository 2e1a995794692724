"""Pearson-correlation distillation, PKD (Cao et al., "PKD: General Distillation Framework
for Object Detectors via Pearson Correlation Coefficient", NeurIPS 2022)."""

import torch

from ._utils import check_same_shape, float32_math
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["pkd_normalize", "pkd_loss", "PKDLoss", "PKD_CONFIG"]

# Pearson-correlation KD (Cao et al., NeurIPS 2022); published weight RetinaNet 10, FRCNN 6.
PKD_CONFIG = LossConfig(
    "PKD",
    Option("BATCH_STATS", "batch_stats", False, "True: per-channel stats over the whole batch (official code)"),
)


def pkd_normalize(x: torch.Tensor, batch_stats: bool = PKD_CONFIG.batch_stats, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each channel to zero mean and unit variance, (x - mean) / (std + eps).

    Statistics run over H*W of each sample (default) or over B*H*W per channel
    (``batch_stats=True``, the official implementation). The standard deviation is unbiased
    as published; a constant channel maps to zeros with a finite gradient.
    """
    dims = (0, 2, 3) if batch_stats else (2, 3)
    count = x.shape[2] * x.shape[3] * (x.shape[0] if batch_stats else 1)
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    var = centred.pow(2).sum(dim=dims, keepdim=True) / max(count - 1, 1)
    # clamp keeps sqrt's gradient finite for constant channels (identical result otherwise).
    std = var.clamp_min(1e-24).sqrt()
    return centred / (std + eps)


@float32_math
def pkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, batch_stats: bool = PKD_CONFIG.batch_stats
) -> torch.Tensor:
    """PKD feature distillation: MSE of channel-standardised features, divided by 2.

    Minimising it maximises the Pearson correlation of student and teacher activations,
    ignoring their magnitudes. Published loss weights: 10 for RetinaNet/FCOS students,
    6 for two-stage (Faster R-CNN) students.

    Args:
        student, teacher: B x C x H x W of the same shape.
        batch_stats: False (default) standardises every sample on its own H*W, so the loss is
            a per-sample mean; True uses per-channel statistics over the whole batch, as the
            official code does.
    """
    check_same_shape(student, teacher, "pkd_loss")
    ns = pkd_normalize(student, batch_stats)
    nt = pkd_normalize(teacher, batch_stats)
    return (ns - nt).pow(2).mean() / 2


@register_distill_loss("pkd", config=PKD_CONFIG)
class PKDLoss(DistillLoss):
    """Weighted :func:`pkd_loss`; ``MODEL.DISTILL.PKD.BATCH_STATS`` selects the statistics."""

    def __init__(self, *, weight: float = 1.0, batch_stats: bool = PKD_CONFIG.batch_stats):
        super().__init__(weight=weight)
        self.batch_stats = bool(batch_stats)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * pkd_loss(student, teacher, self.batch_stats)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, batch_stats={self.batch_stats}"
