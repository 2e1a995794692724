"""Exported students in the training engine's terms: example images for tracing from a config's
test set, and the evaluation of an exported model with the loader and evaluator of
``train_net --eval-only``."""
from __future__ import annotations

import logging
from pathlib import Path
from itertools import islice
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from detectron2.config import CfgNode
from detectron2.evaluation import inference_on_dataset

from radkd_d2.errors import ExportError
from radkd_d2.export import ExportedModel, export_model, load_student, student_config

from .setup import load_config
from .trainer import Trainer

logger = logging.getLogger(__name__)

__all__ = ["example_images", "evaluate_exported", "export_parity"]


def example_images(cfg: CfgNode, count: int, size: Optional[Sequence[int]] = None, seed: int = 0) -> List[torch.Tensor]:
    """``count`` images to trace an export with: random raw pixels at ``size`` (H, W) when given,
    else the first images of ``cfg.DATASETS.TEST[0]`` as its test loader gives them (segmentation
    examples must share a size, so they are the first image repeated)."""
    if size is not None:
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(3, int(size[0]), int(size[1]), generator=g) * 255.0 for _ in range(count)]
    if not cfg.DATASETS.TEST:
        raise ExportError("DATASETS.TEST is empty: give the example size with --size H W")
    name = cfg.DATASETS.TEST[0]
    try:
        loader = Trainer.build_test_loader(cfg, name)
        images = [batch[0]["image"].float() for batch in islice(loader, count)]
    except Exception as e:  # missing files, unregistered set: one message, with the way out
        raise ExportError(f"could not read example images from test set {name!r} ({e}); give --size H W") from e
    if student_config(cfg).MODEL.META_ARCHITECTURE != "RetinaNet":  # one batch: one size
        images = [images[0]] * count
    return images


def check_dataset_name(name: str, flag: str) -> None:
    """A registered data set, or an ExportError naming the closest registered names."""
    import difflib

    from detectron2.data import DatasetCatalog

    names = DatasetCatalog.list()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(names)} are registered)"
        raise ExportError(f"{flag} {name!r} is not a registered data set{hint}")


def evaluate_exported(
    model_path: str, dataset: Optional[str] = None, opts: Sequence[str] = (), output_dir: Optional[str] = None
) -> Tuple[dict, CfgNode]:
    """Score an exported model on a registered test set (default: the first of its config's
    ``DATASETS.TEST``) with the test loader and evaluator ``train_net --eval-only`` builds.
    ``opts`` override the student config beside the model (e.g. ``DATASETS.ROOT``)."""
    model = ExportedModel(model_path).eval()
    cfg = load_config(str(model.config_path), list(opts), validate=False)
    name = dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if not name:
        raise ExportError("no test set: give --dataset or set DATASETS.TEST")
    check_dataset_name(name, "--dataset" if dataset else "DATASETS.TEST[0]")
    _check_model_fits_dataset(model, name)
    loader = Trainer.build_test_loader(cfg, name)
    evaluator = Trainer.build_evaluator(cfg, name, output_dir or str(model.path.parent / "inference" / name))
    logger.info("Evaluating %s (%s) on %s", model_path, model.info.format, name)
    return inference_on_dataset(model, loader, evaluator), cfg


def _check_model_fits_dataset(model: "ExportedModel", name: str) -> None:
    """The exported model's task and class count against the data set's, before any image is
    read: a mismatch is the model's, not a label file's."""
    meta = MetadataCatalog.get(name)
    kind = getattr(meta, "evaluator_type", None)
    task = model.info.task
    if (kind == "sem_seg") != (task == "sem_seg") and kind in ("sem_seg", "coco"):
        raise ExportError(
            f"{model.path} is a {'segmentation' if task == 'sem_seg' else 'detection'} model but data set "
            f"{name!r} is for {'semantic segmentation' if kind == 'sem_seg' else 'object detection'}: give "
            "--dataset a set of its task"
        )
    classes = getattr(meta, "stuff_classes", None) if task == "sem_seg" else None
    if classes and len(classes) != model.info.num_classes:
        raise ExportError(
            f"{model.path} predicts {model.info.num_classes} classes but data set {name!r} has {len(classes)} "
            f"({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}): give --dataset a set of the "
            "model's classes"
        )


def _max_diff(out: dict, ref: dict) -> Optional[float]:
    """Max abs difference of an image's outputs: segmentation logits elementwise; detections as
    sets (near-tied scores may come out in another order), the Hausdorff distance under
    max(|box - box'|_inf, |score - score'|) between same-class detections. None when the
    detections differ in number (a score at the threshold)."""
    if "sem_seg" in out:
        return float((out["sem_seg"].cpu() - ref["sem_seg"].cpu()).abs().max())
    a, b = out["instances"].to("cpu"), ref["instances"].to("cpu")
    if len(a) != len(b):
        return None
    if len(a) == 0:
        return 0.0
    cost = _detection_cost(a, b)
    return float(torch.maximum(cost.min(dim=1).values.max(), cost.min(dim=0).values.max()))


def _detection_cost(a, b) -> torch.Tensor:
    """max(|box - box'|_inf, |score - score'|) between the detections of ``a`` and ``b``; inf
    across classes."""
    cost = torch.cdist(a.pred_boxes.tensor, b.pred_boxes.tensor, p=float("inf"))
    cost = torch.maximum(cost, (a.scores[:, None] - b.scores[None, :]).abs())
    cost[a.pred_classes[:, None] != b.pred_classes[None, :]] = float("inf")
    return cost


def _mask_diff(out: dict, ref: dict) -> Optional[float]:
    """The largest fraction of an image's pixels on which a detection's pasted mask differs from
    that of its nearest detection in ``ref`` (as :func:`_max_diff` pairs them). None without
    masks or when the detections differ in number."""
    a, b = out.get("instances"), ref.get("instances")
    if a is None or not a.has("pred_masks") or not b.has("pred_masks") or len(a) != len(b):
        return None
    if len(a) == 0:
        return 0.0
    a, b = a.to("cpu"), b.to("cpu")
    nearest = _detection_cost(a, b).argmin(dim=1)
    differ = a.pred_masks.bool() != b.pred_masks.bool()[nearest]
    return float(differ.flatten(1).float().mean(dim=1).max())


def export_parity(
    cfg: CfgNode, weights: str, output_dir: str, formats: Sequence[str] = ("torchscript", "onnx"),
    dataset: Optional[str] = None, size: Optional[Sequence[int]] = None, batch: int = 1,
) -> List[dict]:
    """Export the student of ``cfg`` + ``weights`` in each of ``formats`` to ``output_dir`` and
    score the PyTorch student and every export on the same test set in one pass, each with its
    own evaluator. Returns one row per model: format, metrics, and the max abs difference of its
    outputs from the PyTorch student's over every image (:func:`_max_diff`);
    ``images_differing`` counts images whose detections differ in number (not compared);
    ``mask_pixels_differing`` (Mask R-CNN; None otherwise, and for the PyTorch row) is the largest
    fraction of an image's pixels on which a pasted mask differs (:func:`_mask_diff`)."""
    student, scfg, _, dropped = load_student(cfg, weights, device="cpu")
    example = example_images(cfg, batch, size)
    models = {"pytorch": student}
    for fmt in formats:  # the one student, loaded once, exported in each format
        path, _ = export_model(student, scfg, output_dir, fmt, example, dropped=dropped)
        models[fmt] = ExportedModel(str(path)).eval()
    name = dataset or cfg.DATASETS.TEST[0]
    evaluators = {k: Trainer.build_evaluator(scfg, name, str(Path(output_dir) / "inference" / k)) for k in models}
    for ev in evaluators.values():
        ev.reset()
    diffs = {k: 0.0 for k in models}
    mask_diffs: dict = {k: None for k in models}
    differing = {k: 0 for k in models}
    with torch.no_grad():
        for inputs in Trainer.build_test_loader(scfg, name):
            reference = None
            for k, model in models.items():
                outputs = model(inputs)
                evaluators[k].process(inputs, outputs)
                if reference is None:
                    reference = outputs
                    continue
                for out, ref in zip(outputs, reference):
                    d = _max_diff(out, ref)
                    if d is None:
                        differing[k] += 1
                    else:
                        diffs[k] = max(diffs[k], d)
                    m = _mask_diff(out, ref)
                    if m is not None:
                        mask_diffs[k] = max(mask_diffs[k] or 0.0, m)
    return [
        {"format": k, "metrics": evaluators[k].evaluate(), "max_abs_diff": diffs[k],
         "images_differing": differing[k], "mask_pixels_differing": mask_diffs[k]}
        for k in models
    ]  # fmt: skip
