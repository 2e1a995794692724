"""Evaluators picked by a data set's ``evaluator_type``."""
from .build import EVALUATOR_BUILDERS, build_evaluator
from .sem_seg import LabelCheckedSemSegEvaluator

__all__ = ["EVALUATOR_BUILDERS", "LabelCheckedSemSegEvaluator", "build_evaluator"]
