"""Models: backbones, heads and meta-architectures, registered in Detectron2's registries."""
from . import backbone, heads, meta_arch  # noqa: F401
