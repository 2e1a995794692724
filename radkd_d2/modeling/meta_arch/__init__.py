"""Distillation meta-architectures (registered in META_ARCH_REGISTRY)."""
from .distill_rcnn import DistillGeneralizedRCNN
from .distill_retinanet import DistillRetinaNet
from .distill_semantic_seg import DistillSemanticSegmentor

__all__ = ["DistillGeneralizedRCNN", "DistillRetinaNet", "DistillSemanticSegmentor"]
