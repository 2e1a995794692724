"""Pixel-wise logit distillation (Hinton et al., 2015), the paper's L_kd in Eq. 9.

Two normalisations of the same KL are in use in the segmentation-KD code bases, and they differ
by the factor K (number of classes), which is as large as a change of lambda_kd:

* ``"element"``: the pointwise terms p_t * (log p_t - log p_s) averaged over all B*K*h*w
  elements -- PyTorch's ``KLDivLoss()`` default ("mean"), as IFVD's and CWD's released code
  compute the pixel-wise KD whose lambda_kd = 10 the paper follows. Per-pixel weight:
  lambda_kd / K.
* ``"pixel"``: summed over the K classes, averaged over the pixels -- CIRKD's ``batchmean`` on
  the (B*h*w) x K logits. Per-pixel weight: lambda_kd.
"""

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ._utils import check_positive, downsample_labels, float32_math
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["KD_CONFIG", "KD_REDUCTIONS", "logits_kd_loss", "LogitsKDLoss"]

KD_REDUCTIONS = ("element", "pixel")  # the values of MODEL.DISTILL.KD_REDUCTION

# Keys directly in MODEL.DISTILL (its weight lambda_kd is MODEL.DISTILL.KD_WEIGHT).
KD_CONFIG = LossConfig(
    "",
    Option("KD_TEMPERATURE", "temperature", 1.0, "softmax temperature of the logit KD term", positive=True),
    # "element": mean over B*K*h*w (IFVD/CWD code, per-pixel weight lambda_kd/K); "pixel": sum
    # over classes, mean over pixels (CIRKD's batchmean, per-pixel weight lambda_kd).
    Option("KD_REDUCTION", "reduction", "element", "normalisation of the KL: element or pixel", choices=KD_REDUCTIONS),
)


def _check_reduction(reduction: str, owner: str) -> str:
    if reduction not in KD_REDUCTIONS:
        raise ValueError(
            f"{owner}: reduction must be one of {', '.join(map(repr, KD_REDUCTIONS))}; "
            f"got {reduction!r}"
        )
    return reduction


@float32_math
def logits_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    ignore_mask: Optional[torch.Tensor] = None,
    reduction: str = "pixel",
) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), reduced per ``reduction``.

    Args:
        student_logits: B x K x H x W (or B x K) student logits.
        teacher_logits: teacher logits of the same shape.
        temperature: softmax temperature T > 0.
        ignore_mask: optional B x H x W bool, True where a pixel is ignored. The means run over
            the remaining pixels of the whole batch; with none left the loss is 0.
        reduction: ``"pixel"`` (default, kept for direct callers): sum over the K classes, mean
            over the (valid) pixels, as CIRKD's ``batchmean``. ``"element"``: mean over every
            (valid) element, i.e. the ``"pixel"`` value / K, as ``KLDivLoss()``'s default
            ``"mean"`` in IFVD's and CWD's code.

    Returns:
        0-dim tensor, the loss (unweighted).
    """
    temperature = check_positive(temperature, "temperature", "logits_kd_loss")
    _check_reduction(reduction, "logits_kd_loss")
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
    # "element" divides the per-pixel sum by K: the mean over the K class entries of each pixel.
    scale = temperature**2 / (student_logits.shape[1] if reduction == "element" else 1)
    if ignore_mask is None:
        return kl.mean() * scale
    if ignore_mask.shape != kl.shape:
        raise ValueError(
            f"logits_kd_loss: ignore_mask shape {tuple(ignore_mask.shape)} does not match the "
            f"logits' B x H x W {tuple(kl.shape)}"
        )
    valid = ~ignore_mask.bool()
    total = torch.where(valid, kl, torch.zeros_like(kl)).sum()
    return total / valid.sum().clamp_min(1) * scale


@register_distill_loss("kd", config=KD_CONFIG)
class LogitsKDLoss(DistillLoss):
    """Weighted :func:`logits_kd_loss`; ignores pixels whose label equals ``ignore_value``.

    Context: ``labels`` (B x H_img x W_img, resized here with nearest to the logits' size) and
    ``ignore_value`` (default 255). Temperature from ``MODEL.DISTILL.KD_TEMPERATURE``, reduction
    from ``MODEL.DISTILL.KD_REDUCTION`` (both declared in ``radkd_d2/config.py``).

    Args:
        weight: lambda_kd.
        temperature: softmax temperature T > 0.
        reduction: ``"element"`` (default, as the config key) or ``"pixel"``; see
            :func:`logits_kd_loss`.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        temperature: float = KD_CONFIG.temperature,
        reduction: str = KD_CONFIG.reduction,
    ):
        super().__init__(weight=weight)
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)
        self.reduction = _check_reduction(reduction, type(self).__name__)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        labels: Optional[torch.Tensor] = None,
        ignore_value: int = 255,
        **context,
    ) -> torch.Tensor:
        """Args: student, teacher: B x K x h x w logits; labels: B x H x W. Returns a scalar."""
        ignore_mask = None
        if labels is not None and student.dim() == 4:
            ignore_mask = downsample_labels(labels, student.shape[-2:]) == ignore_value
        return self.weight * logits_kd_loss(
            student, teacher, self.temperature, ignore_mask, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, temperature={self.temperature:g}, "
            f"reduction={self.reduction!r}"
        )


def mix_teacher_logits(
    logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float
) -> torch.Tensor:
    """The KD target of several teachers as logits: ``T * log(sum_i w_i softmax(z_i / T))``,
    the weighted mean of their probabilities at temperature ``T`` (weights normalised to sum to
    1), written so that the KD loss at the same temperature sees exactly that mean. Maps of
    different sizes are brought to the first one's (bilinear).

    Args:
        logits: per teacher, B x K x h x w (or N x K).
        weights: per teacher, >= 0, not all 0 (MODEL.DISTILL.TEACHERS[*].KD_MIX).
    """
    total = float(sum(weights))
    if len(logits) != len(weights) or total <= 0:
        raise ValueError(f"mix_teacher_logits: {len(logits)} logits, weights {list(weights)}")
    size = logits[0].shape[-2:]
    parts = []
    for z, w in zip(logits, weights):
        if w <= 0:
            continue
        z = z.float()
        if z.dim() == 4 and z.shape[-2:] != size:
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        parts.append(F.log_softmax(z / temperature, dim=1) + math.log(w / total))
    return temperature * torch.logsumexp(torch.stack(parts), dim=0)
