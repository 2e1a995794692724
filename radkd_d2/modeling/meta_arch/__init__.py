"""Distillation meta-architectures (registered in META_ARCH_REGISTRY)."""
from .distill_semantic_seg import DistillSemanticSegmentor

__all__ = ["DistillSemanticSegmentor"]
