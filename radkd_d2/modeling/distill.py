"""Machinery shared by the Distill* meta-architectures: tap parsing, connectors + losses per
tap (:class:`FeatureDistiller`), diagnostics, and the teacher-holding mixin."""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from numbers import Number
from typing import Dict, List, Mapping, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from radkd_d2.engine.checks import ConfigError
from radkd_d2.losses import FEATURE_STATS, build_distill_loss, feature_stats_tensor

from .connectors import build_connector
from .teacher import teacher_input_tensors

logger = logging.getLogger(__name__)


@dataclass
class Tap:
    """One distilled (student position, teacher position) pair and its weighted losses."""

    student: str
    teacher: str
    losses: List[tuple] = field(default_factory=list)  # (loss name, weight)

    @property
    def key(self) -> str:
        """Name used in loss and diagnostic keys: ``res5``, or ``res4_to_res5`` when they differ."""
        return self.student if self.student == self.teacher else f"{self.student}_to_{self.teacher}"


def parse_taps(entries: Sequence, kd_weight: float = 0.0) -> List[Tap]:
    """Group ``MODEL.DISTILL.TAPS`` entries ``[student_pos, teacher_pos, loss, weight]`` by
    position pair; ``kd_weight > 0`` adds the logit KD term as a ``logits -> logits`` "kd" tap."""
    groups: "OrderedDict[tuple, Tap]" = OrderedDict()
    entries = list(entries) + ([["logits", "logits", "kd", kd_weight]] if kd_weight > 0 else [])
    for entry in entries:
        ok = (
            isinstance(entry, (list, tuple))
            and len(entry) == 4
            and all(isinstance(x, str) for x in entry[:3])
            and isinstance(entry[3], Number)
        )
        if not ok:
            raise ConfigError(
                f"MODEL.DISTILL.TAPS entry {entry!r} must be [student_position, teacher_position, "
                "loss_name, weight], e.g. ['res5', 'res5', 'lad', 10.0]"
            )
        s, t, name, weight = entry
        if weight < 0:
            raise ConfigError(f"MODEL.DISTILL.TAPS entry {list(entry)}: weight must be >= 0, got {weight}")
        tap = groups.setdefault((s, t), Tap(s, t))
        if any(n == name.lower() for n, _ in tap.losses):
            raise ConfigError(f"MODEL.DISTILL.TAPS: loss {name!r} appears twice on tap {tap.key}")
        tap.losses.append((name.lower(), float(weight)))
    return list(groups.values())


class FeatureDistiller(nn.Module):
    """Connectors and losses for a list of taps.

    For each tap the student feature goes through its connector (when channel counts differ, or
    always with ``always_connect``), is bilinearly resized to the teacher's spatial size when
    they differ, and every configured loss compares it with the teacher feature.

    Parameter names: ``connectors.<tap key>.*`` and ``losses.<tap key>__<loss>.*``.
    """

    def __init__(
        self,
        taps: Sequence[Tap],
        student_shapes: Mapping[str, ShapeSpec],
        teacher_shapes: Mapping[str, ShapeSpec],
        *,
        connector: str = "conv_bn_relu",
        always_connect: bool = False,
        loss_cfg=None,
        diagnostics_period: int = 20,
    ):
        super().__init__()
        self.taps = list(taps)
        self.connectors = nn.ModuleDict()
        self.losses = nn.ModuleDict()
        self.diagnostics_period = diagnostics_period
        for tap in self.taps:
            for side, pos, shapes in (("student", tap.student, student_shapes), ("teacher", tap.teacher, teacher_shapes)):
                if pos not in shapes:
                    raise ConfigError(
                        f"MODEL.DISTILL.TAPS: {side} position {pos!r} of tap {tap.key} does not "
                        f"exist; the {side} provides {sorted(shapes)}"
                    )
            cs, ct = student_shapes[tap.student].channels, teacher_shapes[tap.teacher].channels
            if cs != ct or (always_connect and connector != "none"):
                if connector == "none":
                    raise ConfigError(
                        f"tap {tap.key}: student {tap.student!r} has {cs} channels but teacher "
                        f"{tap.teacher!r} has {ct}, and MODEL.DISTILL.CONNECTOR is 'none'; use "
                        "'conv_bn_relu' or 'conv', or tap positions with equal channels"
                    )
                self.connectors[tap.key] = build_connector(connector, cs, ct)
            for name, weight in tap.losses:
                self.losses[f"{tap.key}__{name}"] = build_distill_loss(
                    name, weight=weight, cfg=loss_cfg, student_channels=ct, teacher_channels=ct
                )

    @property
    def student_positions(self) -> set:
        return {t.student for t in self.taps}

    @property
    def teacher_positions(self) -> set:
        return {t.teacher for t in self.taps}

    def align(self, tap: Tap, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Student feature mapped to the teacher's channels and spatial size."""
        if tap.key in self.connectors:
            student = self.connectors[tap.key](student)
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        return student

    def forward(
        self, student_feats: Dict[str, torch.Tensor], teacher_feats: Dict[str, torch.Tensor], **context
    ) -> Dict[str, torch.Tensor]:
        """Weighted distillation losses, one ``loss_distill_<loss>_<tap key>`` entry each.

        ``context`` (labels, ignore_value, boxes, image_size, ...) is passed to every loss.
        """
        losses, stats = {}, {}
        log = self._should_log()
        for tap in self.taps:
            t = teacher_feats[tap.teacher]
            s = self.align(tap, student_feats[tap.student], t)
            for name, _ in tap.losses:
                losses[f"loss_distill_{name}_{tap.key}"] = self.losses[f"{tap.key}__{name}"](s, t, **context)
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
        if self.diagnostics_period <= 0 or not self.training:
            return False
        try:
            storage = get_event_storage()
        except AssertionError:  # called outside a training loop
            return False
        return storage.iter % self.diagnostics_period == 0


class TeacherMixin:
    """For ``nn.Module`` meta-architectures that hold a frozen ``self.teacher``.

    * ``train(mode)`` keeps the teacher in eval mode (BatchNorm statistics, dropout);
    * ``state_dict`` leaves the teacher out, so checkpoints hold only trainable state; resume
      reloads the teacher from its own weights; ``load_state_dict`` does not report the absent
      teacher keys as missing;
    * ``student_state_dict`` is the plain student: no teacher, no distiller (connectors, loss
      modules such as MGD's generator), loadable by the stock meta-architecture.
    """

    TEACHER_PREFIX = "teacher."
    DISTILL_PREFIXES = ("teacher.", "distiller.")
    teacher_dtype: torch.dtype = torch.float32  # MODEL.DISTILL.TEACHER.DTYPE, used on GPU only

    def teacher_context(self):
        """Context for teacher forwards: no autograd graph, and autocast to ``teacher_dtype``
        on GPU (fp16/bf16 halves the teacher's cost there; losses compute in fp32 anyway).

        ``torch.no_grad`` rather than ``torch.inference_mode``: the losses save the teacher
        features for their backward, which autograd refuses for inference tensors (it would
        take a copy of every tapped feature to get around it)."""
        device_type = next(self.teacher.parameters()).device.type
        low = self.teacher_dtype != torch.float32 and device_type == "cuda"
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if low:
            stack.enter_context(torch.autocast(device_type, dtype=self.teacher_dtype))
        return stack

    def teacher_images(self, batched_inputs: List[dict]) -> ImageList:
        """A batch as the teacher takes it: its channel order, its normalisation, padded to its
        backbone's size divisibility. ``input_format`` / ``teacher_input_format`` are set by
        the meta-architecture."""
        t = self.teacher
        images = teacher_input_tensors(batched_inputs, self.input_format, self.teacher_input_format, t.device)
        return ImageList.from_tensors(
            [(x - t.pixel_mean) / t.pixel_std for x in images],
            t.backbone.size_divisibility,
            padding_constraints=t.backbone.padding_constraints,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in [k for k in sd if k.startswith(prefix + self.TEACHER_PREFIX)]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        result = super().load_state_dict(state_dict, strict=False, **kwargs)
        missing = [k for k in result.missing_keys if not k.startswith(self.TEACHER_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"missing keys {missing}, unexpected keys {result.unexpected_keys}")
        return type(result)(missing, result.unexpected_keys)

    def student_state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.DISTILL_PREFIXES)}


def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, prefixes: Sequence[str]
) -> List[str]:
    """Copy teacher parameters and buffers into ``student`` (in place) for every state-dict key
    that starts with one of ``prefixes`` and exists in the teacher with the same shape: the
    MGD/FGD recipe of starting the student's neck and head from the teacher's.

    Every copied key is logged, and so is every skipped one (absent from the teacher, or of
    another shape).

    Returns:
        the copied keys, sorted.

    Raises:
        ConfigError: a prefix matches no student key, or none of its keys could be copied.
    """
    s_state, t_state = student.state_dict(), teacher.state_dict()
    copied, skipped = [], []
    for prefix in prefixes:
        keys = sorted(k for k in s_state if k.startswith(prefix))
        if not keys:
            roots = sorted({k.split(".")[0] + "." for k in s_state})
            raise ConfigError(
                f"MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER: prefix {prefix!r} matches no student "
                f"parameter or buffer (student keys start with {roots})"
            )
        ok = [k for k in keys if k in t_state and t_state[k].shape == s_state[k].shape]
        if not ok:
            raise ConfigError(
                f"MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER: no student key under {prefix!r} has a "
                f"teacher counterpart of the same shape (e.g. {keys[0]}: student "
                f"{tuple(s_state[keys[0]].shape)}, teacher "
                f"{tuple(t_state[keys[0]].shape) if keys[0] in t_state else 'absent'})"
            )
        copied += ok
        skipped += [
            f"{k}: student {tuple(s_state[k].shape)}, teacher "
            f"{tuple(t_state[k].shape) if k in t_state else 'absent'}"
            for k in keys
            if k not in ok
        ]
    copied = sorted(set(copied))
    with torch.no_grad():
        for k in copied:
            s_state[k].copy_(t_state[k])  # state_dict tensors share storage with the student's
    logger.info(
        "Initialised %d student tensors from the teacher (%s):\n%s",
        len(copied), ", ".join(prefixes), "\n".join(f"  {k}" for k in copied),
    )
    if skipped:
        logger.warning(
            "Not initialised from the teacher (%d keys, shapes differ or absent):\n%s",
            len(skipped), "\n".join(f"  {k}" for k in sorted(set(skipped))),
        )
    return copied

