"""DeepLabV3 head: atrous spatial pyramid pooling (ASPP) on the last backbone feature.

Parameter names: ``aspp.convs.{0..3}.weight`` / ``.norm.*`` (the 1x1 branch, then one 3x3 branch
per dilation), ``aspp.pool.weight`` / ``.norm.*`` (image pooling branch), ``aspp.project.weight`` /
``.norm.*``, ``bottleneck.weight`` / ``.norm.*`` (the 3x3 conv giving the decoder feature; absent
in the "lite" variant, whose ASPP has only ``convs.0`` and ``pool``), then
those of :class:`~radkd_d2.modeling.heads.base.DilatedSegHead` (``predictor``, ``aux_head``).
"""

from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from radkd_d2.errors import ConfigError

from .base import DilatedSegHead

__all__ = ["ASPP", "ASPP_VARIANTS", "DeepLabV3Head"]

ASPP_VARIANTS = ("full", "lite")  # the values of MODEL.SEM_SEG_HEAD.ASPP_VARIANT


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of :paper:`DeepLabV3`.

    Branches: 1x1 conv, one 3x3 conv per dilation, and image pooling (global average pool, 1x1
    conv, broadcast back to h x w); each conv + norm + ReLU with ``out_channels`` outputs. The
    concatenation is projected by a 1x1 conv + norm + ReLU and dropout:
    B x in_channels x h x w -> B x out_channels x h x w. ``pool_first`` puts the pooling branch
    first in the concatenation (the TensorFlow model zoo's order); with no dilations this is the
    mobile "ASPP-lite" (1x1 and pooling branches only).

    Unlike ``detectron2.layers.ASPP`` the pooling branch has a norm (as in torchvision and CIRKD,
    so their weights load); with BatchNorm it therefore needs more than one image per batch in
    training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        *,
        norm: str = "BN",
        dropout: float = 0.5,
        pool_first: bool = False,
    ):
        super().__init__()
        self.pool_first = pool_first

        def conv(c_in: int, kernel_size: int, dilation: int = 1) -> Conv2d:
            layer = Conv2d(
                c_in,
                out_channels,
                kernel_size=kernel_size,
                padding=dilation if kernel_size == 3 else 0,
                dilation=dilation,
                bias=not norm,
                norm=get_norm(norm, out_channels),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(layer)
            return layer

        self.convs = nn.ModuleList(
            [conv(in_channels, 1)] + [conv(in_channels, 3, d) for d in dilations]
        )
        self.pool = conv(in_channels, 1)
        self.project = conv(out_channels * (len(self.convs) + 1), 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.convs]
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        # Upsampling a 1x1 map is a broadcast; expand() avoids the interpolation.
        pooled = pooled.expand(-1, -1, *x.shape[-2:])
        branches = [pooled, *branches] if self.pool_first else [*branches, pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3Head(DilatedSegHead):
    """:paper:`DeepLabV3` head: ASPP to conv_dims channels, then a 3x3 conv + norm + ReLU giving
    the decoder feature (B x conv_dims x h x w)."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        dilations: Sequence[int] = (12, 24, 36),
        aspp_dropout: float = 0.5,
        variant: str = "full",
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: see :class:`~radkd_d2.modeling.heads.base.DilatedSegHead`.
            dilations: atrous rates of the three 3x3 ASPP branches (12, 24, 36 at stride 8).
            aspp_dropout: dropout after the ASPP projection (0.5 in torchvision and CIRKD).
            variant: "full" (DeepLabV3: the ASPP above, then the 3x3 bottleneck conv) or "lite"
                (the mobile ASPP-lite of the TensorFlow model zoo: a 1x1 branch and the pooling
                branch, pooling first, projected to the decoder feature; no 3x3 branches, no
                bottleneck, no ASPP dropout; ``dilations`` and ``aspp_dropout`` unused).
        """
        super().__init__(input_shape, **kwargs)
        if variant not in ASPP_VARIANTS:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.ASPP_VARIANT = {variant!r} is not allowed; choose one of {list(ASPP_VARIANTS)}"
            )
        self.variant = variant
        lite = variant == "lite"
        self.aspp = ASPP(
            self.in_channels,
            self.decoder_channels,
            () if lite else dilations,
            norm=self.norm,
            dropout=0.0 if lite else aspp_dropout,
            pool_first=lite,
        )
        self.bottleneck = nn.Identity() if lite else Conv2d(
            self.decoder_channels,
            self.decoder_channels,
            kernel_size=3,
            padding=1,
            bias=not self.norm,
            norm=get_norm(self.norm, self.decoder_channels),
            activation=F.relu,
        )
        if not lite:
            weight_init.c2_msra_fill(self.bottleneck)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret["dilations"] = cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS
        ret["variant"] = cfg.MODEL.SEM_SEG_HEAD.ASPP_VARIANT
        return ret

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.aspp(x))
