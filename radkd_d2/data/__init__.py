"""Dataset registration and mappers. Importing registers the default data sets."""
from .common import datasets_root
from .mappers import RandomScale, ReadableDatasetMapper, SemSegDatasetMapper
from .register_ade20k import register_ade20k
from .register_camvid import register_camvid
from .register_cityscapes import register_cityscapes
from .register_coco_folder import register_coco_2017, register_coco_folder
from .register_synthetic import register_synthetic, spec_from_cfg
from .register_voc import register_voc
from .synthetic import SyntheticSpec, ensure_synthetic


def register_all(cfg=None) -> None:
    """Register every project data set under the configured root (``DATASETS.ROOT``)."""
    root = cfg.DATASETS.ROOT if cfg is not None else ""
    if cfg is None:
        register_synthetic(root)
    else:
        register_synthetic(root, spec_from_cfg(cfg), cfg.DATASETS.SYNTHETIC.PARTIAL_IGNORE)
    register_camvid(root)
    register_cityscapes(root)
    register_voc(root)
    register_ade20k(root)
    register_coco_folder("tiny_coco", root)
    register_coco_2017(root)


register_all()
