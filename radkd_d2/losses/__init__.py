"""Distillation losses: plain functions of (student, teacher) tensors plus registered modules.

Importing this package registers every loss in :data:`DISTILL_LOSS_REGISTRY`; build one with
:func:`build_distill_loss`.
"""

from .angular import (
    FEATURE_STATS,
    CADLoss,
    LADLoss,
    PADLoss,
    cad_loss,
    feature_stats,
    feature_stats_tensor,
    lad_loss,
    pad_loss,
)
from .build import (
    DISTILL_LOSS_REGISTRY,
    DistillLoss,
    LossConfig,
    Option,
    UnknownDistillLossError,
    build_distill_loss,
    loss_label,
    register_distill_loss,
)
from .cirkd import (
    CIRKDMemoryLoss,
    CIRKDMiniBatchLoss,
    cirkd_minibatch_loss,
    cirkd_pixel_loss,
    cirkd_region_loss,
)
from .config import add_distill_loss_config, default_distill_loss_config, distill_loss_options
from .cwd import CWDLoss, cwd_loss
from .fgd import FGDLoss, GcContext, fgd_attention, fgd_loss, fgd_masks
from .fitnet import (
    FitNetLoss,
    MagnitudeLoss,
    NaiveFeatureLoss,
    fitnet_hint_loss,
    magnitude_loss,
    naive_feature_loss,
)
from .fkd import FKDLoss, fkd_attention, fkd_loss
from .ifvd import IFVDLoss, ifv_map, ifvd_loss
from .logits import LogitsKDLoss, logits_kd_loss, mix_teacher_logits
from .mgd import MGDLoss, mgd_loss, mgd_random_mask
from .pkd import PKDLoss, pkd_loss, pkd_normalize
from .skd import (
    HOLISTIC_CONFIG,
    SelfAttention2d,
    SKDHolisticDiscriminator,
    SKDLoss,
    frozen_parameters,
    gradient_penalty,
    holistic_critic_loss,
    holistic_student_loss,
    skd_holistic_loss,
    skd_loss,
)

__all__ = [
    "CADLoss",
    "LADLoss",
    "PADLoss",
    "cad_loss",
    "FEATURE_STATS",
    "feature_stats",
    "feature_stats_tensor",
    "lad_loss",
    "pad_loss",
    "DISTILL_LOSS_REGISTRY",
    "DistillLoss",
    "UnknownDistillLossError",
    "build_distill_loss",
    "distill_loss_options",
    "LossConfig",
    "Option",
    "loss_label",
    "register_distill_loss",
    "CIRKDMemoryLoss",
    "CIRKDMiniBatchLoss",
    "cirkd_minibatch_loss",
    "cirkd_pixel_loss",
    "cirkd_region_loss",
    "add_distill_loss_config",
    "default_distill_loss_config",
    "CWDLoss",
    "cwd_loss",
    "FGDLoss",
    "GcContext",
    "fgd_attention",
    "fgd_loss",
    "fgd_masks",
    "FitNetLoss",
    "MagnitudeLoss",
    "NaiveFeatureLoss",
    "fitnet_hint_loss",
    "mix_teacher_logits",
    "magnitude_loss",
    "naive_feature_loss",
    "FKDLoss",
    "fkd_attention",
    "fkd_loss",
    "IFVDLoss",
    "ifv_map",
    "ifvd_loss",
    "LogitsKDLoss",
    "logits_kd_loss",
    "MGDLoss",
    "mgd_loss",
    "mgd_random_mask",
    "PKDLoss",
    "pkd_loss",
    "pkd_normalize",
    "HOLISTIC_CONFIG",
    "SelfAttention2d",
    "SKDHolisticDiscriminator",
    "SKDLoss",
    "frozen_parameters",
    "gradient_penalty",
    "holistic_critic_loss",
    "holistic_student_loss",
    "skd_holistic_loss",
    "skd_loss",
]
