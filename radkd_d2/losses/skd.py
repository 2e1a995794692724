"""Structured knowledge distillation, SKD (Liu et al., "Structured Knowledge Distillation for
Semantic Segmentation", CVPR 2019): the pair-wise term, and the pieces of the holistic
(adversarial) term: its critic, the two sides' objectives and the gradient penalty."""

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import autocast_off, check_4d, check_same_shape, float32_math, safe_l2_normalize, safe_sqrt
from .build import DistillLoss, LossConfig, Option, register_distill_loss

# Structured KD, pair-wise term (Liu et al., CVPR 2019).
SKD_CONFIG = LossConfig(
    "SKD",
    Option("POOL_SCALE", "pool_scale", 0.5, "beta: max-pool window = this fraction of H and W (0.5 -> 2x2 nodes)", positive=True),
)

__all__ = [
    "SKD_CONFIG",
    "HOLISTIC_CONFIG",
    "skd_loss",
    "SKDLoss",
    "SelfAttention2d",
    "SKDHolisticDiscriminator",
    "frozen_parameters",
    "gradient_penalty",
    "holistic_critic_loss",
    "holistic_student_loss",
    "skd_holistic_loss",
]


def _pool_nodes(x: torch.Tensor, pool_scale: float) -> torch.Tensor:
    # SKD's "nodes": max-pool windows of pool_scale * (H, W), ceil mode (2x2 nodes for 0.5).
    h, w = x.shape[-2:]
    kh, kw = max(1, int(h * pool_scale)), max(1, int(w * pool_scale))
    return F.max_pool2d(x, kernel_size=(kh, kw), stride=(kh, kw), ceil_mode=True)


@float32_math
def skd_loss(student: torch.Tensor, teacher: torch.Tensor, pool_scale: float = SKD_CONFIG.pool_scale) -> torch.Tensor:
    """SKD pair-wise distillation (SKD paper, "pair-wise distillation").

    Features are max-pooled into nodes (window = ``pool_scale`` of the map, the published
    beta; 0.5 gives 2x2 nodes), each node's C-vector is L2-normalised, and the node-to-node
    cosine-similarity matrices of student and teacher are compared: squared differences
    averaged over all node pairs and over the batch. Channels may differ between student and
    teacher (each similarity matrix only involves one network).

    Args:
        student: B x Cs x H x W; teacher: B x Ct x H x W.
        pool_scale: fraction of H and W pooled into one node, in (0, 1].
    """
    if not 0.0 < pool_scale <= 1.0:
        raise ValueError(f"skd_loss: pool_scale must be in (0, 1], got pool_scale={pool_scale!r}")
    check_same_shape(student, teacher, "skd_loss", match_channels=False)

    def similarity(x: torch.Tensor) -> torch.Tensor:
        nodes = safe_l2_normalize(_pool_nodes(x, pool_scale).flatten(2), dim=1)  # B x C x n
        return torch.bmm(nodes.transpose(1, 2), nodes)  # B x n x n

    diff = similarity(student) - similarity(teacher)
    return diff.pow(2).mean(dim=(1, 2)).mean()


@register_distill_loss("skd", config=SKD_CONFIG)
class SKDLoss(DistillLoss):
    """Weighted :func:`skd_loss` (pair-wise term); ``MODEL.DISTILL.SKD.POOL_SCALE``.

    The holistic term is not a tap loss: it needs a critic with its own optimizer, trained on
    alternate updates (``MODEL.DISTILL.HOLISTIC``, :mod:`radkd_d2.engine.adversarial`).
    """

    def __init__(self, *, weight: float = 1.0, pool_scale: float = SKD_CONFIG.pool_scale):
        super().__init__(weight=weight)
        if not 0.0 < pool_scale <= 1.0:
            raise ValueError(f"SKDLoss: pool_scale must be in (0, 1], got {pool_scale!r}")
        self.pool_scale = float(pool_scale)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **context) -> torch.Tensor:
        return self.weight * skd_loss(student, teacher, self.pool_scale)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, pool_scale={self.pool_scale:g}"


# ------------------------------------------------------------------------------ holistic term
# SKD's holistic (adversarial) term: a critic D scores segmentation maps, the teacher's as real
# and the student's as fake; the student adds lambda * -E[D(student)], D its own WGAN-GP (or
# hinge) loss, on alternate updates with its own optimizer. The training side (optimizer,
# schedule, checkpointing, gradient all-reduce) is radkd_d2/engine/adversarial.py. Defaults:
# the released code of SKD (irfanICMLL/structure_knowledge_distillation, networks/kd_model.py,
# utils/train_options.py), IFVD (YukangWang/IFVD) and CWD (irfanICMLL/TorchDistiller,
# SemSeg-distill) where they agree; D's optimizer where they do not: Adam as IFVD and CWD (SKD:
# SGD, momentum 0.9, weight decay 5e-4). WEIGHT 0: off. The per-method values: docs/losses.md.
HOLISTIC_CONFIG = LossConfig(
    "HOLISTIC",
    Option("WEIGHT", "weight", 0.0, "lambda of the student's term -E[D(student)] (loss_distill_holistic); 0: no critic (SKD --lambda-d 0.1, IFVD/CWD --lambda-adv 0.001)"),
    Option("OBJECTIVE", "objective", "wgan-gp", "critic objective (--adv-loss-type): wgan-gp E[D(s)] - E[D(t)], or hinge; the student's term is -E[D(s)] for both", choices=("wgan-gp", "hinge")),
    Option("GP_WEIGHT", "gp_weight", 10.0, "gradient-penalty weight lambda_gp: E[(||grad_x D(x)|| - 1)^2] at teacher/student mixes (--lambda-gp); 0: none"),
    Option("CRITIC_WEIGHT", "critic_weight", 0.1, "multiplies the critic's whole loss, objective + GP (--lambda-d in D's step)", positive=True),
    Option("INPUT", "input", "logits", "what D scores: the raw logits (SKD/IFVD/CWD PSPNet code) or their softmax (SKD's ESPNet critic)", choices=("logits", "softmax")),
    Option("IMAGE", "image", False, "condition D on the input image: concatenate it, resized to the logits, to D's input (SKD's ESPNet critic)"),
    Option("PREPROCESS", "preprocess", "bn", "D's first layer: BatchNorm over its input channels (--preprocess-GAN-mode 1) or none", choices=("bn", "none")),
    Option("CONV_DIM", "width", 64, "channels of D's first stride-2 conv, doubled per stage up to 8x (--adv-conv-dim)", positive=True),
    Option("DEPTH", "depth", 4, "stride-2 conv stages of D (the references: 4 on 65 x 65 logits)", positive=True),
    Option("SELF_ATTENTION", "self_attention", True, "self-attention after D's last two stages (the references' SAGAN critic)"),
    Option("SPECTRAL_NORM", "spectral_norm", True, "spectral normalisation of D's stage convs (as the references)"),
    Option("OPTIMIZER", "optimizer", "adam", "D's optimizer: adam (IFVD, CWD code) or sgd with MOMENTUM (SKD code)", choices=("adam", "sgd")),
    Option("BASE_LR", "base_lr", 4e-4, "D's learning rate (--lr-d), poly-decayed over SOLVER.MAX_ITER", positive=True),
    Option("BETAS", "betas", (0.9, 0.99), "Adam's (beta1, beta2) for D (IFVD/CWD code)"),
    Option("MOMENTUM", "momentum", 0.9, "SGD momentum for D (SKD code: --momentum)"),
    Option("WEIGHT_DECAY", "weight_decay", 0.0, "D's weight decay (SKD's SGD: --weight-decay 5e-4; Adam in IFVD/CWD: none)"),
    Option("POLY_POWER", "poly_power", 0.9, "D's schedule lr = BASE_LR * (1 - iter / SOLVER.MAX_ITER) ** power, no warm-up (--power); 0: constant"),
)


class SelfAttention2d(nn.Module):
    """Self-attention over the h*w positions of a B x C x h x w map, SAGAN style (Zhang et al.,
    ICML 2019): ``x + gamma * sum_j softmax_j(q_i . k_j) v_j`` with 1x1-conv queries and keys of
    C/8 channels and values of C, gamma starting at 0 (the block starts as the identity)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # B x n x n, rows sum to 1
        return x + self.gamma * (v @ attention.transpose(1, 2)).view(b, c, h, w)


class SKDHolisticDiscriminator(nn.Module):
    """Critic of SKD's holistic term: scores a segmentation map (logits or probabilities,
    B x K x h x w), optionally concatenated with the input image resized to h x w.

    Layers: optional BatchNorm of the input (``preprocess="bn"``), ``depth`` stages of a 3x3
    stride-2 conv (spectrally normalised) + LeakyReLU(0.1), self-attention after the last two,
    a 3x3 conv to one channel and the mean over positions: one score per sample (B). 3x3
    convs keep every input size valid (the references' 4x4 convs assume 65 x 65 logits).
    """

    def __init__(
        self,
        num_classes: int,
        image_channels: int = 0,
        width: int = HOLISTIC_CONFIG.width,
        depth: int = HOLISTIC_CONFIG.depth,
        *,
        self_attention: bool = HOLISTIC_CONFIG.self_attention,
        spectral_norm: bool = HOLISTIC_CONFIG.spectral_norm,
        preprocess: str = HOLISTIC_CONFIG.preprocess,
    ):
        super().__init__()
        if preprocess not in ("bn", "none"):
            raise ValueError(f"SKDHolisticDiscriminator: preprocess must be 'bn' or 'none', got {preprocess!r}")
        if num_classes < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"SKDHolisticDiscriminator: num_classes, width and depth must be >= 1, got "
                f"{num_classes}, {width}, {depth}"
            )
        self.num_classes, self.image_channels = int(num_classes), int(image_channels)
        c_in = self.num_classes + self.image_channels
        self.preprocess = nn.BatchNorm2d(c_in) if preprocess == "bn" else nn.Identity()
        stages = []
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            if spectral_norm:
                conv = nn.utils.parametrizations.spectral_norm(conv)
            layers = [conv, nn.LeakyReLU(0.1)]
            if self_attention and i >= depth - 2:
                layers.append(SelfAttention2d(c_out))
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1)

    def assemble(self, seg: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """D's input: ``seg`` (B x K x h x w), with the image (B x 3 x H x W, bilinearly resized
        to h x w) concatenated when the critic is conditional; in the parameters' dtype."""
        check_4d(seg, "SKDHolisticDiscriminator: seg")
        if seg.shape[1] != self.num_classes:
            raise ValueError(
                f"SKDHolisticDiscriminator was built for {self.num_classes} classes, got a map "
                f"of shape {tuple(seg.shape)}"
            )
        dtype = self.head.weight.dtype
        seg = seg.to(dtype)
        if not self.image_channels:
            return seg
        if image is None:
            raise ValueError("SKDHolisticDiscriminator was built with an image input; pass the image")
        image = F.interpolate(image.to(dtype), size=seg.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([seg, image], dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (B) of assembled inputs (:meth:`assemble`)."""
        return self.head(self.stages(self.preprocess(x))).mean(dim=(1, 2, 3))

    def forward(self, seg: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.score(self.assemble(seg, image))


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters do not require grad: a graph built there sends
    gradients through the module to its inputs but leaves its parameters' ``.grad`` untouched
    (the student's step of an adversarial pair). The flags are restored afterwards."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def holistic_student_loss(d_student: torch.Tensor) -> torch.Tensor:
    """The student's adversarial term, ``-E[D(student)]``, for both critic objectives."""
    return -d_student.mean()


def holistic_critic_loss(
    d_student: torch.Tensor, d_teacher: torch.Tensor, objective: str = HOLISTIC_CONFIG.objective
) -> torch.Tensor:
    """The critic's objective on scores of student (fake) and teacher (real) maps (B each):
    ``wgan-gp``: ``E[D(s)] - E[D(t)]`` (minus the Wasserstein estimate); ``hinge``:
    ``E[relu(1 - D(t))] + E[relu(1 + D(s))]``. The gradient penalty is separate
    (:func:`gradient_penalty`)."""
    if objective == "wgan-gp":
        return d_student.mean() - d_teacher.mean()
    if objective == "hinge":
        return F.relu(1.0 - d_teacher).mean() + F.relu(1.0 + d_student).mean()
    raise ValueError(f"holistic_critic_loss: objective must be 'wgan-gp' or 'hinge', got {objective!r}")


def gradient_penalty(
    score: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al., 2017): ``E_b[(||grad_x score(x)_b|| - 1)^2]`` at
    ``x_b = a_b real_b + (1 - a_b) fake_b``, ``a_b ~ U[0, 1)`` per sample, the norm over all of
    a sample's input elements; differentiable in the critic's parameters (``create_graph``).

    Args:
        score: maps B x C x h x w inputs to B scores (a critic's :meth:`score`).
        real, fake: assembled critic inputs of one shape; both are used detached.
        generator: draws ``a``; None uses the global RNG of ``real``'s device.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    a = torch.rand(
        (real.shape[0],) + (1,) * (real.dim() - 1),
        generator=generator,
        device=generator.device if generator is not None else real.device,
        dtype=real.dtype,
    ).to(real.device)
    mixed = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(score(mixed).sum(), mixed, create_graph=True)
    norm = safe_sqrt(grad.flatten(1).pow(2).sum(dim=1))
    return (norm - 1).pow(2).mean()


def skd_holistic_loss(
    discriminator: SKDHolisticDiscriminator,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    image: Optional[torch.Tensor] = None,
    gp_weight: float = HOLISTIC_CONFIG.gp_weight,
    generator: Optional[torch.Generator] = None,
    objective: str = HOLISTIC_CONFIG.objective,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SKD holistic term on softmax probabilities, both sides from one forward.

    Returns ``(student_term, critic_term)``, meant to be summed and back-propagated once:

    * ``student_term = -E[D(student)]`` moves only the student (the critic's parameters are
      frozen for it, :func:`frozen_parameters`);
    * ``critic_term = holistic_critic_loss + gp_weight * GP`` moves only the critic (student
      maps detached).

    For analysis and tests. Training alternates the two with the critic's own optimizer, as
    the references do: :class:`radkd_d2.engine.adversarial.HolisticCritic`
    (``MODEL.DISTILL.HOLISTIC``).

    Args:
        student_logits, teacher_logits: B x K x H x W.
        image: optional B x 3 x H_img x W_img input, when the critic is conditional.
    """
    if not gp_weight >= 0:
        raise ValueError(f"skd_holistic_loss: gp_weight must be >= 0, got gp_weight={gp_weight!r}")
    check_same_shape(student_logits, teacher_logits, "skd_holistic_loss")
    dtype = next(discriminator.parameters()).dtype
    with autocast_off(student_logits.device.type):
        p_s = F.softmax(student_logits.to(dtype), dim=1)
        p_t = F.softmax(teacher_logits.to(dtype), dim=1).detach()
        with frozen_parameters(discriminator):
            student_term = holistic_student_loss(discriminator(p_s, image))
        fake, real = discriminator.assemble(p_s.detach(), image), discriminator.assemble(p_t, image)
        critic_term = holistic_critic_loss(discriminator.score(fake), discriminator.score(real), objective)
        if gp_weight > 0:
            critic_term = critic_term + gp_weight * gradient_penalty(discriminator.score, real, fake, generator)
    return student_term, critic_term
