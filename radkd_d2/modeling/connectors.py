"""Student -> teacher feature adapters, one per distilled feature, built from ShapeSpecs."""
from __future__ import annotations

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, get_norm
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

CONNECTOR_REGISTRY = Registry("DISTILL_CONNECTOR")
CONNECTOR_REGISTRY.__doc__ = """
Connectors map a student feature (B×C_s×H×W) to the teacher's channel count (B×C_t×H×W).
A registered builder is called as ``builder(in_channels, out_channels)``.
"""


@CONNECTOR_REGISTRY.register()
def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Module:
    """1×1 conv + BN + ReLU, the paper's adapter (Sec. 4.2)."""
    conv = Conv2d(
        in_channels, out_channels, 1, bias=False, norm=get_norm("BN", out_channels), activation=F.relu
    )
    weight_init.c2_msra_fill(conv)
    return conv


@CONNECTOR_REGISTRY.register()
def conv(in_channels: int, out_channels: int) -> nn.Module:
    """Plain 1×1 conv (FitNets-style regressor), for features that may be negative (logits,
    FPN outputs) where a ReLU would clip the target."""
    conv = Conv2d(in_channels, out_channels, 1)
    weight_init.c2_msra_fill(conv)
    return conv


@CONNECTOR_REGISTRY.register()
def strided_conv(in_channels: int, out_channels: int, stride: int = 2) -> nn.Module:
    """k x k conv of stride k: a learned downsampling of a student map k times larger than the
    teacher's (MODEL.DISTILL.SPATIAL_ALIGN "strided_conv"), e.g. a student read at stride 8
    against a teacher at stride 16, or a teacher that sees the batch at half size."""
    conv = Conv2d(in_channels, out_channels, stride, stride=stride)
    weight_init.c2_msra_fill(conv)
    return conv


# registered builders that align spatial size, not channels (not values of MODEL.DISTILL.CONNECTOR)
SPATIAL_CONNECTORS = ("strided_conv",)


def connector_choices() -> list:
    """Every value MODEL.DISTILL.CONNECTOR takes: the registered channel connectors and "none"
    (the student feature is used as it is where the channel counts match)."""
    return sorted(k for k, _ in CONNECTOR_REGISTRY if k not in SPATIAL_CONNECTORS) + ["none"]


def build_connector(name: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Connector ``name`` from the registry (an unknown name lists the registered ones)."""
    try:
        builder = CONNECTOR_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.DISTILL.CONNECTOR = {name!r} is unknown; allowed: {connector_choices()}"
        ) from None
    return builder(in_channels, out_channels, **kwargs)
