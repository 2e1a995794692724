"""Configs and batches shared by the segmentation-model tests (CPU, test-sized models)."""

import torch
from detectron2.config import get_cfg

from radkd_d2.config import add_radkd_config

NUM_CLASSES = 5
IGNORE = 255
STAGES = ["res2", "res3", "res4", "res5"]
TINY_SWIN = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4), window_size=7)


def make_cfg(backbone: str = "drn", head: str = "PSPHead", *, aux: float = 0.0, depth: int = 18):
    """A CPU SemanticSegmentor config at test size. ``backbone``: "drn" (dilated ResNet at 1/4
    width, output stride 8), "drn32" (the same, not dilated: UPerNet on a CNN), "mv2" or "swin"."""
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    if backbone == "mv2":
        cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
        cfg.MODEL.MOBILENETV2.WIDTH_MULT = 0.35
    elif backbone == "swin":
        cfg.MODEL.BACKBONE.NAME = "build_swin_backbone"
        cfg.MODEL.SWIN.EMBED_DIM = TINY_SWIN["embed_dim"]
        cfg.MODEL.SWIN.DEPTHS = list(TINY_SWIN["depths"])
        cfg.MODEL.SWIN.NUM_HEADS = list(TINY_SWIN["num_heads"])
        cfg.MODEL.SWIN.DROP_PATH_RATE = 0.1
    elif backbone in ("drn", "drn32"):
        cfg.MODEL.BACKBONE.NAME = "build_dilated_resnet_backbone"
        cfg.MODEL.DRN.DEPTH = depth
        cfg.MODEL.DRN.WIDTH_MULT = 0.25
        cfg.MODEL.DRN.OUTPUT_STRIDE = 32 if backbone == "drn32" else 8
    else:
        raise ValueError(f"unknown test backbone {backbone!r}")
    head_cfg = cfg.MODEL.SEM_SEG_HEAD
    head_cfg.NAME = head
    head_cfg.IN_FEATURES = STAGES if head == "UPerNetHead" else ["res5"]
    head_cfg.COMMON_STRIDE = 4 if head == "UPerNetHead" else 8
    head_cfg.NUM_CLASSES = NUM_CLASSES
    head_cfg.CONVS_DIM = 32
    head_cfg.NORM = "BN"
    head_cfg.IGNORE_VALUE = IGNORE
    head_cfg.AUX_IN_FEATURE = "res4"
    head_cfg.AUX_LOSS_WEIGHT = aux
    return cfg


def synthetic_batch(size=(64, 96), num_images=2, seed=0):
    """Images whose 8x8-block labels are a function of the colour, so a model can fit them."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        sem_seg = torch.randint(NUM_CLASSES, (size[0] // 8, size[1] // 8), generator=g)
        sem_seg = sem_seg.repeat_interleave(8, 0).repeat_interleave(8, 1)
        image = (sem_seg.float() * 50.0).expand(3, -1, -1).clone()
        image += torch.rand(3, *size, generator=g) * 20.0
        sem_seg[:4, :4] = IGNORE
        batch.append({"image": image, "sem_seg": sem_seg, "height": size[0], "width": size[1]})
    return batch
