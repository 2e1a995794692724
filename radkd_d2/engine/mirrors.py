"""The Detectron2 methods radkd-d2 copies instead of extending, and a check that they have not
changed since.

Two trainer methods have no extension point for what the project needs, so a subclass repeats
them:

* ``DefaultTrainer.__init__`` wraps the model with ``create_ddp_model(model,
  broadcast_buffers=False)``, which always passes ``device_ids``; DDP refuses ``device_ids`` for
  a CPU model (several CPU processes over gloo). :class:`radkd_d2.engine.trainer.Trainer`
  repeats the constructor with ``device_ids=None`` on CPU and its own inner trainer and
  checkpointer.
* ``AMPTrainer.run_step`` asserts CUDA and uses ``torch.cuda.amp.autocast``;
  :class:`radkd_d2.engine.train_loop.MixedPrecisionTrainer` repeats it with ``torch.autocast``
  on the CPU (on CUDA it calls Detectron2's own).

The distillation meta-architectures copy nothing: they call their student's stock ``forward``
and read its features at module paths (:mod:`radkd_d2.modeling.capture`).

Each copy mirrors Detectron2 :data:`DETECTRON2_VERSION`. :data:`FINGERPRINTS` holds a hash of
the original's code (its syntax tree without docstring, so comments and formatting do not
count); :func:`changed_mirrors` names the originals that differ in the installed Detectron2, the
trainer logs a warning for them at start-up, and a test fails on them, so a Detectron2 upgrade
cannot silently diverge from the copies.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import logging
import textwrap
from typing import Callable, Dict, List

from detectron2.engine import AMPTrainer, DefaultTrainer

__all__ = ["DETECTRON2_VERSION", "FINGERPRINTS", "changed_mirrors", "fingerprint", "fingerprint_source", "warn_if_changed"]

DETECTRON2_VERSION = "0.7.2"

# original -> (the function, its fingerprint in DETECTRON2_VERSION)
FINGERPRINTS: Dict[str, tuple] = {
    "detectron2.engine.DefaultTrainer.__init__": (DefaultTrainer.__init__, "a4b8a0be97611513"),
    "detectron2.engine.AMPTrainer.run_step": (AMPTrainer.run_step, "99cecba86e405b81"),
}


def fingerprint(fn: Callable) -> str:
    """A short hash of ``fn``'s code: its syntax tree without the docstring."""
    return fingerprint_source(inspect.getsource(fn))


def fingerprint_source(source: str) -> str:
    """:func:`fingerprint` of a function's source text."""
    node = ast.parse(textwrap.dedent(source)).body[0]
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            node.body = body[1:]
    return hashlib.sha256(ast.dump(node).encode()).hexdigest()[:16]


def changed_mirrors() -> List[str]:
    """The originals whose code differs from the one the copies mirror."""
    return [name for name, (fn, fp) in FINGERPRINTS.items() if fingerprint(fn) != fp]


def warn_if_changed(logger: logging.Logger) -> None:
    """Log a warning for every original that changed (reading the sources once per process)."""
    for name in changed_mirrors():
        logger.warning(
            "%s differs from the Detectron2 %s code that radkd-d2 copies "
            "(radkd_d2/engine/mirrors.py): check the copy before trusting this run",
            name,
            DETECTRON2_VERSION,
        )
