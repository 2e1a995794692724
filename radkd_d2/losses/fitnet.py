"""Raw-feature imitation: naive MSE (Eq. 1), magnitude distillation (Eq. 4), FitNets hints."""

from typing import Optional

import torch
import torch.nn.functional as F

from ._utils import check_same_channels, check_same_shape, float32_math
from .build import DistillLoss, register_distill_loss

__all__ = [
    "naive_feature_loss",
    "magnitude_loss",
    "fitnet_hint_loss",
    "NaiveFeatureLoss",
    "MagnitudeLoss",
    "FitNetLoss",
]


@float32_math
def naive_feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Naive feature distillation, Eq. 1: mean over N = C*H*W of (Ft - Fs)^2, batch-averaged.

    Args:
        student, teacher: B x C x H x W features of the same shape.
    """
    check_same_shape(student, teacher, "naive_feature_loss")
    # equal-sized samples: the global mean is the batch mean of the per-sample means
    return F.mse_loss(student, teacher)


@float32_math
def magnitude_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Magnitude distillation, Eq. 4: (|Ft| - |Fs|)^2 / N per sample, batch-averaged.

    Norms are over each sample's whole C*H*W vector, N = C*H*W. The first term of Eq. 3.
    """
    check_same_shape(student, teacher, "magnitude_loss")
    b = student.shape[0]
    s = student.reshape(b, -1)
    t = teacher.reshape(b, -1)
    diff = torch.linalg.vector_norm(t, dim=1) - torch.linalg.vector_norm(s, dim=1)
    return (diff.pow(2) / s.shape[1]).mean()


@float32_math
def fitnet_hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al., ICLR 2015, hint-based training): 1/2 (u_h - r(v_g))^2.

    ``student`` is the regressor output r(v_g). The paper sums the squared error; here it is
    averaged over the C*H*W elements and the batch (as mmrazor / torchdistill do), keeping the
    paper's factor 1/2, so the loss is independent of feature size (the difference is a
    constant absorbed by the tap weight).
    """
    check_same_shape(student, teacher, "fitnet_hint_loss")
    return 0.5 * F.mse_loss(student, teacher)


@register_distill_loss("naive", label="Naive")
class NaiveFeatureLoss(DistillLoss):
    """Weighted :func:`naive_feature_loss` (Eq. 1)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * naive_feature_loss(student, teacher)


@register_distill_loss("magnitude", "md", label="MD")
class MagnitudeLoss(DistillLoss):
    """Weighted :func:`magnitude_loss` (Eq. 4)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * magnitude_loss(student, teacher)


@register_distill_loss("fitnet", label="FitNet")
class FitNetLoss(DistillLoss):
    """FitNets hint loss. FitNets' convolutional regressor is the tap's connector
    (``MODEL.DISTILL.CONNECTOR``, e.g. ``conv``), which the distiller applies before the loss;
    the loss itself has no parameters and compares features of equal width."""

    def __init__(
        self,
        *,
        weight: float = 1.0,
        student_channels: Optional[int] = None,
        teacher_channels: Optional[int] = None,
    ):
        super().__init__(weight=weight)
        check_same_channels(student_channels, teacher_channels, type(self).__name__)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * fitnet_hint_loss(student, teacher)
