"""Attention-guided feature distillation for detectors, FKD (Zhang & Ma, "Improve Object
Detection with Feature-based Knowledge Distillation: Towards Accurate and Efficient
Detectors", ICLR 2021)."""

from typing import Tuple

import torch
import torch.nn.functional as F

from ._utils import check_positive, check_same_shape, float32_math, safe_sqrt
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["fkd_attention", "fkd_loss", "FKDLoss", "FKD_CONFIG"]

# Attention-guided feature KD (Zhang & Ma, ICLR 2021); one-stage detector values.
FKD_CONFIG = LossConfig(
    "FKD",
    Option("TEMPERATURE", "temperature", 0.5, "T of the spatial and channel attention softmaxes", positive=True),
    Option("FEATURE_WEIGHT", "feature_weight", 4e-4, "coefficient of the attention-masked feature loss"),
    Option("ATTENTION_WEIGHT", "attention_weight", 2e-2, "coefficient of the attention-transfer term"),
)


def fkd_attention(feat: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """FKD spatial (B x H x W) and channel (B x C) attention (FKD attention-guided KD).

    Spatial: H*W * softmax over pixels of mean_c |F| / T; channel: C * softmax over channels
    of mean_hw |F| / T.
    """
    b, c, h, w = feat.shape
    a = feat.abs()
    spatial = (h * w) * F.softmax(a.mean(dim=1).reshape(b, -1) / temperature, dim=1)
    channel = c * F.softmax(a.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(b, h, w), channel


@float32_math
def fkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = FKD_CONFIG.temperature,
    feature_weight: float = FKD_CONFIG.feature_weight,
    attention_weight: float = FKD_CONFIG.attention_weight,
    detach_masks: bool = True,
    return_terms: bool = False,
):
    """FKD attention-guided distillation (FKD paper), non-local term left out.

    * Masks: spatial and channel attention of teacher and student, averaged
      ((A_t + A_s) / 2, as in the official code), used as constants (``detach_masks``).
    * Attention-masked feature loss: sqrt(sum_{c,h,w} M_s(h,w) M_c(c) (Ft - Fs)^2).
    * Attention transfer: L2 distance of the spatial attention maps plus L2 distance of the
      channel attention vectors of teacher and student.

    Each term is computed per sample and averaged over the batch (the official code takes
    the square roots over the whole batch at once). Returns
    ``feature_weight * masked + attention_weight * transfer``; defaults: T = 0.5 and the
    published one-stage (RetinaNet) coefficients.

    Args:
        student, teacher: B x C x H x W of the same shape.
        detach_masks: False lets gradients flow through the masks (for gradient checks).
    """
    check_same_shape(student, teacher, "fkd_loss")
    temperature = check_positive(temperature, "temperature", "fkd_loss")
    s_sp, s_ch = fkd_attention(student, temperature)
    t_sp, t_ch = fkd_attention(teacher, temperature)
    m_sp, m_ch = (s_sp + t_sp) / 2, (s_ch + t_ch) / 2
    if detach_masks:
        m_sp, m_ch = m_sp.detach(), m_ch.detach()
    sq = (teacher - student).pow(2) * m_ch[:, :, None, None] * m_sp[:, None]
    masked = safe_sqrt(sq.sum(dim=(1, 2, 3))).mean()
    transfer = (
        safe_sqrt((t_sp - s_sp).pow(2).sum(dim=(1, 2))) + safe_sqrt((t_ch - s_ch).pow(2).sum(dim=1))
    ).mean()
    total = feature_weight * masked + attention_weight * transfer
    if return_terms:
        return total, {"feature": masked, "attention": transfer}
    return total


@register_distill_loss("fkd", config=FKD_CONFIG)
class FKDLoss(DistillLoss):
    """Weighted :func:`fkd_loss`; hyper-parameters from ``MODEL.DISTILL.FKD``."""

    def __init__(
        self,
        *,
        weight: float = 1.0,
        temperature: float = FKD_CONFIG.temperature,
        feature_weight: float = FKD_CONFIG.feature_weight,
        attention_weight: float = FKD_CONFIG.attention_weight,
    ):
        super().__init__(weight=weight)
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)
        self.feature_weight = float(feature_weight)
        self.attention_weight = float(attention_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        loss = fkd_loss(
            student, teacher, self.temperature, self.feature_weight, self.attention_weight
        )
        return self.weight * loss

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, temperature={self.temperature:g}, "
            f"feature_weight={self.feature_weight:g}, attention_weight={self.attention_weight:g}"
        )
