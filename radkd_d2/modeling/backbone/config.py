"""Config keys of the timm-based backbones (MobileNetV2, Swin), each declared once with a comment.

Called from :func:`radkd_d2.config.add_radkd_config`; the dilated ResNet keys (``MODEL.DRN``) live
there.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_backbone_config"]


def add_backbone_config(cfg: CN) -> None:
    """Add ``MODEL.MOBILENETV2`` and ``MODEL.SWIN`` to a Detectron2 config."""
    # MobileNetV2 (timm "mobilenetv2_*"), the paper's MV2 student; res2..res5 = 24/32/96/320 ch.
    cfg.MODEL.MOBILENETV2 = CN()
    cfg.MODEL.MOBILENETV2.WIDTH_MULT = 1.0  # timm width variant: 0.35, 0.5, 0.75, 1.0 or 1.4
    cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE = 8  # 8 (dilated, as CIRKD/SKD), 16 or 32
    cfg.MODEL.MOBILENETV2.NORM = "BN"  # "BN", "SyncBN" or "FrozenBN" (timm builds BatchNorm2d)
    cfg.MODEL.MOBILENETV2.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # stages returned

    # Swin Transformer (timm SwinTransformer). Defaults: Swin-T; Swin-B: 128, [2,2,18,2], [4..32].
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.EMBED_DIM = 96  # channels of res2; doubled at every later stage
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # transformer blocks per stage
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # side of the attention windows (in tokens)
    cfg.MODEL.SWIN.MLP_RATIO = 4.0  # hidden width of the MLPs / channels
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth (0.3 in the Swin UPerNet recipes)
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # returned, strides 4..32
