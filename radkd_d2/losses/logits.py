"""Pixel-wise logit distillation (Hinton et al., 2015), the paper's L_kd in Eq. 9."""

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ._utils import check_positive, downsample_labels, float32_math
from .build import DistillLoss, register_distill_loss

__all__ = ["logits_kd_loss", "LogitsKDLoss"]


@float32_math
def logits_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    ignore_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per pixel, summed over classes, mean over pixels.

    Args:
        student_logits, teacher_logits: B x K x H x W (or B x K) logits of the same shape.
        temperature: softmax temperature T > 0.
        ignore_mask: optional B x H x W bool, True where a pixel is ignored. The mean runs over
            the remaining pixels of the whole batch; with none left the loss is 0.
    """
    temperature = check_positive(temperature, "temperature", "logits_kd_loss")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "logits_kd_loss: student and teacher logits must have the same shape; got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 2:
        raise ValueError(
            f"logits_kd_loss: expected B x K [x H x W], got {tuple(student_logits.shape)}"
        )
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # B [x H x W]
    if ignore_mask is None:
        return kl.mean() * temperature**2
    if ignore_mask.shape != kl.shape:
        raise ValueError(
            f"logits_kd_loss: ignore_mask shape {tuple(ignore_mask.shape)} does not match the "
            f"logits' B x H x W {tuple(kl.shape)}"
        )
    valid = ~ignore_mask.bool()
    total = torch.where(valid, kl, torch.zeros_like(kl)).sum()
    return total / valid.sum().clamp_min(1) * temperature**2


@register_distill_loss("kd")
class LogitsKDLoss(DistillLoss):
    """Weighted :func:`logits_kd_loss`; ignores pixels whose label equals ``ignore_value``.

    Context: ``labels`` (B x H_img x W_img, resized here with nearest to the logits' size) and
    ``ignore_value`` (default 255). Temperature from ``MODEL.DISTILL.KD_TEMPERATURE``.
    """

    def __init__(self, *, weight: float = 1.0, temperature: float = 1.0):
        super().__init__(weight=weight)
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)

    @classmethod
    def from_config(
        cls, cfg, *, weight=1.0, student_channels=None, teacher_channels=None
    ) -> Dict[str, Any]:
        # MODEL.DISTILL.KD_TEMPERATURE is declared in radkd_d2/config.py (default 1.0)
        temperature = 1.0 if cfg is None else cfg.MODEL.DISTILL.get("KD_TEMPERATURE", 1.0)
        return {"weight": weight, "temperature": temperature}

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        labels: Optional[torch.Tensor] = None,
        ignore_value: int = 255,
        **context,
    ) -> torch.Tensor:
        ignore_mask = None
        if labels is not None and student.dim() == 4:
            ignore_mask = downsample_labels(labels, student.shape[-2:]) == ignore_value
        return self.weight * logits_kd_loss(student, teacher, self.temperature, ignore_mask)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, temperature={self.temperature:g}"
