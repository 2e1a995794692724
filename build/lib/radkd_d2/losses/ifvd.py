"""Intra-class feature variation distillation, IFVD (Wang et al., "Intra-class Feature
Variation Distillation for Semantic Segmentation", ECCV 2020)."""

from typing import Optional

import torch

from ._utils import check_same_shape, downsample_labels, float32_math, safe_l2_normalize
from .build import DistillLoss, register_distill_loss

__all__ = ["ifv_map", "ifvd_loss", "IFVDLoss"]


def ifv_map(
    features: torch.Tensor,
    labels: torch.Tensor,
    ignore_value: int = 255,
    num_classes: Optional[int] = None,
) -> torch.Tensor:
    """IFV map (IFVD paper, method section): cosine similarity of each pixel to its class prototype.

    Prototypes are per image: the mean feature of the pixels of each class present in that
    image. Pixels with ``ignore_value`` (or a negative label, or one >= ``num_classes``) are
    compared with themselves, as in the official code, so they score the same for student and
    teacher.

    Args:
        features: B x C x h x w.
        labels: B x h x w long, already at the feature size.
        num_classes: the class count K. Given, the map is computed without reading any value
            back to the host (no GPU synchronisation); ``None`` takes ``max(label) + 1``.

    Returns:
        B x h x w cosine similarities.
    """
    b, c, h, w = features.shape
    x = features.reshape(b, c, h * w)
    lab = labels.reshape(b, h * w)
    valid = (lab != ignore_value) & (lab >= 0)
    if num_classes is None:
        num_classes = int(torch.where(valid, lab, torch.zeros_like(lab)).max()) + 1
    valid = valid & (lab < num_classes)
    classes = torch.arange(num_classes, device=lab.device)
    onehot = ((lab[..., None] == classes) & valid[..., None]).to(x.dtype)  # B x n x K
    sums = torch.bmm(x, onehot)  # B x C x K
    protos = sums / (onehot.sum(dim=1)[:, None, :] + 1e-6)  # official: count + 1e-6
    center = torch.bmm(protos, onehot.transpose(1, 2))  # B x C x n
    center = torch.where(valid[:, None, :], center, x)
    cos = (safe_l2_normalize(x, dim=1) * safe_l2_normalize(center, dim=1)).sum(dim=1)
    return cos.reshape(b, h, w)


@float32_math
def ifvd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    ignore_value: int = 255,
    num_classes: Optional[int] = None,
) -> torch.Tensor:
    """IFVD: mean squared difference of the student's and teacher's IFV maps.

    Labels are resized with nearest to the feature size. The mean runs over all B*h*w pixels
    (ignored ones contribute 0), as in the official code. Published weight: 200.

    Args:
        student: B x Cs x h x w; teacher: B x Ct x h x w (channels may differ).
        labels: B x H x W long semantic labels (any resolution).
        num_classes: class count (see :func:`ifv_map`); the segmentation meta-architecture
            passes it, which keeps the loss free of host-device synchronisation.
    """
    check_same_shape(student, teacher, "ifvd_loss", match_channels=False)
    if labels is None:
        raise ValueError("ifvd_loss needs labels (B x H x W semantic ground truth)")
    lab = downsample_labels(labels.to(student.device), student.shape[-2:])
    if lab.shape[0] != student.shape[0]:
        raise ValueError(
            f"ifvd_loss: labels batch {tuple(labels.shape)} does not match features "
            f"{tuple(student.shape)}"
        )
    diff = ifv_map(student, lab, ignore_value, num_classes) - ifv_map(teacher, lab, ignore_value, num_classes)
    return diff.pow(2).mean()


@register_distill_loss("ifvd")
class IFVDLoss(DistillLoss):
    """Weighted :func:`ifvd_loss`; needs ``labels`` (and ``ignore_value``, ``num_classes``) in
    the context."""

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        labels: Optional[torch.Tensor] = None,
        ignore_value: int = 255,
        num_classes: Optional[int] = None,
        **context,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("IFVDLoss needs labels=... (B x H x W semantic ground truth)")
        return self.weight * ifvd_loss(
            student, teacher, labels, ignore_value=ignore_value, num_classes=num_classes
        )
