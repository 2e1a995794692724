"""Converters of the ResNet family: torchvision ImageNet ResNets and CIRKD's deep-stem ResNetV1b
backbones and full PSPNet / DeepLabV3 checkpoints."""

from typing import List, Optional, Sequence, Tuple


from .rules import _CLASSIFIER, convert, _find_prefix, _ignore, _Plan, PLANS, Rule, Target

# ---------------------------------------------------------------------------------------------
# ResNet family
# ---------------------------------------------------------------------------------------------


def _resnet_block_rules(src: str, dst: str) -> List[Rule]:
    """``layer{i}.{j}.conv{k}/bn{k}/downsample.{0,1}`` (torchvision, CIRKD, mmseg, mmdet) ->
    Detectron2's ``res{i+1}.{j}.conv{k}[.norm]``, ``shortcut[.norm]``."""
    return [
        Rule(src + "layer{i}.{j}.conv{k}", dst + "res{i+1}.{j}.conv{k}"),
        Rule(src + "layer{i}.{j}.bn{k}", dst + "res{i+1}.{j}.conv{k}.norm"),
        Rule(src + "layer{i}.{j}.gn{k}", dst + "res{i+1}.{j}.conv{k}.norm"),
        Rule(src + "layer{i}.{j}.downsample.0", dst + "res{i+1}.{j}.shortcut"),
        Rule(src + "layer{i}.{j}.downsample.1", dst + "res{i+1}.{j}.shortcut.norm"),
    ]


def _stock_stem_rules(src: str, dst: str) -> List[Rule]:
    """torchvision/mmdet 7x7 stem ``conv1``/``bn1`` -> Detectron2 ``stem.conv1[.norm]``."""
    return [Rule(src + "conv1", dst + "stem.conv1"), Rule(src + "bn1", dst + "stem.conv1.norm")]


def _resnet_prefix(
    target_keys: Optional[Sequence[str]], prefix: Optional[str], default: str
) -> str:
    if target_keys is None:
        return default if prefix is None else prefix
    return _find_prefix(target_keys, "res2.0.conv1.weight", "ResNet backbone", prefix)


def _is_deep_stem(target_keys: Optional[Sequence[str]], prefix: str) -> bool:
    return target_keys is not None and prefix + "stem.conv2.weight" in target_keys


_DEEP_STEM_NOTE = (
    "torchvision/mmdet ResNets have one 7x7 stem conv, the dilated ResNet a 3-conv deep stem "
    "(stem.conv1..3): the stem is left unmapped (conv1/bn1 unused, stem.* missing). ImageNet "
    "torchvision weights fit Detectron2's stock ResNet (build_resnet_backbone) completely."
)


def _plan_torchvision_resnet(source_keys, target_keys, prefix=None) -> _Plan:
    p = _resnet_prefix(target_keys, prefix, "backbone.bottom_up.")
    rules = _resnet_block_rules("", p)
    notes = []
    if _is_deep_stem(target_keys, p):
        notes.append(_DEEP_STEM_NOTE)
    else:
        rules = _stock_stem_rules("", p) + rules
    if target_keys is None and prefix is None:
        notes.append(f"no target: Detectron2 stock ResNet names under {p!r} assumed")
    notes.append(
        "torchvision puts the stride in the 3x3 conv: set MODEL.RESNETS.STRIDE_IN_1X1 False; "
        "inputs are RGB with ImageNet mean/std (PIXEL_MEAN 123.675 116.28 103.53, PIXEL_STD "
        "58.395 57.12 57.375, INPUT.FORMAT RGB)"
    )
    return _Plan(rules, scope=(p,), ignore=[_ignore(r"^fc\.", _CLASSIFIER)], notes=notes)


def convert_torchvision_resnet(
    state_dict, target: Target = None, *, prefix=None, allow_partial=False
):
    """torchvision ``resnet18/34/50/101`` (``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{k}/bn{k}``,
    ``downsample.{0,1}``, ``fc``) -> Detectron2 ResNet names under the target's backbone prefix.

    - Detectron2's stock ResNet (``build_resnet_backbone``, e.g. RetinaNet's ``bottom_up``):
      complete; ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``, ``layer{i}`` ->
      ``res{i+1}``, ``bn{k}`` -> ``conv{k}.norm``, ``downsample.0/1`` -> ``shortcut[.norm]``.
      Needs ``RESNETS.STRIDE_IN_1X1 False`` (torchvision strides in the 3x3 conv).
    - :class:`DilatedResNet` (deep stem): everything but the stem; ``conv1``/``bn1`` stay unused
      and ``stem.conv{1,2,3}`` missing, so this needs ``allow_partial``. Dilation follows the
      same rule as torchvision's ``replace_stride_with_dilation`` for bottleneck ResNets.
    - ``fc`` (the ImageNet classifier) is ignored. Scope: the backbone.
    """
    return convert(
        "torchvision_resnet", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


def _has_prefix(keys: Sequence[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _cirkd_stem_variant(source_keys: Optional[Sequence[str]], src: str, stem: Optional[str]) -> str:
    if stem is not None:
        return stem
    if source_keys is not None and src + "conv1.0.weight" in source_keys:
        return "sequential"
    return "flat"


def _cirkd_head_rules(head: str, dst: str) -> List[Rule]:
    psp = [
        Rule("head.psp.conv{k+1}.0", dst + "ppm.{k}"),
        Rule("head.psp.conv{k+1}.1", dst + "ppm.{k}.norm"),
    ]
    aspp = [
        Rule("head.aspp.b0.0", dst + "aspp.convs.0"),
        Rule("head.aspp.b0.1", dst + "aspp.convs.0.norm"),
        Rule("head.aspp.b{k}.block.0", dst + "aspp.convs.{k}"),
        Rule("head.aspp.b{k}.block.1", dst + "aspp.convs.{k}.norm"),
        Rule("head.aspp.b4.gap.1", dst + "aspp.pool"),
        Rule("head.aspp.b4.gap.2", dst + "aspp.pool.norm"),
        Rule("head.aspp.project.0", dst + "aspp.project"),
        Rule("head.aspp.project.1", dst + "aspp.project.norm"),
    ]
    common = [
        Rule("head.block.0", dst + "bottleneck"),
        Rule("head.block.1", dst + "bottleneck.norm"),
        Rule("auxlayer.block.0", dst + "aux_head.conv"),
        Rule("auxlayer.block.1", dst + "aux_head.conv.norm"),
        Rule("auxlayer.block.4", dst + "aux_head.predictor"),
    ]
    # CIRKD's PSPNet names its classifier head.classifier (older code: head.block.4, as DeepLabV3);
    # the first rule is the one to_source_naming writes.
    classifier = [
        Rule("head.classifier", dst + "predictor"),
        Rule("head.block.4", dst + "predictor"),
    ]
    if head == "deeplab":
        classifier.reverse()
    return psp + aspp + common + classifier


def _plan_cirkd_resnet(
    source_keys, target_keys, prefix=None, *, stem=None, full=None, head=None
) -> _Plan:
    if full is None:
        full = source_keys is not None and _has_prefix(source_keys, "pretrained.")
    src = "pretrained." if full else ""
    p = _resnet_prefix(target_keys, prefix, "backbone.")
    variant = _cirkd_stem_variant(source_keys, src, stem)
    if variant == "sequential":
        stem_rules = [
            Rule(src + "conv1.0", p + "stem.conv1"),
            Rule(src + "conv1.1", p + "stem.conv1.norm"),
            Rule(src + "conv1.3", p + "stem.conv2"),
            Rule(src + "conv1.4", p + "stem.conv2.norm"),
            Rule(src + "conv1.6", p + "stem.conv3"),
            Rule(src + "bn1", p + "stem.conv3.norm"),
        ]
    elif variant == "flat":
        stem_rules = [
            Rule(src + "conv{k}", p + "stem.conv{k}"),
            Rule(src + "bn{k}", p + "stem.conv{k}.norm"),
        ]
    else:
        raise ValueError(f"cirkd_resnet stem must be 'flat' or 'sequential', got {stem!r}")
    rules = stem_rules + _resnet_block_rules(src, p)
    notes = [
        f"CIRKD stem naming: {variant} ("
        + ("conv1.{0,1,3,4,6} + bn1" if variant == "sequential" else "conv1-3 + bn1-3")
        + "); CIRKD's released ResNetV1s stems are 64/64/128 channels wide, as the dilated "
        "ResNet's default MODEL.DRN.STEM_OUT_CHANNELS 128 at WIDTH_MULT 1"
    ]
    scope: Tuple[str, ...] = (p,)
    if full:
        if head is None and target_keys is not None:
            head = "deeplab" if any(".aspp." in k for k in target_keys) else "psp"
        if head is None and source_keys is not None:
            head = "deeplab" if any(k.startswith("head.aspp.") for k in source_keys) else "psp"
        rules += _cirkd_head_rules(head or "psp", "sem_seg_head.")
        scope = ("",)
        notes.append(
            "CIRKD's PSP upsamples the pooled maps with align_corners=True (set "
            "MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS True); head widths: CONVS_DIM 128 (R18) / 256 (R101) for PSP, 512 for "
            "DeepLabV3; its aux head is AUX_IN_FEATURE res4"
        )
    return _Plan(rules, scope=scope, ignore=[_ignore(r"^fc\.", _CLASSIFIER)], notes=notes)


def convert_cirkd_resnet(
    state_dict,
    target: Target = None,
    *,
    prefix=None,
    allow_partial=False,
    stem=None,
    full=None,
    head=None,
):
    """CIRKD deep-stem ResNetV1b (``resnet{18,50,101}_v1s``) backbones and full CIRKD PSPNet /
    DeepLabV3 checkpoints -> :class:`DilatedResNet` (+ ``PSPHead`` / ``DeepLabV3Head``).

    Backbone: stem ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3`` ("flat", CIRKD's
    ``resnetv1b.py``) or ``conv1.{0,1,3,4,6}`` + ``bn1`` ("sequential", the older layout) ->
    ``stem.conv{1,2,3}[.norm]``; ``layer{i}`` -> ``res{i+1}`` as for torchvision. A backbone-only
    file (ImageNet init) has scope = the backbone and its ``fc`` is ignored.

    Full models (keys under ``pretrained.``) also map the heads, scope = the whole model:

    - PSPNet: ``head.psp.conv{k}.{0,1}`` -> ``sem_seg_head.ppm.{k-1}[.norm]``, ``head.block.{0,1}``
      -> ``bottleneck[.norm]``, ``head.classifier`` (or ``head.block.4``) -> ``predictor``;
    - DeepLabV3: ``head.aspp.b0.{0,1}`` / ``b{1-3}.block.{0,1}`` -> ``aspp.convs.{k}``,
      ``b4.gap.{1,2}`` -> ``aspp.pool``, ``project.{0,1}`` -> ``aspp.project``, ``head.block.{0,1}``
      -> ``bottleneck``, ``head.block.4`` -> ``predictor``;
    - ``auxlayer.block.{0,1,4}`` -> ``aux_head.conv[.norm]``, ``aux_head.predictor``.

    Options: ``stem`` ("flat"/"sequential", detected), ``full`` (detected from ``pretrained.``),
    ``head`` ("psp"/"deeplab", detected from the target).
    """
    return convert(
        "cirkd_resnet",
        state_dict,
        target,
        prefix=prefix,
        allow_partial=allow_partial,
        stem=stem,
        full=full,
        head=head,
    )


PLANS["torchvision_resnet"] = _plan_torchvision_resnet
PLANS["cirkd_resnet"] = _plan_cirkd_resnet
