"""Register the embedded synthetic scenes (see :mod:`radkd_d2.data.synthetic`).

Names: ``synthetic_sem_seg_{train,val}`` (evaluator_type ``sem_seg``) and
``synthetic_det_{train,val}`` (COCO format, evaluator_type ``coco``), plus ``*_test`` when
``DATASETS.SYNTHETIC.NUM_TEST > 0`` (a held-out split for final scoring). Files are generated on
first use under ``<datasets root>/`` and reused afterwards.
"""
from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .common import datasets_root, register
from .synthetic import CLASSES, IGNORE_VALUE, SyntheticSpec, ensure_synthetic



def _sem_seg_dicts(root, spec, split):
    folder = ensure_synthetic(root, spec) / split
    n = spec.splits[split]
    return [
        {
            "file_name": str(folder / "images" / f"{i:05d}.png"),
            "sem_seg_file_name": str(folder / "labels" / f"{i:05d}.png"),
            "height": spec.size,
            "width": spec.size,
            "image_id": i + 1,
        }
        for i in range(n)
    ]


def _det_dicts(root, spec, split, name):
    folder = ensure_synthetic(root, spec)
    return load_coco_json(
        str(folder / "annotations" / f"instances_{split}.json"), str(folder / split / "images"), name
    )


def register_synthetic(root: str = "", spec: SyntheticSpec = SyntheticSpec()) -> None:
    """Register the synthetic data sets for ``spec`` under ``root`` (see module doc); a test
    split registered for an earlier spec is removed when this one has none."""
    root = datasets_root(root)
    folder = root / spec.folder_name
    for name in ("synthetic_sem_seg_test", "synthetic_det_test"):
        if "test" not in spec.splits and name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    for split in spec.splits:
        register(
            f"synthetic_sem_seg_{split}",
            lambda split=split: _sem_seg_dicts(root, spec, split),
            stuff_classes=list(CLASSES),
            ignore_label=IGNORE_VALUE,
            evaluator_type="sem_seg",
            synthetic_spec=spec,
            synthetic_root=str(root),
        )
        name = f"synthetic_det_{split}"
        register(
            name,
            lambda split=split, name=name: _det_dicts(root, spec, split, name),
            thing_classes=list(CLASSES[1:]),
            thing_dataset_id_to_contiguous_id={i: i - 1 for i in range(1, len(CLASSES))},
            json_file=str(folder / "annotations" / f"instances_{split}.json"),
            image_root=str(folder / split / "images"),
            evaluator_type="coco",
            synthetic_spec=spec,
            synthetic_root=str(root),
        )


def spec_from_cfg(cfg) -> SyntheticSpec:
    s = cfg.DATASETS.SYNTHETIC
    return SyntheticSpec(
        num_train=s.NUM_TRAIN, num_val=s.NUM_VAL, size=s.SIZE, seed=s.SEED,
        num_test=s.NUM_TEST, test_stream=s.TEST_STREAM,
    )
