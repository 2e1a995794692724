"""Distillation meta-architectures: ``Distill`` for any registered student, and the family
names ``DistillSemanticSegmentor``, ``DistillRetinaNet``, ``DistillGeneralizedRCNN``."""
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
    "Distill",
    "DistillGeneralizedRCNN",
    "DistillMixin",
    "DistillRetinaNet",
    "DistillSemanticSegmentor",
    "distill_class",
    "model_classes",
]
