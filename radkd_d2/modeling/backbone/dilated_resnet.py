"""Dilated ResNet with a deep stem (the PSPNet / CIRKD "ResNetV1b" segmentation backbone).

The network is Detectron2's :class:`~detectron2.modeling.backbone.ResNet` with a different stem and
with atrous (dilated) convolutions replacing the strides of the last stages:

- stem: three 3x3 convs (64, 64, 128 channels by default, MODEL.DRN.STEM_OUT_CHANNELS; strides 2, 1, 1; each conv + norm + ReLU), then a
  3x3 max-pool with stride 2. Stride 4.
- res2..res5: BasicBlock (depth 18, 34) or BottleneckBlock (depth 50, 101) stages with widths
  64, 128, 256, 512 (x4 output channels for bottlenecks).
- ``output_stride`` 8: res4 and res5 keep stride 1 and use dilation 2 and 4; 16: only res5 is
  dilated (dilation 2); 32: the plain ResNet.
- Dilation rule (GluonCV/CIRKD ResNetV1b, the PSPNet recipe without multi-grid): in the first
  block of a stage with dilation d > 1, the first 3x3 conv uses dilation d // 2 (so 1 for d = 2);
  every other 3x3 conv of the stage uses d. Strides sit in the 3x3 conv (not in the 1x1).
- Every width is multiplied by ``width_mult`` and rounded (at least 1 channel): 0.25 gives stages
  of 16/32/64/128 channels (BasicBlock) and a 8/8/16 stem.

Parameter names follow Detectron2's ResNet, so Detectron2 checkpoints and converters line up::

    stem.conv{1,2,3}.weight, stem.conv{1,2,3}.norm.{weight,bias,running_mean,running_var}
    res{2..5}.{i}.conv{1,2[,3]}.weight, res{2..5}.{i}.conv{1,2[,3]}.norm.*
    res{2..5}.0.shortcut.weight, res{2..5}.0.shortcut.norm.*    (projection shortcut)

A CIRKD / torchvision checkpoint maps as ``conv1.{0,1,3,4,6}`` -> ``stem.conv1``,
``stem.conv1.norm``, ``stem.conv2``, ``stem.conv2.norm``, ``stem.conv3``; ``bn1`` ->
``stem.conv3.norm``; ``layer{k}`` -> ``res{k+1}``; ``bn{j}`` -> ``conv{j}.norm``;
``downsample.0`` -> ``shortcut``; ``downsample.1`` -> ``shortcut.norm``.
"""

from typing import List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet

from .info import BackboneInfo, cfg_get, register_backbone_info, width_suffix

__all__ = ["DeepStem", "DilatedBasicBlock", "DilatedResNet", "build_dilated_resnet_backbone"]

# depth -> (blocks per stage res2..res5, uses bottleneck blocks)
_DEPTHS = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
}
# output stride -> (stride, dilation) of res4 and res5; res2 has stride 1 and res3 stride 2 always
_DILATION_PLAN = {
    8: ((1, 2), (1, 4)),
    16: ((2, 1), (1, 2)),
    32: ((2, 1), (2, 1)),
}
_STAGE_WIDTHS = (64, 128, 256, 512)
_STEM_WIDTHS = (64, 64, 128)


def scale_width(channels: int, width_mult: float) -> int:
    """Return ``channels * width_mult`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width_mult)))


class DeepStem(CNNBlockBase):
    """Three 3x3 conv + norm + ReLU layers (strides 2, 1, 1) followed by a 3x3/2 max-pool.

    Input B x in_channels x H x W, output B x out_channels x ceil(H/4) x ceil(W/4).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = _STEM_WIDTHS,
        norm: str = "BN",
    ):
        """
        Args:
            in_channels: channels of the input image.
            widths: output channels of the three convs; the last one is the stem's output.
            norm: normalization after each conv, see :func:`detectron2.layers.get_norm`.
        """
        super().__init__(in_channels, widths[-1], stride=4)
        channels = [in_channels, *widths]
        for i in range(3):
            conv = Conv2d(
                channels[i],
                channels[i + 1],
                kernel_size=3,
                stride=2 if i == 0 else 1,
                padding=1,
                bias=False,
                norm=get_norm(norm, channels[i + 1]),
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i + 1}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DilatedBasicBlock(CNNBlockBase):
    """Two 3x3 conv residual block (ResNet-18/34) whose convs may be dilated.

    Detectron2's ``BasicBlock`` has no dilation argument; this block adds one per conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: Optional[int] = None,
        norm: str = "BN",
    ):
        """
        Args:
            in_channels, out_channels: channels of the block's input and output.
            stride: stride of the first 3x3 conv (and of the projection shortcut).
            dilation: dilation of the second 3x3 conv.
            first_dilation: dilation of the first 3x3 conv; ``None`` means ``dilation``.
            norm: normalization after each conv, see :func:`detectron2.layers.get_norm`.
        """
        super().__init__(in_channels, out_channels, stride)
        first_dilation = dilation if first_dilation is None else first_dilation
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


def _make_stage(
    bottleneck: bool,
    num_blocks: int,
    *,
    in_channels: int,
    width: int,
    stride: int,
    dilation: int,
    norm: str,
) -> List[CNNBlockBase]:
    """Build one stage; the first 3x3 conv of its first block uses ``dilation // 2``."""
    first_dilation = max(1, dilation // 2)
    blocks: List[CNNBlockBase] = []
    for i in range(num_blocks):
        block_stride = stride if i == 0 else 1
        if bottleneck:
            # BottleneckBlock has a single 3x3 conv, the one that gets the reduced dilation.
            block = BottleneckBlock(
                in_channels,
                width * 4,
                bottleneck_channels=width,
                stride=block_stride,
                norm=norm,
                stride_in_1x1=False,
                dilation=first_dilation if i == 0 else dilation,
            )
        else:
            block = DilatedBasicBlock(
                in_channels,
                width,
                stride=block_stride,
                dilation=dilation,
                first_dilation=first_dilation if i == 0 else dilation,
                norm=norm,
            )
        blocks.append(block)
        in_channels = block.out_channels
    return blocks


class DilatedResNet(ResNet):
    """Deep-stem ResNet with output stride 8, 16 or 32 (see the module docstring).

    ``forward(x)`` takes B x 3 x H x W and returns ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for
    each name in ``out_features``, with (C, s) given by :meth:`output_shape`.
    """

    def __init__(
        self,
        *,
        depth: int = 18,
        width_mult: float = 1.0,
        output_stride: int = 8,
        norm: str = "BN",
        out_features: Optional[Sequence[str]] = ("res5",),
        freeze_at: int = 0,
        in_channels: int = 3,
        stem_out_channels: int = 128,
    ):
        """
        Args:
            depth: 18, 34 (BasicBlock) or 50, 101 (BottleneckBlock).
            width_mult: multiplier of every channel width.
            output_stride: stride of res5: 8, 16 or 32.
            norm: normalization of every conv, see :func:`detectron2.layers.get_norm`.
            out_features: names among "stem", "res2".."res5" returned by ``forward``.
            freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 freezes stem..res(k)
                (parameters get ``requires_grad=False``, BatchNorm becomes FrozenBatchNorm2d).
            in_channels: channels of the input image.
            stem_out_channels: stem output channels at width 1 (convs: half, half, all):
                128 as in PSPNet/CIRKD checkpoints, 64 as in mmseg's ResNetV1c.
        """
        if depth not in _DEPTHS:
            raise ValueError(f"DilatedResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if output_stride not in _DILATION_PLAN:
            raise ValueError(
                f"DilatedResNet output_stride must be one of {sorted(_DILATION_PLAN)}, "
                f"got {output_stride}"
            )
        num_blocks, bottleneck = _DEPTHS[depth]
        stem_widths = (stem_out_channels // 2, stem_out_channels // 2, stem_out_channels)
        stem = DeepStem(in_channels, [scale_width(c, width_mult) for c in stem_widths], norm=norm)
        plan: Tuple[Tuple[int, int], ...] = ((1, 1), (2, 1), *_DILATION_PLAN[output_stride])
        stages = []
        channels = stem.out_channels
        for blocks, base_width, (stride, dilation) in zip(num_blocks, _STAGE_WIDTHS, plan):
            stage = _make_stage(
                bottleneck,
                blocks,
                in_channels=channels,
                width=scale_width(base_width, width_mult),
                stride=stride,
                dilation=dilation,
                norm=norm,
            )
            channels = stage[-1].out_channels
            stages.append(stage)
        super().__init__(
            stem,
            stages,
            out_features=list(out_features) if out_features is not None else None,
            freeze_at=freeze_at,
        )
        self.depth = depth
        self.output_stride = output_stride

    @property
    def size_divisibility(self) -> int:
        # Padding inputs to a multiple of the deepest returned stride makes every feature map
        # exactly H/s x W/s, so logits upsampled by the stride line up with the targets.
        return max(self._out_feature_strides[name] for name in self._out_features)


register_backbone_info(
    "build_dilated_resnet_backbone",
    BackboneInfo(
        label=lambda cfg: f"R{cfg_get(cfg, 'MODEL.DRN.DEPTH', '?')}"
        + width_suffix(cfg_get(cfg, "MODEL.DRN.WIDTH_MULT")),
        reduced_opts=lambda cfg: ["MODEL.DRN.WIDTH_MULT", "0.125"],
    ),
)


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_backbone(cfg, input_shape: ShapeSpec) -> DilatedResNet:
    """Build a :class:`DilatedResNet` from ``cfg.MODEL.DRN``."""
    return DilatedResNet(
        depth=cfg.MODEL.DRN.DEPTH,
        width_mult=cfg.MODEL.DRN.WIDTH_MULT,
        output_stride=cfg.MODEL.DRN.OUTPUT_STRIDE,
        norm=cfg.MODEL.DRN.NORM,
        out_features=cfg.MODEL.DRN.OUT_FEATURES,
        freeze_at=cfg.MODEL.DRN.FREEZE_AT,
        in_channels=input_shape.channels,
        stem_out_channels=cfg.MODEL.DRN.STEM_OUT_CHANNELS,
    )
