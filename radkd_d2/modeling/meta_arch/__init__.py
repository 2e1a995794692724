"""Distillation meta-architectures: ``Distill`` for any registered student, and the family
names ``DistillSemanticSegmentor``, ``DistillRetinaNet``, ``DistillGeneralizedRCNN``."""
from .fcos import FCOS
from .distill import (
    Distill,
    DistillGeneralizedRCNN,
    DistillMixin,
    DistillRetinaNet,
    DistillSemanticSegmentor,
    distill_class,
    model_classes,
)

__all__ = [
    "FCOS",
    "Distill",
    "DistillGeneralizedRCNN",
    "DistillMixin",
    "DistillRetinaNet",
    "DistillSemanticSegmentor",
    "distill_class",
    "model_classes",
]
