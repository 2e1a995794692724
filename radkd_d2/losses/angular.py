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
from torch.autograd.function import once_differentiable

from ._utils import DEFAULT_EPS, check_same_shape, float32_math, safe_rsqrt
from .build import DistillLoss, register_distill_loss

__all__ = [
    "lad_loss",
    "cad_loss",
    "pad_loss",
    "FEATURE_STATS",
    "feature_stats",
    "feature_stats_tensor",
    "LADLoss",
    "CADLoss",
    "PADLoss",
]


# Elements per scratch chunk (~1 MiB of float32): the products of a chunk stay in cache.
_CHUNK_ELEMS = 1 << 18


def _reductions(s: torch.Tensor, t: torch.Tensor, dim: int):
    """|s|^2, |t|^2 and <s, t> along ``dim`` (1 or 2) of A x C x N tensors.

    On CPU the products are formed chunk by chunk along N in a small reused buffer
    (:func:`_reductions_chunked`): a fresh full-size temporary costs more (page faults) than the
    arithmetic. On GPUs, one call each (:func:`_reductions_whole`).
    """
    if s.device.type != "cpu":  # caching allocators make temporaries cheap: fewest kernels
        return _reductions_whole(s, t, dim)
    return _reductions_chunked(s, t, dim)


def _reductions_whole(s: torch.Tensor, t: torch.Tensor, dim: int):
    norm = torch.linalg.vector_norm  # one fused pass, unlike a product then a sum
    return norm(s, dim=dim).square(), norm(t, dim=dim).square(), torch.linalg.vecdot(s, t, dim=dim)


def _reductions_chunked(s: torch.Tensor, t: torch.Tensor, dim: int, chunk_elems: int = 0):
    """:func:`_reductions` in chunks along N of about ``chunk_elems`` elements (default
    ``_CHUNK_ELEMS``) of one reused scratch buffer."""
    a, c, n = s.shape
    step = max(16, min(n, (chunk_elems or _CHUNK_ELEMS) // max(1, a * c)))
    shape = (a, n) if dim == 1 else (a, c)
    ss, tt, st = (torch.zeros(shape, dtype=s.dtype, device=s.device) for _ in range(3))
    scratch = torch.empty((a, c, step), dtype=s.dtype, device=s.device)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        sb, tb, buf = s[:, :, n0:n1], t[:, :, n0:n1], scratch[:, :, : n1 - n0]
        for acc, x, y in ((ss, sb, sb), (tt, tb, tb), (st, sb, tb)):
            part = torch.mul(x, y, out=buf).sum(dim=dim)
            if dim == 1:
                acc[:, n0:n1] = part
            else:
                acc += part
    return ss, tt, st


class _NormalisedSqDist(torch.autograd.Function):
    """Per-group sum over ``dim`` of (s/|s| - t/|t|)^2 for A x C x N tensors, fused.

    Forward needs three reductions (|s|^2, |t|^2, <s, t>); backward is one expression per
    input, dL/ds = s * 2(eps r_s^4 + <s,t> r_t r_s^3) - t * 2 r_s r_t, so no normalised
    tensor is ever materialised.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
        ss, tt, st = _reductions(s, t, dim)
        rs, rt = safe_rsqrt(ss, eps), safe_rsqrt(tt, eps)
        out = ss * rs * rs + tt * rt * rt - 2.0 * st * rs * rt
        ctx.save_for_backward(s, t, rs, rt, st)
        ctx.dim, ctx.eps = dim, eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        s, t, rs, rt, st = ctx.saved_tensors
        dim, eps = ctx.dim, ctx.eps
        cross = (-2.0 * grad * rs * rt).unsqueeze(dim)
        grad_s = grad_t = None
        if ctx.needs_input_grad[0]:
            own = (2.0 * grad * (eps * rs.pow(4) + st * rt * rs.pow(3))).unsqueeze(dim)
            grad_s = torch.mul(s, own).addcmul_(t, cross)
        if ctx.needs_input_grad[1]:
            own = (2.0 * grad * (eps * rt.pow(4) + st * rs * rt.pow(3))).unsqueeze(dim)
            grad_t = torch.mul(t, own).addcmul_(s, cross)
        return grad_s, grad_t, None, None


def _normalised_sq_dist(s: torch.Tensor, t: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Sum over ``dim`` (1 or 2) of (s/|s| - t/|t|)^2 for A x C x N tensors: A x N or A x C."""
    return _NormalisedSqDist.apply(s.contiguous(), t.contiguous(), dim, eps)


@float32_math
def lad_loss(
    student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
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
    per_sample = _normalised_sq_dist(student.reshape(b, 1, -1), teacher.reshape(b, 1, -1), 2, eps)
    return per_sample.mean()


@float32_math
def cad_loss(
    student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
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
def pad_loss(
    student: torch.Tensor, teacher: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Point-wise angular distillation, Eq. 8.

    Each pixel's C-vector is L2-normalised; squared differences are summed over C,
    averaged over the H*W pixels and over the batch.

    Args:
        student, teacher: B x C x H x W features of the same shape.
    """
    check_same_shape(student, teacher, "pad_loss")
    b, c = student.shape[:2]
    per_pixel = _normalised_sq_dist(
        student.reshape(b, c, -1), teacher.reshape(b, c, -1), 1, eps
    )  # B x HW
    return per_pixel.mean()


FEATURE_STATS = ("m", "n", "mn_over_N", "cos_theta")


@torch.no_grad()
@float32_math
def feature_stats_tensor(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Diagnostics of Eq. 3 as a 4-vector on the features' device, in :data:`FEATURE_STATS`
    order: batch means of m, n, m*n/N and cos(theta).

    m = |Ft| and n = |Fs| are the L2 norms of each sample's whole C*H*W feature,
    N = C*H*W, theta the angle between the two vectors. Computed in float32, without grad and
    without reading anything back to the host.
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
    return torch.stack([m.mean(), n.mean(), (m * n / n_elem).mean(), cos.mean()])


def feature_stats(student: torch.Tensor, teacher: torch.Tensor) -> Dict[str, float]:
    """:func:`feature_stats_tensor` read back as ``{"m", "n", "mn_over_N", "cos_theta"}``
    floats (one host read)."""
    return dict(zip(FEATURE_STATS, feature_stats_tensor(student, teacher).tolist()))


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
