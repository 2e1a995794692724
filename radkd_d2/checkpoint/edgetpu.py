"""Converter of the TensorFlow model zoo's mobile DeepLab on MobileNet-EdgeTPU (the Cityscapes
model of ``../shared/data/pretrained``, dequantised into timm's key names) into a
``SemanticSegmentor`` with :class:`~radkd_d2.modeling.backbone.MobileNetEdgeTPU` and the
``"lite"`` :class:`~radkd_d2.modeling.heads.DeepLabV3Head` (``configs/models/deeplab_edgetpu.yaml``).
"""

from .rules import Rule, Target, _Plan, _timm_prefix, PLANS, convert

__all__ = ["convert_tf_deeplab_edgetpu"]


def _plan_tf_deeplab_edgetpu(source_keys, target_keys, prefix=None) -> _Plan:
    p = _timm_prefix(target_keys, prefix, "conv_head.weight", "MobileNet-EdgeTPU with its head conv")
    h = "sem_seg_head."
    rules = [
        Rule("head.aspp_conv.conv", h + "aspp.convs.0"),
        Rule("head.aspp_conv.bn", h + "aspp.convs.0.norm"),
        Rule("head.aspp_pool.conv", h + "aspp.pool"),
        Rule("head.aspp_pool.bn", h + "aspp.pool.norm"),
        Rule("head.project.conv", h + "aspp.project"),
        Rule("head.project.bn", h + "aspp.project.norm"),
        Rule("head.classifier", h + "predictor"),
        # backbone: timm's names (conv_stem, bn1, blocks.*, conv_head, bn2) under the prefix
        Rule("{*}", p + "{*}"),
    ]
    return _Plan(rules, scope=(p, h))


def convert_tf_deeplab_edgetpu(state_dict, target: Target = None, *, prefix=None, allow_partial=False):
    """The dequantised TensorFlow DeepLab-EdgeTPU -> this project's DeepLab (whole model).

    Backbone keys (``conv_stem``, ``bn1``, ``blocks.*``, ``conv_head``, ``bn2``) go under
    ``backbone.body.``; the head's ``head.aspp_conv`` / ``head.aspp_pool`` / ``head.project``
    ``.conv`` and ``.bn`` become ``sem_seg_head.aspp.convs.0`` / ``aspp.pool`` / ``aspp.project``
    and their ``.norm``; ``head.classifier`` becomes ``sem_seg_head.predictor``. The scope is
    the whole model: every key of both sides must match by name and shape.
    """
    return convert("tf_deeplab_edgetpu", state_dict, target, prefix=prefix, allow_partial=allow_partial)


PLANS["tf_deeplab_edgetpu"] = _plan_tf_deeplab_edgetpu
