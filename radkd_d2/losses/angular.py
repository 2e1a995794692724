"""Angular distillation (the paper's Sec. 3.2): layer-, channel- and point-wise (LAD/CAD/PAD).

Each loss compares L2-normalised student and teacher features along a different set of
dimensions. Rather than materialising the normalised tensors, the squared distance of two
normalised vectors a/|a|, b/|b| is expanded as

    |a|^2 r_a^2 + |b|^2 r_b^2 - 2 <a, b> r_a r_b,    r_x = 1 / sqrt(|x|^2 + eps),

which needs only two norms and one dot product per vector (this equals 2(1 - cos) up to eps,
and is exactly the sum of squares of the eps-normalised vectors). A zero vector normalises to
zero, so the loss and its gradient stay finite.
"""
from typing import Dict

import torch

from ._utils import DEFAULT_EPS, check_same_shape, float32_math, safe_rsqrt
from .build import DistillLoss, register_distill_loss

__all__ = [
    "lad_loss",
    "cad_loss",
    "pad_loss",
    "feature_stats",
    "LADLoss",
    "CADLoss",
    "PADLoss",
]


def _normalised_sq_dist(s: torch.Tensor, t: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """sum over ``dim`` of (s/|s| - t/|t|)^2, from two norms and one dot product."""
    ns = torch.linalg.vector_norm(s, dim=dim)
    nt = torch.linalg.vector_norm(t, dim=dim)
    st = (s * t).sum(dim=dim)
    ss, tt = ns * ns, nt * nt
    rs, rt = safe_rsqrt(ss, eps), safe_rsqrt(tt, eps)
    return ss * rs * rs + tt * rt * rt - 2.0 * st * rs * rt


@float32_math
def lad_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Layer-wise angular distillation, Eq. 5 (= 2(1 - cos theta), Eq. 6).

    Each sample's whole C*H*W feature is one vector; the loss is the sum of squared
    differences of the two L2-normalised vectors, averaged over the batch.

    Args:
        student, teacher: B x C x H x W features of the same shape.

    Returns:
        scalar tensor.
    """
    check_same_shape(student, teacher, "lad_loss")
    b = student.shape[0]
    per_sample = _normalised_sq_dist(student.reshape(b, -1), teacher.reshape(b, -1), 1, eps)
    return per_sample.mean()


@float32_math
def cad_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Channel-wise angular distillation, Eq. 7.

    Each channel's H*W map is L2-normalised; squared differences are summed over H*W,
    averaged over the C channels and over the batch.

    Args:
        student, teacher: B x C x H x W features of the same shape.
    """
    check_same_shape(student, teacher, "cad_loss")
    b, c = student.shape[:2]
    per_channel = _normalised_sq_dist(
        student.reshape(b, c, -1), teacher.reshape(b, c, -1), 2, eps
    )  # B x C
    return per_channel.mean()


@float32_math
def pad_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Point-wise angular distillation, Eq. 8.

    Each pixel's C-vector is L2-normalised; squared differences are summed over C,
    averaged over the H*W pixels and over the batch.

    Args:
        student, teacher: B x C x H x W features of the same shape.
    """
    check_same_shape(student, teacher, "pad_loss")
    per_pixel = _normalised_sq_dist(student, teacher, 1, eps)  # B x H x W
    return per_pixel.mean()


@torch.no_grad()
@float32_math
def feature_stats(student: torch.Tensor, teacher: torch.Tensor) -> Dict[str, float]:
    """Diagnostics of Eq. 3 for logging: batch means of m, n, m*n/N and cos(theta).

    m = |Ft| and n = |Fs| are the L2 norms of each sample's whole C*H*W feature,
    N = C*H*W, theta the angle between the two vectors. Computed in float32, without grad.

    Returns:
        dict with float values under "m", "n", "mn_over_N", "cos_theta".
    """
    check_same_shape(student, teacher, "feature_stats")
    b = student.shape[0]
    s = student.detach().reshape(b, -1)
    t = teacher.detach().reshape(b, -1)
    if s.dtype != torch.float64:
        s, t = s.float(), t.float()
    n_elem = s.shape[1]
    n = torch.linalg.vector_norm(s, dim=1)
    m = torch.linalg.vector_norm(t, dim=1)
    dot = (s * t).sum(dim=1)
    cos = dot / (m * n).clamp_min(1e-30)
    return {
        "m": m.mean().item(),
        "n": n.mean().item(),
        "mn_over_N": (m * n / n_elem).mean().item(),
        "cos_theta": cos.mean().item(),
    }


class _AngularLoss(DistillLoss):
    _fn = None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * type(self)._fn(student, teacher)


@register_distill_loss("lad")
class LADLoss(_AngularLoss):
    """Weighted :func:`lad_loss` (Eq. 5). Parameter-free; weight = lambda_ad (paper: 10)."""

    _fn = staticmethod(lad_loss)


@register_distill_loss("cad")
class CADLoss(_AngularLoss):
    """Weighted :func:`cad_loss` (Eq. 7). Parameter-free; weight = lambda_ad (paper: 10)."""

    _fn = staticmethod(cad_loss)


@register_distill_loss("pad")
class PADLoss(_AngularLoss):
    """Weighted :func:`pad_loss` (Eq. 8). Parameter-free; weight = lambda_ad (paper: 10)."""

    _fn = staticmethod(pad_loss)
