"""radkd-d2: knowledge distillation with raw features (angular distillation) on Detectron2.

Importing the package registers its models, losses and data sets in Detectron2's registries.
"""
from . import data, losses, modeling  # noqa: F401  (registration side effects)
from .config import add_radkd_config

__all__ = ["add_radkd_config"]
__version__ = "0.1.0"
