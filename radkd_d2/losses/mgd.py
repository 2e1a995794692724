"""Masked generative distillation, MGD (Yang et al., "Masked Generative Distillation",
ECCV 2022)."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import autocast_off, check_4d, check_same_channels, check_same_shape, float32_math
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["mgd_random_mask", "mgd_loss", "MGDLoss", "MGD_CONFIG"]

# Masked generative distillation (Yang et al., ECCV 2022).
MGD_CONFIG = LossConfig(
    "MGD",
    Option("ALPHA", "alpha", 2e-5, "alpha_mgd, coefficient of the summed squared error (seg and det)"),
    Option("MASK_RATIO", "mask_ratio", 0.75, "lambda_mgd, fraction of student pixels masked (seg; RetinaNet 0.65)"),
)


def mgd_random_mask(
    student: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """B x 1 x H x W keep-mask: each pixel is zeroed (masked) with probability ``mask_ratio``.

    The same spatial mask applies to all channels, as in MGD.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mgd: mask_ratio must be in [0, 1), got mask_ratio={mask_ratio!r}")
    b, _, h, w = student.shape
    device = student.device if generator is None else generator.device
    u = torch.rand((b, 1, h, w), generator=generator, device=device)
    return (u >= mask_ratio).to(device=student.device, dtype=student.dtype)


@float32_math
def mgd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    generation: nn.Module,
    mask: torch.Tensor,
) -> torch.Tensor:
    """MGD's generation loss (MGD paper, method section), without the alpha coefficient.

    The masked student feature ``student * mask`` goes through the generation block, whose
    output must reproduce the full teacher feature; the loss is the squared error summed over
    C, H, W and divided by the batch size (the official normalisation: MSE-sum / B).

    Args:
        student: B x C x H x W student feature, already aligned to the teacher's channels.
        teacher: B x C x H x W teacher feature.
        generation: module mapping B x C x H x W to the same shape (conv3x3-ReLU-conv3x3).
        mask: B x 1 x H x W (or B x C x H x W) keep-mask, e.g. from :func:`mgd_random_mask`.
    """
    check_same_shape(student, teacher, "mgd_loss")
    check_4d(mask, "mgd_loss: mask")
    generated = generation(student * mask.to(student.dtype))
    return F.mse_loss(generated, teacher, reduction="sum") / student.shape[0]


@register_distill_loss("mgd", config=MGD_CONFIG)
class MGDLoss(DistillLoss):
    """MGD with its learnable part, the generation block (a student of another width reaches the
    teacher's through the tap's connector, MODEL.DISTILL.CONNECTOR).

    Returns ``weight * alpha * mgd_loss``. Published settings: alpha = 2e-5 with mask ratio
    0.75 for segmentation and 0.65 for one-stage detectors (RetinaNet), per the authors'
    released configs. Pass ``mask`` (B x 1 x H x W) in the context to fix the mask.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        teacher_channels: Optional[int] = None,
        student_channels: Optional[int] = None,
        alpha: float = MGD_CONFIG.alpha,
        mask_ratio: float = MGD_CONFIG.mask_ratio,
    ):
        super().__init__(weight=weight)
        teacher_channels = teacher_channels or student_channels
        if not teacher_channels:
            raise ValueError("MGDLoss needs teacher_channels to build its generation block")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(
                f"MGDLoss: mask_ratio must be in [0, 1), got mask_ratio={mask_ratio!r}"
            )
        self.alpha = float(alpha)
        self.mask_ratio = float(mask_ratio)
        check_same_channels(student_channels, teacher_channels, type(self).__name__)
        c = teacher_channels
        self.generation = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
        )

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        mask: Optional[torch.Tensor] = None,
        **context,
    ) -> torch.Tensor:
        dtype = self.generation[0].weight.dtype
        with autocast_off(student.device.type):
            student = student.to(dtype)
        if mask is None:
            mask = mgd_random_mask(student, self.mask_ratio)
        return (
            self.weight * self.alpha * mgd_loss(student, teacher.to(dtype), self.generation, mask)
        )

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, alpha={self.alpha:g}, mask_ratio={self.mask_ratio:g}"
