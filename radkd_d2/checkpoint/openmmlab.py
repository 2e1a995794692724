"""Converters of OpenMMLab checkpoints: mmsegmentation PSPNet / DeepLabV3 (ResNetV1c + FCN
auxiliary head) and mmdetection RetinaNet (anchors reordered to Detectron2's order)."""

import re
from typing import List, Optional, Sequence, Tuple

import torch

from .report import WeightConversionError
from .resnet import (
    _has_prefix,
    _is_deep_stem,
    _resnet_block_rules,
    _resnet_prefix,
    _stock_stem_rules,
)
from .rules import (
    _CLASSIFIER,
    convert,
    _find_prefix,
    _ignore,
    _Plan,
    PLANS,
    Rule,
    Target,
    Transform,
)


def _mmseg_backbone_rules(src: str, p: str, deep_stem_target: Optional[bool]) -> List[Rule]:
    """ResNetV1c deep stem ``stem.{0,1,3,4,6,7}`` (and the 7x7 ``conv1``/``bn1`` of mmseg's plain
    ResNet unless the target has a deep stem) + the ``layer*`` blocks."""
    deep = [
        Rule(src + "stem.0", p + "stem.conv1"),
        Rule(src + "stem.1", p + "stem.conv1.norm"),
        Rule(src + "stem.3", p + "stem.conv2"),
        Rule(src + "stem.4", p + "stem.conv2.norm"),
        Rule(src + "stem.6", p + "stem.conv3"),
        Rule(src + "stem.7", p + "stem.conv3.norm"),
    ]
    if deep_stem_target:
        stem = deep
    elif deep_stem_target is None:  # unknown target: read either stem
        stem = deep + _stock_stem_rules(src, p)
    else:  # stock target first, so to_source_naming writes conv1/bn1
        stem = _stock_stem_rules(src, p) + deep
    return stem + _resnet_block_rules(src, p)


_MMSEG_AUX = [
    ("auxiliary_head.convs.0.conv", "aux_head.conv"),
    ("auxiliary_head.convs.0.bn", "aux_head.conv.norm"),
    ("auxiliary_head.conv_seg", "aux_head.predictor"),
]


def _plan_mmseg(source_keys, target_keys, prefix, head: str) -> _Plan:
    full = source_keys is None or _has_prefix(source_keys, "backbone.")
    src = "backbone." if full else ""
    p = _resnet_prefix(target_keys, prefix, "backbone.")
    deep = None if target_keys is None else _is_deep_stem(target_keys, p)
    rules = _mmseg_backbone_rules(src, p, deep)
    notes = [
        "mmseg ResNetV1c BasicBlocks (R18/34) do not dilate their second 3x3 conv, the dilated "
        "ResNet (CIRKD rule) does: R18/34 weights load but compute a slightly different function "
        "at output stride 8/16; bottleneck ResNets (R50/101) match exactly",
        "mmseg models take RGB inputs with ImageNet mean/std (Base-SemSeg.yaml's defaults)",
    ]
    scope: Tuple[str, ...] = (p,)
    if full:
        h = "sem_seg_head."
        if head == "psp":
            rules += [
                Rule("decode_head.psp_modules.{i}.1.conv", h + "ppm.{i}"),
                Rule("decode_head.psp_modules.{i}.1.bn", h + "ppm.{i}.norm"),
                Rule("decode_head.bottleneck.conv", h + "bottleneck"),
                Rule("decode_head.bottleneck.bn", h + "bottleneck.norm"),
            ]
            notes.append("mmseg's PPM upsamples with align_corners=False (PSPHead's default)")
        else:
            rules += [
                Rule("decode_head.image_pool.1.conv", h + "aspp.pool"),
                Rule("decode_head.image_pool.1.bn", h + "aspp.pool.norm"),
                Rule("decode_head.aspp_modules.{i}.conv", h + "aspp.convs.{i}"),
                Rule("decode_head.aspp_modules.{i}.bn", h + "aspp.convs.{i}.norm"),
            ]
            notes.append(
                "mmseg's ASPPHead fuses [pool, aspp_modules] with ONE 3x3 conv (decode_head."
                "bottleneck, 5C->C); DeepLabV3Head (torchvision/CIRKD layout) uses a 1x1 "
                "aspp.project (5C->C) then a 3x3 bottleneck (C->C): decode_head.bottleneck has no "
                "counterpart, aspp.project and bottleneck stay missing (allow_partial only)"
            )
        rules += [Rule("decode_head.conv_seg", h + "predictor")]
        rules += [Rule(s, h + d) for s, d in _MMSEG_AUX]
        scope = ("",)
    ignore = [_ignore(r"^fc\.", _CLASSIFIER)]
    return _Plan(rules, scope=scope, ignore=ignore, notes=notes)


def convert_mmseg_pspnet(state_dict, target: Target = None, *, prefix=None, allow_partial=False):
    """mmsegmentation PSPNet (``ResNetV1c`` + ``PSPHead`` + ``FCNHead`` aux) -> DilatedResNet +
    ``PSPHead``. Scope: the whole model (the backbone for a backbone-only ``ResNetV1c`` file).

    - ``backbone.stem.{0,1,3,4,6,7}`` -> ``backbone.stem.conv{1,2,3}[.norm]``; ``backbone.layer*``
      as for torchvision;
    - ``decode_head.psp_modules.{i}.1.{conv,bn}`` -> ``sem_seg_head.ppm.{i}[.norm]``,
      ``decode_head.bottleneck.{conv,bn}`` -> ``sem_seg_head.bottleneck[.norm]``,
      ``decode_head.conv_seg`` -> ``sem_seg_head.predictor``;
    - ``auxiliary_head.convs.0.{conv,bn}`` -> ``sem_seg_head.aux_head.conv[.norm]``,
      ``auxiliary_head.conv_seg`` -> ``sem_seg_head.aux_head.predictor`` (set
      ``SEM_SEG_HEAD.AUX_LOSS_WEIGHT`` > 0 so the target has the aux head).
    """
    return convert("mmseg_pspnet", state_dict, target, prefix=prefix, allow_partial=allow_partial)


def convert_mmseg_deeplabv3(state_dict, target: Target = None, *, prefix=None, allow_partial=False):
    """mmsegmentation DeepLabV3 (``ResNetV1c`` + ``ASPPHead`` + ``FCNHead`` aux) -> DilatedResNet +
    ``DeepLabV3Head``, as :func:`convert_mmseg_pspnet` for the backbone and the aux head, and
    ``decode_head.image_pool.1`` -> ``aspp.pool``, ``decode_head.aspp_modules.{i}`` ->
    ``aspp.convs.{i}``, ``decode_head.conv_seg`` -> ``predictor``.

    Always partial: mmseg fuses the ASPP branches with a single 3x3 conv
    (``decode_head.bottleneck``, unused) where ``DeepLabV3Head`` has a 1x1 projection and a 3x3
    conv (``aspp.project``, ``bottleneck``: missing).
    """
    return convert(
        "mmseg_deeplabv3", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


def mmdet_anchor_permutation(num_scales: int, num_ratios: int) -> List[int]:
    """``perm[a]`` = the mmdetection anchor index of Detectron2 anchor ``a`` at one location.

    mmdetection (>= 2.0) orders a location's anchors ratio-major (``a = r * S + s``), Detectron2's
    ``DefaultAnchorGenerator`` size-major (``a = s * R + r``).
    """
    return [r * num_scales + s for s in range(num_scales) for r in range(num_ratios)]


def _permute_anchors(perm: Sequence[int]) -> Transform:
    index = torch.as_tensor(perm)

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = len(perm)
        if x.shape[0] % a:
            raise WeightConversionError(
                f"{x.shape[0]} output channels are not a multiple of {a} anchors per location"
            )
        return x.reshape(a, x.shape[0] // a, *x.shape[1:])[index].reshape(x.shape)

    return fn


def _plan_mmdet_retinanet(source_keys, target_keys, prefix=None, *, anchor_grid=(3, 3)) -> _Plan:
    p = _resnet_prefix(target_keys, prefix, "backbone.bottom_up.")
    if target_keys is not None:
        fpn = _find_prefix(target_keys, "top_block.p6.weight", "FPN with P6/P7", None)
        levels = sorted(
            int(m.group(1))
            for k in target_keys
            if (m := re.fullmatch(re.escape(fpn) + r"fpn_lateral(\d+)\.weight", k))
        )
        head_norm = "head.cls_subnet.1.weight" in target_keys
    else:
        fpn, levels, head_norm = "backbone.", [3, 4, 5], False
    if not levels:
        raise WeightConversionError(f"The target FPN under {fpn!r} has no fpn_lateral* convs")
    first, n_lat = levels[0], len(levels)
    k = 3 if head_norm else 2
    scales, ratios = anchor_grid
    perm = mmdet_anchor_permutation(scales, ratios)
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    rules = _stock_stem_rules("backbone.", p) + _resnet_block_rules("backbone.", p)
    for norm in ("bn", "gn"):
        rules += [
            Rule("neck.lateral_convs.{i}." + norm, fpn + "fpn_lateral{i+%d}.norm" % first),
            Rule("neck.fpn_convs.{i}." + norm, fpn + "fpn_output{i+%d}.norm" % first),
        ]
    rules += [
        Rule("neck.lateral_convs.{i}.conv", fpn + "fpn_lateral{i+%d}" % first),
        Rule("neck.fpn_convs.%d.conv" % n_lat, fpn + "top_block.p6"),
        Rule("neck.fpn_convs.%d.conv" % (n_lat + 1), fpn + "top_block.p7"),
        Rule("neck.fpn_convs.{i}.conv", fpn + "fpn_output{i+%d}" % first),
        Rule("bbox_head.cls_convs.{i}.conv", "head.cls_subnet.{i*%d}" % k),
        Rule("bbox_head.reg_convs.{i}.conv", "head.bbox_subnet.{i*%d}" % k),
        Rule(
            "bbox_head.retina_cls",
            "head.cls_score",
            _permute_anchors(perm),
            _permute_anchors(inverse),
        ),
        Rule(
            "bbox_head.retina_reg",
            "head.bbox_pred",
            _permute_anchors(perm),
            _permute_anchors(inverse),
        ),
    ]
    if head_norm:
        rules += [
            Rule("bbox_head.cls_convs.{i}.gn", "head.cls_subnet.{i*3+1}"),
            Rule("bbox_head.reg_convs.{i}.gn", "head.bbox_subnet.{i*3+1}"),
        ]
    notes = [
        f"anchors reordered from mmdet's ratio-major to Detectron2's size-major order "
        f"({scales} sizes x {ratios} ratios per location)",
        "mmdet's RetinaNet FPN (relu_before_extra_convs=False) computes P7 = conv(P6), "
        "Detectron2's LastLevelP6P7 P7 = conv(relu(P6)): P7 outputs differ after conversion",
        "mmdet (pytorch style) strides in the 3x3 conv: set RESNETS.STRIDE_IN_1X1 False; "
        "X101-32x4d: NUM_GROUPS 32, WIDTH_PER_GROUP 4; inputs RGB with ImageNet mean/std",
    ]
    return _Plan(rules, scope=("",), notes=notes)


def convert_mmdet_retinanet(
    state_dict, target: Target = None, *, prefix=None, allow_partial=False, anchor_grid=(3, 3)
):
    """mmdetection (>= 2.0) RetinaNet (ResNet/ResNeXt + FPN + RetinaHead) -> Detectron2 RetinaNet.

    - ``backbone.conv1/bn1/layer*`` -> ``backbone.bottom_up.stem.conv1[.norm]``, ``res*`` (BN ->
      ``.norm``; the BN's ``num_batches_tracked`` is ignored for a FrozenBN target);
    - ``neck.lateral_convs.{i}.conv`` -> ``backbone.fpn_lateral{i+3}``, ``neck.fpn_convs.{i}.conv``
      -> ``backbone.fpn_output{i+3}`` (i < 3), ``neck.fpn_convs.3/4.conv`` ->
      ``backbone.top_block.p6/p7`` (levels read from the target);
    - ``bbox_head.cls_convs.{i}.conv`` / ``reg_convs`` -> ``head.cls_subnet.{2i}`` /
      ``bbox_subnet.{2i}`` (``{3i}`` with a GN head), ``bbox_head.retina_cls`` / ``retina_reg`` ->
      ``head.cls_score`` / ``bbox_pred`` with the output channels reordered per anchor
      (:func:`mmdet_anchor_permutation`; ``anchor_grid`` = (sizes, ratios) per location).
    """
    return convert(
        "mmdet_retinanet",
        state_dict,
        target,
        prefix=prefix,
        allow_partial=allow_partial,
        anchor_grid=tuple(anchor_grid),
    )


PLANS["mmseg_pspnet"] = lambda s, t, prefix=None: _plan_mmseg(s, t, prefix, "psp")
PLANS["mmseg_deeplabv3"] = lambda s, t, prefix=None: _plan_mmseg(s, t, prefix, "deeplab")
PLANS["mmdet_retinanet"] = _plan_mmdet_retinanet
