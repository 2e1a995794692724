"""Registry, base class and builder of the distillation losses."""

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from detectron2.config import CfgNode as CN
from detectron2.utils.registry import Registry
from torch import nn

from radkd_d2.errors import UnknownDistillLossError  # noqa: F401  (re-exported)

from ._utils import check_weight

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "LOSS_CONFIGS",
    "DistillLoss",
    "LossConfig",
    "Option",
    "UnknownDistillLossError",
    "build_distill_loss",
    "register_distill_loss",
    "loss_label",
]


@dataclass(frozen=True)
class Option:
    """One config key of a loss: ``MODEL.DISTILL[.<node>].<key>``, read into the constructor
    argument ``arg``. ``help`` is its one-line description; ``choices`` (allowed values) and
    ``positive`` (must be > 0) are checked at start-up."""

    key: str
    arg: str
    default: Any
    help: str
    choices: Tuple[Any, ...] = ()
    positive: bool = False


LOSS_CONFIGS: Dict[str, "LossConfig"] = {}


class LossConfig:
    """The config keys of one loss (or of a family sharing a node), declared once in the loss's
    own file and added to ``MODEL.DISTILL`` by :func:`add_distill_loss_config`.

    ``node`` names the sub-node of ``MODEL.DISTILL`` ("CWD"); ``""`` puts the keys directly into
    ``MODEL.DISTILL`` (the logit KD's ``KD_TEMPERATURE``). The defaults are attributes named by
    constructor argument (``CWD_CONFIG.tau`` is 4.0), so the loss's function and module take their
    defaults from here and each default is written once.
    """

    def __init__(self, node: str, *options: Option):
        if node in LOSS_CONFIGS:
            raise ValueError(f"a loss config for MODEL.DISTILL node {node!r} is declared twice")
        self.node = node
        self.options = options
        self._defaults = {o.arg: o.default for o in options}
        LOSS_CONFIGS[node] = self

    def __getattr__(self, arg: str) -> Any:
        try:
            return self.__dict__["_defaults"][arg]
        except KeyError:
            raise AttributeError(f"loss config {self.node!r} has no option {arg!r}") from None

    def key(self, option: Option) -> str:
        """The full config key of ``option``, e.g. ``MODEL.DISTILL.CWD.TAU``."""
        return ".".join(["MODEL.DISTILL"] + ([self.node] if self.node else []) + [option.key])

    def add_to(self, distill: CN) -> None:
        """Declare the keys, at their defaults, in ``distill`` (``cfg.MODEL.DISTILL``)."""
        if self.node:
            distill[self.node] = CN()
            distill = distill[self.node]
        for o in self.options:
            distill[o.key] = o.default

    def read(self, distill: Optional[Any]) -> Dict[str, Any]:
        """Constructor arguments from ``distill`` (``cfg.MODEL.DISTILL``); ``None``: defaults."""
        if distill is None:
            return dict(self._defaults)
        node = distill
        if self.node:
            if self.node not in distill:
                raise KeyError(
                    f"config has no MODEL.DISTILL.{self.node}; call add_radkd_config(cfg) (or "
                    f"add_distill_loss_config) before building distillation losses"
                )
            node = distill[self.node]
        return {o.arg: node.get(o.key, o.default) for o in self.options}

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Registry for distillation losses: lower-case names ("lad", "cwd", ...) -> ``DistillLoss``
subclasses. A class declares its config keys with ``config=LossConfig(...)`` at registration;
``from_config(distill, *, weight, **facts)`` reads those keys from ``cfg.MODEL.DISTILL`` and
passes the facts its constructor takes (``num_classes``, ``student_channels``,
``teacher_channels``); ``forward(student, teacher, **context)`` returns the weighted scalar
loss. Build one with :func:`build_distill_loss`; register new ones with
:func:`register_distill_loss`.
"""


def register_distill_loss(
    *names: str, label: Optional[str] = None, config: Optional[LossConfig] = None
):
    """Class decorator registering a loss under one or more lower-case names.

    The first name is the canonical one (kept as ``cls.NAME``); the others are aliases.
    ``label`` is the name reports and tables show (the paper's; default the canonical name in
    capitals, "LAD"), kept as ``cls.LABEL``. ``config`` declares the loss's config keys (kept as
    ``cls.CONFIG``); its options whose ``arg`` the constructor takes are read from the config.
    """
    if not names:
        raise ValueError("register_distill_loss needs at least one name")

    def deco(cls):
        for n in names:
            # fvcore's Registry only names objects by __name__; we need several short names.
            DISTILL_LOSS_REGISTRY._do_register(n.lower(), cls)
        cls.NAME = names[0].lower()
        cls.LABEL = label or cls.NAME.upper()
        cls.CONFIG = config
        return cls

    return deco


def loss_label(name: str) -> str:
    """The label reports show for a registered loss name or alias ("naive" -> "Naive",
    "md" -> "MD", "cirkd_memory" -> "CIRKD"); an unregistered name in capitals."""
    key = str(name).lower()
    if key in DISTILL_LOSS_REGISTRY:
        return DISTILL_LOSS_REGISTRY.get(key).LABEL
    return key.upper()


class DistillLoss(nn.Module):
    """Base of the registered loss modules: holds the weight, swallows unknown context.

    Subclasses implement ``forward(student, teacher, **context)`` returning
    ``self.weight * <loss>``; context keys they don't use are ignored.
    """

    NAME = ""
    LABEL = ""
    CONFIG: Optional[LossConfig] = None

    def __init__(self, *, weight: float = 1.0):
        super().__init__()
        self.weight = check_weight(weight, type(self).__name__)

    @classmethod
    def from_config(cls, distill: Optional[Any] = None, *, weight: float = 1.0, **facts) -> Dict[str, Any]:
        """Constructor kwargs: ``weight``, the loss's own keys (``cls.CONFIG``) read from
        ``distill`` (``cfg.MODEL.DISTILL``; ``None``: the defaults), and those of the ``facts``
        (``num_classes``, ``student_channels``, ``teacher_channels``) the constructor takes."""
        accepted = _init_params(cls)
        kwargs: Dict[str, Any] = {"weight": weight}
        if cls.CONFIG is not None:
            kwargs.update((k, v) for k, v in cls.CONFIG.read(distill).items() if k in accepted)
        kwargs.update((k, v) for k, v in facts.items() if k in accepted)
        return kwargs

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


def _init_params(cls) -> set:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind != p.VAR_KEYWORD}


def build_distill_loss(
    name: str,
    *,
    weight: float = 1.0,
    distill: Optional[Any] = None,
    num_classes: Optional[int] = None,
    student_channels: Optional[int] = None,
    teacher_channels: Optional[int] = None,
    **overrides: Any,
) -> DistillLoss:
    """Build a registered distillation loss module.

    Args:
        name: registered name, case-insensitive ("lad", "cad", "pad", "cwd", ...).
        weight: multiplier of the returned loss; must be >= 0.
        distill: the ``cfg.MODEL.DISTILL`` node; the loss reads only its own keys from it
            (``DistillLoss.CONFIG``). ``None`` uses the defaults declared with the loss.
        num_classes: the data set's class count, for losses that keep per-class state (CIRKD
            memory).
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
        distill,
        weight=weight,
        num_classes=num_classes,
        student_channels=student_channels,
        teacher_channels=teacher_channels,
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
