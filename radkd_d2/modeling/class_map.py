"""A segmentation model's classes through a class map: from a source label set (a model trained on
Cityscapes' 19 classes) to a related target set (CamVid's 11), several source classes possibly
mapping onto one target class.

``MODEL.SEM_SEG_HEAD.CLASS_MAP`` lists, per target class, the source class ids that make it up
(``[[0], [1], [2, 3], ...]``); ``CLASS_MAP_SOURCE_CLASSES`` is the source class count. Two modes
(``CLASS_MAP_MODE``):

- ``"init"``: the model has the target classes; when ``MODEL.WEIGHTS`` holds a classifier of the
  source classes, each target row is initialised from its source rows
  (:func:`merge_classifier`), then the model is fine-tuned as usual.
- ``"zero_shot"``: the model keeps the source classifier and its outputs are mapped: the
  probability of a target class is the sum of its source classes' probabilities, and the head
  returns its logarithm as "logits" (:func:`map_log_probs`). This scores a source model on the
  target data without training (``--eval-only``), and makes a teacher of it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import torch
from torch.nn import functional as F

from radkd_d2.errors import ConfigError

__all__ = [
    "CLASS_MAP_MODES",
    "check_class_map",
    "map_checkpoint_classifiers",
    "map_log_probs",
    "merge_classifier",
]

CLASS_MAP_MODES = ("init", "zero_shot")  # the values of MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE


def check_class_map(class_map: Sequence, source_classes: int, num_classes: int, mode: str) -> List[List[int]]:
    """The class map as a list of lists of ints, after checking it against the class counts;
    raises :class:`ConfigError` naming the key at the first problem."""
    key = "MODEL.SEM_SEG_HEAD.CLASS_MAP"
    if mode not in CLASS_MAP_MODES:
        raise ConfigError(f"MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE = {mode!r} is not allowed; choose one of {list(CLASS_MAP_MODES)}")
    if len(class_map) != num_classes:
        raise ConfigError(
            f"{key} has {len(class_map)} entries but MODEL.SEM_SEG_HEAD.NUM_CLASSES = {num_classes}: "
            "it needs one list of source class ids per target class"
        )
    if source_classes < 1:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.CLASS_MAP_SOURCE_CLASSES = {source_classes}: set it to the source "
            f"classifier's class count when {key} is set"
        )
    out, seen = [], {}
    for target, sources in enumerate(class_map):
        sources = [sources] if isinstance(sources, int) else list(sources)
        if not sources:
            raise ConfigError(f"{key}[{target}] is empty: every target class needs at least one source class")
        for s in sources:
            if not isinstance(s, int) or not 0 <= s < source_classes:
                raise ConfigError(
                    f"{key}[{target}] holds {s!r}; source class ids are integers in 0..{source_classes - 1} "
                    "(MODEL.SEM_SEG_HEAD.CLASS_MAP_SOURCE_CLASSES)"
                )
            if s in seen:
                raise ConfigError(
                    f"{key}: source class {s} is mapped to target classes {seen[s]} and {target}; "
                    "each source class may feed one target class"
                )
            seen[s] = target
        out.append(sources)
    return out


def map_log_probs(logits: torch.Tensor, class_map: Sequence[Sequence[int]]) -> torch.Tensor:
    """B x K_source x h x w logits -> B x K_target x h x w log-probabilities: log of the summed
    source probabilities of each target class (source classes in no group drop out, so the
    target probabilities sum to at most 1)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return torch.stack([torch.logsumexp(log_p[:, list(g)], dim=1) for g in class_map], dim=1).to(logits.dtype)


def merge_classifier(weight: torch.Tensor, bias, class_map: Sequence[Sequence[int]]):
    """Target classifier rows from source rows: each target row is the mean of its source rows,
    and its bias the mean source bias + log(n) for n merged classes (exact when the merged
    source logits are equal: logsumexp of n equal logits z is z + log n)."""
    w = torch.stack([weight[list(g)].mean(0) for g in class_map])
    if bias is None:
        return w, None
    b = torch.stack([bias[list(g)].mean(0) + math.log(len(g)) for g in class_map])
    return w, b


def map_checkpoint_classifiers(
    state: Dict[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    class_map: Sequence[Sequence[int]],
    source_classes: int,
    prefixes: Sequence[str] = ("sem_seg_head.predictor.", "sem_seg_head.aux_head.predictor."),
) -> List[str]:
    """``"init"`` mode on a checkpoint's model state (in place): every classifier under
    ``prefixes`` with ``source_classes`` rows where the model has the target count is replaced
    by its merged rows. Returns the keys changed. A classifier with another row count is left
    for the strict loader to report."""
    changed = []
    for prefix in prefixes:
        wkey, bkey = prefix + "weight", prefix + "bias"
        if wkey not in state or wkey not in model_state:
            continue
        w = torch.as_tensor(state[wkey])
        target_rows = model_state[wkey].shape[0]
        if w.shape[0] != source_classes or target_rows != len(class_map) or target_rows == source_classes:
            continue
        b = torch.as_tensor(state[bkey]) if bkey in state else None
        state[wkey], new_b = merge_classifier(w, b, class_map)
        changed.append(wkey)
        if new_b is not None:
            state[bkey] = new_b
            changed.append(bkey)
    return changed
