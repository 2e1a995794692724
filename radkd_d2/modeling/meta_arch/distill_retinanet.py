"""DistillRetinaNet: a RetinaNet student trained under a frozen RetinaNet teacher.

Total loss: focal classification + box regression + Σ_taps Σ_losses λ·L(connector(F_s), F_t),
one term per FPN level (p3..p7) and loss, plus any tapped bottom-up stage (res3..res5).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from torch import nn

from radkd_d2.errors import ConfigError

from ..distill import FeatureDistiller, parse_taps
from ..pair import TeacherMixin, build_teacher_and_distiller, init_student_from_teacher
from .taps import backbone_tap_shapes, backbone_taps, check_same_padding


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(TeacherMixin, RetinaNet):
    """The student is a stock ``RetinaNet`` (same parameter names, same config keys); this class
    adds ``teacher`` (a frozen RetinaNet from MODEL.DISTILL.TEACHER.*) and ``distiller``
    (connectors + losses per tap, from MODEL.DISTILL.TAPS). Inference is the student's.

    Losses get the context ``boxes`` (per image, the N_i x 4 xyxy ground-truth boxes in pixels
    of the padded input batch; N_i may be 0) and ``image_size`` ((H, W) of that batch).
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module,
        distiller: FeatureDistiller,
        teacher_input_format: str = "BGR",
        teacher_dtype: str = "float32",
        **kwargs,
    ):
        """
        Args:
            teacher: a RetinaNet in eval mode with ``requires_grad`` False.
            distiller: taps on positions of :func:`~.taps.backbone_tap_shapes`.
            teacher_input_format: channel order the teacher expects ("BGR" or "RGB").
            teacher_dtype: teacher compute dtype on CUDA ("float32", "float16", "bfloat16").
            kwargs: the arguments of Detectron2's ``RetinaNet``.
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

    @classmethod
    def from_config(cls, cfg):
        ret = RetinaNet.from_config(cfg)
        dcfg = cfg.MODEL.DISTILL
        if dcfg.KD_WEIGHT > 0:
            raise ConfigError(
                f"MODEL.DISTILL.KD_WEIGHT = {dcfg.KD_WEIGHT}: the pixel-wise logit KD term is for "
                "segmentation; set it to 0.0 for DistillRetinaNet and distil features via TAPS"
            )
        backbone = ret["backbone"]
        built = build_teacher_and_distiller(
            cfg,
            kind="detection",
            teacher_type=RetinaNet,
            num_classes=lambda m: m.num_classes,
            student_classes=ret["num_classes"],
            classes_key="MODEL.RETINANET.NUM_CLASSES",
            taps=parse_taps(dcfg.TAPS),
            student_shapes=backbone_tap_shapes(backbone),
            teacher_shapes=lambda m: backbone_tap_shapes(m.backbone),
        )
        teacher = built["teacher"]
        check_same_padding(backbone, teacher.backbone)
        if dcfg.INIT_STUDENT_FROM_TEACHER:
            student = nn.Module()  # the student's parameter names: backbone.*, head.*
            student.backbone, student.head = backbone, ret["head"]
            init_student_from_teacher(student, teacher, dcfg.INIT_STUDENT_FROM_TEACHER)
        ret.update(built)
        return ret

    def teacher_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """The teacher's tapped features (float32) for a batch, from its own normalisation and
        channel order, without autograd (autocast to MODEL.DISTILL.TEACHER.DTYPE on GPU)."""
        with self.teacher_context():
            images = self.teacher_images(batched_inputs)
            feats = backbone_taps(self.teacher.backbone, images.tensor, self._teacher_bottom_up)
            return {k: feats[k].float() for k in self.distiller.teacher_positions}

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return super().forward(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("DistillRetinaNet: training inputs need 'instances' (ground-truth boxes)")
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        student = backbone_taps(self.backbone, images.tensor, self._student_bottom_up)
        features = [student[f] for f in self.head_in_features]
        return self.distiller.step(
            student,
            lambda: self.teacher_features(batched_inputs),
            self.forward_training(images, features, self.head(features), gt_instances),
            boxes=[x.gt_boxes.tensor for x in gt_instances],
            image_size=tuple(images.tensor.shape[-2:]),
        )
