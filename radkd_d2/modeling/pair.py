"""What a distillation pair needs besides its models: the input frame both pad to
(:func:`input_frame`), the teacher-holding mixin (:class:`TeacherMixin`) and the copy of teacher
weights into the student (:func:`init_student_from_teacher`)."""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from radkd_d2.errors import ConfigError

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


class TeacherMixin:
    """For ``nn.Module`` meta-architectures that hold frozen teachers in ``self.teachers`` (an
    ``nn.ModuleDict``; ``self.teacher`` is the first).

    * ``train(mode)`` keeps every teacher in eval mode (BatchNorm statistics, dropout);
    * ``state_dict`` leaves the teachers out, so checkpoints hold only trainable state; resume
      reloads each teacher from its own weights; ``load_state_dict`` does not report the absent
      teacher keys as missing;
    * ``student_state_dict`` is the plain student: no teacher, no distiller (connectors, loss
      modules such as MGD's generator), loadable by the stock meta-architecture.
    """

    TEACHER_PREFIX = "teachers."
    DISTILL_PREFIXES = ("teachers.", "distiller.")

    @property
    def teacher(self) -> nn.Module:
        """The first (or only) teacher."""
        return next(iter(self.teachers.values()))

    def teacher_context(self, dtype: torch.dtype = torch.float32, teacher: nn.Module = None):
        """Context for a teacher forward: no autograd graph, and autocast to ``dtype``
        (MODEL.DISTILL.TEACHER.DTYPE) on GPU (fp16/bf16 halves the teacher's cost there; losses
        compute in fp32 anyway); a ``float32`` teacher runs in float32 even inside the student's
        autocast (AMP).

        ``torch.no_grad`` rather than ``torch.inference_mode``: the losses save the teacher
        features for their backward, which autograd refuses for inference tensors (it would
        take a copy of every tapped feature to get around it)."""
        teacher = teacher if teacher is not None else self.teacher
        device_type = next(teacher.parameters()).device.type
        low = dtype != torch.float32 and device_type == "cuda"
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if low:
            stack.enter_context(torch.autocast(device_type, dtype=dtype))
        elif dtype == torch.float32 and torch.is_autocast_enabled(device_type):
            # a float32 teacher inside the student's mixed-precision step leaves its autocast
            stack.enter_context(torch.autocast(device_type, enabled=False))
        return stack

    def train(self, mode: bool = True):
        super().train(mode)
        for teacher in self._modules.get("teachers", {}).values():
            teacher.eval()
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

