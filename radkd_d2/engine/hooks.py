"""Training hooks of radkd-d2."""
from __future__ import annotations

import hashlib
import logging

import torch
from detectron2.engine import HookBase
from detectron2.engine.hooks import IterationTimer
from torch.nn.parallel import DistributedDataParallel

from radkd_d2.errors import TeacherFault

logger = logging.getLogger(__name__)


def module_checksum(module) -> str:
    """SHA-1 over every parameter and buffer (name, dtype, shape, bytes): bit-exact identity."""
    h = hashlib.sha1()
    for name, t in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class StepTimer(IterationTimer):
    """Detectron2's IterationTimer (``time`` from the 4th iteration on, the speed summary at the
    end) that also records every iteration's seconds, the first ones included, as ``step_time``
    (not smoothed: ``metrics.json`` holds the time of the iteration it is written at). A run of a
    few iterations (``tools/rehearsal.py`` trains 2) gets no ``time`` at all from Detectron2."""

    def after_step(self):
        self.trainer.storage.put_scalar("step_time", self._step_timer.seconds(), smoothing_hint=False)
        super().after_step()


class TeacherIntegrityHook(HookBase):
    """Checks that the frozen teacher is bit-identical at the end of training (and at each
    checkpoint period) to what was loaded at the start; raises otherwise."""

    def __init__(self, period: int = 0):
        self._period = period
        self._reference = None

    def _teacher(self):
        model = self.trainer.model
        model = model.module if isinstance(model, DistributedDataParallel) else model
        return getattr(model, "teacher", None)

    def before_train(self):
        teacher = self._teacher()
        if teacher is not None:
            self._reference = module_checksum(teacher)
            logger.info("Teacher checksum at start: %s", self._reference)

    def _check(self, when: str):
        teacher = self._teacher()
        if teacher is None or self._reference is None:
            return
        now = module_checksum(teacher)
        if now != self._reference:
            raise TeacherFault(f"the frozen teacher changed during training ({when}): {self._reference} -> {now}")
        logger.info("Teacher unchanged %s (checksum %s)", when, now)

    def after_step(self):
        if self._period > 0 and (self.trainer.iter + 1) % self._period == 0:
            self._check(f"at iteration {self.trainer.iter}")

    def after_train(self):
        self._check("at the end of training")
