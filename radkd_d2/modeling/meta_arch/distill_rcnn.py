"""DistillGeneralizedRCNN: a Faster or Mask R-CNN student trained under a frozen R-CNN teacher.

Total loss: the R-CNN losses (RPN objectness and boxes; ROI classification, boxes and, with
masks, mask) + Σ_taps Σ_losses λ·L(connector(F_s), F_t), one term per tapped FPN level
(``p2``..``p6``) or bottom-up stage (``res2``..``res5``) and loss.
"""

from __future__ import annotations

from typing import List

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from torch import nn

from radkd_d2.errors import ConfigError

from .taps import DetectorDistillMixin, add_teacher_and_distiller


def _roi_classes(model: nn.Module) -> int:
    """The class count of an R-CNN's ROI heads (StandardROIHeads and its subclasses)."""
    return int(model.roi_heads.num_classes)


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DetectorDistillMixin, GeneralizedRCNN):
    """The student is a stock ``GeneralizedRCNN`` (Faster or Mask R-CNN: same parameter names,
    same config keys); this class adds ``teacher`` (a frozen GeneralizedRCNN from
    MODEL.DISTILL.TEACHER.*) and ``distiller`` (connectors + losses per tap, from
    MODEL.DISTILL.TAPS). Inference, and the checkpoint the export keeps, are the student's.

    Losses get the context ``boxes`` (per image, the N_i x 4 xyxy ground-truth boxes in pixels
    of the padded input batch; N_i may be 0) and ``image_size`` ((H, W) of that batch), as in
    :class:`DistillRetinaNet`, so FGD and FKD work unchanged.
    """

    @classmethod
    def from_config(cls, cfg):
        ret = GeneralizedRCNN.from_config(cfg)
        if ret["proposal_generator"] is None:
            raise ConfigError(
                "MODEL.PROPOSAL_GENERATOR.NAME builds no proposal generator: DistillGeneralizedRCNN "
                "trains a student with an RPN (Faster or Mask R-CNN); choose one of ['RPN']"
            )
        return add_teacher_and_distiller(
            cfg,
            ret,
            cls.__name__,
            teacher_type=GeneralizedRCNN,
            num_classes=_roi_classes,
            student_classes=int(ret["roi_heads"].num_classes),
            classes_key="MODEL.ROI_HEADS.NUM_CLASSES",
            student_parts=("backbone", "proposal_generator", "roi_heads"),
        )

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return super().forward(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError(
                "DistillGeneralizedRCNN: training inputs need 'instances' (ground-truth boxes, "
                "and masks for Mask R-CNN)"
            )
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        student = self.student_features(images.tensor)
        features = {k: student[k] for k in self.backbone.output_shape()}
        # GeneralizedRCNN.forward's training branch, with the backbone pass above shared
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            from detectron2.utils.events import get_event_storage

            if get_event_storage().iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)
        return self.distiller.step(
            student,
            lambda: self.teacher_features(batched_inputs),
            {**detector_losses, **proposal_losses},
            boxes=[x.gt_boxes.tensor for x in gt_instances],
            image_size=tuple(images.tensor.shape[-2:]),
        )
