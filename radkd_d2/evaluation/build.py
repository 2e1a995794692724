"""Map a data set's ``evaluator_type`` to a Detectron2 evaluator (a mapping, not an if-chain)."""
from __future__ import annotations

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from .sem_seg import LabelCheckedSemSegEvaluator


def _sem_seg(cfg, name, output_dir):
    # every ground-truth file is checked against the data set's classes and ignore label
    return LabelCheckedSemSegEvaluator(name, distributed=True, output_dir=output_dir)


def _coco(cfg, name, output_dir):
    # boxes always, masks for a Mask R-CNN (MODEL.MASK_ON); no compiled Detectron2 ops here:
    # pure pycocotools COCOeval
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return COCOEvaluator(name, tasks=tasks, distributed=True, output_dir=output_dir, use_fast_impl=False)


EVALUATOR_BUILDERS = {"sem_seg": _sem_seg, "coco": _coco}


def build_evaluator(cfg, dataset_name: str, output_dir: str | None = None):
    """Evaluator for ``dataset_name`` from its metadata's ``evaluator_type``."""
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if kind not in EVALUATOR_BUILDERS:
        raise ValueError(
            f"data set {dataset_name!r} has evaluator_type {kind!r}; "
            f"supported: {sorted(EVALUATOR_BUILDERS)}"
        )
    return EVALUATOR_BUILDERS[kind](cfg, dataset_name, output_dir)
