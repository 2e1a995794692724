"""Heatmaps of feature activations of teacher and student at one tap (the paper's Fig. 6).

For each image: the channel mean of |F| of the teacher feature and of the student feature (the
student's after its connector, as the loss sees it), each upsampled to the image, cropped to it
(no padding) and scaled to [0, 1] on its own. Features come from one inference forward of each
model, read at the tap (``read_features``: any position, distilled or not).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.modeling import build_model
from torch.nn import functional as F
from tqdm import tqdm

from radkd_d2.errors import ConfigError
from radkd_d2.evaluation.naming import model_name, teacher_name
from radkd_d2.modeling.meta_arch.distill import INPUT
from radkd_d2.modeling.teacher import TeacherLoadError, load_weights_strictly

from .plots import new_figure, save_figure

logger = logging.getLogger(__name__)


@dataclass
class TapMaps:
    """Normalised activation maps of one image, each (H, W) float in [0, 1], and the image
    (H, W, 3) uint8 RGB."""

    name: str
    image: np.ndarray
    teacher: np.ndarray
    student: np.ndarray


def build_distill_model(cfg, weights: str = "", *, strict: bool = True):
    """The distillation model of ``cfg`` in eval mode: student (+ connectors) from ``weights``
    (a checkpoint of the distillation run, e.g. its model_final.pth), teacher from
    MODEL.DISTILL.TEACHER.*. ``weights=""`` leaves the student randomly initialised."""
    model = build_model(cfg)
    if not hasattr(model, "read_features") or not hasattr(model, "distiller"):
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not a segmentation "
            "distillation model; give a config with DistillSemanticSegmentor"
        )
    if weights:
        try:
            load_weights_strictly(model, weights, strict=strict, what="distilled student")
        except TeacherLoadError as e:
            raise TeacherLoadError(
                f"{e}\n(heatmaps: pass --non-strict to load the matching part)"
            ) from e
    else:
        logger.warning("no student weights given: the student is randomly initialised")
    return model.eval()


def test_image_paths(cfg, n: int) -> List[str]:
    """The first ``n`` images of the config's first test set."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: give --images")
    dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    return [d["file_name"] for d in dicts[:n]]


def _resolve_tap(model, tap: str):
    """(student position, teacher position, distiller Tap or None) for a tap name: a configured
    tap key (``res5``, ``res4_to_res5``), a position, or ``student:teacher``."""
    for t in model.distiller.taps:
        if tap in (t.key, t.student):
            return t.student, t.teacher, t
    s, _, t = tap.partition(":")
    return s, (t or s), None


def _map(feature: torch.Tensor, padded: Tuple[int, int], size: Tuple[int, int]) -> np.ndarray:
    """Channel mean of |F| (1, C, h, w) at the padded input size, cropped to ``size``, in [0, 1]."""
    m = feature.float().abs().mean(dim=1, keepdim=True)
    m = F.interpolate(m, size=padded, mode="bilinear", align_corners=False)[
        0, 0, : size[0], : size[1]
    ]
    lo, hi = m.min(), m.max()
    m = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    return m.cpu().numpy()


@torch.no_grad()
def tap_maps(model, image: np.ndarray, tap: str, name: str = "") -> TapMaps:
    """Teacher and student activation maps of one image (H, W, 3 uint8 in the model's
    INPUT.FORMAT channel order) at ``tap``."""
    s_pos, t_pos, tap_obj = _resolve_tap(model, tap)
    h, w = image.shape[:2]
    x = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    batched = [{"image": x, "height": h, "width": w}]
    # one inference forward of each, read at the tap (any position, distilled or not)
    s_feats, t_feats = model.read_features(batched, [s_pos], [t_pos])
    t = t_feats[t_pos]
    s = model.distiller.align(tap_obj, s_feats[s_pos], t) if tap_obj is not None else s_feats[s_pos]
    rgb = image[:, :, ::-1] if model.input_format == "BGR" else image
    return TapMaps(
        name,
        np.ascontiguousarray(rgb),
        _map(t, tuple(t_feats[INPUT].shape[-2:]), (h, w)),
        _map(s, tuple(s_feats[INPUT].shape[-2:]), (h, w)),
    )


def compute_heatmaps(
    model, paths: Sequence[str], tap: str, input_format: str = "RGB"
) -> List[TapMaps]:
    """:func:`tap_maps` for image files, with a progress bar."""
    out = []
    for p in tqdm(list(paths), desc=f"heatmaps @ {tap}", unit="img"):
        out.append(
            tap_maps(model, utils.read_image(str(p), format=input_format), tap, Path(p).name)
        )
    return out


def plot_heatmaps(
    maps: Sequence[TapMaps],
    out: str | Path,
    *,
    tap: str,
    teacher: str = "teacher",
    student: str = "student",
    connector: bool = True,
    width: int = 1200,
    row_height: int = 360,
    dpi: int = 100,
    cmap: str = "jet",
) -> Path:
    """Rows of (image, teacher map, student map) with titles and a colour bar per row; the PNG
    is ``width`` × ``row_height * len(maps)`` pixels."""
    if not maps:
        raise ValueError("no images to draw")
    fig = new_figure((width, row_height * len(maps)), dpi)
    axes = fig.subplots(len(maps), 3, squeeze=False)
    s_note = " (after connector)" if connector else ""
    for row, m in zip(axes, maps):
        row[0].imshow(m.image)
        row[0].set_title(m.name or "image", fontsize="small")
        row[1].imshow(m.teacher, cmap=cmap, vmin=0, vmax=1)
        row[1].set_title(f"T: {teacher} @ {tap}", fontsize="small")
        im = row[2].imshow(m.student, cmap=cmap, vmin=0, vmax=1)
        row[2].set_title(f"S: {student} @ {tap}{s_note}", fontsize="small")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        cb = fig.colorbar(im, ax=list(row), fraction=0.03, pad=0.01)
        cb.set_label("mean |F| over channels,\nscaled to [0, 1] per map", fontsize="x-small")
    fig.suptitle(
        f"Feature activations at {tap}: channel mean of |F|, each map normalised to [0, 1]"
    )
    return save_figure(fig, out)


def heatmaps_from_config(
    cfg,
    weights: str,
    out: str | Path,
    *,
    tap: str,
    images: Optional[Sequence[str]] = None,
    num_images: int = 4,
    strict: bool = True,
    **plot_kwargs,
) -> Path:
    """Build the model of a distillation config, compute the maps for ``images`` (default: the
    first ``num_images`` of the test set) and write the figure."""
    model = build_distill_model(cfg, weights, strict=strict)
    paths = list(images) if images else test_image_paths(cfg, num_images)
    maps = compute_heatmaps(model, paths, tap, cfg.INPUT.FORMAT)
    tap_obj = _resolve_tap(model, tap)[2]
    connected = tap_obj is not None and tap_obj.key in model.distiller.connectors
    return plot_heatmaps(
        maps,
        out,
        tap=tap,
        teacher=teacher_name(cfg, Path.cwd()),
        student=model_name(cfg),
        connector=connected,
        **plot_kwargs,
    )
