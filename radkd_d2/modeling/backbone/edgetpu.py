"""MobileNet-EdgeTPU (v1) backbone: timm's ``mobilenet_edgetpu`` network as a Detectron2 Backbone,
with the 1280-channel head conv as a feature of its own.

The blocks are timm's (``timm.models.efficientnet._gen_mobilenet_edgetpu`` at a channel
multiplier, without classifier); this module names the stages, makes the first block linear and
returns the features by name.

- Stages (width 1.0 / 0.75; timm rounds the channels to multiples of 8)::

      res2  blocks.1   32 / 24 ch   stride 4    fused ("edge residual") blocks
      res3  blocks.2   48 / 40 ch   stride 8    fused blocks
      res4  blocks.4   96 / 72 ch   stride 16   inverted residuals (blocks.4.0 without skip)
      res5  blocks.6  192 / 144 ch  stride 32   inverted residuals (5x5 depthwise in blocks.5)
      head  conv_head 1280 ch       stride of res5: 1x1 conv + BN + ReLU on res5

  ``head`` is the map a DeepLab head of the TensorFlow model zoo decodes (its "last backbone
  feature"); ``res5`` the last block stage before it.
- ``output_stride`` 16 (the Cityscapes DeepLab of ``../shared/data/pretrained``) or 8: timm turns
  the strides of the later stages into dilation; the first block of a dilated stage keeps the
  previous dilation (so ``blocks.5.0``'s depthwise conv has stride 1, rate 1 at output stride 16,
  and ``blocks.5.1``-``blocks.6.0`` use rate 2).
- **The first block is linear.** timm builds ``blocks.0.0`` (the 1x1 conv of the stem's output,
  expansion 1) with a ReLU; the TensorFlow reference network has none there (measured against
  the quantised interpreter: with the ReLU the features already differ by 58 % relative L2 at
  ``blocks.1.0``). The other difference the shared README names, no residual around
  ``blocks.4.0``, is timm's own definition (``_noskip``) in the pinned version; the constructor
  checks both.
- Padding: ``pad_type="same"`` (TensorFlow's "SAME", as the weights were trained) or ``""``.

Parameter names are timm's under ``body.`` (``conv_stem``, ``bn1``, ``blocks.*``, ``conv_head``,
``bn2``), so the shared checkpoint maps by adding the prefix ``backbone.body.``
(:func:`radkd_d2.checkpoint.convert_tf_deeplab_edgetpu`).
"""

from typing import Dict, Optional, Sequence

import torch
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d
from timm.models.efficientnet import _gen_mobilenet_edgetpu
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from radkd_d2.errors import ConfigError

from .info import BackboneInfo, cfg_get, register_backbone_info, width_suffix

__all__ = ["EDGETPU_FEATURES", "MobileNetEdgeTPU", "build_mobilenet_edgetpu_backbone"]

# feature name -> index of the timm block stage whose output it is ("head": after conv_head)
_STAGE_INDEX = {"res2": 1, "res3": 2, "res4": 4, "res5": 6}
EDGETPU_FEATURES = (*_STAGE_INDEX, "head")
_WIDTHS = (0.75, 1.0)
_PAD_TYPES = ("", "same")


class MobileNetEdgeTPU(Backbone):
    """MobileNet-EdgeTPU v1 with output stride 8, 16 or 32 (see the module docstring).

    ``forward(x)`` takes B x 3 x H x W and returns ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for
    each name in ``out_features``, with (C, s) given by :meth:`output_shape`.
    """

    def __init__(
        self,
        *,
        width_mult: float = 0.75,
        output_stride: int = 16,
        norm: str = "BN",
        out_features: Sequence[str] = ("head",),
        in_channels: int = 3,
        pad_type: str = "same",
    ):
        """
        Args:
            width_mult: channel multiplier, 0.75 or 1.0.
            output_stride: stride of res5 and head: 8, 16 or 32.
            norm: "BN", "SyncBN" or "FrozenBN" (statistics and affine parameters fixed).
            out_features: names among res2, res3, res4, res5, head returned by ``forward``.
            in_channels: channels of the input image.
            pad_type: "same" (TensorFlow's, as the reference weights) or "" (PyTorch's).
        """
        super().__init__()
        if float(width_mult) not in _WIDTHS:
            raise ValueError(f"MobileNetEdgeTPU width_mult must be one of {_WIDTHS}, got {width_mult}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetEdgeTPU output_stride must be 8, 16 or 32, got {output_stride}")
        unknown = [n for n in out_features if n not in EDGETPU_FEATURES]
        if unknown or not out_features:
            raise ValueError(
                f"MobileNetEdgeTPU out_features must be among {list(EDGETPU_FEATURES)}, got {list(out_features)}"
            )
        if pad_type not in _PAD_TYPES:
            raise ValueError(f"MobileNetEdgeTPU pad_type must be one of {_PAD_TYPES}, got {pad_type!r}")
        body = _gen_mobilenet_edgetpu(
            "mobilenet_edgetpu_100",
            channel_multiplier=float(width_mult),
            pretrained=False,
            num_classes=0,
            global_pool="",
            in_chans=in_channels,
            output_stride=output_stride,
            pad_type=pad_type,
        )
        first = body.blocks[0][0]
        first.bn1.act = nn.Identity()  # the reference network's first block is linear
        if body.blocks[4][0].has_skip:  # timm's own definition has no skip here; keep it so
            raise RuntimeError("timm's mobilenet_edgetpu changed: blocks.4.0 has a residual connection")
        self.names = [n for n in EDGETPU_FEATURES if n in set(out_features)]  # network order
        last = max(_STAGE_INDEX[n] if n != "head" else len(body.blocks) for n in self.names)
        del body.classifier, body.global_pool
        body.blocks = body.blocks[: last + 1] if "head" not in self.names else body.blocks
        if "head" not in self.names:
            del body.conv_head, body.bn2
        if norm == "SyncBN":
            body = convert_sync_batchnorm(body)
        elif norm == "FrozenBN":
            body = freeze_batch_norm_2d(body)
        elif norm != "BN":
            raise ValueError(f"MobileNetEdgeTPU norm must be 'BN', 'SyncBN' or 'FrozenBN', got {norm!r}")
        self.body = body
        channels, strides, stride = {}, {}, 2
        for index, stage in enumerate(body.blocks):
            for block in stage:
                stride = min(stride * _block_stride(block), output_stride)
            channels[index] = _block_channels(stage[-1])
            for name, i in _STAGE_INDEX.items():
                if i == index:
                    strides[name] = stride
        self._out_features = list(self.names)
        self._out_feature_channels = {n: channels[_STAGE_INDEX[n]] for n in self.names if n != "head"}
        self._out_feature_strides = {n: strides[n] for n in self.names if n != "head"}
        if "head" in self.names:
            self._out_feature_channels["head"] = body.conv_head.out_channels
            self._out_feature_strides["head"] = output_stride
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: B x C_in x H x W images.

        Returns:
            ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for each name in ``out_features``.
        """
        wanted = {_STAGE_INDEX[n]: n for n in self.names if n != "head"}
        out = {}
        x = self.body.bn1(self.body.conv_stem(x))
        for index, stage in enumerate(self.body.blocks):
            x = stage(x)
            if index in wanted:
                out[wanted[index]] = x
        if "head" in self.names:
            out["head"] = self.body.bn2(self.body.conv_head(x))
        return out

    @property
    def size_divisibility(self) -> int:
        return self.output_stride


def _block_stride(block: nn.Module) -> int:
    """The stride of a timm block (its strided conv; 1 when dilated instead)."""
    return max(
        (m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d)), default=1
    )


def _block_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


register_backbone_info(
    "build_mobilenet_edgetpu_backbone",
    BackboneInfo(
        label=lambda cfg: "EdgeTPU" + width_suffix(cfg_get(cfg, "MODEL.EDGETPU.WIDTH_MULT")),
        reduced_opts=None,
    ),
)


@BACKBONE_REGISTRY.register()
def build_mobilenet_edgetpu_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> MobileNetEdgeTPU:
    """Build a :class:`MobileNetEdgeTPU` from ``cfg.MODEL.EDGETPU``."""
    e = cfg.MODEL.EDGETPU
    if float(e.WIDTH_MULT) not in _WIDTHS:
        raise ConfigError(f"MODEL.EDGETPU.WIDTH_MULT = {e.WIDTH_MULT} is not allowed; choose one of {list(_WIDTHS)}")
    return MobileNetEdgeTPU(
        width_mult=e.WIDTH_MULT,
        output_stride=e.OUTPUT_STRIDE,
        norm=e.NORM,
        out_features=e.OUT_FEATURES,
        in_channels=input_shape.channels if input_shape is not None else 3,
        pad_type=e.PAD_TYPE,
    )
