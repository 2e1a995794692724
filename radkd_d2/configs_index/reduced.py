"""Overrides that shrink the matrix's models to CPU-test size (the configs stay valid)."""
from __future__ import annotations

from typing import List

from radkd_d2.modeling.backbone import BACKBONE_INFO

REDUCED_DISTILL_OPTS = [  # CIRKD's banks hold 20000 pixels per class at full size (GBs on ADE20K)
    "MODEL.DISTILL.CIRKD.PIXEL_MEMORY_SIZE", "64", "MODEL.DISTILL.CIRKD.REGION_MEMORY_SIZE", "8",
    "MODEL.DISTILL.CIRKD.PIXEL_CONTRAST_SIZE", "64",
    "MODEL.DISTILL.CIRKD.REGION_CONTRAST_SIZE", "16",
]  # fmt: skip


# Detectron2's ResNet-FPN detectors (RetinaNet, Faster / Mask R-CNN of configs/coco/): a ResNet-18
# of plain groups (the ResNeXt teachers too), 32-channel FPN and heads, fewer RoIs and proposals
DETECTION_BACKBONES = ("build_retinanet_resnet_fpn_backbone", "build_resnet_fpn_backbone")
REDUCED_DETECTION_OPTS = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NUM_GROUPS", "1", "MODEL.RESNETS.WIDTH_PER_GROUP", "64",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
]  # fmt: skip


def reduced_size_opts(cfg) -> List[str]:
    """KEY VALUE overrides (strings, usable as ``MODEL.DISTILL.TEACHER.OPTS``) that shrink the
    model of ``cfg`` -- a config of a ResNet, MobileNetV2 or Swin model, or one of Detectron2's
    ResNet-FPN detectors -- for CPU tests: ResNet width 1/8, MobileNetV2 width 0.35, Swin with
    one block per stage, 16-channel heads (the auxiliary head's conv too); a detector gets
    :data:`REDUCED_DETECTION_OPTS`."""
    name = cfg.MODEL.BACKBONE.NAME
    if name in DETECTION_BACKBONES:
        return list(REDUCED_DETECTION_OPTS)
    info = BACKBONE_INFO.get(name)
    if info is None or info.reduced_opts is None:
        raise ValueError(f"no reduced size known for backbone {name!r}")
    head = ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM", "16"]
    return list(info.reduced_opts(cfg)) + head
