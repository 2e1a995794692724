"""Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021)."""

import torch
import torch.nn.functional as F

from ._utils import check_positive, check_same_shape, float32_math
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["cwd_loss", "CWDLoss", "CWD_CONFIG"]

# Channel-wise distillation (Shu et al., ICCV 2021).
CWD_CONFIG = LossConfig(
    "CWD",
    Option("TAU", "tau", 4.0, "softmax temperature of the per-channel spatial distributions (paper: 4)", positive=True),
)


@float32_math
def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = CWD_CONFIG.tau) -> torch.Tensor:
    """Channel-wise distillation (CWD paper, channel distribution distillation).

    Every channel's H*W activation map becomes a distribution via a softmax with
    temperature tau over the spatial positions; the loss is
    tau^2 / C * sum_c KL(teacher_c || student_c), averaged over the batch, i.e. the official
    code's sum over (B, C, HW) divided by B*C. Works on features and logits alike.

    Args:
        student, teacher: B x C x H x W of the same shape.
        tau: temperature > 0. The paper uses 4 for segmentation; the authors' released
            mmseg/mmrazor configs use 1 (with loss weight 3 on logits).
    """
    tau = check_positive(tau, "tau", "cwd_loss")
    check_same_shape(student, teacher, "cwd_loss")
    b, c = student.shape[:2]
    log_ps = F.log_softmax(student.reshape(b, c, -1) / tau, dim=2)
    log_pt = F.log_softmax(teacher.reshape(b, c, -1) / tau, dim=2)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=2)  # B x C
    return kl.mean() * tau**2


@register_distill_loss("cwd", config=CWD_CONFIG)
class CWDLoss(DistillLoss):
    """Weighted :func:`cwd_loss`; ``tau`` from ``MODEL.DISTILL.CWD.TAU``.

    Published loss weight on segmentation logits: 3.
    """

    def __init__(self, *, weight: float = 1.0, tau: float = CWD_CONFIG.tau):
        super().__init__(weight=weight)
        self.tau = check_positive(tau, "tau", type(self).__name__)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * cwd_loss(student, teacher, self.tau)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, tau={self.tau:g}"
