"""Config keys of the distillation losses, gathered from the losses themselves.

Each loss declares its keys once, in its own file (a :class:`~radkd_d2.losses.build.LossConfig`
passed to ``register_distill_loss``): one node per loss under ``cfg.MODEL.DISTILL`` (CWD, MGD,
...), the logit KD's keys directly in it. Defaults are the published ones of each method's paper
or official code (cited in the loss's file). Loss weights are not here: they come from
``MODEL.DISTILL.TAPS`` and ``MODEL.DISTILL.KD_WEIGHT``. Losses that combine several terms (MGD,
FGD, FKD, CIRKD memory) keep their published term coefficients here, so a tap weight of 1.0
reproduces the published setting.
"""

from typing import Iterator, Tuple

from detectron2.config import CfgNode as CN

from .build import LOSS_CONFIGS, Option

__all__ = ["add_distill_loss_config", "default_distill_loss_config", "distill_loss_options"]


def add_distill_loss_config(cfg: CN) -> None:
    """Add every registered loss's keys to ``cfg.MODEL.DISTILL`` (creating it when absent)."""
    if "DISTILL" not in cfg.MODEL:
        cfg.MODEL.DISTILL = CN()
    for config in LOSS_CONFIGS.values():
        config.add_to(cfg.MODEL.DISTILL)


def distill_loss_options() -> Iterator[Tuple[str, Option]]:
    """(full key, option) of every loss key, for the start-up checks and the docs."""
    for config in LOSS_CONFIGS.values():
        for option in config.options:
            yield config.key(option), option


def default_distill_loss_config() -> CN:
    """A bare config holding only the distillation-loss keys, at their defaults."""
    cfg = CN()
    cfg.MODEL = CN()
    add_distill_loss_config(cfg)
    return cfg
