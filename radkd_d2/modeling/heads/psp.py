"""PSPNet head: pyramid pooling module (PPM) on the last backbone feature.

Parameter names: ``ppm.{i}.weight``, ``ppm.{i}.norm.*`` (one 1x1 conv per bin),
``bottleneck.weight``, ``bottleneck.norm.*`` (the 3x3 conv giving the decoder feature), then those
of :class:`~radkd_d2.modeling.heads.base.DilatedSegHead` (``predictor``, ``aux_head``).
"""

from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .base import DilatedSegHead
from .pooling import adaptive_avg_pool2d

__all__ = ["PSPHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class PSPHead(DilatedSegHead):
    """:paper:`PSPNet` head.

    For each bin size b: adaptive average pooling to b x b -> 1x1 conv to C_in / len(bins) + norm +
    ReLU -> bilinear upsampling to h x w. The pooled maps are concatenated with the input and a
    3x3 conv + norm + ReLU gives the decoder feature (B x conv_dims x h x w).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        bins: Sequence[int] = (1, 2, 3, 6),
        pool_align_corners: bool = False,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: see :class:`~radkd_d2.modeling.heads.base.DilatedSegHead`.
            bins: output sizes of the adaptive average pools.
            pool_align_corners: ``align_corners`` of the pooled maps' upsampling (CIRKD and the
                original PSPNet code use True).
        """
        super().__init__(input_shape, **kwargs)
        self.bins = tuple(bins)
        self.pool_align_corners = pool_align_corners
        branch_channels = max(1, self.in_channels // len(self.bins))
        self.ppm = nn.ModuleList()
        for _ in self.bins:
            conv = Conv2d(
                self.in_channels,
                branch_channels,
                kernel_size=1,
                bias=not self.norm,
                norm=get_norm(self.norm, branch_channels),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(conv)
            self.ppm.append(conv)
        self.bottleneck = Conv2d(
            self.in_channels + branch_channels * len(self.bins),
            self.decoder_channels,
            kernel_size=3,
            padding=1,
            bias=not self.norm,
            norm=get_norm(self.norm, self.decoder_channels),
            activation=F.relu,
        )
        weight_init.c2_msra_fill(self.bottleneck)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret["bins"] = cfg.MODEL.SEM_SEG_HEAD.PSP_BINS
        ret["pool_align_corners"] = cfg.MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS
        return ret

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [x]
        for bin_size, conv in zip(self.bins, self.ppm):
            pooled = conv(adaptive_avg_pool2d(x, bin_size))
            pyramid.append(
                F.interpolate(
                    pooled, size=size, mode="bilinear", align_corners=self.pool_align_corners
                )
            )
        return self.bottleneck(torch.cat(pyramid, dim=1))
