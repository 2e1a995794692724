"""Weight import: convert checkpoints of other code bases into this project's models.

One converter per source, registered by name in :data:`CONVERTERS`::

    state_dict, report = CONVERTERS["mmseg_pspnet"](source_state_dict, model.state_dict())

Every converter renames keys by explicit rules (no suffix-matching heuristics), checks names and
shapes against the target model's state dict, and returns the converted state dict with a
:class:`~radkd_d2.checkpoint.report.ConversionReport`. It raises
:class:`~radkd_d2.checkpoint.report.WeightConversionError` (with every key listed) when a source key
is unused, a target key in scope is missing or a shape differs, unless ``allow_partial=True``: then
only the matching keys are returned and the report still lists the rest. Keys without counterpart
by design (ImageNet classifiers, recomputed buffers) are *ignored* and listed with a reason; target
parameters the source architecture lacks are filled only with a fixed, documented default
(LayerNorm weight 1 / bias 0, ``num_batches_tracked`` 0).

The *scope* of a conversion is the part of the target model the source must fill: the backbone
for ImageNet checkpoints (the rest keeps the model's initialisation, as with Detectron2's
``R-50.pkl``), the whole model for full segmentation / detection checkpoints. Prefixes in the
target (``backbone.``, ``backbone.bottom_up.``) are found from the target's keys.

Sources (see each ``convert_*`` docstring for its key mapping and what it leaves):

- ``torchvision_resnet``: ImageNet ResNet-18/34/50/101 -> Detectron2's stock ResNet (7x7 stem), or
  -> :class:`~radkd_d2.modeling.backbone.DilatedResNet` without its deep stem (allow_partial).
- ``torchvision_mobilenetv2`` / ``timm_mobilenetv2`` -> :class:`MobileNetV2` (timm under ``body.``).
- ``torchvision_swin`` / ``timm_swin`` -> :class:`SwinBackbone` (timm under ``body.``).
- ``cirkd_resnet``: CIRKD deep-stem ResNetV1b backbones and full PSPNet / DeepLabV3 checkpoints.
- ``mmseg_pspnet`` / ``mmseg_deeplabv3``: mmsegmentation ResNetV1c + PSPHead / ASPPHead + FCN aux.
- ``mmdet_retinanet``: mmdetection RetinaNet (ResNet/ResNeXt, FPN, RetinaHead) -> Detectron2
  RetinaNet, anchors reordered.
- ``d2_pkl``: Detectron2 / Caffe2 model-zoo files through Detectron2's own loader.

:func:`to_source_naming` applies a converter's rules backwards (our model -> the source's names);
the tests use it to round-trip the sources whose libraries are not installed here.
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .report import (
    ConversionReport,
    ReportingCheckpointer,
    WeightConversionError,
    format_incompatible_keys,
)

__all__ = [
    "CONVERTERS",
    "Rule",
    "convert_checkpoint",
    "convert_cirkd_resnet",
    "convert_d2_pkl",
    "convert_mmdet_retinanet",
    "convert_mmseg_deeplabv3",
    "convert_mmseg_pspnet",
    "convert_timm_mobilenetv2",
    "convert_timm_swin",
    "convert_torchvision_mobilenetv2",
    "convert_torchvision_resnet",
    "convert_torchvision_swin",
    "load_source_state_dict",
    "mmdet_anchor_permutation",
    "save_d2_checkpoint",
    "to_source_naming",
    "verify_loadable",
]

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
Target = Union[nn.Module, Mapping[str, torch.Tensor], None]

# ---------------------------------------------------------------------------------------------
# Key patterns and rules
# ---------------------------------------------------------------------------------------------

# "{name}", "{name+1}", "{name*2+1}": an integer; "{*}": any dotted sub-path, carried verbatim.
_PLACEHOLDER = re.compile(r"\{(\*|[A-Za-z_]\w*)(?:\*(\d+))?([+-]\d+)?\}")


class _Pattern:
    """A module path with integer placeholders that can be matched and formatted.

    ``"layer{i}.{j}.bn{k}"`` matches ``layer1.0.bn2`` giving ``{i: 1, j: 0, k: 2}``; the same
    variable written ``{i+1}`` or ``{i*3+1}`` on the other side of a :class:`Rule` is an affine
    function of it, so one pattern pair converts in both directions.
    """

    def __init__(self, text: str):
        self.text = text
        self.terms: List[Tuple[str, int, int]] = []
        regex, pos = "", 0
        for m in _PLACEHOLDER.finditer(text):
            regex += re.escape(text[pos : m.start()])
            name = m.group(1)
            regex += "(.+)" if name == "*" else r"(\d+)"
            self.terms.append((name, int(m.group(2) or 1), int(m.group(3) or 0)))
            pos = m.end()
        self.regex = re.compile(regex + re.escape(text[pos:]))

    def match(self, path: str) -> Optional[Dict[str, Union[int, str]]]:
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        values: Dict[str, Union[int, str]] = {}
        for (name, mul, add), text in zip(self.terms, m.groups()):
            if name == "*":
                value: Union[int, str] = text
            else:
                if len(text) > 1 and text[0] == "0":
                    return None
                value, rest = divmod(int(text) - add, mul)
                if rest or value < 0:
                    return None
            if values.setdefault(name, value) != value:
                return None
        return values

    def format(self, values: Mapping[str, Union[int, str]]) -> str:
        def term(m: "re.Match") -> str:
            name = m.group(1)
            if name == "*":
                return str(values["*"])
            return str(int(values[name]) * int(m.group(2) or 1) + int(m.group(3) or 0))

        return _PLACEHOLDER.sub(term, self.text)


Transform = Callable[[torch.Tensor], torch.Tensor]


class Rule:
    """Rename the module path ``src`` to ``dst`` (the parameter name after the last dot is kept).

    Args:
        src, dst: module-path patterns (see :class:`_Pattern`), e.g. ``"layer{i}.{j}.bn{k}"`` and
            ``"res{i+1}.{j}.conv{k}.norm"``.
        fn, inv: optional tensor transform applied when converting src -> dst, and its inverse.
    """

    def __init__(
        self, src: str, dst: str, fn: Optional[Transform] = None, inv: Optional[Transform] = None
    ):
        self.src, self.dst = _Pattern(src), _Pattern(dst)
        self.fn, self.inv = fn, inv

    def forward(self, path: str) -> Optional[str]:
        values = self.src.match(path)
        return None if values is None else self.dst.format(values)

    def backward(self, path: str) -> Optional[str]:
        values = self.dst.match(path)
        return None if values is None else self.src.format(values)

    def __repr__(self) -> str:
        return f"Rule({self.src.text!r} -> {self.dst.text!r})"


@dataclass
class _Plan:
    """Everything a converter decides from the source keys, the target keys and its options."""

    rules: List[Rule]
    scope: Tuple[str, ...]
    ignore: List[Tuple["re.Pattern", str]] = field(default_factory=list)
    defaults: List[Tuple["re.Pattern", Callable[[torch.Size], torch.Tensor], str]] = field(
        default_factory=list
    )
    notes: List[str] = field(default_factory=list)


def _ignore(pattern: str, reason: str) -> Tuple["re.Pattern", str]:
    return re.compile(pattern), reason


_NBT = "num_batches_tracked"


def _split(key: str) -> Tuple[str, str]:
    path, _, leaf = key.rpartition(".")
    return path, leaf


def _map_key(rules: Sequence[Rule], key: str) -> Optional[Tuple[str, Rule]]:
    path, leaf = _split(key)
    for rule in rules:
        dst = rule.forward(path)
        if dst is not None:
            return f"{dst}.{leaf}", rule
    return None


# ---------------------------------------------------------------------------------------------
# The conversion engine
# ---------------------------------------------------------------------------------------------


def _target_state(target: Target) -> Optional[Mapping[str, torch.Tensor]]:
    if target is None:
        return None
    if isinstance(target, nn.Module):
        return target.state_dict()
    return target


def _in_scope(key: str, scope: Sequence[str]) -> bool:
    return any(key.startswith(prefix) for prefix in scope)


def _run(
    source: str,
    state_dict: Mapping[str, torch.Tensor],
    target: Optional[Mapping[str, torch.Tensor]],
    plan: _Plan,
    allow_partial: bool,
) -> Tuple[StateDict, ConversionReport]:
    report = ConversionReport(
        source=source, scope=plan.scope, target_checked=target is not None, notes=list(plan.notes)
    )
    out: StateDict = {}
    origin: Dict[str, str] = {}
    for key, value in state_dict.items():
        reason = next((why for regex, why in plan.ignore if regex.search(key)), None)
        if reason is not None:
            report.ignored[key] = reason
            continue
        found = _map_key(plan.rules, key)
        if found is None:
            report.unused.append((key, None))
            continue
        dst, rule = found
        if target is not None and dst not in target:
            if dst.endswith("." + _NBT) and dst[: -len(_NBT)] + "running_mean" in target:
                report.ignored[key] = f"the target's frozen norm keeps no {_NBT}"
            else:
                report.unused.append((key, dst))
            continue
        if dst in out:
            raise WeightConversionError(
                f"{source}: source keys {origin[dst]!r} and {key!r} both map to {dst!r}", report
            )
        value = torch.as_tensor(value)
        if rule.fn is not None:
            value = rule.fn(value)
        if target is not None:
            ref = target[dst]
            if tuple(value.shape) != tuple(ref.shape):
                report.mismatched.append((key, dst, tuple(value.shape), tuple(ref.shape)))
                continue
            if value.is_floating_point() and ref.is_floating_point() and value.dtype != ref.dtype:
                value = value.to(ref.dtype)
        out[dst] = value
        origin[dst] = key
        report.mapped.append((key, dst))

    if target is not None:
        mismatched_dst = {dst for _, dst, _, _ in report.mismatched}
        for key, ref in target.items():
            if key in out:
                continue
            if not _in_scope(key, plan.scope):
                report.out_of_scope.append(key)
                continue
            if key in mismatched_dst:
                continue  # listed as a mismatch, not twice
            if key.endswith("." + _NBT):
                out[key] = torch.zeros_like(ref)
                report.defaulted[key] = "no BatchNorm step counter in the source: 0"
                continue
            default = next(
                ((fn, why) for regex, fn, why in plan.defaults if regex.search(key)), None
            )
            if default is not None:
                out[key] = default[0](ref.shape).to(ref.dtype)
                report.defaulted[key] = default[1]
                continue
            report.missing.append(key)

    if not report.ok and not allow_partial:
        raise WeightConversionError(
            f"Weight conversion {source!r} is incomplete; fix the source/config, or pass "
            f"allow_partial=True (--allow-partial) to keep only the matching keys.\n"
            f"{report.format()}",
            report,
        )
    if not report.ok:
        logger.warning("Partial weight conversion:\n%s", report.format())
    return out, report


def _find_prefix(keys: Sequence[str], suffix: str, what: str, prefix: Optional[str]) -> str:
    """The unique ``p`` with ``p + suffix`` among ``keys`` (``prefix`` overrides the search)."""
    if prefix is not None:
        return prefix
    found = sorted(
        {
            k[: -len(suffix)]
            for k in keys
            if k.endswith(suffix) and (k == suffix or k[-len(suffix) - 1] == ".")
        }
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightConversionError(
            f"The target model has no {what} (no key ending in {suffix!r}); check --config-file"
        )
    raise WeightConversionError(
        f"The target model has several {what}s (prefixes {found}); pass prefix=... (--prefix)"
    )


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


_CLASSIFIER = "ImageNet classifier (no counterpart in a backbone)"
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
    return _convert(
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
            "CIRKD's PSP upsamples the pooled maps with align_corners=True (PSPHead "
            "pool_align_corners); head widths: CONVS_DIM 128 (R18) / 256 (R101) for PSP, 512 for "
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
    return _convert(
        "cirkd_resnet",
        state_dict,
        target,
        prefix=prefix,
        allow_partial=allow_partial,
        stem=stem,
        full=full,
        head=head,
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
    return _convert("mmseg_pspnet", state_dict, target, prefix=prefix, allow_partial=allow_partial)


def convert_mmseg_deeplabv3(state_dict, target: Target = None, *, prefix=None, allow_partial=False):
    """mmsegmentation DeepLabV3 (``ResNetV1c`` + ``ASPPHead`` + ``FCNHead`` aux) -> DilatedResNet +
    ``DeepLabV3Head``, as :func:`convert_mmseg_pspnet` for the backbone and the aux head, and
    ``decode_head.image_pool.1`` -> ``aspp.pool``, ``decode_head.aspp_modules.{i}`` ->
    ``aspp.convs.{i}``, ``decode_head.conv_seg`` -> ``predictor``.

    Always partial: mmseg fuses the ASPP branches with a single 3x3 conv
    (``decode_head.bottleneck``, unused) where ``DeepLabV3Head`` has a 1x1 projection and a 3x3
    conv (``aspp.project``, ``bottleneck``: missing).
    """
    return _convert(
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
    return _convert(
        "mmdet_retinanet",
        state_dict,
        target,
        prefix=prefix,
        allow_partial=allow_partial,
        anchor_grid=tuple(anchor_grid),
    )


# ---------------------------------------------------------------------------------------------
# timm-based backbones
# ---------------------------------------------------------------------------------------------

# torchvision MobileNetV2 inverted-residual settings (t, c, n, s): blocks per stage.
_MV2_BLOCKS = (1, 2, 3, 4, 3, 3, 1)


def _timm_prefix(target_keys, prefix, suffix: str, what: str) -> str:
    if target_keys is None:
        return prefix if prefix is not None else "backbone.body."
    return _find_prefix(target_keys, suffix, what, prefix)


def _plan_timm_mobilenetv2(source_keys, target_keys, prefix=None) -> _Plan:
    p = _timm_prefix(target_keys, prefix, "conv_stem.weight", "timm MobileNetV2")
    ignore = [
        _ignore(
            r"^(conv_head|bn2)\.",
            "final 1x1 conv to 1280 channels: MobileNetV2 ends at res5 (320 ch)",
        ),
        _ignore(r"^classifier\.", _CLASSIFIER),
    ]
    return _Plan([Rule("{*}", p + "{*}")], scope=(p,), ignore=ignore)


def convert_timm_mobilenetv2(
    state_dict, target: Target = None, *, prefix=None, allow_partial=False
):
    """timm ``mobilenetv2_*`` -> :class:`MobileNetV2`: timm's names under the target's
    ``backbone.body.`` (``conv_stem``, ``bn1``, ``blocks.*``). ``conv_head``/``bn2`` (the
    1280-channel conv) and ``classifier`` are ignored: the backbone ends at the 320-channel stage.
    A target built with fewer ``OUT_FEATURES`` drops the later blocks, which then show up as
    unused."""
    return _convert(
        "timm_mobilenetv2", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


def _plan_torchvision_mobilenetv2(source_keys, target_keys, prefix=None) -> _Plan:
    p = _timm_prefix(target_keys, prefix, "conv_stem.weight", "timm MobileNetV2")
    rules = [
        Rule("features.0.0", p + "conv_stem"),
        Rule("features.0.1", p + "bn1"),
        Rule("features.1.conv.0.0", p + "blocks.0.0.conv_dw"),
        Rule("features.1.conv.0.1", p + "blocks.0.0.bn1"),
        Rule("features.1.conv.1", p + "blocks.0.0.conv_pw"),
        Rule("features.1.conv.2", p + "blocks.0.0.bn2"),
    ]
    index = 2
    for stage, blocks in enumerate(_MV2_BLOCKS[1:], start=1):
        for block in range(blocks):
            src, dst = f"features.{index}.conv.", f"{p}blocks.{stage}.{block}."
            rules += [
                Rule(src + "0.0", dst + "conv_pw"),
                Rule(src + "0.1", dst + "bn1"),
                Rule(src + "1.0", dst + "conv_dw"),
                Rule(src + "1.1", dst + "bn2"),
                Rule(src + "2", dst + "conv_pwl"),
                Rule(src + "3", dst + "bn3"),
            ]
            index += 1
    last = index  # features.18: 1x1 conv to 1280 channels
    ignore = [
        _ignore(
            rf"^features\.{last}\.",
            "final 1x1 conv to 1280 channels: MobileNetV2 ends at res5 (320 ch)",
        ),
        _ignore(r"^classifier\.", _CLASSIFIER),
    ]
    return _Plan(rules, scope=(p,), ignore=ignore)


def convert_torchvision_mobilenetv2(
    state_dict, target: Target = None, *, prefix=None, allow_partial=False
):
    """torchvision ``mobilenet_v2`` -> :class:`MobileNetV2` (timm's layout under ``body.``).

    ``features.0.{0,1}`` -> ``conv_stem``/``bn1``; ``features.1.conv.{0.0,0.1,1,2}`` ->
    ``blocks.0.0.{conv_dw,bn1,conv_pw,bn2}``; ``features.{n}.conv.{0.0,0.1,1.0,1.1,2,3}``
    (n = 2..17) -> ``blocks.{s}.{b}.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}`` with (s, b) from the
    stage sizes 1, 2, 3, 4, 3, 3, 1. ``features.18`` (1280-channel conv) and ``classifier`` are
    ignored.
    """
    return _convert(
        "torchvision_mobilenetv2", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


_SWIN_NORMS = "per-stage output LayerNorm added by SwinBackbone: default init (weight 1, bias 0)"
_SWIN_IGNORE = [
    _ignore(r"^norm\.", "final LayerNorm of the classifier (SwinBackbone has one norm per stage)"),
    _ignore(r"^head\.", _CLASSIFIER),
    _ignore(r"(relative_position_index|attn_mask)$", "buffer recomputed by the target model"),
]


def _swin_prefix(target_keys, prefix) -> str:
    return _timm_prefix(target_keys, prefix, "patch_embed.proj.weight", "timm Swin transformer")


def _outer(p: str) -> str:
    """``backbone.body.`` -> ``backbone.``: SwinBackbone's own norms sit next to ``body``."""
    return p[: -len("body.")] if p.endswith("body.") else p


def _swin_defaults(p: str) -> List[Tuple["re.Pattern", Callable, str]]:
    outer = _outer(p)
    return [
        (re.compile("^" + re.escape(outer) + r"norms\.res\d\.weight$"), torch.ones, _SWIN_NORMS),
        (re.compile("^" + re.escape(outer) + r"norms\.res\d\.bias$"), torch.zeros, _SWIN_NORMS),
    ]


def _plan_timm_swin(source_keys, target_keys, prefix=None) -> _Plan:
    p = _swin_prefix(target_keys, prefix)
    rules = []
    notes = []
    if source_keys is not None and any(k.startswith("layers.0.downsample.") for k in source_keys):
        # Microsoft / timm < 0.9 layout: patch merging at the end of a stage, not the start.
        rules.append(Rule("layers.{i}.downsample", p + "layers.{i+1}.downsample"))
        notes.append("original Swin layout (downsample at the end of each stage) shifted to timm's")
    rules.append(Rule("{*}", p + "{*}"))
    return _Plan(
        rules,
        scope=(_outer(p),),
        ignore=list(_SWIN_IGNORE),
        defaults=_swin_defaults(p),
        notes=notes,
    )


def convert_timm_swin(state_dict, target: Target = None, *, prefix=None, allow_partial=False):
    """timm ``SwinTransformer`` (v1) -> :class:`SwinBackbone`: timm's names under
    ``backbone.body.``.

    Also reads the original Microsoft layout (``layers.{i}.downsample`` at the end of stage i,
    moved to stage i+1). ``norm``/``head`` (classifier) and the ``relative_position_index`` /
    ``attn_mask`` buffers are ignored; ``backbone.norms.res*`` (the per-stage LayerNorms the
    segmentation recipe adds) are set to LayerNorm's default 1/0. A different window size shows
    up as a shape mismatch of ``relative_position_bias_table``.
    """
    return _convert("timm_swin", state_dict, target, prefix=prefix, allow_partial=allow_partial)


def _plan_torchvision_swin(source_keys, target_keys, prefix=None) -> _Plan:
    p = _swin_prefix(target_keys, prefix)
    block = "layers.{s}.blocks.{j}."
    rules = [
        Rule("features.0.0", p + "patch_embed.proj"),
        Rule("features.0.2", p + "patch_embed.norm"),
        Rule("features.{s*2+1}.{j}.mlp.0", p + block + "mlp.fc1"),
        Rule("features.{s*2+1}.{j}.mlp.3", p + block + "mlp.fc2"),
        Rule("features.{s*2+1}.{j}.{*}", p + block + "{*}"),
        Rule("features.{s*2}.reduction", p + "layers.{s}.downsample.reduction"),
        Rule("features.{s*2}.norm", p + "layers.{s}.downsample.norm"),
    ]
    return _Plan(rules, scope=(_outer(p),), ignore=list(_SWIN_IGNORE), defaults=_swin_defaults(p))


def convert_torchvision_swin(
    state_dict, target: Target = None, *, prefix=None, allow_partial=False
):
    """torchvision ``swin_t/s/b`` (v1) -> :class:`SwinBackbone` (timm's layout under ``body.``).

    ``features.0.{0,2}`` -> ``patch_embed.{proj,norm}``; ``features.{2s+1}.{j}`` ->
    ``layers.{s}.blocks.{j}`` (``mlp.0``/``mlp.3`` -> ``mlp.fc1``/``mlp.fc2``);
    ``features.{2s}.{reduction,norm}`` -> ``layers.{s}.downsample.*``. ``norm``, ``head`` and
    ``relative_position_index`` are ignored, ``backbone.norms.res*`` defaulted (1/0). Swin V2
    (``swin_v2_*``: ``cpb_mlp``, ``logit_scale``) has no counterpart and fails.
    """
    return _convert(
        "torchvision_swin", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


# ---------------------------------------------------------------------------------------------
# Registry, entry points
# ---------------------------------------------------------------------------------------------

_PLANS: Dict[str, Callable[..., _Plan]] = {
    "torchvision_resnet": _plan_torchvision_resnet,
    "torchvision_mobilenetv2": _plan_torchvision_mobilenetv2,
    "timm_mobilenetv2": _plan_timm_mobilenetv2,
    "torchvision_swin": _plan_torchvision_swin,
    "timm_swin": _plan_timm_swin,
    "cirkd_resnet": _plan_cirkd_resnet,
    "mmseg_pspnet": lambda s, t, prefix=None: _plan_mmseg(s, t, prefix, "psp"),
    "mmseg_deeplabv3": lambda s, t, prefix=None: _plan_mmseg(s, t, prefix, "deeplab"),
    "mmdet_retinanet": _plan_mmdet_retinanet,
}


def _convert(source, state_dict, target, *, prefix=None, allow_partial=False, **options):
    target_sd = _target_state(target)
    state_dict = _unwrap(state_dict)
    plan = _PLANS[source](
        list(state_dict), None if target_sd is None else list(target_sd), prefix, **options
    )
    return _run(source, state_dict, target_sd, plan, allow_partial)


def to_source_naming(
    source: str, state_dict: Mapping[str, torch.Tensor], *, prefix=None, **options
) -> Tuple[StateDict, List[str]]:
    """Apply a converter's rules backwards: our model's ``state_dict`` in ``source``'s naming.

    Returns:
        (state dict with the source's keys, target keys no rule can express). Options as for the
        converter (e.g. ``full=True, stem="sequential"`` for ``cirkd_resnet``).
    """
    plan = _PLANS[source](None, list(state_dict), prefix, **options)
    out: StateDict = {}
    unexpressed = []
    for key, value in state_dict.items():
        if not _in_scope(key, plan.scope) or any(r.search(key) for r, _, _ in plan.defaults):
            continue
        path, leaf = _split(key)
        for rule in plan.rules:
            src = rule.backward(path)
            if src is not None:
                out[f"{src}.{leaf}"] = rule.inv(value) if rule.inv is not None else value.clone()
                break
        else:
            unexpressed.append(key)
    return out, unexpressed


def convert_d2_pkl(path: str, target: nn.Module, *, prefix=None, allow_partial=False):
    """A Detectron2 checkpoint (model-zoo ``.pkl``, Caffe2 ``.pkl`` or ``.pth``) -> the same
    weights re-saved under the target model's exact names, after a strict check.

    Loading goes through :class:`detectron2.checkpoint.DetectionCheckpointer` (its ``.pkl``
    reader and, where the file asks for it, its name-matching heuristics) into ``target`` (a model
    built from the config); the report lists its missing / unexpected / shape-mismatched keys.
    ``prefix`` is not used. The returned state dict holds only the keys actually loaded.
    """
    if not isinstance(target, nn.Module):
        raise TypeError("d2_pkl needs the target model (nn.Module), built from --config-file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    checkpointer = ReportingCheckpointer(target)
    checkpointer.load(str(path), checkpointables=[])
    incompatible = checkpointer.incompatible
    missing = list(incompatible.missing_keys) if incompatible else []
    unexpected = list(incompatible.unexpected_keys) if incompatible else []
    shapes = list(incompatible.incorrect_shapes) if incompatible else []
    report = ConversionReport(source="d2_pkl", scope=("",))
    bad = set(missing) | {k for k, _, _ in shapes}
    out: StateDict = {}
    for key, value in target.state_dict().items():
        if key in bad:
            continue
        out[key] = value.detach().clone()
        report.mapped.append((key, key))
    for key in missing:
        if key.endswith("." + _NBT):
            out[key] = torch.zeros((), dtype=torch.long)
            report.defaulted[key] = "no BatchNorm step counter in the source: 0"
        else:
            report.missing.append(key)
    for key in unexpected:
        if key.endswith("." + _NBT):
            report.ignored[key] = f"the target's frozen norm keeps no {_NBT}"
        else:
            report.unused.append((key, None))
    report.mismatched = [(k, k, tuple(a), tuple(b)) for k, a, b in shapes]
    report.notes.append("names matched by Detectron2's DetectionCheckpointer (heuristics for .pkl)")
    if not report.ok and not allow_partial:
        raise WeightConversionError(
            f"Weight conversion 'd2_pkl' of {path!r} is incomplete; pass allow_partial=True "
            f"(--allow-partial) to keep only the matching keys.\n{report.format()}",
            report,
        )
    return out, report


CONVERTERS: Dict[str, Callable] = {
    "torchvision_resnet": convert_torchvision_resnet,
    "torchvision_mobilenetv2": convert_torchvision_mobilenetv2,
    "timm_mobilenetv2": convert_timm_mobilenetv2,
    "torchvision_swin": convert_torchvision_swin,
    "timm_swin": convert_timm_swin,
    "cirkd_resnet": convert_cirkd_resnet,
    "mmseg_pspnet": convert_mmseg_pspnet,
    "mmseg_deeplabv3": convert_mmseg_deeplabv3,
    "mmdet_retinanet": convert_mmdet_retinanet,
    "d2_pkl": convert_d2_pkl,
}
"""Converter functions by source name: ``fn(state_dict_or_path, target, *, prefix=None,
allow_partial=False, **options) -> (state_dict, ConversionReport)``. ``d2_pkl`` takes a file path
and the target model; the others a state dict and the target model or its state dict."""


def _unwrap(obj) -> StateDict:
    """The state dict inside a checkpoint dict (``state_dict``/``model`` entries, ``module.``)."""
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightConversionError(f"not a state dict: {type(obj).__name__}")
    sd = {k: torch.as_tensor(v) for k, v in obj.items() if hasattr(v, "shape")}
    if not sd:
        raise WeightConversionError(
            f"no tensors at the top level of the checkpoint (keys: {sorted(obj)[:20]})"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_source_state_dict(path: str, *, trust_pickle: bool = False) -> StateDict:
    """Read a source checkpoint (``.pth``/``.pt``/``.bin`` via ``torch.load``, ``.safetensors``)
    and return its state dict (unwrapping ``state_dict``/``model`` entries and ``module.``).

    ``torch.load`` runs with ``weights_only=True``; checkpoints that pickle other objects (mmcv
    ``meta`` of old mmseg/mmdet files) need ``trust_pickle=True``, which unpickles arbitrary
    objects: only for files from a trusted source.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors differ by the object that cannot be loaded
        if not trust_pickle:
            raise WeightConversionError(
                f"{path!r} holds objects beyond tensors ({type(e).__name__}: {e}); if the file "
                "comes from a trusted source, retry with trust_pickle=True (--trust-pickle)"
            ) from e
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    return _unwrap(obj)


def convert_checkpoint(
    source: str,
    path: str,
    target: Target = None,
    *,
    prefix=None,
    allow_partial: bool = False,
    trust_pickle: bool = False,
    **options,
) -> Tuple[StateDict, ConversionReport]:
    """Read the file at ``path`` and convert it with ``CONVERTERS[source]``."""
    if source not in CONVERTERS:
        raise KeyError(f"unknown source {source!r}; known: {sorted(CONVERTERS)}")
    if source == "d2_pkl":
        return convert_d2_pkl(path, target, prefix=prefix, allow_partial=allow_partial)
    state_dict = load_source_state_dict(path, trust_pickle=trust_pickle)
    return CONVERTERS[source](
        state_dict, target, prefix=prefix, allow_partial=allow_partial, **options
    )


def save_d2_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str, *, author: str) -> None:
    """Write ``{"model": state_dict, "__author__": author, "matching_heuristics": False}``, the
    form ``MODEL.WEIGHTS`` / ``MODEL.DISTILL.TEACHER.WEIGHTS`` load by exact names."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save({"model": model, "__author__": author, "matching_heuristics": False}, str(path))


def verify_loadable(model: nn.Module, path: str, report: ConversionReport) -> None:
    """Load ``path`` into ``model`` through Detectron2's checkpointer (as ``MODEL.WEIGHTS`` does)
    and check that exactly the converted keys load: no unexpected or mis-shaped key, and the only
    missing keys are the report's missing / mismatched / out-of-scope ones."""
    saved = torch.load(str(path), map_location="cpu", weights_only=True)["model"]
    checkpointer = ReportingCheckpointer(model)
    checkpointer.load(str(path), checkpointables=[])
    inc = checkpointer.incompatible
    expected_missing = (
        set(report.missing) | {dst for _, dst, _, _ in report.mismatched} | set(report.out_of_scope)
    )
    missing = set(inc.missing_keys) if inc else set()
    problems = []
    if inc and (inc.unexpected_keys or inc.incorrect_shapes):
        problems.append(format_incompatible_keys([], inc.unexpected_keys, inc.incorrect_shapes))
    if missing - expected_missing:
        problems.append(format_incompatible_keys(sorted(missing - expected_missing), [], []))
    loaded = model.state_dict()
    differ = [k for k, v in saved.items() if k in loaded and not torch.equal(loaded[k].cpu(), v)]
    if differ:
        problems.append("values differ after loading: " + ", ".join(differ[:20]))
    if problems:
        raise WeightConversionError(
            f"{path} does not load as converted:\n" + "\n".join(problems), report
        )
