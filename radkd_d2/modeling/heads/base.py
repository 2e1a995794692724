"""Shared part of the segmentation heads (PSP, DeepLabV3, UPerNet).

A single-input subclass (PSP, DeepLabV3) only builds its context module and implements
:meth:`DilatedSegHead.decode`, which maps the input feature to the **decoder** feature
(B x conv_dims x h x w). A multi-scale subclass (UPerNet) overrides
:meth:`DilatedSegHead.decode_features` instead, which receives all backbone outputs, and passes its
finest input as ``in_feature``. The base class adds what is
common: dropout and the 1x1 classifier (the **logits**), the optional auxiliary FCN head, the
cross-entropy losses and the ``forward`` contract of Detectron2's ``SemSegFPNHead``, so the stock
``SemanticSegmentor`` runs these heads unchanged.

Parameter names: ``predictor.{weight,bias}``; with the auxiliary head
``aux_head.conv.weight``, ``aux_head.conv.norm.*``, ``aux_head.predictor.{weight,bias}``.

Reference widths of the auxiliary head's 3x3 conv (``aux_channels``): the SKD/IFVD/CWD code base
(``networks/pspnet.py``, its ``dsn``) uses 512 for ResNet-101 and 128 for ResNet-18, i.e. half its
res4 input; CIRKD (``models/pspnet.py``, ``models/deeplabv3.py``, ``_FCNHead``) and mmsegmentation
a quarter of the input (256 / 64), the default here (``aux_channels`` 0).
"""

from typing import Dict, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm

from radkd_d2.errors import ConfigError

from ..class_map import check_class_map, map_log_probs

__all__ = ["DilatedSegHead", "FCNHead"]


class FCNHead(nn.Module):
    """3x3 conv to ``channels`` (0: ``in_channels // 4``) + norm + ReLU, dropout, 1x1 classifier.

    The auxiliary head of PSPNet/DeepLabV3: B x C x h x w -> B x num_classes x h x w.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: int = 0,
        norm: str = "BN",
        dropout: float = 0.1,
    ):
        super().__init__()
        if channels < 0:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM = {channels} is out of range; it must be >= 0 "
                "(0: a quarter of the auxiliary input's channels)"
            )
        channels = channels or max(1, in_channels // 4)
        self.conv = Conv2d(
            in_channels,
            channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, channels),
            activation=F.relu,
        )
        self.dropout = nn.Dropout2d(dropout)
        self.predictor = Conv2d(channels, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.conv)
        weight_init.c2_msra_fill(self.predictor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.dropout(self.conv(x)))


class DilatedSegHead(nn.Module):
    """Base of heads that decode backbone features into class logits at stride ``common_stride``.

    ``layers(features)`` returns the named outputs used by distillation, ``losses(outputs,
    targets)`` the weighted cross-entropy terms, and ``forward`` follows ``SemSegFPNHead``.
    Subclasses set up their modules in ``__init__`` (after calling this one) and implement
    :meth:`decode` (or :meth:`decode_features`).
    """

    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        norm: str = "BN",
        dropout: float = 0.1,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        aux_in_feature: Optional[str] = None,
        aux_loss_weight: float = 0.0,
        aux_channels: int = 0,
        align_corners: bool = False,
        class_map: Sequence[Sequence[int]] = (),
        class_map_mode: str = "init",
        source_classes: int = 0,
    ):
        """
        Args:
            input_shape: shapes of the backbone outputs; must contain ``in_feature`` (and
                ``aux_in_feature`` when ``aux_loss_weight > 0``).
            in_feature: name of the feature the head decodes (e.g. "res5"); for a multi-scale
                head, its finest input (the one at the stride of the decoder feature).
            num_classes: number of classes K.
            conv_dims: channels of the decoder feature.
            common_stride: stride of ``in_feature``; logits are upsampled by it.
            norm: normalization of every conv but the classifiers.
            dropout: Dropout2d probability before the classifiers.
            loss_weight: weight of ``loss_sem_seg``.
            ignore_value: target value ignored by the losses.
            aux_in_feature: input of the auxiliary FCN head.
            aux_loss_weight: weight of ``loss_sem_seg_aux``; 0 builds no auxiliary head.
            aux_channels: width of the auxiliary head's 3x3 conv; 0: its input's channels // 4.
            align_corners: ``align_corners`` of the logits' bilinear upsampling (losses and
                inference); True as the SKD/IFVD/CWD and CIRKD code bases, False as Detectron2.
            class_map, class_map_mode, source_classes: a source label set's classes per target
                class (:mod:`radkd_d2.modeling.class_map`); in "zero_shot" mode the classifier
                has ``source_classes`` outputs and "logits" are the mapped log-probabilities
                (K = ``num_classes`` channels). Empty: no map.
        """
        super().__init__()
        if in_feature not in input_shape:
            raise ValueError(
                f"Head input {in_feature!r} not among backbone outputs {list(input_shape)}"
            )
        if input_shape[in_feature].stride != common_stride:
            raise ValueError(
                f"common_stride={common_stride} but {in_feature!r} has stride "
                f"{input_shape[in_feature].stride}; set MODEL.SEM_SEG_HEAD.COMMON_STRIDE to match"
            )
        self.in_feature = in_feature
        self.in_channels = input_shape[in_feature].channels
        self.num_classes = num_classes
        self.decoder_channels = conv_dims
        self.common_stride = common_stride
        self.norm = norm
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.align_corners = align_corners

        self.dropout = nn.Dropout2d(dropout)
        # parameter-free named points, so that any position path can read the decoder feature
        # and the logits (the "decoder" and "logits" aliases): sem_seg_head.decoder / .logits
        self.decoder = nn.Identity()
        self.logits = nn.Identity()
        self.class_map = (
            check_class_map(class_map, source_classes, num_classes, class_map_mode) if class_map else []
        )
        self.zero_shot = bool(self.class_map) and class_map_mode == "zero_shot"
        self.predictor = Conv2d(conv_dims, source_classes if self.zero_shot else num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.predictor)

        self.aux_in_feature = None
        self.aux_loss_weight = aux_loss_weight
        self.aux_head = None
        if aux_loss_weight > 0:
            if aux_in_feature not in input_shape:
                raise ValueError(
                    f"Auxiliary head input {aux_in_feature!r} not among backbone outputs "
                    f"{list(input_shape)}"
                )
            self.aux_in_feature = aux_in_feature
            self.aux_stride = input_shape[aux_in_feature].stride
            self.aux_head = FCNHead(
                input_shape[aux_in_feature].channels,
                num_classes,
                channels=aux_channels,
                norm=norm,
                dropout=dropout,
            )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": input_shape,
            "in_feature": head.IN_FEATURES[-1],
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            "norm": head.NORM,
            "dropout": head.DROPOUT,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
            "aux_in_feature": head.AUX_IN_FEATURE,
            "aux_loss_weight": head.AUX_LOSS_WEIGHT,
            "aux_channels": head.AUX_CONVS_DIM,
            "align_corners": head.ALIGN_CORNERS,
            "class_map": head.CLASS_MAP,
            "class_map_mode": head.CLASS_MAP_MODE,
            "source_classes": head.CLASS_MAP_SOURCE_CLASSES,
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Shapes of the tensors :meth:`layers` returns at the "decoder" and "logits" positions."""
        return {
            "decoder": ShapeSpec(channels=self.decoder_channels, stride=self.common_stride),
            "logits": ShapeSpec(channels=self.num_classes, stride=self.common_stride),
        }

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Map the input feature B x C_in x h x w to the decoder feature B x conv_dims x h x w."""
        raise NotImplementedError

    def decode_features(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Map the backbone outputs to the decoder feature (B x conv_dims x h x w, at stride
        ``common_stride``); single-input heads decode ``features[in_feature]``."""
        return self.decode(features[self.in_feature])

    def layers(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        Args:
            features: backbone outputs by name.

        Returns:
            dict with "decoder" (B x conv_dims x h x w) and "logits" (B x K x h x w) at stride
            ``common_stride``; in training with the auxiliary head also "aux_logits"
            (B x K x h' x w' at the stride of ``aux_in_feature``).
        """
        decoder = self.decoder(self.decode_features(features))
        logits = self.predictor(self.dropout(decoder))
        if self.zero_shot:
            logits = map_log_probs(logits, self.class_map)
        logits = self.logits(logits)
        outputs = {"decoder": decoder, "logits": logits}
        if self.aux_head is not None and self.training:
            outputs["aux_logits"] = self.aux_head(features[self.aux_in_feature])
        return outputs

    def losses(
        self, outputs: Dict[str, torch.Tensor], targets: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the dict returned by :meth:`layers`.
            targets: B x H x W long class indices, H = h * common_stride, W = w * common_stride.

        Returns:
            {"loss_sem_seg"} and, when "aux_logits" is in ``outputs``, {"loss_sem_seg_aux"}.
        """
        losses = {
            "loss_sem_seg": self._cross_entropy(outputs["logits"], targets, self.common_stride)
            * self.loss_weight
        }
        if "aux_logits" in outputs:
            losses["loss_sem_seg_aux"] = (
                self._cross_entropy(outputs["aux_logits"], targets, self.aux_stride)
                * self.aux_loss_weight
            )
        return losses

    def _cross_entropy(
        self, logits: torch.Tensor, targets: torch.Tensor, stride: int
    ) -> torch.Tensor:
        logits = logits.float()  # CE and the upsampling in float32 also under AMP
        logits = self._upsample(logits, stride)
        return F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """
        Returns:
            In training, ``(None, dict of losses)``; in inference, ``(B x K x H x W logits
            upsampled by common_stride, {})``, as Detectron2's ``SemSegFPNHead``.
        """
        outputs = self.layers(features)
        if self.training:
            return None, self.losses(outputs, targets)
        return self._upsample(outputs["logits"], self.common_stride), {}

    def _upsample(self, logits: torch.Tensor, stride: int) -> torch.Tensor:
        """B x K x h x w -> B x K x (h * stride) x (w * stride), bilinear."""
        return F.interpolate(
            logits, scale_factor=stride, mode="bilinear", align_corners=self.align_corners
        )
