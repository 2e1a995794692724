"""DistillRetinaNet: a RetinaNet student trained under a frozen RetinaNet teacher.

Total loss: focal classification + box regression + Σ_taps Σ_losses λ·L(connector(F_s), F_t),
one term per FPN level (p3..p7) and loss, plus any tapped bottom-up stage (res3..res5).
"""

from __future__ import annotations

from typing import List

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from torch import nn

from ..distill import parse_taps
from ..pair import build_teacher_and_distiller, init_student_from_teacher
from .taps import DetectorDistillMixin, backbone_tap_shapes, check_same_padding, refuse_logit_kd


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DetectorDistillMixin, RetinaNet):
    """The student is a stock ``RetinaNet`` (same parameter names, same config keys); this class
    adds ``teacher`` (a frozen RetinaNet from MODEL.DISTILL.TEACHER.*) and ``distiller``
    (connectors + losses per tap, from MODEL.DISTILL.TAPS). Inference is the student's.

    Losses get the context ``boxes`` (per image, the N_i x 4 xyxy ground-truth boxes in pixels
    of the padded input batch; N_i may be 0) and ``image_size`` ((H, W) of that batch).
    """

    @classmethod
    def from_config(cls, cfg):
        ret = RetinaNet.from_config(cfg)
        dcfg = cfg.MODEL.DISTILL
        refuse_logit_kd(cfg, cls.__name__)
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

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return super().forward(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("DistillRetinaNet: training inputs need 'instances' (ground-truth boxes)")
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        student = self.student_features(images.tensor)
        features = [student[f] for f in self.head_in_features]
        return self.distiller.step(
            student,
            lambda: self.teacher_features(batched_inputs),
            self.forward_training(images, features, self.head(features), gt_instances),
            boxes=[x.gt_boxes.tensor for x in gt_instances],
            image_size=tuple(images.tensor.shape[-2:]),
        )
