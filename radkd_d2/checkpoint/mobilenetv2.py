"""Converters of ImageNet MobileNetV2 checkpoints (timm and torchvision) into
:class:`~radkd_d2.modeling.backbone.MobileNetV2`."""

from .rules import (
    _CLASSIFIER,
    _timm_prefix,
    convert,
    _ignore,
    _Plan,
    PLANS,
    Rule,
    Target,
)

# ---------------------------------------------------------------------------------------------
# timm-based backbones
# ---------------------------------------------------------------------------------------------

# torchvision MobileNetV2 inverted-residual settings (t, c, n, s): blocks per stage.
_MV2_BLOCKS = (1, 2, 3, 4, 3, 3, 1)


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
    return convert(
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
    return convert(
        "torchvision_mobilenetv2", state_dict, target, prefix=prefix, allow_partial=allow_partial
    )


PLANS["torchvision_mobilenetv2"] = _plan_torchvision_mobilenetv2
PLANS["timm_mobilenetv2"] = _plan_timm_mobilenetv2
