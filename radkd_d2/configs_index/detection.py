"""Table 7 (COCO detection) as data: RetinaNet X101-64x4d-FPN teacher -> RetinaNet R50-FPN
student, 2x schedule, the MGD/FGD protocol; ``tools/make_config_matrix.py`` writes
``configs/coco/`` from it.

Files: ``configs/coco/Base-RetinaNet-2x-COCO.yaml`` (the recipe, on
``configs/Base-RetinaNet.yaml``), ``configs/coco/<model>_2x_coco.yaml`` (a model trained alone) and
``configs/coco/distill/<method>_fpn_retx101_retr50_2x_coco.yaml`` (the student's keys plus
MODEL.DISTILL).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .pretrained import PRETRAINED
from .specs import MethodSpec

__all__ = [
    "COCO",
    "DET_DISTILL_COMMON",
    "DET_METHODS",
    "DET_MODELS",
    "DetDatasetSpec",
    "DetModelSpec",
    "DetRun",
]


@dataclass(frozen=True)
class DetDatasetSpec:
    """A detection data set and its training protocol."""

    key: str  # folder under configs/ and file-name suffix
    title: str
    train: str
    test: str
    num_classes: int
    schedule: str  # "2x"
    max_iter: int
    steps: Tuple[int, int]
    note: str
    task: str = "detection"

    @property
    def recipe_file(self) -> str:
        return f"Base-RetinaNet-{self.schedule}-{self.title}.yaml"


COCO = DetDatasetSpec(
    "coco", "COCO", "coco_2017_train", "coco_2017_val", 80, "2x", 180000, (120000, 160000),
    "RetinaNet on COCO 2017 (Detectron2's built-in coco_2017_{train,val}), 2x schedule: 180k "
    "iterations at batch 16, lr 0.01 divided by 10 at 120k and 160k; single-scale 800 training "
    "(max 1333), the mmdetection protocol behind Table 7 (MGD/FGD: teacher 41.0 AP, student "
    "37.4 AP)",
)  # fmt: skip


@dataclass(frozen=True)
class DetModelSpec:
    """A RetinaNet: its MODEL.RESNETS keys and the ImageNet weights (``PRETRAINED``) it starts
    from, whose input convention (format, pixel mean/std) its file takes."""

    key: str  # file-name stem: <key>_<schedule>_<dataset>.yaml
    short: str  # abbreviation in distillation file names
    title: str
    family: str
    resnets: Tuple[Tuple[str, object], ...]
    weights: str  # a key of PRETRAINED
    note: str

    @property
    def pretrained(self):
        return PRETRAINED[self.weights]


DET_MODELS: Dict[str, DetModelSpec] = {
    m.key: m
    for m in (
        DetModelSpec(
            "retinanet_R50_FPN", "retr50", "RetinaNet-R50", "retinanet_r50", (("DEPTH", 50),),
            "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
            "Student of Table 7 (and its baseline row): RetinaNet R50-FPN, Detectron2's model",
        ),
        DetModelSpec(
            "retinanet_X101_64x4d_FPN", "retx101", "RetinaNet-X101", "retinanet_x101",
            (("DEPTH", 101), ("NUM_GROUPS", 64), ("WIDTH_PER_GROUP", 4),
             ("STRIDE_IN_1X1", False)),
            "output/pretrained/X-101-64x4d_torchvision.pth",
            "Teacher of Table 7: RetinaNet ResNeXt-101-64x4d-FPN (Detectron2's ResNeXt: grouped "
            "3x3 in the bottleneck, stride in the 3x3). A teacher trained by mmdetection (the "
            "MGD/FGD protocol's, 41.0 AP) converts with tools/convert_weights.py --source "
            "mmdet_retinanet and takes the same RGB inputs",
        ),
    )
}  # fmt: skip

_LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _fpn(key: str, title: str, weight: float, note: str, **opts) -> MethodSpec:
    taps = tuple((p, p, key, weight) for p in _LEVELS)
    return MethodSpec(key, "fpn", title, taps, 0.0, note, tuple(opts.items()))


# Table 7's methods on every FPN level, with the coefficients each method published
DET_METHODS: Dict[str, MethodSpec] = {
    m.key: m
    for m in (
        _fpn("fkd", "FKD", 1.0,
             "FKD (Zhang & Ma, ICLR 2021) attention-guided feature imitation on p3-p7 with its "
             "published one-stage coefficients (T 0.5, feature 4e-4, attention 2e-2); tap weight 1",
             **{"FKD.TEMPERATURE": 0.5, "FKD.FEATURE_WEIGHT": 0.0004,
                "FKD.ATTENTION_WEIGHT": 0.02}),
        _fpn("cwd", "CWD", 10.0,
             "CWD (Shu et al., ICCV 2021) on p3-p7 as in the authors' released RetinaNet/FPN "
             "configs (mmrazor): tau 1, loss weight 10 per level", **{"CWD.TAU": 1.0}),
        _fpn("fgd", "FGD", 1.0,
             "FGD (Yang et al., CVPR 2022) on p3-p7 with its published RetinaNet coefficients "
             "(T 0.5, alpha 1e-3, beta 5e-4, gamma 5e-4, lambda 5e-6); tap weight 1 keeps them "
             "as published",
             **{"FGD.TEMPERATURE": 0.5, "FGD.ALPHA": 0.001, "FGD.BETA": 0.0005,
                "FGD.GAMMA": 0.0005, "FGD.LAMBDA": 0.000005}),
        _fpn("mgd", "MGD", 1.0,
             "MGD (Yang et al., ECCV 2022) on p3-p7 with its published RetinaNet setting: alpha "
             "2e-5, mask ratio 0.65 (segmentation uses 0.75, the key's default); tap weight 1",
             **{"MGD.ALPHA": 0.00002, "MGD.MASK_RATIO": 0.65}),
        _fpn("lad", "LAD (Ours)", 10.0,
             "LAD (Eq. 5) on every FPN level p3-p7, lambda_ad = 10 per level (the paper's "
             "default)"),
        _fpn("cad", "CAD (Ours)", 10.0,
             "CAD (Eq. 7) on every FPN level p3-p7, lambda_ad = 10 per level (the paper's "
             "default)"),
        _fpn("pad", "PAD (Ours)", 10.0,
             "PAD (Eq. 8) on every FPN level p3-p7, lambda_ad = 10 per level (the paper's "
             "default)"),
        _fpn("pkd", "PKD", 10.0,
             "PKD (Cao et al., NeurIPS 2022) on p3-p7: published RetinaNet weight 10 per level, "
             "channel statistics over the whole batch as in the official code",
             **{"PKD.BATCH_STATS": True}),
    )
}  # fmt: skip

# MODEL.DISTILL keys every detection distillation shares (the MGD/FGD recipe)
DET_DISTILL_COMMON: Tuple[Tuple[str, object], ...] = (
    ("STUDENT_META_ARCHITECTURE", "RetinaNet"),
    ("KD_WEIGHT", 0.0),  # no logit KD in detection
    ("CONNECTOR", "conv"),  # used only if channels differ; FPN features are signed (no ReLU)
    # the student's FPN and head start from the teacher's (equal shapes), the backbone from
    # ImageNet
    ("INIT_STUDENT_FROM_TEACHER", ["backbone.fpn_", "backbone.top_block.", "head."]),
    ("DIAGNOSTICS_PERIOD", 20),
)


@dataclass(frozen=True)
class DetRun:
    """One detection config file: a model trained on its own, or a distillation."""

    dataset: DetDatasetSpec
    model: DetModelSpec
    role: str  # "teacher", "student" or "distill"
    teacher: Optional[DetModelSpec] = None
    method: Optional[MethodSpec] = None
    kd_weight = 0.0
    kd_reduction = None

    @property
    def schedule(self) -> str:
        return self.dataset.schedule

    @property
    def name(self) -> str:
        d = self.dataset.key
        if self.role == "distill":
            m = self.method
            return f"{m.prefix}_{m.tap}_{self.teacher.short}_{self.model.short}_{self.schedule}_{d}"
        return f"{self.model.key}_{self.schedule}_{d}"

    @property
    def path(self) -> str:
        folder = f"configs/{self.dataset.key}" + ("/distill" if self.role == "distill" else "")
        return f"{folder}/{self.name}.yaml"

    @property
    def output_dir(self) -> str:
        return f"output/{self.dataset.key}/{self.name}"

    @property
    def base_run(self) -> Optional["DetRun"]:
        return None if self.role != "distill" else DetRun(self.dataset, self.model, "student")

    @property
    def teacher_run(self) -> Optional["DetRun"]:
        return None if self.role != "distill" else DetRun(self.dataset, self.teacher, "teacher")
