"""Parameter counts of the matrix's segmentation models as their reference code bases define
them, derived layer by layer from those definitions (shapes only; no code of theirs is used).

The models of the paper's Tables 1 and 3 come from two code bases:

- SKD / IFVD / CWD ``networks/pspnet.py`` (irfanICMLL/structure_knowledge_distillation,
  YukangWang/IFVD, irfanICMLL/TorchDistiller), where the Table 1 baselines were trained:
  PSPNet-R101 (``PSPModule(2048, 512)``, deep-supervision ``dsn`` 1024 -> 512 on res4) and
  PSPNet-R18 (``PSPModule(512, 128)``, ``dsn`` 256 -> 128); both train with the ``dsn`` loss at 0.4.
- CIRKD (winycg/CIRKD ``models/``, commit 7e0d21f: the 128/256-channel heads; a later commit
  widened the DeepLabV3 heads to 512): DeepLabV3-R18/R101 (ASPP 128 / 256 channels),
  PSPNet/DeepLabV3-MobileNetV2 (128-channel heads, no auxiliary head), PSPNet-R18 with its
  ``_FCNHead`` (a quarter of res4's channels). Its ``train_kd.py`` trains ResNet students with the
  auxiliary loss (0.4) and MobileNet students without.

Counts are CIRKD's way: every parameter of the model, the auxiliary head included (BatchNorm
weight and bias count, running statistics do not).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

__all__ = ["REFERENCE_PARAMS", "ReferenceCount", "reference_counts"]


def _conv(c_in: int, c_out: int, k: int = 1, *, bias: bool = False, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # weight and bias (the affine InPlaceABN of SKD/IFVD counts the same)


def deep_stem_resnet(depth: int) -> int:
    """Dilated ResNet with the 3-conv deep stem (3->64->64->128, then 128-channel res2 input), as
    SKD/IFVD's ``ResNet`` and CIRKD's ``resnet*_v1s``; dilation does not change the count."""
    blocks, bottleneck = {18: ((2, 2, 2, 2), False), 101: ((3, 4, 23, 3), True)}[depth]
    n = _conv(3, 64, 3) + _bn(64) + _conv(64, 64, 3) + _bn(64) + _conv(64, 128, 3) + _bn(128)
    expansion = 4 if bottleneck else 1
    in_ch = 128
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
        for i in range(count):
            out = planes * expansion
            if bottleneck:
                n += _conv(in_ch, planes) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
                n += _conv(planes, out) + _bn(out)
            else:
                n += _conv(in_ch, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            if i == 0 and (stage > 0 or in_ch != out):  # stride 2 (res3) or a channel change
                n += _conv(in_ch, out) + _bn(out)
            in_ch = out
    return n


# MobileNetV2 (Sandler et al., Table 2): expansion t, channels c, blocks n, stride s
_MV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


def mobilenetv2() -> int:
    """MobileNetV2 width 1.0 up to the 320-channel stage (CIRKD's ``MobileNetV2Dilated``: the
    1x1 conv to 1280 channels and the classifier are not built)."""
    n = _conv(3, 32, 3) + _bn(32)
    in_ch = 32
    for t, c, count, _ in _MV2_SETTING:
        for _ in range(count):
            hidden = in_ch * t
            if t != 1:
                n += _conv(in_ch, hidden) + _bn(hidden)
            n += _conv(hidden, hidden, 3, groups=hidden) + _bn(hidden)
            n += _conv(hidden, c) + _bn(c)
            in_ch = c
    return n


def skd_psp_head(in_ch: int, width: int, num_classes: int) -> int:
    """SKD/IFVD ``PSPModule(in_ch, width)`` (four 1x1 branches to ``width``, 3x3 bottleneck from
    in_ch + 4 * width) and the 1x1 classifier."""
    n = 4 * (_conv(in_ch, width) + _bn(width))
    n += _conv(in_ch + 4 * width, width, 3) + _bn(width)
    return n + _conv(width, num_classes, bias=True)


def skd_dsn(in_ch: int, width: int, num_classes: int) -> int:
    """SKD/IFVD ``dsn``: 3x3 conv **with bias** + InPlaceABN, 1x1 classifier."""
    return _conv(in_ch, width, 3, bias=True) + _bn(width) + _conv(width, num_classes, bias=True)


def cirkd_psp_head(in_ch: int, width: int, num_classes: int) -> int:
    """CIRKD ``_PSPHead``: four 1x1 branches to in_ch / 4, 3x3 conv from 2 * in_ch to ``width``,
    1x1 classifier."""
    n = 4 * (_conv(in_ch, in_ch // 4) + _bn(in_ch // 4))
    n += _conv(2 * in_ch, width, 3) + _bn(width)
    return n + _conv(width, num_classes, bias=True)


def cirkd_deeplab_head(in_ch: int, width: int, num_classes: int) -> int:
    """CIRKD ``_DeepLabHead``: ASPP (1x1, three 3x3, pooling branch; 1x1 projection of the five),
    3x3 conv, 1x1 classifier; every conv to ``width``."""
    n = 2 * (_conv(in_ch, width) + _bn(width))  # the 1x1 branch and the pooling branch
    n += 3 * (_conv(in_ch, width, 3) + _bn(width))  # the atrous branches
    n += _conv(5 * width, width) + _bn(width)
    n += _conv(width, width, 3) + _bn(width)
    return n + _conv(width, num_classes, bias=True)


def cirkd_fcn_head(in_ch: int, num_classes: int) -> int:
    """CIRKD ``_FCNHead``: 3x3 conv to in_ch / 4 + BN, 1x1 classifier."""
    width = in_ch // 4
    return _conv(in_ch, width, 3) + _bn(width) + _conv(width, num_classes, bias=True)


@dataclass(frozen=True)
class ReferenceCount:
    """A reference definition of a model: its parameter count at K classes, where it comes from,
    and by how many parameters radkd-d2's model differs from it by design (and why)."""

    source: str
    count: Callable[[int], int]  # K -> parameters
    differs_by: Callable[[int], int] = lambda k: 0  # K -> radkd-d2's count minus this one
    why: str = ""


_R18, _R101, _MV2 = deep_stem_resnet(18), deep_stem_resnet(101), mobilenetv2()
_SKD = "SKD/IFVD/CWD networks/pspnet.py"
_DSN_BIAS = ("its dsn 3x3 conv has a bias in front of the norm, which the norm cancels; "
             "radkd-d2's conv has none")  # fmt: skip

# matrix model key -> reference definitions, the one its config follows first
REFERENCE_PARAMS: Dict[str, Tuple[ReferenceCount, ...]] = {
    "pspnet_r101": (
        ReferenceCount(f"{_SKD}: ResNet-101, PSPModule(2048, 512), dsn 1024->512",
                       lambda k: _R101 + skd_psp_head(2048, 512, k) + skd_dsn(1024, 512, k),
                       lambda k: -512, _DSN_BIAS),
        ReferenceCount("CIRKD models/pspnet.py (7e0d21f): PSP 512, _FCNHead 1024->256",
                       lambda k: _R101 + cirkd_psp_head(2048, 512, k) + cirkd_fcn_head(1024, k),
                       lambda k: 1024 * 256 * 9 + 2 * 256 + 256 * k,
                       "the auxiliary conv is 512 wide (SKD's dsn), CIRKD's 256"),
    ),
    "pspnet_r18": (
        ReferenceCount(f"{_SKD}: ResNet-18, PSPModule(512, 128), dsn 256->128",
                       lambda k: _R18 + skd_psp_head(512, 128, k) + skd_dsn(256, 128, k),
                       lambda k: -128, _DSN_BIAS),
        ReferenceCount("CIRKD models/pspnet.py: PSP 128, _FCNHead 256->64 (its 12.9M)",
                       lambda k: _R18 + cirkd_psp_head(512, 128, k) + cirkd_fcn_head(256, k),
                       lambda k: 256 * 64 * 9 + 2 * 64 + 64 * k,
                       "the auxiliary conv is 128 wide (SKD's dsn), CIRKD's 64"),
    ),
    "pspnet_mv2": (
        ReferenceCount("CIRKD models/psp_mobile.py: MobileNetV2, PSP 128, no auxiliary head",
                       lambda k: _MV2 + cirkd_psp_head(320, 128, k)),
    ),
    "deeplabv3_r101": (
        ReferenceCount("CIRKD models/deeplabv3.py (7e0d21f): ASPP 256, _FCNHead 1024->256",
                       lambda k: _R101 + cirkd_deeplab_head(2048, 256, k)
                       + cirkd_fcn_head(1024, k)),
    ),
    "deeplabv3_r18": (
        ReferenceCount("CIRKD models/deeplabv3.py (7e0d21f): ASPP 128, _FCNHead 256->64",
                       lambda k: _R18 + cirkd_deeplab_head(512, 128, k) + cirkd_fcn_head(256, k)),
    ),
    "deeplabv3_mv2": (
        ReferenceCount("CIRKD models/deeplabv3_mobile.py: MobileNetV2, ASPP 128, no auxiliary "
                       "head", lambda k: _MV2 + cirkd_deeplab_head(320, 128, k)),
    ),
}  # fmt: skip


def reference_counts(model_key: str, num_classes: int) -> Tuple[Tuple[ReferenceCount, int], ...]:
    """(reference, its count at ``num_classes``) for each reference of a matrix model; empty for
    a model without one (UPerNet-Swin: mmsegmentation's recipe, not checked)."""
    return tuple((ref, ref.count(num_classes)) for ref in REFERENCE_PARAMS.get(model_key, ()))
