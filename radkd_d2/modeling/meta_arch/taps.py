"""The tappable features of a detector's backbone, shared by the detection meta-architectures
(:class:`DistillRetinaNet`, :class:`DistillGeneralizedRCNN`): the FPN levels it returns and the
bottom-up stages they are built from, read in one backbone pass."""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from torch import nn

from radkd_d2.errors import ConfigError

from ..distill import parse_taps
from ..pair import TeacherMixin, build_teacher_and_distiller, init_student_from_teacher, input_frame

__all__ = [
    "DetectorDistillMixin",
    "add_teacher_and_distiller",
    "backbone_tap_shapes",
    "backbone_taps",
    "check_same_padding",
    "refuse_logit_kd",
]


def backbone_tap_shapes(backbone: nn.Module) -> Dict[str, ShapeSpec]:
    """Every tappable position of a detector backbone: its outputs (RetinaNet ``p3``..``p7``,
    R-CNN ``p2``..``p6``) and, for an FPN, the bottom-up stages it consumes (``res2``..``res5``,
    the ResNet's OUT_FEATURES)."""
    shapes = dict(backbone.output_shape())
    if isinstance(backbone, FPN):
        for name, shape in backbone.bottom_up.output_shape().items():
            shapes.setdefault(name, shape)
    return shapes


def backbone_taps(
    backbone: nn.Module, images: torch.Tensor, with_bottom_up: bool
) -> Dict[str, torch.Tensor]:
    """Backbone outputs (the FPN levels) for a normalised, padded B x 3 x H x W batch, plus the
    bottom-up stages (res2..res5) when ``with_bottom_up``: Detectron2's own ``FPN.forward``
    runs once, and a forward hook on its ``bottom_up`` keeps the stages it computes."""
    if not with_bottom_up:
        return backbone(images)
    stages: Dict[str, torch.Tensor] = {}
    handle = backbone.bottom_up.register_forward_hook(lambda _m, _in, out: stages.update(out))
    try:
        outputs = backbone(images)
    finally:
        handle.remove()
    return {**stages, **outputs}


def refuse_logit_kd(cfg, wrapper: str) -> None:
    """Detection distils features only: a logit KD weight is a configuration mistake."""
    kd = cfg.MODEL.DISTILL.KD_WEIGHT
    if kd > 0:
        raise ConfigError(
            f"MODEL.DISTILL.KD_WEIGHT = {kd}: the pixel-wise logit KD term is for segmentation; "
            f"set it to 0.0 for {wrapper} and distil features via TAPS"
        )


def check_same_padding(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a pair whose backbones pad their inputs differently: their feature maps would not
    align, and the boxes given to the losses are in the student's padded frame."""
    input_frame(student, teacher, shared=False)


def add_teacher_and_distiller(
    cfg,
    ret: dict,
    wrapper: str,
    *,
    teacher_type: type,
    num_classes: Callable[[nn.Module], int],
    student_classes: int,
    classes_key: str,
    student_parts: Sequence[str],
) -> dict:
    """The part of a detection wrapper's ``from_config`` that is not the detector's own:
    ``ret`` (the stock detector's ``from_config`` arguments) plus the frozen ``teacher`` and the
    ``distiller`` (taps on :func:`backbone_tap_shapes`), after the checks every detection pair
    needs (no logit KD, same input padding), and the student initialised from the teacher
    where MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER asks.

    Args:
        wrapper: the meta-architecture's name, for messages.
        teacher_type: the detector class the teacher must be.
        num_classes: a built detector's class count (the teacher's); ``student_classes`` the
            student's, and ``classes_key`` their config key.
        student_parts: the keys of ``ret`` holding the student's modules, named as its
            parameters are (``backbone``, ``head``; ``proposal_generator``, ``roi_heads``).
    """
    dcfg = cfg.MODEL.DISTILL
    refuse_logit_kd(cfg, wrapper)
    backbone = ret["backbone"]
    student = nn.Module()  # the student's modules under their parameter names
    for name in student_parts:
        setattr(student, name, ret[name])
    built = build_teacher_and_distiller(
        cfg,
        kind="detection",
        teacher_type=teacher_type,
        num_classes=num_classes,
        student_classes=student_classes,
        classes_key=classes_key,
        taps=parse_taps(dcfg.TAPS),
        student_shapes=backbone_tap_shapes(backbone),
        teacher_shapes=lambda m: backbone_tap_shapes(m.backbone),
    )
    check_same_padding(backbone, built["teacher"].backbone)
    if dcfg.INIT_STUDENT_FROM_TEACHER:
        init_student_from_teacher(student, built["teacher"], dcfg.INIT_STUDENT_FROM_TEACHER)
    return {**ret, **built}


class DetectorDistillMixin(TeacherMixin):
    """What a detection distillation meta-architecture adds to its stock Detectron2 detector
    (placed first in the bases: ``class DistillX(DetectorDistillMixin, X)``): the frozen
    ``teacher``, the ``distiller`` and the teacher's tapped features. The student's own
    arguments go on to the detector's ``__init__``."""

    @configurable  # the wrappers' from_config gives these and the detector's arguments
    def __init__(
        self,
        *,
        teacher: nn.Module,
        distiller: nn.Module,
        teacher_input_format: str = "BGR",
        teacher_dtype: str = "float32",
        **kwargs,
    ):
        """
        Args:
            teacher: the teacher detector, in eval mode with ``requires_grad`` False.
            distiller: a :class:`~radkd_d2.modeling.distill.FeatureDistiller` with taps on
                positions of :func:`backbone_tap_shapes`.
            teacher_input_format: channel order the teacher expects ("BGR" or "RGB").
            teacher_dtype: teacher compute dtype on CUDA ("float32", "float16", "bfloat16").
            kwargs: the arguments of the student's Detectron2 detector.
        """
        super().__init__(**kwargs)
        self.teacher = teacher
        self.distiller = distiller
        self.teacher_input_format = teacher_input_format
        self.teacher_dtype = getattr(torch, teacher_dtype)
        self.teacher.eval()
        # bottom-up stages are gathered only when a tap asks for one
        self._student_bottom_up = bool(distiller.student_positions - set(self.backbone.output_shape()))
        self._teacher_bottom_up = bool(distiller.teacher_positions - set(teacher.backbone.output_shape()))

    def teacher_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """The teacher's tapped features (float32) for a batch, from its own normalisation and
        channel order, without autograd (autocast to MODEL.DISTILL.TEACHER.DTYPE on GPU)."""
        with self.teacher_context():
            images = self.teacher_images(batched_inputs)
            feats = backbone_taps(self.teacher.backbone, images.tensor, self._teacher_bottom_up)
            return {k: feats[k].float() for k in self.distiller.teacher_positions}

    def student_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The student's backbone outputs for a normalised, padded batch, plus the bottom-up
        stages a tap reads (one backbone pass)."""
        return backbone_taps(self.backbone, images, self._student_bottom_up)
