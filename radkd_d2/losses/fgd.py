"""Focal and global distillation, FGD (Yang et al., "Focal and Global Knowledge Distillation
for Detectors", CVPR 2022)."""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import (
    autocast_off,
    check_positive,
    check_same_channels,
    check_same_shape,
    float32_math,
)
from .build import DistillLoss, LossConfig, Option, register_distill_loss

__all__ = ["fgd_masks", "fgd_attention", "fgd_loss", "GcContext", "FGDLoss", "FGD_CONFIG"]

# Focal and global distillation (Yang et al., CVPR 2022); RetinaNet values.
FGD_CONFIG = LossConfig(
    "FGD",
    Option("TEMPERATURE", "temperature", 0.5, "T of the spatial and channel attention softmaxes", positive=True),
    Option("ALPHA", "alpha", 1e-3, "foreground feature-imitation coefficient"),
    Option("BETA", "beta", 5e-4, "background feature-imitation coefficient"),
    Option("GAMMA", "gamma", 5e-4, "attention (mask) loss coefficient"),
    Option("LAMBDA", "lambda_", 5e-6, "global (GcBlock relation) loss coefficient"),
)


def fgd_masks(
    boxes: Sequence[torch.Tensor],
    image_size: Tuple[int, int],
    feature_size: Tuple[int, int],
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Foreground (scale) and background masks of FGD (FGD paper, focal distillation), B x h x w.

    Boxes (x1, y1, x2, y2 in input pixels of a padded batch of ``image_size``) are scaled to
    the feature map, widened to whole cells (floor of the top-left, ceil of the bottom-right,
    both ends inclusive, as in the official code) and painted with 1 / (cell area of the box);
    where boxes overlap the larger value (smaller box) wins. The background mask is 1 outside
    every box, divided by its number of cells; an image without boxes is all background.
    """
    h, w = feature_size
    img_h, img_w = image_size
    fg = torch.zeros((len(boxes), h, w), device=device, dtype=dtype)
    rows = torch.arange(h, device=device, dtype=dtype)
    cols = torch.arange(w, device=device, dtype=dtype)
    for i, bx in enumerate(boxes):
        if bx is None or bx.numel() == 0:
            continue
        bx = bx.to(device=device, dtype=torch.float64).reshape(-1, 4)
        x1 = torch.floor(bx[:, 0] / img_w * w)
        x2 = torch.ceil(bx[:, 2] / img_w * w)
        y1 = torch.floor(bx[:, 1] / img_h * h)
        y2 = torch.ceil(bx[:, 3] / img_h * h)
        value = (1.0 / ((y2 + 1 - y1) * (x2 + 1 - x1))).to(dtype)  # N
        inside_r = (rows[None, :] >= y1[:, None].to(dtype)) & (
            rows[None, :] <= y2[:, None].to(dtype)
        )
        inside_c = (cols[None, :] >= x1[:, None].to(dtype)) & (
            cols[None, :] <= x2[:, None].to(dtype)
        )
        inside = inside_r[:, :, None] & inside_c[:, None, :]  # N x h x w
        painted = torch.where(
            inside, value[:, None, None], torch.zeros((), device=device, dtype=dtype)
        )
        fg[i] = painted.amax(dim=0)
    bg = (fg <= 0).to(dtype)
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return fg, bg


def fgd_attention(feat: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """FGD spatial and channel attention (FGD paper, focal distillation).

    Returns ``(spatial, channel)``: H*W * softmax over pixels of mean_c |F| / T (B x H x W)
    and C * softmax over channels of mean_hw |F| / T (B x C).
    """
    b, c, h, w = feat.shape
    a = feat.abs()
    spatial = (h * w) * F.softmax(a.mean(dim=1).reshape(b, -1) / temperature, dim=1)
    channel = c * F.softmax(a.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(b, h, w), channel


class GcContext(nn.Module):
    """GcBlock used by FGD's global term: x + transform(attention-pooled context of x).

    Context: softmax over pixels of a 1x1 conv score map, weighted sum of x -> B x C x 1 x 1;
    transform: 1x1 conv (C -> C/2), LayerNorm, ReLU, 1x1 conv (C/2 -> C), added to every
    pixel. Initialised as in the official code (kaiming fan-in score conv, zero last conv).
    """

    def __init__(self, channels: int):
        super().__init__()
        mid = max(1, channels // 2)
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, mid, kernel_size=1),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.score.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.score.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = F.softmax(self.score(x).reshape(b, 1, -1), dim=2)  # B x 1 x HW
        context = torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2))  # B x C x 1
        return x + self.transform(context.reshape(b, c, 1, 1))


@float32_math
def fgd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    image_size: Tuple[int, int],
    *,
    temperature: float = FGD_CONFIG.temperature,
    alpha: float = FGD_CONFIG.alpha,
    beta: float = FGD_CONFIG.beta,
    gamma: float = FGD_CONFIG.gamma,
    lambda_: float = FGD_CONFIG.lambda_,
    global_student: Optional[nn.Module] = None,
    global_teacher: Optional[nn.Module] = None,
    return_terms: bool = False,
):
    """FGD loss = alpha * L_fg + beta * L_bg + gamma * L_at + lambda * L_global.

    * L_fg / L_bg (focal distillation): squared error weighted by the
      foreground (scale) or background mask and by the teacher's spatial and channel
      attention, summed, / B.
    * L_at (attention loss): L1 between student and teacher spatial attention plus
      L1 between channel attention, summed, / B.
    * L_global (global distillation): squared error between GcBlock outputs
      (student-side block on the student, teacher-side block on the teacher), summed, / B.
      Skipped when the GcBlocks are not given.

    Defaults are the published RetinaNet values. All sums as in the official code.

    Args:
        student, teacher: B x C x H x W FPN features (student already aligned).
        boxes: B tensors of N_i x 4 xyxy ground-truth boxes in input pixels (N_i may be 0).
        image_size: (H_img, W_img) of the padded input batch.
        return_terms: also return a dict of the unweighted terms.
    """
    check_same_shape(student, teacher, "fgd_loss")
    temperature = check_positive(temperature, "temperature", "fgd_loss")
    if len(boxes) != student.shape[0]:
        raise ValueError(f"fgd_loss: got {len(boxes)} box lists for a batch of {student.shape[0]}")
    b, _, h, w = student.shape
    fg, bg = fgd_masks(boxes, image_size, (h, w), device=student.device, dtype=student.dtype)
    s_sp, s_ch = fgd_attention(student, temperature)
    t_sp, t_ch = fgd_attention(teacher, temperature)

    sq = (student - teacher).pow(2) * t_ch[:, :, None, None] * t_sp[:, None]
    sq_pix = sq.sum(dim=1)  # B x H x W
    l_fg = (sq_pix * fg).sum() / b
    l_bg = (sq_pix * bg).sum() / b
    l_at = ((s_ch - t_ch).abs().sum() + (s_sp - t_sp).abs().sum()) / b
    terms = {"fg": l_fg, "bg": l_bg, "attention": l_at}
    total = alpha * l_fg + beta * l_bg + gamma * l_at
    if global_student is not None and global_teacher is not None:
        l_gl = (global_student(student) - global_teacher(teacher)).pow(2).sum() / b
        terms["global"] = l_gl
        total = total + lambda_ * l_gl
    return (total, terms) if return_terms else total


@register_distill_loss("fgd", config=FGD_CONFIG)
class FGDLoss(DistillLoss):
    """FGD with its learnable parts, the student and teacher GcBlocks (a student of another width
    reaches the teacher's through the tap's connector, MODEL.DISTILL.CONNECTOR).

    Context: ``boxes`` (list of N_i x 4 xyxy tensors in input pixels) and ``image_size``
    ((H, W) of the padded batch) are required. Returns ``weight * fgd_loss``.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        teacher_channels: Optional[int] = None,
        student_channels: Optional[int] = None,
        temperature: float = FGD_CONFIG.temperature,
        alpha: float = FGD_CONFIG.alpha,
        beta: float = FGD_CONFIG.beta,
        gamma: float = FGD_CONFIG.gamma,
        lambda_: float = FGD_CONFIG.lambda_,
    ):
        super().__init__(weight=weight)
        teacher_channels = teacher_channels or student_channels
        if not teacher_channels:
            raise ValueError("FGDLoss needs teacher_channels to build its GcBlocks")
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)
        self.alpha, self.beta, self.gamma, self.lambda_ = map(float, (alpha, beta, gamma, lambda_))
        check_same_channels(student_channels, teacher_channels, type(self).__name__)
        self.global_student = GcContext(teacher_channels)
        self.global_teacher = GcContext(teacher_channels)

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        boxes: Optional[Sequence[torch.Tensor]] = None,
        image_size: Optional[Tuple[int, int]] = None,
        **context,
    ) -> torch.Tensor:
        if boxes is None or image_size is None:
            raise ValueError("FGDLoss needs boxes=[N_i x 4 xyxy tensors] and image_size=(H, W)")
        dtype = self.global_student.score.weight.dtype
        with autocast_off(student.device.type):
            student = student.to(dtype)
        loss = fgd_loss(
            student,
            teacher.to(dtype),
            boxes,
            tuple(image_size),
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            lambda_=self.lambda_,
            global_student=self.global_student,
            global_teacher=self.global_teacher,
        )
        return self.weight * loss

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, temperature={self.temperature:g}, alpha={self.alpha:g}, "
            f"beta={self.beta:g}, gamma={self.gamma:g}, lambda={self.lambda_:g}"
        )
