"""Config keys of the distillation losses: one node per loss under ``cfg.MODEL.DISTILL``.

Defaults are the published ones of each method's paper or official code (cited per key).
Loss weights are not here: they come from ``MODEL.DISTILL.TAPS``. Losses that combine
several terms (MGD, FGD, FKD, CIRKD memory) keep their published term coefficients here, so
a tap weight of 1.0 reproduces the published setting. The logit-KD temperature is
``MODEL.DISTILL.KD_TEMPERATURE`` (declared in ``radkd_d2/config.py``).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_distill_loss_config", "default_distill_loss_config"]


def add_distill_loss_config(cfg: CN) -> None:
    """Add the per-loss hyper-parameter nodes to ``cfg.MODEL.DISTILL``."""
    if "DISTILL" not in cfg.MODEL:
        cfg.MODEL.DISTILL = CN()
    d = cfg.MODEL.DISTILL

    # Channel-wise distillation (Shu et al., ICCV 2021).
    d.CWD = CN()
    d.CWD.TAU = 4.0  # softmax temperature of the per-channel spatial distributions (paper: 4)

    # Masked generative distillation (Yang et al., ECCV 2022).
    d.MGD = CN()
    d.MGD.ALPHA = 2e-5  # alpha_mgd, coefficient of the summed squared error (seg and det)
    d.MGD.MASK_RATIO = 0.75  # lambda_mgd, fraction of student pixels masked (seg; RetinaNet 0.65)

    # Structured KD, pair-wise term (Liu et al., CVPR 2019).
    d.SKD = CN()
    d.SKD.POOL_SCALE = 0.5  # beta: max-pool window = this fraction of H and W (0.5 -> 2x2 nodes)

    # Cross-image relational KD (Yang et al., CVPR 2022).
    d.CIRKD = CN()
    d.CIRKD.CONTRAST_TEMPERATURE = 0.1  # temperature of the pixel-similarity logits
    d.CIRKD.KD_TEMPERATURE = 1.0  # temperature of the KL between similarity distributions
    d.CIRKD.MINIBATCH_POOL = (
        2  # avg-pool window before the HW x HW mini-batch similarities; 1 = off
    )
    d.CIRKD.PIXEL_MEMORY_SIZE = 20000  # teacher pixel embeddings kept per class
    d.CIRKD.REGION_MEMORY_SIZE = 2000  # teacher region (class-mean) embeddings kept per class
    d.CIRKD.PIXEL_CONTRAST_SIZE = 4096  # pixel-memory entries sampled per step (all classes)
    d.CIRKD.REGION_CONTRAST_SIZE = 1024  # region-memory entries sampled per step (all classes)
    d.CIRKD.PIXEL_UPDATE_FREQ = 16  # pixels enqueued per class per image
    d.CIRKD.PIXEL_WEIGHT = 0.1  # coefficient of the memory pixel-to-pixel term
    d.CIRKD.REGION_WEIGHT = 0.1  # coefficient of the memory pixel-to-region term

    # Focal and global distillation (Yang et al., CVPR 2022); RetinaNet values.
    d.FGD = CN()
    d.FGD.TEMPERATURE = 0.5  # T of the spatial and channel attention softmaxes
    d.FGD.ALPHA = 1e-3  # foreground feature-imitation coefficient
    d.FGD.BETA = 5e-4  # background feature-imitation coefficient
    d.FGD.GAMMA = 5e-4  # attention (mask) loss coefficient
    d.FGD.LAMBDA = 5e-6  # global (GcBlock relation) loss coefficient

    # Pearson-correlation KD (Cao et al., NeurIPS 2022); published weight RetinaNet 10, FRCNN 6.
    d.PKD = CN()
    d.PKD.BATCH_STATS = False  # True: per-channel stats over the whole batch (official code)

    # Attention-guided feature KD (Zhang & Ma, ICLR 2021); one-stage detector values.
    d.FKD = CN()
    d.FKD.TEMPERATURE = 0.5  # T of the spatial and channel attention softmaxes
    d.FKD.FEATURE_WEIGHT = 4e-4  # coefficient of the attention-masked feature loss
    d.FKD.ATTENTION_WEIGHT = 2e-2  # coefficient of the attention-transfer term


def default_distill_loss_config() -> CN:
    """A bare config holding only the distillation-loss nodes, at their defaults."""
    cfg = CN()
    cfg.MODEL = CN()
    add_distill_loss_config(cfg)
    return cfg
