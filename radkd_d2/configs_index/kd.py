"""The logit KD (lambda_kd, reduction, K) of every config family, for the checks of
tests/test_configs_kd.py and the table of docs/config.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from radkd_d2.losses.logits import KD_REDUCTIONS

from .rows import all_rows, item_name
from .specs import DATASETS, RECIPES


@dataclass(frozen=True)
class KDFamily:
    """A config family and the logit KD (lambda_kd L_kd of Eq. 9) its distillation runs use."""

    title: str
    configs: str  # where its files are, for the reader
    kd_weight: float  # MODEL.DISTILL.KD_WEIGHT; 0: no logit KD
    reduction: Optional[str]  # MODEL.DISTILL.KD_REDUCTION; None without logit KD
    num_classes: Optional[int]  # K; None without logit KD
    folders: Tuple[str, ...] = ()  # hand-written families: config folders under configs/
    meta_arch: str = ""  # ... and the MODEL.META_ARCHITECTURE of their distillation configs

    @property
    def per_pixel_weight(self) -> float:
        """The weight of one pixel's class-summed KL in the total loss."""
        if self.kd_weight == 0:
            return 0.0
        return kd_per_pixel_weight(self.kd_weight, self.reduction, self.num_classes)


def kd_per_pixel_weight(kd_weight: float, reduction: str, num_classes: int) -> float:
    """lambda_kd / K for KD_REDUCTION "element" (a mean over the K classes too), lambda_kd for
    "pixel" (classes summed): the factor of one pixel's class-summed KL."""
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"KD reduction must be 'element' or 'pixel', got {reduction!r}")
    return kd_weight / num_classes if reduction == "element" else kd_weight


# The hand-written configs outside the matrix (tests/test_configs_kd.py checks every
# distillation config in these folders against its family).
HANDWRITTEN_KD: Tuple[KDFamily, ...] = (
    KDFamily("CamVid (CPU-sized study)", "`camvid/*_pspr101_pspr18_camvid.yaml`",
             10.0, "element", 11, ("camvid",), "DistillSemanticSegmentor"),
    KDFamily("Synthetic scenes and demo", "`synthetic/distill/*_pspr101_pspr18_*`, "
             "`synthetic/demo/lad_*`", 10.0, "element", 6, ("synthetic",),
             "DistillSemanticSegmentor"),
    KDFamily("COCO detection (RetinaNet; also tiny COCO and synthetic)",
             "`coco/distill/`, `tiny_coco/distill/`, `synthetic/distill/*_fpn_*`",
             0.0, None, None, ("coco", "tiny_coco", "synthetic"), "DistillRetinaNet"),
    KDFamily("Faster / Mask R-CNN (COCO; also tiny COCO and synthetic)",
             "`coco/distill/*_fpn_*rcnn*`, `tiny_coco/distill/*rcnn*`, "
             "`synthetic/distill/*_fpn_*rcnn*`, `synthetic/demo_rcnn/lad_*`",
             0.0, None, None, ("coco", "tiny_coco", "synthetic"), "DistillGeneralizedRCNN"),
    KDFamily("Any meta-architecture (`Distill`: FCOS on the synthetic scenes)",
             "`synthetic/distill/*fcos*`", 0.0, None, None, ("synthetic",), "Distill"),
)  # fmt: skip


def kd_families() -> List[KDFamily]:
    """The logit KD of every config family: the matrix's per (recipe, data set), computed from
    its runs, then :data:`HANDWRITTEN_KD`. Raises when a group's runs disagree."""
    groups: Dict[Tuple[str, str], set] = {}
    tables: Dict[Tuple[str, str], set] = {}
    for row in all_rows():
        run = row.run
        if run.kd_weight > 0:
            key = (run.recipe.key, run.dataset.key)
            groups.setdefault(key, set()).add((run.kd_weight, run.kd_reduction))
            tables.setdefault(key, set()).add(row.table)
    families = []
    for (recipe, dataset), values in groups.items():
        if len(values) != 1:
            raise ValueError(f"recipe {recipe!r} on {dataset}: runs disagree on logit KD {values}")
        (kd_weight, reduction), d = next(iter(values)), DATASETS[dataset]
        what = "CIRKD's protocol" if recipe == "cirkd" else "paper recipe"
        families.append(
            KDFamily(f"{d.title}, {_sources(tables[recipe, dataset])} ({what})",
                     f"`{d.key}/*_{RECIPES[recipe].iterations(d) // 1000}k_{d.key}.yaml`",
                     kd_weight, reduction, d.num_classes)
        )  # fmt: skip
    return families + list(HANDWRITTEN_KD)


def _sources(ids) -> str:
    """The sources named by keys of TABLES: {"1", "5", "6", "fig1"} -> "Tables 1, 5, 6, Fig. 1"."""
    tables = sorted((t for t in ids if t.isdigit()), key=int)
    figures = sorted(t for t in ids if not t.isdigit())
    parts = [f"Table{'s' if len(tables) > 1 else ''} {', '.join(tables)}"] if tables else []
    return ", ".join(parts + [item_name(f) for f in figures])
