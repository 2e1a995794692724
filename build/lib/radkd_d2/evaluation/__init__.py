"""Evaluators picked by a data set's ``evaluator_type``."""
from .build import EVALUATOR_BUILDERS, build_evaluator

__all__ = ["EVALUATOR_BUILDERS", "build_evaluator"]
