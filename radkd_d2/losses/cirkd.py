"""Cross-image relational distillation, CIRKD (Yang et al., "Cross-Image Relational Knowledge
Distillation for Semantic Segmentation", CVPR 2022).

Two parts: a mini-batch term (pixel-to-pixel similarities across the images of a batch) and a
memory term (student and teacher pixel embeddings contrasted with banks of teacher pixel and
region embeddings). Both match similarity distributions with a KL divergence.
"""

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._utils import (
    autocast_off,
    check_positive,
    check_same_shape,
    downsample_labels,
    float32_math,
    safe_l2_normalize,
)
from .build import DistillLoss, LossConfig, Option, register_distill_loss

# Cross-image relational KD (Yang et al., CVPR 2022); both CIRKD losses read this node.
CIRKD_CONFIG = LossConfig(
    "CIRKD",
    Option("CONTRAST_TEMPERATURE", "contrast_temperature", 0.1, "temperature of the pixel-similarity logits", positive=True),
    Option("KD_TEMPERATURE", "kd_temperature", 1.0, "temperature of the KL between similarity distributions", positive=True),
    Option("MINIBATCH_POOL", "pool", 2, "avg-pool window before the HW x HW mini-batch similarities; 1 = off"),
    Option("PIXEL_MEMORY_SIZE", "pixel_memory_size", 20000, "teacher pixel embeddings kept per class"),
    Option("REGION_MEMORY_SIZE", "region_memory_size", 2000, "teacher region (class-mean) embeddings kept per class"),
    Option("PIXEL_CONTRAST_SIZE", "pixel_contrast_size", 4096, "pixel-memory entries sampled per step (all classes)"),
    Option("REGION_CONTRAST_SIZE", "region_contrast_size", 1024, "region-memory entries sampled per step (all classes)"),
    Option("PIXEL_UPDATE_FREQ", "pixel_update_freq", 16, "pixels enqueued per class per image"),
    Option("PIXEL_WEIGHT", "pixel_weight", 0.1, "coefficient of the memory pixel-to-pixel term"),
    Option("REGION_WEIGHT", "region_weight", 0.1, "coefficient of the memory pixel-to-region term"),
)

__all__ = [
    "CIRKD_CONFIG",
    "cirkd_minibatch_loss",
    "cirkd_pixel_loss",
    "cirkd_region_loss",
    "CIRKDMiniBatchLoss",
    "CIRKDMemoryLoss",
]


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) along the last dim, one value per row."""
    log_ps = F.log_softmax(student_logits, dim=-1)
    log_pt = F.log_softmax(teacher_logits, dim=-1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)


@float32_math
def cirkd_minibatch_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = CIRKD_CONFIG.contrast_temperature,
    pool: int = CIRKD_CONFIG.pool,
) -> torch.Tensor:
    """CIRKD mini-batch pixel-to-pixel distillation (CIRKD paper, mini-batch-based term).

    For every ordered image pair (i, j) of the batch, each pixel of image i gets a softmax
    distribution (temperature ``temperature``) over its cosine similarities to all pixels of
    image j; the student's distributions are matched to the teacher's with KL, averaged over
    the pixels of i (``batchmean``) and over the B^2 pairs. Features are first average-pooled
    with a ``pool`` x ``pool`` window (the official code's optional 2x2 pooling) so the
    HW x HW similarity blocks stay affordable; memory is B * (HW/pool^2)^2 per step.

    Args:
        student: B x Cs x H x W; teacher: B x Ct x H x W (channels may differ).
        temperature: similarity temperature > 0 (published: 0.1).
        pool: pooling window; 1 disables pooling.
    """
    temperature = check_positive(temperature, "temperature", "cirkd_minibatch_loss")
    check_same_shape(student, teacher, "cirkd_minibatch_loss", match_channels=False)
    if pool > 1:
        student = F.avg_pool2d(student, pool, pool, ceil_mode=True)
        teacher = F.avg_pool2d(teacher, pool, pool, ceil_mode=True)
    fs = safe_l2_normalize(student.flatten(2), dim=1)  # B x C x n
    ft = safe_l2_normalize(teacher.flatten(2), dim=1)
    b = fs.shape[0]
    total = fs.new_zeros(())
    for i in range(b):
        # rows: pixels of image i; columns: pixels of image j, for all j at once.
        s_sim = torch.einsum("cn,bcm->bnm", fs[i], fs) / temperature
        t_sim = torch.einsum("cn,bcm->bnm", ft[i], ft) / temperature
        total = total + _kl_rows(s_sim, t_sim).mean(dim=1).sum()
    return total / (b * b)


def _contrast_kd(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    contrast: torch.Tensor,
    contrast_temperature: float,
    kd_temperature: float,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    check_positive(contrast_temperature, "contrast_temperature", "cirkd")
    check_positive(kd_temperature, "kd_temperature", "cirkd")
    if student_emb.shape != teacher_emb.shape or student_emb.dim() != 2:
        raise ValueError(
            "cirkd: student and teacher embeddings must both be N x D; got student "
            f"{tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)}"
        )
    if contrast.dim() != 2 or contrast.shape[1] != student_emb.shape[1]:
        raise ValueError(
            f"cirkd: contrast set must be K x {student_emb.shape[1]}, got {tuple(contrast.shape)}"
        )
    if student_emb.shape[0] == 0:
        return student_emb.sum() * 0.0
    scale = 1.0 / (contrast_temperature * kd_temperature)
    s_logits = student_emb @ contrast.t() * scale
    t_logits = teacher_emb @ contrast.t() * scale
    kl = _kl_rows(s_logits, t_logits)
    if weights is None:
        return kl.mean() * kd_temperature**2
    # weighted mean over the rows (0/1 weights: the valid pixels), without a data-dependent
    # selection; no valid row gives 0 with the graph kept
    w = weights.to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp_min(1.0) * kd_temperature**2


@float32_math
def cirkd_pixel_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    pixel_bank: torch.Tensor,
    contrast_temperature: float = CIRKD_CONFIG.contrast_temperature,
    kd_temperature: float = CIRKD_CONFIG.kd_temperature,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """CIRKD memory-based pixel-to-pixel distillation (CIRKD paper, memory-based terms).

    Each anchor pixel's similarities to sampled teacher pixel embeddings from the memory,
    divided by ``contrast_temperature``, form a distribution (softened further by
    ``kd_temperature``); KL(teacher || student) is averaged over anchors and scaled by
    ``kd_temperature^2``.

    Args:
        student_emb, teacher_emb: N x D L2-normalised embeddings of the same N pixels.
        pixel_bank: K x D teacher pixel embeddings sampled from the memory.
        weights: optional N row weights (e.g. 1 for valid pixels, 0 for ignored ones): the
            average over anchors becomes a weighted one.
    """
    return _contrast_kd(
        student_emb, teacher_emb, pixel_bank, contrast_temperature, kd_temperature, weights
    )


@float32_math
def cirkd_region_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    region_bank: torch.Tensor,
    contrast_temperature: float = CIRKD_CONFIG.contrast_temperature,
    kd_temperature: float = CIRKD_CONFIG.kd_temperature,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """CIRKD memory-based pixel-to-region distillation (CIRKD paper, memory-based terms).

    Same as :func:`cirkd_pixel_loss` with region embeddings (teacher class means of single
    images) as the contrast set.

    Args:
        student_emb, teacher_emb: N x D L2-normalised embeddings of the same N pixels.
        region_bank: K x D teacher region embeddings sampled from the memory.
        weights: optional N row weights, as in :func:`cirkd_pixel_loss`.
    """
    return _contrast_kd(
        student_emb, teacher_emb, region_bank, contrast_temperature, kd_temperature, weights
    )


@register_distill_loss("cirkd_minibatch", label="CIRKD", config=CIRKD_CONFIG)
class CIRKDMiniBatchLoss(DistillLoss):
    """Weighted :func:`cirkd_minibatch_loss` (published weight 1.0)."""

    def __init__(
        self,
        *,
        weight: float = 1.0,
        contrast_temperature: float = CIRKD_CONFIG.contrast_temperature,
        pool: int = CIRKD_CONFIG.pool,
    ):
        super().__init__(weight=weight)
        self.temperature = check_positive(
            contrast_temperature, "contrast_temperature", type(self).__name__
        )
        if int(pool) < 1:
            raise ValueError(f"CIRKDMiniBatchLoss: pool must be >= 1, got pool={pool!r}")
        self.pool = int(pool)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * cirkd_minibatch_loss(student, teacher, self.temperature, self.pool)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, temperature={self.temperature:g}, pool={self.pool}"


@torch.no_grad()
def _gather_from_all_ranks(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@register_distill_loss("cirkd_memory", label="CIRKD", config=CIRKD_CONFIG)
class CIRKDMemoryLoss(DistillLoss):
    """CIRKD memory-based pixel-to-pixel and pixel-to-region distillation.

    Holds a projection head (1x1 conv, BN, ReLU, 1x1 conv, student -> teacher channels) applied
    to the student feature, and per-class FIFO banks of L2-normalised teacher pixel embeddings
    and region embeddings (mean teacher embedding of one class in one image). Each call
    enqueues the current teacher embeddings (gathered across processes) and then contrasts the
    valid pixels against ``pixel_contrast_size`` / ``region_contrast_size`` entries drawn from
    the banks (spread over the classes, as published). Returns
    ``weight * (pixel_weight * pixel_term + region_weight * region_term)``.

    Needs ``labels`` (B x H x W) and optionally ``ignore_value`` in the context. The banks are
    non-persistent buffers (not saved in checkpoints; they refill within a few hundred steps).
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        num_classes: Optional[int] = None,
        teacher_channels: Optional[int] = None,
        student_channels: Optional[int] = None,
        contrast_temperature: float = CIRKD_CONFIG.contrast_temperature,
        kd_temperature: float = CIRKD_CONFIG.kd_temperature,
        pixel_memory_size: int = CIRKD_CONFIG.pixel_memory_size,
        region_memory_size: int = CIRKD_CONFIG.region_memory_size,
        pixel_contrast_size: int = CIRKD_CONFIG.pixel_contrast_size,
        region_contrast_size: int = CIRKD_CONFIG.region_contrast_size,
        pixel_update_freq: int = CIRKD_CONFIG.pixel_update_freq,
        pixel_weight: float = CIRKD_CONFIG.pixel_weight,
        region_weight: float = CIRKD_CONFIG.region_weight,
    ):
        super().__init__(weight=weight)
        teacher_channels = teacher_channels or student_channels
        if not num_classes or not teacher_channels:
            raise ValueError(
                "CIRKDMemoryLoss needs num_classes and teacher_channels, got "
                f"num_classes={num_classes!r}, teacher_channels={teacher_channels!r}"
            )
        name = type(self).__name__
        self.contrast_temperature = check_positive(
            contrast_temperature, "contrast_temperature", name
        )
        self.kd_temperature = check_positive(kd_temperature, "kd_temperature", name)
        self.num_classes = int(num_classes)
        self.pixel_memory_size = int(pixel_memory_size)
        self.region_memory_size = int(region_memory_size)
        # Official recipe: the totals are split evenly over classes (size // K + 1 each).
        self.pixel_per_class = min(self.pixel_memory_size, pixel_contrast_size // num_classes + 1)
        self.region_per_class = min(
            self.region_memory_size, region_contrast_size // num_classes + 1
        )
        self.pixel_update_freq = int(pixel_update_freq)
        self.pixel_weight = float(pixel_weight)
        self.region_weight = float(region_weight)

        s_ch, t_ch = student_channels or teacher_channels, teacher_channels
        self.project_head = nn.Sequential(
            nn.Conv2d(s_ch, t_ch, 1, bias=False),
            nn.BatchNorm2d(t_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_ch, t_ch, 1, bias=False),
        )
        # one spare slot per class at the end of each bank: enqueue writes that have nothing to
        # write (absent classes, fewer pixels than the update size) go there, so every write
        # has a fixed size and no value is read back to the host
        pixel_store = F.normalize(torch.randn(num_classes, self.pixel_memory_size + 1, t_ch), dim=2)
        region_store = F.normalize(torch.randn(num_classes, self.region_memory_size + 1, t_ch), dim=2)
        self.register_buffer("pixel_store", pixel_store, persistent=False)
        self.register_buffer("region_store", region_store, persistent=False)
        self.register_buffer(
            "pixel_ptr", torch.zeros(num_classes, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "region_ptr", torch.zeros(num_classes, dtype=torch.long), persistent=False
        )

    @property
    def pixel_bank(self) -> torch.Tensor:
        """K x pixel_memory_size x D teacher pixel embeddings (a view, without the spare slot)."""
        return self.pixel_store[:, : self.pixel_memory_size]

    @property
    def region_bank(self) -> torch.Tensor:
        """K x region_memory_size x D teacher region embeddings (a view, without the spare slot)."""
        return self.region_store[:, : self.region_memory_size]

    @torch.no_grad()
    def _enqueue(self, t_emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> None:
        """Push teacher pixel and region embeddings (B x D x h x w, normalised) per class.

        Image by image (as published): for every class present, its mean embedding goes into
        the region bank, and up to ``pixel_update_freq`` of its pixels, drawn at random, into
        the pixel bank at the class's pointer (the last slots, and back to 0, when they would
        run past the end). All classes are handled at once with fixed-size operations: no
        ``unique``/``nonzero``/``item``, so no GPU synchronisation.
        """
        t_emb = _gather_from_all_ranks(t_emb)
        labels = _gather_from_all_ranks(torch.where(valid, labels, torch.full_like(labels, -1)))
        b, d = t_emb.shape[:2]
        feats = t_emb.reshape(b, d, -1).to(self.pixel_store.dtype)
        labels = labels.reshape(b, -1)
        n, dev = feats.shape[2], feats.device
        classes = torch.arange(self.num_classes, device=dev)
        p_size, r_size = self.pixel_memory_size, self.region_memory_size
        k = min(n, self.pixel_update_freq, p_size)
        slot = torch.arange(k, device=dev)[:, None]  # k x 1
        for i in range(b):
            onehot = labels[i][:, None] == classes  # n x K
            counts = onehot.sum(dim=0)  # K
            present = counts > 0
            region = (feats[i] @ onehot.to(feats.dtype)) / counts.clamp_min(1)  # D x K
            pos = torch.where(present, self.region_ptr, r_size)  # absent: the spare slot
            self.region_store[classes, pos] = F.normalize(region.t(), dim=1)
            self.region_ptr.copy_(torch.where(present, (self.region_ptr + 1) % r_size, self.region_ptr))

            # a uniform random subset of each class's pixels: top-k of random scores, which
            # also puts the class's pixels before the others
            scores = torch.rand(n, self.num_classes, device=dev).masked_fill(~onehot, -1.0)
            pick = scores.topk(k, dim=0).indices  # k x K
            taken = counts.clamp_max(k)  # K
            wrap = self.pixel_ptr + taken >= p_size
            start = torch.where(wrap, p_size - taken, self.pixel_ptr)
            pos = torch.where(slot < taken, start + slot, p_size)  # k x K; unused: the spare slot
            pixels = F.normalize(feats[i][:, pick], dim=0)  # D x k x K
            self.pixel_store[classes.expand(k, -1), pos] = pixels.permute(1, 2, 0)
            self.pixel_ptr.copy_(torch.where(wrap, 0, self.pixel_ptr + taken))

    def _sample(self, bank: torch.Tensor, per_class: int) -> torch.Tensor:
        idx = torch.randperm(bank.shape[1], device=bank.device)[:per_class]
        return bank[:, idx].reshape(-1, bank.shape[2])

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        labels: Optional[torch.Tensor] = None,
        ignore_value: int = 255,
        **context,
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("CIRKDMemoryLoss needs labels=... (B x H x W semantic ground truth)")
        check_same_shape(student, teacher, "CIRKDMemoryLoss", match_channels=False)
        dtype = self.pixel_bank.dtype
        with autocast_off(student.device.type):
            s_emb = safe_l2_normalize(self.project_head(student.to(dtype)), dim=1)
            t_emb = safe_l2_normalize(teacher.detach().to(dtype), dim=1)
            lab = downsample_labels(labels.to(student.device), s_emb.shape[-2:])
            valid = (lab != ignore_value) & (lab >= 0) & (lab < self.num_classes)
            self._enqueue(t_emb, lab, valid)

            d = s_emb.shape[1]
            # every pixel is an anchor, weighted 1 if valid and 0 if not (no data-dependent
            # selection); with no valid pixel the loss is 0 and the head stays in the graph
            weights = valid.reshape(-1)
            s_pix = s_emb.permute(0, 2, 3, 1).reshape(-1, d)
            t_pix = t_emb.permute(0, 2, 3, 1).reshape(-1, d)
            pixel = cirkd_pixel_loss(
                s_pix,
                t_pix,
                self._sample(self.pixel_bank, self.pixel_per_class),
                self.contrast_temperature,
                self.kd_temperature,
                weights,
            )
            region = cirkd_region_loss(
                s_pix,
                t_pix,
                self._sample(self.region_bank, self.region_per_class),
                self.contrast_temperature,
                self.kd_temperature,
                weights,
            )
        return self.weight * (self.pixel_weight * pixel + self.region_weight * region)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, num_classes={self.num_classes}, "
            f"pixel_memory={self.pixel_memory_size}, region_memory={self.region_memory_size}, "
            f"contrast_temperature={self.contrast_temperature:g}, "
            f"kd_temperature={self.kd_temperature:g}"
        )
