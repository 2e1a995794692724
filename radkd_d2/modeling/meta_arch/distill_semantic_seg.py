"""DistillSemanticSegmentor: a SemanticSegmentor student trained under a frozen teacher.

Total loss (the paper's Eq. 9): CE + Σ_taps Σ_losses λ·L(connector(F_s), F_t) [+ λ_kd·L_kd].
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList
from torch import nn

from radkd_d2.errors import ConfigError

from ..distill import FeatureDistiller, current_iteration, parse_taps
from ..pair import TeacherMixin, build_teacher_and_distiller, input_frame


def seg_tap_shapes(model: nn.Module) -> Dict[str, ShapeSpec]:
    """Every tappable position of a segmentor: backbone outputs, ``decoder`` and ``logits``."""
    shapes = dict(model.backbone.output_shape())
    head = model.sem_seg_head
    if not hasattr(head, "layers") or not hasattr(head, "output_shape"):
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.NAME: head {type(head).__name__} does not expose decoder/logits "
            "outputs; use a radkd-d2 head (PSPHead, DeepLabV3Head, UPerNetHead)"
        )
    shapes.update(head.output_shape())
    return shapes


def seg_taps(model: nn.Module, images: torch.Tensor, need_head: bool) -> Dict[str, torch.Tensor]:
    """Backbone features (and decoder/logits when ``need_head``) of a segmentor for a batch."""
    feats = model.backbone(images)
    if need_head:
        feats.update(model.sem_seg_head.layers(feats))
    return feats


@META_ARCH_REGISTRY.register()
class DistillSemanticSegmentor(TeacherMixin, SemanticSegmentor):
    """The student is a stock ``SemanticSegmentor`` (same parameter names, same config keys);
    this class adds ``teacher`` (frozen, from MODEL.DISTILL.TEACHER.*) and ``distiller``
    (connectors + losses per tap, from MODEL.DISTILL.TAPS). Inference is the student's.

    SKD's holistic term (MODEL.DISTILL.HOLISTIC) is attached by the trainer
    (:meth:`attach_holistic`); its critic is not part of this module.
    """

    # the holistic term the trainer attached (radkd_d2.engine.adversarial.HolisticCritic), or None
    _holistic: Optional[Callable[..., Dict[str, torch.Tensor]]] = None

    @configurable
    def __init__(
        self,
        *,
        backbone,
        sem_seg_head,
        pixel_mean,
        pixel_std,
        teacher: nn.Module,
        distiller: FeatureDistiller,
        input_format: str = "RGB",
        teacher_input_format: str = "RGB",
        teacher_dtype: str = "float32",
        size_divisibility: int = 0,
    ):
        """
        Args:
            size_divisibility: what every training batch is padded to, for student and teacher
                alike (:func:`~radkd_d2.modeling.pair.input_frame`); 0: the student backbone's.
                Inference pads as the stock student.
        """
        super().__init__(backbone=backbone, sem_seg_head=sem_seg_head, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.train_size_divisibility = size_divisibility or backbone.size_divisibility
        self.teacher = teacher
        self.distiller = distiller
        self.input_format = input_format
        self.teacher_input_format = teacher_input_format
        self.teacher_dtype = getattr(torch, teacher_dtype)
        self.teacher.eval()

    @classmethod
    def from_config(cls, cfg):
        ret = SemanticSegmentor.from_config(cfg)
        dcfg = cfg.MODEL.DISTILL
        student = nn.Module()  # shapes only need backbone + head
        student.backbone, student.sem_seg_head = ret["backbone"], ret["sem_seg_head"]
        ret.update(
            build_teacher_and_distiller(
                cfg,
                kind="segmentation",
                teacher_type=SemanticSegmentor,
                num_classes=lambda m: m.sem_seg_head.num_classes,
                student_classes=student.sem_seg_head.num_classes,
                classes_key="MODEL.SEM_SEG_HEAD.NUM_CLASSES",
                taps=parse_taps(dcfg.TAPS, dcfg.KD_WEIGHT),
                student_shapes=seg_tap_shapes(student),
                teacher_shapes=seg_tap_shapes,
            ),
            input_format=cfg.INPUT.FORMAT,
        )
        # one input frame for both, or a refusal (feature maps over different image areas)
        ret["size_divisibility"] = input_frame(
            ret["backbone"], ret["teacher"].backbone, shared=dcfg.SHARED_PADDING
        )
        return ret

    def attach_holistic(self, term: Optional[Callable[..., Dict[str, torch.Tensor]]]) -> None:
        """Attach SKD's holistic term (None detaches it): a callable ``term(student_logits,
        teacher_logits, images, factor)`` returning ``{"loss_distill_holistic": scalar}``; the
        training forward then adds it to the losses, with the teacher's logits (None once
        distillation has stopped), the normalised images and the schedule's factor. Kept as a plain
        attribute, not a submodule: its critic stays out of this model's parameters, state dict,
        optimizer and DDP wrapper (the trainer owns and checkpoints it)."""
        self.__dict__["_holistic"] = term

    def teacher_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """The teacher's tapped features for a batch (its own normalisation and channel order)."""
        with self.teacher_context():
            return self._teacher_features(batched_inputs)

    def _teacher_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        positions = self.distiller.teacher_positions
        need_head = bool(positions & {"decoder", "logits"}) or self._holistic is not None
        images = self.teacher_images(batched_inputs, self.train_size_divisibility)
        return seg_taps(self.teacher, images.tensor, need_head=need_head)

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return super().forward(batched_inputs)
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(
            images, self.train_size_divisibility, padding_constraints=self.backbone.padding_constraints
        )
        head = self.sem_seg_head
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.train_size_divisibility,
            head.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        student = seg_taps(self, images.tensor, need_head=True)
        teacher: Dict[str, torch.Tensor] = {}

        def teacher_fn():  # the distiller calls it at most once, not at all once it has stopped
            teacher.update(self.teacher_features(batched_inputs))
            return teacher

        losses = self.distiller.step(
            student,
            teacher_fn,
            head.losses(student, targets),
            labels=targets,
            ignore_value=head.ignore_value,
            num_classes=head.num_classes,
            image_size=tuple(images.tensor.shape[-2:]),
        )
        if self._holistic is not None:
            factor = self.distiller.schedule.factor(current_iteration())
            losses.update(self._holistic(student["logits"], teacher.get("logits"), images.tensor, factor))
        return losses
