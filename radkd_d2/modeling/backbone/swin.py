"""Swin Transformer backbone: timm's ``SwinTransformer`` as a Detectron2 Backbone.

The transformer is :class:`timm.models.swin_transformer.SwinTransformer` (its classifier head and
final norm removed); its stage outputs come from timm's ``forward_intermediates``. This module
adds what the Swin segmentation recipe (UPerNet, Swin-Transformer-Semantic-Segmentation) puts on
top of the classification network:

- one LayerNorm per returned stage (``norms.res{k}``), applied to the stage output;
- arbitrary input sizes: timm is built with ``strict_img_size=False`` (attention masks built for
  the actual size on each forward) and ``always_partition=True`` (7x7 windows and shifts in every
  stage, with zero padding of maps not divisible by the window, as the segmentation code does, so
  small maps are not special-cased); inputs whose sides are not multiples of 32 are zero-padded
  and the outputs cropped to ``ceil(H/s) x ceil(W/s)``. ``size_divisibility`` is 32, so
  ``SemanticSegmentor`` pads its batches and the crop is a no-op there.

Stages (C = ``embed_dim``; Swin-T 96, Swin-B 128)::

    res2  layers.0  C    stride 4
    res3  layers.1  2C   stride 8
    res4  layers.2  4C   stride 16
    res5  layers.3  8C   stride 32

Parameter names are timm's under ``body.``, so an ImageNet timm checkpoint
(``swin_tiny_patch4_window7_224``, ``swin_base_patch4_window7_224``: ``patch_embed.*``,
``layers.*``) maps by adding ``backbone.body.``; its ``norm`` and ``head`` entries have no
counterpart here and ``norms.*`` start from the default LayerNorm init.
"""

from typing import Dict, Optional, Sequence

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .info import BackboneInfo, cfg_get, register_backbone_info

__all__ = ["SwinBackbone", "build_swin_backbone"]

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_PATCH_SIZE = 4


class SwinBackbone(Backbone):
    """Swin Transformer returning NCHW stage outputs at strides 4, 8, 16, 32.

    ``forward(x)`` takes B x 3 x H x W (any H, W) and returns
    ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for each name in ``out_features``, with (C, s) given
    by :meth:`output_shape`.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = _STAGE_NAMES,
        in_channels: int = 3,
    ):
        """
        Args:
            embed_dim: channels of the first stage; doubled at each later stage.
            depths: transformer blocks in each of the four stages.
            num_heads: attention heads in each stage.
            window_size: side of the (shifted) attention windows, in tokens.
            mlp_ratio: MLP hidden width / channels.
            drop_path_rate: stochastic depth rate of the last block (linear from 0).
            out_features: names among "res2".."res5" returned by ``forward``.
            in_channels: channels of the input image.
        """
        super().__init__()
        if len(depths) != len(_STAGE_NAMES) or len(num_heads) != len(_STAGE_NAMES):
            raise ValueError(
                f"Swin needs 4 stages: got depths={list(depths)}, num_heads={list(num_heads)}"
            )
        unknown = [name for name in out_features if name not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"Swin out_features must be among {_STAGE_NAMES}, got {out_features}")
        names = [name for name in _STAGE_NAMES if name in out_features]
        self._indices = [_STAGE_NAMES.index(name) for name in names]

        self.body = SwinTransformer(
            patch_size=_PATCH_SIZE,
            in_chans=in_channels,
            num_classes=0,
            global_pool="",
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            always_partition=True,
            strict_img_size=False,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        # Drops the classifier, the final norm and the stages after the last returned one.
        self.body.prune_intermediate_layers(self._indices, prune_norm=True, prune_head=True)

        self._out_features = names
        self._out_feature_channels = {n: embed_dim * 2 ** _STAGE_NAMES.index(n) for n in names}
        self._out_feature_strides = {n: _PATCH_SIZE * 2 ** _STAGE_NAMES.index(n) for n in names}
        self.norms = nn.ModuleDict({n: nn.LayerNorm(self._out_feature_channels[n]) for n in names})
        # Padding to the deepest stride keeps every patch merging on even sides.
        self._divisor = max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: B x C_in x H x W images.

        Returns:
            ``{name: B x C x ceil(H/s) x ceil(W/s)}`` for each name in ``out_features``.
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self._divisor, -width % self._divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        stages = self.body.forward_intermediates(
            x, indices=self._indices, norm=False, output_fmt="NCHW", intermediates_only=True
        )
        outputs = {}
        for name, feature in zip(self._out_features, stages):
            stride = self._out_feature_strides[name]
            # LayerNorm over channels, computed channels-last.
            feature = self.norms[name](feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            outputs[name] = feature[..., : -(-height // stride), : -(-width // stride)]
        return outputs

    @property
    def size_divisibility(self) -> int:
        # 32 with res5: patch embedding (4) and three 2x patch mergings pad nothing then.
        return self._divisor


def _swin_label(cfg) -> str:
    """"SwinT", "SwinS", "SwinB", "SwinL" from the embedding width (and depth: T vs S)."""
    embed, depths = cfg_get(cfg, "MODEL.SWIN.EMBED_DIM"), cfg_get(cfg, "MODEL.SWIN.DEPTHS") or []
    if embed == 96:
        return "SwinS" if len(depths) > 2 and depths[2] == 18 else "SwinT"
    return "Swin" + {128: "B", 192: "L"}.get(embed, "")


def _swin_reduced_opts(cfg) -> list:
    """One block per stage, small windows; embed dim 16 (Swin-T) or 24 (Swin-B): T != B kept."""
    embed = {96: "16", 128: "24"}.get(cfg_get(cfg, "MODEL.SWIN.EMBED_DIM"), "16")
    return ["MODEL.SWIN.DEPTHS", "[1, 1, 1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2, 4, 8]",
            "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.EMBED_DIM", embed]  # fmt: skip


register_backbone_info(
    "build_swin_backbone", BackboneInfo(label=_swin_label, reduced_opts=_swin_reduced_opts)
)


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> SwinBackbone:
    """Build a :class:`SwinBackbone` from ``cfg.MODEL.SWIN``."""
    scfg = cfg.MODEL.SWIN
    return SwinBackbone(
        embed_dim=scfg.EMBED_DIM,
        depths=scfg.DEPTHS,
        num_heads=scfg.NUM_HEADS,
        window_size=scfg.WINDOW_SIZE,
        mlp_ratio=scfg.MLP_RATIO,
        drop_path_rate=scfg.DROP_PATH_RATE,
        out_features=scfg.OUT_FEATURES,
        in_channels=input_shape.channels if input_shape is not None else 3,
    )
