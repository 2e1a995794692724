"""DistillRetinaNet: a RetinaNet student trained under a frozen RetinaNet teacher.

Total loss: focal classification + box regression + Σ_taps Σ_losses λ·L(connector(F_s), F_t),
one term per FPN level (p3..p7) and loss, plus any tapped bottom-up stage (res3..res5).
"""

from __future__ import annotations

from typing import List

from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .taps import DetectorDistillMixin, add_teacher_and_distiller


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
        return add_teacher_and_distiller(
            cfg,
            ret,
            cls.__name__,
            teacher_type=RetinaNet,
            num_classes=lambda m: m.num_classes,
            student_classes=ret["num_classes"],
            classes_key="MODEL.RETINANET.NUM_CLASSES",
            student_parts=("backbone", "head"),  # parameter names: backbone.*, head.*
        )

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
