""":paper:`UPerNet` head: pyramid pooling on the top level, an FPN over the others, and a fusion of
all levels at the finest stride (the UPerNet-Swin segmentation recipe).

For inputs ``in_features = [f_1, ..., f_n]`` (fine to coarse, e.g. res2..res5) and ``conv_dims``
channels C:

1. ``ppm``: pyramid pooling module on f_n (per bin b: adaptive average pool to b x b, 1x1 conv to C
   + norm + ReLU, bilinear upsampling; concatenated with f_n, then a 3x3 conv to C + norm + ReLU).
   Its output is the top level of the pyramid.
2. ``lateral_convs.{i}``: 1x1 conv to C + norm + ReLU on f_1..f_{n-1}.
3. Top-down pathway: each level adds the bilinearly upsampled level above it.
4. ``fpn_convs.{i}``: 3x3 conv + norm + ReLU on every level but the top one.
5. All levels upsampled to the size of f_1 and concatenated; ``fpn_bottleneck`` (3x3 conv from
   n*C to C + norm + ReLU) gives the **decoder** feature, B x C x h_1 x w_1 at stride
   ``common_stride`` (the stride of f_1, 4 for res2).

Parameter names: ``ppm.convs.{i}``, ``ppm.bottleneck``, ``lateral_convs.{i}``, ``fpn_convs.{i}``,
``fpn_bottleneck`` (each ``.weight`` and ``.norm.*``), then those of
:class:`~radkd_d2.modeling.heads.base.DilatedSegHead` (``predictor``, ``aux_head``).
"""

from typing import Dict, List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .base import DilatedSegHead
from .pooling import adaptive_avg_pool2d

__all__ = ["PyramidPooling", "UPerNetHead"]


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """UPerNet's pyramid pooling module: B x in_channels x h x w -> B x out_channels x h x w.

    Unlike :class:`~radkd_d2.modeling.heads.psp.PSPHead`, every pooled branch has
    ``out_channels`` channels (not ``in_channels / len(bins)``), as in UPerNet.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int], *, norm: str):
        super().__init__()
        self.bins = tuple(bins)
        self.convs = nn.ModuleList(
            [_conv_norm_relu(in_channels, out_channels, 1, norm) for _ in self.bins]
        )
        self.bottleneck = _conv_norm_relu(
            in_channels + out_channels * len(self.bins), out_channels, 3, norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [x]
        for bin_size, conv in zip(self.bins, self.convs):
            pyramid.append(_resize(conv(adaptive_avg_pool2d(x, bin_size)), size))
        return self.bottleneck(torch.cat(pyramid, dim=1))


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(DilatedSegHead):
    """:paper:`UPerNet` head over several backbone levels (see the module docstring).

    ``layers(features)`` returns "decoder" (the fused pyramid, B x conv_dims x h x w) and "logits"
    (B x K x h x w) at the stride of ``in_features[0]``, plus "aux_logits" in training when the
    auxiliary FCN head is enabled.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: Sequence[str],
        bins: Sequence[int] = (1, 2, 3, 6),
        **kwargs,
    ):
        """
        Args:
            input_shape: shapes of the backbone outputs.
            in_features: names of the decoded levels, fine to coarse (e.g. res2..res5); the
                first one must have stride ``common_stride``, strides must not decrease.
            bins: output sizes of the pyramid pooling on the last level.
            kwargs: see :class:`~radkd_d2.modeling.heads.base.DilatedSegHead` (all arguments but
                ``in_feature``).
        """
        in_features = list(in_features)
        missing = [name for name in in_features if name not in input_shape]
        if not in_features or missing:
            raise ValueError(
                f"UPerNet inputs {in_features} must be non-empty and among backbone outputs "
                f"{list(input_shape)}"
            )
        strides = [input_shape[name].stride for name in in_features]
        if strides != sorted(strides):
            raise ValueError(
                f"UPerNet inputs {in_features} must go from fine to coarse, got strides {strides}"
            )
        super().__init__(input_shape, in_feature=in_features[0], **kwargs)
        self.in_features = in_features
        channels = self.decoder_channels
        self.ppm = PyramidPooling(
            input_shape[in_features[-1]].channels, channels, bins, norm=self.norm
        )
        self.lateral_convs = nn.ModuleList(
            [
                _conv_norm_relu(input_shape[name].channels, channels, 1, self.norm)
                for name in in_features[:-1]
            ]
        )
        self.fpn_convs = nn.ModuleList(
            [_conv_norm_relu(channels, channels, 3, self.norm) for _ in in_features[:-1]]
        )
        self.fpn_bottleneck = _conv_norm_relu(len(in_features) * channels, channels, 3, self.norm)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        del ret["in_feature"]
        ret["in_features"] = cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES
        ret["bins"] = cfg.MODEL.SEM_SEG_HEAD.PSP_BINS
        return ret

    def decode_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone outputs by name; must contain ``in_features``.

        Returns:
            The decoder feature, B x conv_dims x h x w at the size of ``features[in_features[0]]``.
        """
        levels: List[torch.Tensor] = [
            conv(features[name]) for name, conv in zip(self.in_features, self.lateral_convs)
        ]
        levels.append(self.ppm(features[self.in_features[-1]]))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outputs = [conv(level) for level, conv in zip(levels, self.fpn_convs)] + [levels[-1]]
        size = outputs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([_resize(x, size) for x in outputs], dim=1))
