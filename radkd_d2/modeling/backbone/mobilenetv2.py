"""MobileNetV2 backbone: timm's ``mobilenetv2_*`` feature extractor as a Detectron2 Backbone.

The architecture is timm's (:func:`timm.create_model` with ``features_only=True``); this module
only names its stages, declares their ShapeSpecs and converts the normalization.

- Stages (width 1.0; other widths scale and round the channels as timm does)::

      res2  blocks.1   24 ch   stride 4
      res3  blocks.2   32 ch   stride 8
      res4  blocks.4   96 ch   stride 16 (8 when dilated)
      res5  blocks.6  320 ch   stride 32 (8 when dilated)

  ``res5`` is the last inverted-residual stage (320 channels), **not** the final 1x1 conv to 1280
  channels of the classifier, which is not built: CIRKD's and SKD's PSPNet/DeepLabV3-MV2 students
  put the head (and the distillation) on the 320-channel map and the auxiliary head on the
  96-channel one.
- ``output_stride`` 8 (the paper's MV2 student): timm replaces the strides of blocks.3 and
  blocks.5 by dilation; the first block of a dilated stage keeps the previous dilation, later
  blocks use 2 (blocks.3, blocks.4, first block of blocks.5) and 4 (rest of blocks.5, blocks.6).

Parameter names are timm's under ``body.``, so an ImageNet timm checkpoint (``conv_stem.*``,
``bn1.*``, ``blocks.*``) maps by adding the prefix ``backbone.body.``; its ``conv_head``, ``bn2``
and ``classifier`` entries have no counterpart here.
"""

from typing import Dict, Optional, Sequence

import timm
import torch
from timm.layers import convert_sync_batchnorm, freeze_batch_norm_2d

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from radkd_d2.errors import ConfigError

from .info import BackboneInfo, cfg_get, register_backbone_info, width_suffix

__all__ = [
    "MobileNetV2",
    "build_mobilenetv2_backbone",
    "build_mobilenetv2_fpn_backbone",
    "build_retinanet_mobilenetv2_fpn_backbone",
]

# width multiplier -> timm model name (timm registers these widths only)
_TIMM_VARIANTS = {
    0.35: "mobilenetv2_035",
    0.5: "mobilenetv2_050",
    0.75: "mobilenetv2_075",
    1.0: "mobilenetv2_100",
    1.4: "mobilenetv2_140",
}
# padding of the convolutions: PyTorch's symmetric padding, or TensorFlow's "SAME" (timm)
_PAD_TYPES = ("", "same")
# stage name -> index into timm's feature_info (0 is blocks.0 at stride 2, not exposed)
_STAGE_INDEX = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}


class MobileNetV2(Backbone):
    """MobileNetV2 with output stride 8, 16 or 32 (see the module docstring).

    ``forward(x)`` takes B x 3 x H x W and returns ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for
    each name in ``out_features``, with (C, s) given by :meth:`output_shape`.
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        output_stride: int = 8,
        norm: str = "BN",
        out_features: Sequence[str] = ("res5",),
        in_channels: int = 3,
        pad_type: str = "",
    ):
        """
        Args:
            width_mult: one of 0.35, 0.5, 0.75, 1.0, 1.4 (the widths timm registers).
            output_stride: stride of res5: 8, 16 or 32.
            norm: "BN" (trainable BatchNorm), "SyncBN" or "FrozenBN" (statistics and affine
                parameters fixed); ReLU6 stays fused in timm's norm layers.
            out_features: names among "res2".."res5" returned by ``forward``.
            in_channels: channels of the input image.
            pad_type: "" (PyTorch's symmetric padding) or "same" (TensorFlow's "SAME": a strided
                conv pads 0 before and 1 after on even sizes, as the TensorFlow-trained weights
                in ``../shared/data/pretrained`` expect); timm's ``pad_type``. Parameter names
                are the same for both.
        """
        super().__init__()
        variant = _TIMM_VARIANTS.get(float(width_mult))
        if variant is None:
            raise ValueError(
                f"MobileNetV2 width_mult must be one of {sorted(_TIMM_VARIANTS)}, got {width_mult}"
            )
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetV2 output_stride must be 8, 16 or 32, got {output_stride}")
        unknown = [name for name in out_features if name not in _STAGE_INDEX]
        if unknown or not out_features:
            raise ValueError(
                f"MobileNetV2 out_features must be among {list(_STAGE_INDEX)}, got {out_features}"
            )
        if pad_type not in _PAD_TYPES:
            raise ValueError(f"MobileNetV2 pad_type must be one of {_PAD_TYPES}, got {pad_type!r}")
        # timm returns the features in network order; keep the names in that order too.
        names = sorted(set(out_features), key=_STAGE_INDEX.__getitem__)
        self.body = timm.create_model(
            variant,
            pretrained=False,
            features_only=True,
            output_stride=output_stride,
            out_indices=[_STAGE_INDEX[name] for name in names],
            in_chans=in_channels,
            pad_type=pad_type,
        )
        if norm == "SyncBN":
            self.body = convert_sync_batchnorm(self.body)
        elif norm == "FrozenBN":
            self.body = freeze_batch_norm_2d(self.body)
        elif norm != "BN":
            raise ValueError(f"MobileNetV2 norm must be 'BN', 'SyncBN' or 'FrozenBN', got {norm!r}")

        info = self.body.feature_info
        self._out_features = names
        self._out_feature_channels = dict(zip(names, info.channels()))
        self._out_feature_strides = dict(zip(names, info.reduction()))
        self.width_mult = float(width_mult)
        self.output_stride = output_stride
        self.pad_type = pad_type

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: B x C_in x H x W images.

        Returns:
            ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for each name in ``out_features``.
        """
        return dict(zip(self._out_features, self.body(x)))

    @property
    def size_divisibility(self) -> int:
        # As for DilatedResNet: padded inputs give maps of exactly H/s x W/s.
        return max(self._out_feature_strides.values())


# the plain backbone and its two FPNs (below) name and shrink themselves alike
_MV2_INFO = BackboneInfo(
    label=lambda cfg: "MV2" + width_suffix(cfg_get(cfg, "MODEL.MOBILENETV2.WIDTH_MULT")),
    reduced_opts=lambda cfg: ["MODEL.MOBILENETV2.WIDTH_MULT", "0.35"],
)
register_backbone_info("build_mobilenetv2_backbone", _MV2_INFO)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> MobileNetV2:
    """Build a :class:`MobileNetV2` from ``cfg.MODEL.MOBILENETV2``."""
    mcfg = cfg.MODEL.MOBILENETV2
    return MobileNetV2(
        width_mult=mcfg.WIDTH_MULT,
        output_stride=mcfg.OUTPUT_STRIDE,
        norm=mcfg.NORM,
        out_features=mcfg.OUT_FEATURES,
        in_channels=input_shape.channels if input_shape is not None else 3,
        pad_type=mcfg.PAD_TYPE,
    )


register_backbone_info("build_retinanet_mobilenetv2_fpn_backbone", _MV2_INFO)
register_backbone_info("build_mobilenetv2_fpn_backbone", _MV2_INFO)


def _mv2_fpn(cfg, input_shape: ShapeSpec, top_block) -> FPN:
    """Detectron2's :class:`FPN` over a :class:`MobileNetV2` of output stride 32 (a dilated one
    would give its stages equal strides); ``top_block(res5 channels, FPN channels)`` builds the
    levels above res5."""
    if cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE != 32:
        raise ConfigError(
            "MODEL.MOBILENETV2.OUTPUT_STRIDE = "
            f"{cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE} is not allowed with an FPN; choose one of [32] "
            "(a dilated backbone gives its stages equal strides)"
        )
    bottom_up = build_mobilenetv2_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """RetinaNet's FPN (P3-P7, Detectron2's :class:`LastLevelP6P7`, P6 from res5 as in
    Detectron2's ResNet version) over a MobileNetV2: a mobile detector student.
    ``MODEL.FPN.IN_FEATURES`` picks the stages (res3-res5)."""
    return _mv2_fpn(cfg, input_shape, LastLevelP6P7)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """The R-CNN FPN (P2-P6, P6 by max pooling as Detectron2's ``build_resnet_fpn_backbone``)
    over a MobileNetV2: a mobile Faster/Mask R-CNN student. ``MODEL.FPN.IN_FEATURES`` picks the
    stages (res2-res5)."""
    return _mv2_fpn(cfg, input_shape, lambda _c, _o: LastLevelMaxPool())
