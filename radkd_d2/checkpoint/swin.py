"""Converters of ImageNet Swin checkpoints (timm and torchvision) into
:class:`~radkd_d2.modeling.backbone.SwinBackbone`."""

import re
from typing import Callable, List, Tuple

import torch

from .rules import _CLASSIFIER, _timm_prefix, convert, _ignore, _Plan, PLANS, Rule, Target

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
    return convert("timm_swin", state_dict, target, prefix=prefix, allow_partial=allow_partial)


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
    return convert(
        "torchvision_swin", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


PLANS["torchvision_swin"] = _plan_torchvision_swin
PLANS["timm_swin"] = _plan_timm_swin
