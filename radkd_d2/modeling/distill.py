"""Machinery shared by the Distill* meta-architectures: tap parsing, connectors + losses per
tap (:class:`FeatureDistiller`), the distillation-weight schedule and the loss-balance
diagnostics. The teacher side (construction of the pair, the teacher-holding mixin) is in
:mod:`radkd_d2.modeling.pair`."""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from numbers import Number
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from radkd_d2.errors import ConfigError
from radkd_d2.losses import FEATURE_STATS, build_distill_loss, feature_stats_tensor

from .connectors import build_connector

logger = logging.getLogger(__name__)


@dataclass
class Tap:
    """One distilled (student position, teacher position) pair and its weighted losses."""

    student: str
    teacher: str
    losses: List[tuple] = field(default_factory=list)  # (loss name, weight)
    weight_key: str = "MODEL.DISTILL.TAPS"  # the config key that sets the weights of this tap
    teacher_name: str = ""  # the teacher's NAME with several teachers; "" for the only one

    @property
    def key(self) -> str:
        """Name used in loss and diagnostic keys: ``res5``, or ``res4_to_res5`` when they differ,
        followed by ``_<teacher name>`` with several teachers (``res5_a``). Characters outside
        ``[A-Za-z0-9_]`` of a module path become ``_``."""
        key = self.student if self.student == self.teacher else f"{self.student}_to_{self.teacher}"
        key = re.sub(r"[^A-Za-z0-9_]", "_", key)
        return f"{key}_{self.teacher_name}" if self.teacher_name else key

    @property
    def teacher_ref(self) -> str:
        """The key of its teacher feature: the position, prefixed by ``<name>/`` for one of
        several teachers (the mixed KD target of several teachers is plain ``logits``)."""
        return f"{self.teacher_name}/{self.teacher}" if self.teacher_name else self.teacher

    def term(self, loss_name: str) -> str:
        """Name of one of its weighted losses in the loss dict: ``loss_distill_lad_res5``."""
        return f"loss_distill_{loss_name}_{self.key}"


def parse_taps(entries: Sequence, kd_weight: float = 0.0, *, teacher_name: str = "",
               key: str = "MODEL.DISTILL.TAPS") -> List[Tap]:
    """Group taps entries ``[student_pos, teacher_pos, loss, weight]`` (of config key ``key``) by
    position pair; ``kd_weight > 0`` adds the logit KD term as a ``logits -> logits`` "kd" tap."""
    groups: "OrderedDict[tuple, Tap]" = OrderedDict()
    sourced = [(e, key) for e in entries]
    if kd_weight > 0:
        sourced.append((["logits", "logits", "kd", kd_weight], "MODEL.DISTILL.KD_WEIGHT"))
    for entry, weight_key in sourced:
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 4
            and all(isinstance(x, str) for x in entry[:3])
            and isinstance(entry[3], Number)
        )
        if not ok:
            raise ConfigError(
                f"{key} entry {entry!r} must be [student_position, teacher_position, "
                "loss_name, weight], e.g. ['res5', 'res5', 'lad', 10.0]"
            )
        s, t, name, weight = entry
        if weight < 0:
            raise ConfigError(f"{key} entry {list(entry)}: weight must be >= 0, got {weight}")
        tap = groups.setdefault((s, t), Tap(s, t, weight_key=weight_key, teacher_name=teacher_name))
        if any(n == name.lower() for n, _ in tap.losses):
            raise ConfigError(f"{key}: loss {name!r} appears twice on tap {tap.key}")
        tap.losses.append((name.lower(), float(weight)))
    return list(groups.values())


def current_iteration() -> Optional[int]:
    """The training iteration of the current ``EventStorage``; None outside a training loop."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return None


def _integer_ratio(tap: Tap, student: ShapeSpec, teacher: ShapeSpec) -> int:
    """The stride of the "strided_conv" spatial alignment of ``tap``: the integer k with the
    student map k times the teacher's on both sides (1: equal sizes)."""
    sizes = (student.height, student.width, teacher.height, teacher.width)
    if any(v is None for v in sizes):
        raise ConfigError(f"tap {tap.key}: MODEL.DISTILL.SPATIAL_ALIGN 'strided_conv' needs both feature sizes")
    sh, sw, th, tw = sizes
    if sh % th or sw % tw or sh // th != sw // tw:
        raise ConfigError(
            f"tap {tap.key}: MODEL.DISTILL.SPATIAL_ALIGN = 'strided_conv' needs the student map "
            f"({sh}x{sw}) to be an integer multiple of the teacher's ({th}x{tw}); use 'bilinear' "
            "or 'area', or tap positions whose sizes divide"
        )
    return sh // th


class DistillSchedule:
    """Multiplier of every distillation weight over training: a linear warm-up from 0 to 1 over
    ``warmup_iters`` iterations, then 1, and 0 from ``stop_iter`` on (-1: never), as mmrazor's
    ``StopDistillHook``. Outside a training loop (iteration None) the factor is 1."""

    def __init__(self, warmup_iters: int = 0, stop_iter: int = -1):
        if warmup_iters < 0 or stop_iter < -1:
            raise ConfigError(
                f"MODEL.DISTILL.WARMUP_ITERS = {warmup_iters} must be >= 0 and "
                f"MODEL.DISTILL.STOP_ITER = {stop_iter} >= 0 or -1 (never)"
            )
        self.warmup_iters, self.stop_iter = int(warmup_iters), int(stop_iter)

    @property
    def active(self) -> bool:
        """Whether the factor ever differs from 1."""
        return self.warmup_iters > 0 or self.stop_iter >= 0

    def stopped(self, iteration: Optional[int]) -> bool:
        return iteration is not None and 0 <= self.stop_iter <= iteration

    def factor(self, iteration: Optional[int]) -> float:
        if iteration is None:
            return 1.0
        if self.stopped(iteration):
            return 0.0
        if iteration < self.warmup_iters:
            return iteration / self.warmup_iters
        return 1.0


class LossBalanceMonitor:
    """Gradient norm of each loss term w.r.t. the student features it reaches, on diagnostics
    iterations: ``grad_norm/<term>/<position>`` for every term (task and distillation) and
    tapped student position, ``grad_norm/task/<position>`` for the sum of the task terms, and
    ``grad_ratio/<term>`` = a distillation term's norm at its own tap's student position over the
    task loss's norm there. When a ratio exceeds ``warn_ratio`` for ``patience`` consecutive
    diagnostics periods, one warning names the term and the config key of its weight.

    The norms come from ``torch.autograd.grad`` with ``retain_graph``: one partial backward per
    term, down to the tapped features only (no parameter gradient is touched). Ordinary
    iterations cost nothing.

    Under fp16 autocast the features and their gradients are half precision, and the small
    gradients of a task loss underflow to 0 unless the loss is scaled, as the training step's
    GradScaler scales it. ``scale_fn`` (set by the mixed-precision trainer to its scaler's
    ``get_scale``) gives that scale: each term's gradient is taken of ``loss * scale`` and
    divided by it in fp32, so the ratios measure what the step's backward sees.
    """

    def __init__(
        self,
        taps: Sequence[Tap],
        warn_ratio: float = 10.0,
        patience: int = 3,
        scale_fn: Optional[Callable[[], float]] = None,
    ):
        self.taps = list(taps)
        self.scale_fn = scale_fn
        self.warn_ratio, self.patience = float(warn_ratio), int(patience)
        self._over: Dict[str, int] = {}
        self._warned: set = set()

    def measure(self, losses: Dict[str, torch.Tensor], student_feats: Dict[str, torch.Tensor], iteration: int):
        """Log the gradient norms of ``losses`` at the taps' student positions (one host read)."""
        positions = sorted(
            {t.student for t in self.taps}
            & {p for p, f in student_feats.items() if torch.is_tensor(f) and f.requires_grad}
        )
        if not positions:
            return {}
        feats = [student_feats[p] for p in positions]
        scale = float(self.scale_fn()) if self.scale_fn is not None else 1.0
        norms: Dict[str, torch.Tensor] = {}
        task_grads: Dict[str, torch.Tensor] = {}
        for name, loss in losses.items():
            if not (torch.is_tensor(loss) and loss.requires_grad):
                continue
            grads = torch.autograd.grad(loss * scale, feats, retain_graph=True, allow_unused=True)
            for pos, g in zip(positions, grads):
                if g is None:
                    continue
                g = g.detach().float() / scale
                norms[f"grad_norm/{name}/{pos}"] = g.norm()
                if not name.startswith("loss_distill_"):
                    task_grads[pos] = g if pos not in task_grads else task_grads[pos] + g
        for pos, g in task_grads.items():
            norms[f"grad_norm/task/{pos}"] = g.detach().float().norm()
        for tap in self.taps:
            task = norms.get(f"grad_norm/task/{tap.student}")
            for name, _ in tap.losses:
                term = tap.term(name)
                own = norms.get(f"grad_norm/{term}/{tap.student}")
                if own is not None and task is not None:
                    norms[f"grad_ratio/{term}"] = own / task.clamp_min(1e-12)
        if not norms:
            return {}
        values = dict(zip(norms, torch.stack(list(norms.values())).tolist()))  # one host read
        storage = get_event_storage()
        for key, value in values.items():
            storage.put_scalar(key, value, smoothing_hint=False)
        self._check(values, iteration)
        return values

    def _check(self, values: Dict[str, float], iteration: int) -> None:
        for tap in self.taps:
            for name, weight in tap.losses:
                term = tap.term(name)
                ratio = values.get(f"grad_ratio/{term}")
                if ratio is None:
                    continue
                self._over[term] = self._over.get(term, 0) + 1 if ratio > self.warn_ratio else 0
                if self._over[term] >= self.patience and term not in self._warned:
                    self._warned.add(term)
                    where = (
                        f"MODEL.DISTILL.KD_WEIGHT (= {weight:g}; or MODEL.DISTILL.KD_REDUCTION)"
                        if tap.weight_key == "MODEL.DISTILL.KD_WEIGHT"
                        else f"the weight of {tap.weight_key} entry "
                        f"['{tap.student}', '{tap.teacher}', '{name}', {weight:g}]"
                    )
                    logger.warning(
                        "Distillation term %s dominates the task loss: its gradient at the "
                        "student's %s has been %.1fx the task loss's (above "
                        "MODEL.DISTILL.GRAD_RATIO_WARN = %g) for %d consecutive diagnostics "
                        "periods, up to iteration %d. The student may learn the teacher's "
                        "features at the expense of its own task; lower %s.",
                        term, tap.student, ratio, self.warn_ratio, self._over[term], iteration, where,
                    )


SPATIAL_ALIGN_CHOICES = ("bilinear", "area", "strided_conv")


def as_feature_map(x: torch.Tensor, where: str = "") -> torch.Tensor:
    """A feature as B x C x h x w: maps pass through, an N x C vector (a box head's output, a
    pooled embedding) becomes N x C x 1 x 1; other ranks are refused."""
    if x.dim() == 4:
        return x
    if x.dim() == 2:
        return x[:, :, None, None]
    raise ConfigError(
        f"{where or 'a tapped feature'} has shape {tuple(x.shape)}: a distilled feature must be "
        "B x C x h x w or N x C; tap a module with such an output"
    )


class FeatureDistiller(nn.Module):
    """Connectors and losses for a list of taps.

    For each tap the student feature goes through its connector (when channel counts differ, or
    always with ``always_connect``), is brought to the teacher's spatial size when they differ
    (``spatial_align``: "bilinear" or "area" resizing, or "strided_conv", a learned k x k conv of
    stride k where the student map is k times the teacher's), and every configured loss compares
    it with the teacher feature.

    Parameter names: ``connectors.<tap key>.*``, ``spatial.<tap key>.*`` and
    ``losses.<tap key>__<loss>.*``. Teacher shapes are keyed by :attr:`Tap.teacher_ref`.
    """

    def __init__(
        self,
        taps: Sequence[Tap],
        student_shapes: Mapping[str, ShapeSpec],
        teacher_shapes: Mapping[str, ShapeSpec],
        *,
        connector: str = "conv_bn_relu",
        always_connect: bool = False,
        spatial_align: str = "bilinear",
        distill_cfg=None,
        num_classes: Optional[int] = None,
        diagnostics_period: int = 20,
        warmup_iters: int = 0,
        stop_iter: int = -1,
        grad_ratio_warn: float = 10.0,
        grad_ratio_patience: int = 3,
    ):
        super().__init__()
        if spatial_align not in SPATIAL_ALIGN_CHOICES:
            raise ConfigError(
                f"MODEL.DISTILL.SPATIAL_ALIGN = {spatial_align!r}; allowed: {list(SPATIAL_ALIGN_CHOICES)}"
            )
        self.taps = list(taps)
        self.connectors = nn.ModuleDict()
        self.spatial = nn.ModuleDict()
        self.spatial_align = spatial_align
        self.losses = nn.ModuleDict()
        self.diagnostics_period = diagnostics_period
        self.schedule = DistillSchedule(warmup_iters, stop_iter)
        self.balance = LossBalanceMonitor(self.taps, grad_ratio_warn, grad_ratio_patience)
        for tap in self.taps:
            for side, pos, shapes in (("student", tap.student, student_shapes), ("teacher", tap.teacher_ref, teacher_shapes)):
                if pos not in shapes:
                    raise ConfigError(
                        f"{tap.weight_key}: {side} position {pos!r} of tap {tap.key} does not "
                        f"exist; the {side} provides {sorted(shapes)}"
                    )
            s_shape, t_shape = student_shapes[tap.student], teacher_shapes[tap.teacher_ref]
            cs, ct = s_shape.channels, t_shape.channels
            if cs != ct or (always_connect and connector != "none"):
                if connector == "none":
                    raise ConfigError(
                        f"tap {tap.key}: student {tap.student!r} has {cs} channels but teacher "
                        f"{tap.teacher!r} has {ct}, and MODEL.DISTILL.CONNECTOR is 'none'; use "
                        "'conv_bn_relu' or 'conv', or tap positions with equal channels"
                    )
                self.connectors[tap.key] = build_connector(connector, cs, ct)
            if spatial_align == "strided_conv":
                stride = _integer_ratio(tap, s_shape, t_shape)
                if stride > 1:
                    self.spatial[tap.key] = build_connector("strided_conv", ct, ct, stride=stride)
            for name, weight in tap.losses:
                self.losses[f"{tap.key}__{name}"] = build_distill_loss(
                    name,
                    weight=weight,
                    distill=distill_cfg,
                    num_classes=num_classes,
                    student_channels=ct,
                    teacher_channels=ct,
                )

    @classmethod
    def from_config(
        cls, cfg, taps: Sequence[Tap], student_shapes, teacher_shapes, num_classes=None
    ) -> "FeatureDistiller":
        """The distiller of a ``Distill*`` meta-architecture from its ``MODEL.DISTILL`` keys;
        ``num_classes``: the data set's class count (for losses with per-class state)."""
        d = cfg.MODEL.DISTILL
        return cls(
            taps,
            student_shapes,
            teacher_shapes,
            connector=d.CONNECTOR,
            always_connect=d.ALWAYS_CONNECT,
            spatial_align=d.SPATIAL_ALIGN,
            distill_cfg=d,
            num_classes=num_classes,
            diagnostics_period=d.DIAGNOSTICS_PERIOD,
            warmup_iters=d.WARMUP_ITERS,
            stop_iter=d.STOP_ITER,
            grad_ratio_warn=d.GRAD_RATIO_WARN,
            grad_ratio_patience=d.GRAD_RATIO_PATIENCE,
        )

    @property
    def loss_names(self) -> List[str]:
        """The ``loss_distill_<loss>_<tap key>`` names this distiller returns, in order."""
        return [tap.term(name) for tap in self.taps for name, _ in tap.losses]

    @property
    def student_positions(self) -> set:
        return {t.student for t in self.taps}

    @property
    def teacher_positions(self) -> set:
        """The :attr:`Tap.teacher_ref` of every tap."""
        return {t.teacher_ref for t in self.taps}

    def align(self, tap: Tap, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Student feature mapped to the teacher's channels and spatial size."""
        if tap.key in self.connectors:
            student = self.connectors[tap.key](student)
        if tap.key in self.spatial:
            student = self.spatial[tap.key](student)
        if student.shape[-2:] != teacher.shape[-2:]:
            if self.spatial_align == "area" and all(a >= b for a, b in zip(student.shape[-2:], teacher.shape[-2:])):
                student = F.adaptive_avg_pool2d(student, teacher.shape[-2:])
            else:
                student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        return student

    def forward(
        self,
        student_feats: Dict[str, torch.Tensor],
        teacher_feats: Dict[str, torch.Tensor],
        *,
        factor: float = 1.0,
        **context,
    ) -> Dict[str, torch.Tensor]:
        """Weighted distillation losses, one ``loss_distill_<loss>_<tap key>`` entry each.

        Args:
            student_feats, teacher_feats: feature maps by position (B x C x h x w).
            factor: multiplies every weight (the schedule's value at this iteration).
            context: labels, ignore_value, boxes, image_size, ... passed to every loss.
        """
        losses, stats = {}, {}
        log = self._should_log()
        for tap in self.taps:
            t = as_feature_map(teacher_feats[tap.teacher_ref], f"teacher position {tap.teacher_ref!r}")
            s = as_feature_map(student_feats[tap.student], f"student position {tap.student!r}")
            if s.shape[0] != t.shape[0]:
                raise ConfigError(
                    f"tap {tap.key}: the student feature at {tap.student!r} has {s.shape[0]} rows but "
                    f"the teacher's at {tap.teacher!r} {t.shape[0]}: per-proposal outputs (an R-CNN "
                    "box head) differ between the student's training forward and the teacher's "
                    "inference forward; tap per-image features (backbone, FPN, heads of dense "
                    "detectors and segmentors)"
                )
            s = self.align(tap, s, t)
            for name, _ in tap.losses:
                loss = self.losses[f"{tap.key}__{name}"](s, t, **context)
                losses[tap.term(name)] = loss if factor == 1.0 else loss * factor
            if log:
                stats[tap.key] = feature_stats_tensor(s, t)
        if stats:  # one host read for all taps, on diagnostics iterations only
            storage = get_event_storage()
            values = torch.stack(list(stats.values())).tolist()
            for key, row in zip(stats, values):
                for stat, value in zip(FEATURE_STATS, row):
                    storage.put_scalar(f"distill/{key}/{stat}", value, smoothing_hint=False)
        return losses

    def _should_log(self) -> bool:
        it = current_iteration()
        if self.diagnostics_period <= 0 or not self.training or it is None:
            return False
        return it % self.diagnostics_period == 0

    def zero_losses(self) -> Dict[str, torch.Tensor]:
        """Every distillation loss name with the value 0, after the schedule's stop: no teacher
        forward. The zero depends on every trainable distiller parameter, so DDP (which needs
        each parameter in the graph without ``find_unused_parameters``) still sees them."""
        params = [p for p in self.parameters() if p.requires_grad]
        zero = sum(p.sum() for p in params) * 0.0 if params else torch.zeros(())
        return {name: zero for name in self.loss_names}

    def step(
        self,
        student_feats: Dict[str, torch.Tensor],
        teacher_fn: Callable[[], Dict[str, torch.Tensor]],
        task_losses: Dict[str, torch.Tensor],
        **context,
    ) -> Dict[str, torch.Tensor]:
        """Task and distillation losses of one training step.

        Applies the weight schedule (the teacher is not run once distillation has stopped),
        and on diagnostics iterations measures the gradient balance of the terms.

        Args:
            student_feats: the student's features by position; those of the taps must be the
                tensors the task losses were computed from (for the gradient diagnostics).
            teacher_fn: returns the teacher's features by position (called at most once).
            task_losses: the student's own ``loss_*`` terms.
            context: passed to every distillation loss.
        """
        it = current_iteration()
        factor = self.schedule.factor(it)
        if self.schedule.active and it is not None:
            storage = get_event_storage()
            storage.put_scalar("distill/weight_factor", factor, smoothing_hint=False)
            for tap in self.taps:
                for name, weight in tap.losses:
                    storage.put_scalar(
                        f"distill_weight/{tap.term(name)}", weight * factor, smoothing_hint=False
                    )
        if self.schedule.stopped(it):
            return {**task_losses, **self.zero_losses()}
        losses = {**task_losses, **self(student_feats, teacher_fn(), factor=factor, **context)}
        if self._should_log():
            self.balance.measure(losses, student_feats, it)
        return losses
