"""Map a data set's ``evaluator_type`` to a Detectron2 evaluator (a mapping, not an if-chain)."""
from __future__ import annotations

import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from PIL import Image


def _load_label(path: str, dtype) -> np.ndarray:
    # Detectron2's default loader calls np.array(..., copy=False), which numpy 2 rejects
    with Image.open(path) as img:
        return np.asarray(img, dtype=dtype)


def _sem_seg(cfg, name, output_dir):
    return SemSegEvaluator(name, distributed=True, output_dir=output_dir, sem_seg_loading_fn=_load_label)


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
