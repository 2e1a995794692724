"""Registry, base class and builder of the distillation losses."""

import inspect
from typing import Any, Dict, Optional

from detectron2.utils.registry import Registry
from torch import nn

from radkd_d2.errors import UnknownDistillLossError  # noqa: F401  (re-exported)

from ._utils import check_weight
from .config import default_distill_loss_config

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "DistillLoss",
    "UnknownDistillLossError",
    "build_distill_loss",
    "register_distill_loss",
    "loss_config_node",
    "loss_label",
]

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Registry for distillation losses: lower-case names ("lad", "cwd", ...) -> ``DistillLoss``
subclasses. Each class provides ``from_config(cfg, *, weight, student_channels,
teacher_channels)`` returning its constructor keyword arguments, and its ``forward(student,
teacher, **context)`` returns the weighted scalar loss. Use :func:`build_distill_loss` to build
one; register new ones with :func:`register_distill_loss`.
"""


def register_distill_loss(*names: str, label: Optional[str] = None):
    """Class decorator registering a loss under one or more lower-case names.

    The first name is the canonical one (kept as ``cls.NAME``); the others are aliases.
    ``label`` is the name reports and tables show (the paper's; default the canonical name in
    capitals, "LAD"), kept as ``cls.LABEL``.
    """
    if not names:
        raise ValueError("register_distill_loss needs at least one name")

    def deco(cls):
        for n in names:
            # fvcore's Registry only names objects by __name__; we need several short names.
            DISTILL_LOSS_REGISTRY._do_register(n.lower(), cls)
        cls.NAME = names[0].lower()
        cls.LABEL = label or cls.NAME.upper()
        return cls

    return deco


def loss_label(name: str) -> str:
    """The label reports show for a registered loss name or alias ("naive" -> "Naive",
    "md" -> "MD", "cirkd_memory" -> "CIRKD"); an unregistered name in capitals."""
    key = str(name).lower()
    if key in DISTILL_LOSS_REGISTRY:
        return DISTILL_LOSS_REGISTRY.get(key).LABEL
    return key.upper()


def loss_config_node(cfg: Optional[Any], node: str) -> Any:
    """Return ``cfg.MODEL.DISTILL.<node>``; with ``cfg=None``, the node of the defaults."""
    if cfg is None:
        cfg = default_distill_loss_config()
    try:
        return getattr(cfg.MODEL.DISTILL, node)
    except AttributeError as e:
        raise KeyError(
            f"config has no MODEL.DISTILL.{node}; call add_radkd_config(cfg) (or "
            f"add_distill_loss_config) before building distillation losses"
        ) from e


class DistillLoss(nn.Module):
    """Base of the registered loss modules: holds the weight, swallows unknown context.

    Subclasses implement ``forward(student, teacher, **context)`` returning
    ``self.weight * <loss>``; context keys they don't use are ignored.
    """

    NAME = ""
    LABEL = ""

    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = check_weight(weight, type(self).__name__)

    @classmethod
    def from_config(
        cls,
        cfg: Optional[Any],
        *,
        weight: float = 1.0,
        student_channels: Optional[int] = None,
        teacher_channels: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Constructor kwargs from a config (``None``: published defaults)."""
        return {"weight": weight}

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


def _init_params(cls) -> set:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}


def build_distill_loss(
    name: str,
    *,
    weight: float = 1.0,
    cfg: Optional[Any] = None,
    student_channels: Optional[int] = None,
    teacher_channels: Optional[int] = None,
    **overrides: Any,
) -> DistillLoss:
    """Build a registered distillation loss module.

    Args:
        name: registered name, case-insensitive ("lad", "cad", "pad", "cwd", ...).
        weight: multiplier of the returned loss; must be >= 0.
        cfg: full Detectron2 config with radkd keys; None uses the published defaults
            declared in :mod:`radkd_d2.losses.config`.
        student_channels, teacher_channels: channel counts of the two features, needed by
            losses with learnable parts (MGD, FGD, CIRKD memory).
        overrides: constructor keyword arguments that replace config values.
    """
    key = str(name).lower()
    if key not in DISTILL_LOSS_REGISTRY:
        known = ", ".join(sorted(n for n, _ in DISTILL_LOSS_REGISTRY))
        raise UnknownDistillLossError(
            f"Unknown distillation loss {name!r}; registered names: {known}"
        )
    cls = DISTILL_LOSS_REGISTRY.get(key)
    weight = check_weight(weight, f"distillation loss {name!r}")
    kwargs = cls.from_config(
        cfg, weight=weight, student_channels=student_channels, teacher_channels=teacher_channels
    )
    accepted = _init_params(cls)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(
            f"distillation loss {name!r} got unknown arguments {unknown}; "
            f"it accepts {sorted(accepted)}"
        )
    kwargs.update(overrides)
    return cls(**kwargs)
