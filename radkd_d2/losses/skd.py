"""Structured knowledge distillation, SKD (Liu et al., "Structured Knowledge Distillation for
Semantic Segmentation", CVPR 2019): the pair-wise term, plus the optional holistic
(Wasserstein adversarial) term."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import autocast_off, check_same_shape, float32_math, safe_l2_normalize
from .build import DistillLoss, LossConfig, Option, register_distill_loss

# Structured KD, pair-wise term (Liu et al., CVPR 2019).
SKD_CONFIG = LossConfig(
    "SKD",
    Option("POOL_SCALE", "pool_scale", 0.5, "beta: max-pool window = this fraction of H and W (0.5 -> 2x2 nodes)", positive=True),
)

__all__ = [
    "SKD_CONFIG",
    "skd_loss",
    "SKDLoss",
    "SKDHolisticDiscriminator",
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

    The holistic term needs logits and an extra optimisable critic; see
    :class:`SKDHolisticDiscriminator` and :func:`skd_holistic_loss`.
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


class SKDHolisticDiscriminator(nn.Module):
    """Critic of SKD's holistic term: scores a (soft segmentation [, image]) pair.

    Input: class probabilities B x K x H x W, optionally concatenated with the RGB image
    resized to H x W (the paper's conditional critic). Strided 3x3 convs with LeakyReLU and no
    normalisation (the gradient penalty needs a per-sample critic), then a global mean: B.
    """

    def __init__(self, num_classes: int, image_channels: int = 0, width: int = 64, depth: int = 4):
        super().__init__()
        layers, c_in = [], num_classes + image_channels
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.image_channels = image_channels

    def forward(self, probs: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.image_channels:
            if image is None:
                raise ValueError("SKDHolisticDiscriminator was built with an image input")
            image = F.interpolate(
                image.to(probs.dtype), size=probs.shape[-2:], mode="bilinear", align_corners=False
            )
            probs = torch.cat([probs, image], dim=1)
        return self.net(probs).mean(dim=(1, 2, 3))


def skd_holistic_loss(
    discriminator: SKDHolisticDiscriminator,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    image: Optional[torch.Tensor] = None,
    gp_weight: float = 10.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SKD holistic term (SKD paper, "holistic distillation"), WGAN-GP form.

    Returns ``(student_term, critic_term)``, meant to be summed and back-propagated once:

    * ``student_term = -E[D(student)]``: moves only the student (the critic's parameters are
      used detached here), i.e. the student tries to look like the teacher to the critic.
    * ``critic_term = E[D(student)] - E[D(teacher)] + gp_weight * GP``: moves only the critic
      (student logits detached); GP is the gradient penalty on random interpolates.

    The paper alternates two optimisers; this single-backward split gives each side its own
    gradient so the critic can live in the main optimizer. Published weight of the holistic
    term: 0.1. Probabilities are softmax(logits), computed in float32.

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
        frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
        student_term = -torch.func.functional_call(discriminator, frozen, (p_s, image)).mean()

        p_s_d = p_s.detach()
        critic_term = discriminator(p_s_d, image).mean() - discriminator(p_t, image).mean()
        if gp_weight > 0:
            device = p_s.device if generator is None else generator.device
            a = torch.rand((p_s.shape[0], 1, 1, 1), generator=generator, device=device)
            a = a.to(device=p_s.device, dtype=dtype)
            mixed = (a * p_t + (1 - a) * p_s_d).requires_grad_(True)
            out = discriminator(mixed, image)
            (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
            grad_norm = torch.sqrt(grad.flatten(1).pow(2).sum(1) + 1e-12)
            critic_term = critic_term + gp_weight * (grad_norm - 1).pow(2).mean()
    return student_term, critic_term
