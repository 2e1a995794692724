"""Register the embedded synthetic scenes (see :mod:`radkd_d2.data.synthetic`).

Names: ``synthetic_sem_seg_{train,val}`` (evaluator_type ``sem_seg``) and
``synthetic_det_{train,val}`` (COCO format, evaluator_type ``coco``), plus ``*_test`` when
``DATASETS.SYNTHETIC.NUM_TEST > 0`` (a held-out split for final scoring), and
``synthetic_sem_seg_train_partial`` when ``DATASETS.SYNTHETIC.PARTIAL_IGNORE`` names classes: the
training scenes with those classes' pixels marked ignored (a model that never learns them). Files
are generated on first use under ``<datasets root>/`` and reused afterwards.
"""
from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from radkd_d2.errors import ConfigError

from .common import datasets_root, register
from .synthetic import CLASSES, IGNORE_VALUE, SyntheticSpec, ensure_partial_labels, ensure_synthetic

PARTIAL = "synthetic_sem_seg_train_partial"


def _sem_seg_dicts(root, spec, split, ignore=()):
    folder = ensure_synthetic(root, spec) / split
    labels = ensure_partial_labels(folder.parent, split, ignore) if ignore else folder / "labels"
    n = spec.splits[split]
    return [
        {
            "file_name": str(folder / "images" / f"{i:05d}.png"),
            "sem_seg_file_name": str(labels / f"{i:05d}.png"),
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


def register_synthetic(root: str = "", spec: SyntheticSpec = SyntheticSpec(), partial_ignore=()) -> None:
    """Register the synthetic data sets for ``spec`` under ``root`` (see module doc); a test
    split (a partial training set) registered for an earlier spec is removed when this one has
    none (no ``partial_ignore``).

    Args:
        partial_ignore: class ids whose pixels ``synthetic_sem_seg_train_partial`` marks ignored.
    """
    root = datasets_root(root)
    folder = root / spec.folder_name
    stale = [] if "test" in spec.splits else ["synthetic_sem_seg_test", "synthetic_det_test"]
    for name in stale + ([] if partial_ignore else [PARTIAL]):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    if partial_ignore:
        ignore = sorted(set(int(c) for c in partial_ignore))
        if any(not 0 <= c < len(CLASSES) for c in ignore) or len(ignore) == len(CLASSES):
            raise ConfigError(
                f"DATASETS.SYNTHETIC.PARTIAL_IGNORE = {list(partial_ignore)}: give some, not all, of "
                f"the class ids 0..{len(CLASSES) - 1} ({', '.join(CLASSES)})"
            )
        register(
            PARTIAL,
            lambda: _sem_seg_dicts(root, spec, "train", ignore),
            stuff_classes=list(CLASSES),
            ignore_label=IGNORE_VALUE,
            evaluator_type="sem_seg",
            ignored_classes=[CLASSES[c] for c in ignore],
            synthetic_spec=spec,
            synthetic_root=str(root),
        )
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
