"""The teacher-student pair both Distill* meta-architectures share: one construction path for
the frozen teacher and the :class:`~radkd_d2.modeling.distill.FeatureDistiller`
(:func:`build_teacher_and_distiller`), the teacher-holding mixin (:class:`TeacherMixin`) and
the copy of teacher weights into the student (:func:`init_student_from_teacher`)."""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList
from torch import nn

from radkd_d2.errors import ConfigError

from .distill import FeatureDistiller, Tap
from .teacher import build_teacher, teacher_input_tensors

logger = logging.getLogger(__name__)

def input_frame(student: nn.Module, teacher: nn.Module, *, shared: bool) -> int:
    """The size divisibility a distillation pair pads each batch to, so that the student's and
    the teacher's feature maps cover the same image area.

    Backbones that pad alike keep their own value. When their size divisibilities differ (a
    stride-16 teacher and a stride-8 student: an input of 120 rows is padded to 128 for one and
    not for the other, and resizing one map onto the other would shift every position), the pair
    is refused unless ``shared`` (MODEL.DISTILL.SHARED_PADDING): then both pad to the least
    common multiple, one frame for both. Different padding constraints are always refused.

    Args:
        student, teacher: the backbones (``size_divisibility``, ``padding_constraints``).
    """
    s_pad = (student.size_divisibility, student.padding_constraints)
    t_pad = (teacher.size_divisibility, teacher.padding_constraints)
    if s_pad == t_pad:
        return student.size_divisibility
    if shared and s_pad[1] == t_pad[1]:
        return math.lcm(max(1, s_pad[0]), max(1, t_pad[0]))
    hint = (
        "; set MODEL.DISTILL.SHARED_PADDING True to pad every batch to their least common "
        f"multiple ({math.lcm(max(1, s_pad[0]), max(1, t_pad[0]))}) for both"
        if s_pad[1] == t_pad[1] else ""
    )
    raise ConfigError(
        f"student and teacher pad their inputs differently (size divisibility, constraints: "
        f"{s_pad} vs {t_pad}); their feature maps would cover different image areas and not "
        f"align{hint}"
    )


def build_teacher_and_distiller(
    cfg,
    *,
    kind: str,
    teacher_type: type,
    num_classes: Callable[[nn.Module], int],
    student_classes: int,
    classes_key: str,
    taps: Sequence[Tap],
    student_shapes: Dict[str, ShapeSpec],
    teacher_shapes: Callable[[nn.Module], Dict[str, ShapeSpec]],
) -> dict:
    """The one construction path of every Distill* meta-architecture: the frozen teacher from
    ``MODEL.DISTILL.TEACHER`` (checked to be a ``teacher_type`` predicting the student's classes)
    and the :class:`FeatureDistiller` over ``taps``. Returns the ``from_config`` entries
    ``teacher``, ``distiller``, ``teacher_input_format`` and ``teacher_dtype``.

    Args:
        kind: "segmentation" or "detection", for the messages.
        num_classes: the class count of a built model (applied to the teacher).
        classes_key: the student's config key of its class count, for the messages.
        teacher_shapes: the tap shapes of a built model (applied to the teacher).
    """
    dcfg = cfg.MODEL.DISTILL
    teacher, tcfg = build_teacher(
        dcfg.TEACHER.CONFIG_FILE,
        dcfg.TEACHER.WEIGHTS,
        device=cfg.MODEL.DEVICE,
        strict=dcfg.TEACHER.STRICT,
        opts=dcfg.TEACHER.OPTS,
    )
    if not isinstance(teacher, teacher_type):
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.CONFIG_FILE builds a {type(teacher).__name__}; a "
            f"{kind} teacher must be a {teacher_type.__name__}"
        )
    t_classes = num_classes(teacher)
    if t_classes != student_classes:
        raise ConfigError(
            f"teacher predicts {t_classes} classes but the student {student_classes} "
            f"({classes_key}): teacher and student must be for the same data set"
        )
    return dict(
        teacher=teacher,
        distiller=FeatureDistiller.from_config(
            cfg, taps, student_shapes, teacher_shapes(teacher), num_classes=student_classes
        ),
        teacher_input_format=tcfg.INPUT.FORMAT,
        teacher_dtype=dcfg.TEACHER.DTYPE,
    )


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
        on GPU (fp16/bf16 halves the teacher's cost there; losses compute in fp32 anyway); a
        ``float32`` teacher runs in float32 even inside the student's autocast (AMP).

        ``torch.no_grad`` rather than ``torch.inference_mode``: the losses save the teacher
        features for their backward, which autograd refuses for inference tensors (it would
        take a copy of every tapped feature to get around it)."""
        device_type = next(self.teacher.parameters()).device.type
        low = self.teacher_dtype != torch.float32 and device_type == "cuda"
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if low:
            stack.enter_context(torch.autocast(device_type, dtype=self.teacher_dtype))
        elif self.teacher_dtype == torch.float32 and torch.is_autocast_enabled(device_type):
            # a float32 teacher inside the student's mixed-precision step leaves its autocast
            stack.enter_context(torch.autocast(device_type, enabled=False))
        return stack

    def teacher_images(self, batched_inputs: List[dict], size_divisibility: int = 0) -> ImageList:
        """A batch as the teacher takes it: its channel order, its normalisation, padded to
        ``size_divisibility`` (default: its backbone's; a pair with shared padding passes the
        pair's). ``input_format`` / ``teacher_input_format`` are set by the meta-architecture."""
        t = self.teacher
        images = teacher_input_tensors(batched_inputs, self.input_format, self.teacher_input_format, t.device)
        return ImageList.from_tensors(
            [(x - t.pixel_mean) / t.pixel_std for x in images],
            size_divisibility or t.backbone.size_divisibility,
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

