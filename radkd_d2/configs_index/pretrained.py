"""ImageNet weights the configs start from (``MODEL.WEIGHTS``), where each comes from and the
input convention it was trained with, which a config's ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN`` and
``MODEL.PIXEL_STD`` must follow (tests/test_pixel_conventions.py checks every config).

Names with a scheme are resolved by the installed Detectron2: ``detectron2://X`` is
``https://dl.fbaipublicfiles.com/detectron2/X`` (the ImageNet models its model-zoo configs use),
``catalog://ImageNetPretrained/X`` an entry of ``detectron2.checkpoint.catalog.ModelCatalog``
(Detectron 1's Caffe2 models: BGR, PIXEL_STD 1, BatchNorm fused into an affine: FrozenBN only).
A repository-relative path is a file this project's converter writes (``how``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["PIXEL_STATS", "PRETRAINED", "Pretrained", "pixel_order"]

# ImageNet statistics on 0-255 inputs, per channel order; where they come from
PIXEL_STATS: Dict[str, Tuple[str, Tuple[float, float, float]]] = {
    # torchvision's (0.485, 0.456, 0.406) x 255 and (0.229, 0.224, 0.225) x 255
    "imagenet_mean_rgb": ("RGB", (123.675, 116.28, 103.53)),
    "imagenet_std_rgb": ("RGB", (58.395, 57.12, 57.375)),
    "imagenet_mean_bgr": ("BGR", (103.53, 116.28, 123.675)),  # Detectron2's defaults
    "imagenet_std_bgr": ("BGR", (57.375, 57.12, 58.395)),
}


def pixel_order(values) -> Optional[str]:
    """The channel order of ImageNet statistics: "RGB" or "BGR" when ``values`` are the ImageNet
    mean or std in that order, "any" for a unit std (no per-channel scaling), else None."""
    values = tuple(float(v) for v in values)
    if values == (1.0, 1.0, 1.0):
        return "any"
    for order, stats in PIXEL_STATS.values():
        if len(values) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(values, stats)):
            return order
    return None


@dataclass(frozen=True)
class Pretrained:
    """An ImageNet checkpoint: where it comes from and the inputs it expects."""

    source: str
    input_format: str  # INPUT.FORMAT
    pixel_mean: Tuple[float, float, float]  # MODEL.PIXEL_MEAN, in that order
    pixel_std: Tuple[float, float, float]  # MODEL.PIXEL_STD
    how: str = ""  # how to make it, for a file the project writes


PRETRAINED: Dict[str, Pretrained] = {
    "detectron2://ImageNetPretrained/MSRA/R-50.pkl": Pretrained(
        "MSRA's Caffe ResNet-50 of Detectron2's model zoo (MODEL_ZOO.md, ImageNet Pretrained "
        "Models; the backbone of its R50 configs): BGR 0-255 inputs, mean subtraction only, "
        "stride in the 1x1 conv (RESNETS.STRIDE_IN_1X1 True, the default)",
        "BGR", PIXEL_STATS["imagenet_mean_bgr"][1], (1.0, 1.0, 1.0),
    ),
    "detectron2://ImageNetPretrained/MSRA/R-101.pkl": Pretrained(
        "MSRA's Caffe ResNet-101 of Detectron2's model zoo (the backbone of its R101 configs): "
        "BGR 0-255 inputs, mean subtraction only, stride in the 1x1 conv",
        "BGR", PIXEL_STATS["imagenet_mean_bgr"][1], (1.0, 1.0, 1.0),
    ),
    "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl": Pretrained(
        "FAIR's ResNeXt-101-32x8d of Detectron2's model zoo (the backbone of its X101-FPN "
        "configs): BGR inputs normalised by the ImageNet mean/std, stride in the 3x3 conv "
        "(RESNETS.STRIDE_IN_1X1 False)",
        "BGR", PIXEL_STATS["imagenet_mean_bgr"][1], PIXEL_STATS["imagenet_std_bgr"][1],
    ),
    # Detectron2's model zoo has no ResNeXt-101-64x4d (its FAIR/X-101-32x8d.pkl is 32x8d, and
    # catalog://ImageNetPretrained/FAIR/X-101-64x4d is Detectron 1's Caffe2 copy, BGR with unit
    # std). torchvision's takes the inputs the MGD/FGD teacher (mmdetection) was trained with.
    "output/pretrained/X-101-64x4d_torchvision.pth": Pretrained(
        "torchvision resnext101_64x4d, IMAGENET1K_V1 "
        "(https://download.pytorch.org/models/resnext101_64x4d-173b62eb.pth), converted to "
        "Detectron2 names: RGB inputs normalised by the ImageNet mean/std, stride in the 3x3 conv "
        "(RESNETS.STRIDE_IN_1X1 False)",
        "RGB", PIXEL_STATS["imagenet_mean_rgb"][1], PIXEL_STATS["imagenet_std_rgb"][1],
        how="python tools/convert_weights.py --source torchvision_resnet --input "
        "resnext101_64x4d-173b62eb.pth --config-file "
        "configs/coco/retinanet_X101_64x4d_FPN_2x_coco.yaml --output "
        "output/pretrained/X-101-64x4d_torchvision.pth",
    ),
}  # fmt: skip
