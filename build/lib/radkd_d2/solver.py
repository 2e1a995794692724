"""Poly learning-rate schedule (the paper's recipe), built from fvcore's param schedulers in the
same way Detectron2 builds its own schedules."""
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler


def build_lr_scheduler(cfg, optimizer):
    """``WarmupPolyLR``: lr = base_lr · (1 − iter/max_iter)^POLY_LR_POWER after linear warmup;
    every other name goes to Detectron2's ``build_lr_scheduler``."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = WarmupParamScheduler(
        PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_LR_POWER),
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
