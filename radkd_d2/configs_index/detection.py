"""COCO detection as data; ``tools/make_config_matrix.py`` writes ``configs/coco/`` from it.

Table 7: RetinaNet X101-64x4d-FPN teacher -> RetinaNet R50-FPN student, 2x schedule, the MGD/FGD
protocol. Beyond the paper: Faster and Mask R-CNN R50-FPN students (1x, 2x) under R101-FPN or
X101-32x8d-FPN teachers of the same kind, whose configs are those of Detectron2's model zoo, so
that its released checkpoints are the teachers' weights.

Files: ``configs/coco/Base-<detector>-<schedule>-COCO.yaml`` (a recipe, on
``configs/Base-RetinaNet.yaml`` or ``configs/Base-RCNN-FPN.yaml``),
``configs/coco/<model>_<schedule>_coco.yaml`` (a model trained alone) and
``configs/coco/distill/<method>_fpn_<teacher>_<student>_<schedule>_coco.yaml`` (the student's keys
plus MODEL.DISTILL).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .pretrained import PRETRAINED
from .specs import MethodSpec

__all__ = [
    "COCO",
    "COCO_RCNN",
    "RCNN_DISTILL_COMMON",
    "RCNN_METHODS",
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
    schedule: str  # "1x", "2x", "3x"
    max_iter: int
    steps: Tuple[int, int]
    note: str
    task: str = "detection"
    detector: str = "RetinaNet"  # the recipe's base: configs/Base-<detector>.yaml
    base_lr: float = 0.01
    min_size_train: Tuple[int, ...] = (800,)  # INPUT.MIN_SIZE_TRAIN (several: multi-scale)

    @property
    def recipe_file(self) -> str:
        return f"Base-{self.detector}-{self.schedule}-{self.title}.yaml"


COCO = DetDatasetSpec(
    "coco", "COCO", "coco_2017_train", "coco_2017_val", 80, "2x", 180000, (120000, 160000),
    "RetinaNet on COCO 2017 (Detectron2's built-in coco_2017_{train,val}), 2x schedule: 180k "
    "iterations at batch 16, lr 0.01 divided by 10 at 120k and 160k; single-scale 800 training "
    "(max 1333), the mmdetection protocol behind Table 7 (MGD/FGD: teacher 41.0 AP, student "
    "37.4 AP)",
)  # fmt: skip

_D2_SIZES = (640, 672, 704, 736, 768, 800)  # Detectron2's multi-scale training (Base-RCNN-FPN)


def _rcnn_recipe(schedule: str, max_iter: int, steps: Tuple[int, int]) -> DetDatasetSpec:
    return DetDatasetSpec(
        "coco", "COCO", "coco_2017_train", "coco_2017_val", 80, schedule, max_iter, steps,
        f"Faster / Mask R-CNN on COCO 2017, {schedule} schedule as Detectron2's model zoo trains "
        f"it: {max_iter // 1000}k iterations at batch 16, lr 0.02 divided by 10 at "
        f"{steps[0] // 1000}k and {steps[1] // 1000}k, multi-scale training (short side "
        f"{_D2_SIZES[0]}-{_D2_SIZES[-1]}, max 1333), test at 800",
        detector="RCNN-FPN", base_lr=0.02, min_size_train=_D2_SIZES,
    )  # fmt: skip


# Detectron2's 1x / 2x / 3x schedules for Faster and Mask R-CNN (3x: the released teachers)
COCO_RCNN: Dict[str, DetDatasetSpec] = {
    "1x": _rcnn_recipe("1x", 90000, (60000, 80000)),
    "2x": _rcnn_recipe("2x", 180000, (120000, 160000)),
    "3x": _rcnn_recipe("3x", 270000, (210000, 250000)),
}


@dataclass(frozen=True)
class DetModelSpec:
    """A detector (RetinaNet, Faster or Mask R-CNN): its MODEL.RESNETS keys and the ImageNet
    weights (``PRETRAINED``) it starts from, whose input convention (format, pixel mean/std) its
    file takes."""

    key: str  # file-name stem: <key>_<schedule>_<dataset>.yaml
    short: str  # abbreviation in distillation file names
    title: str
    family: str
    resnets: Tuple[Tuple[str, object], ...]
    weights: str  # a key of PRETRAINED
    note: str
    meta_arch: str = "RetinaNet"  # MODEL.META_ARCHITECTURE: "RetinaNet" or "GeneralizedRCNN"
    mask_on: bool = False  # MODEL.MASK_ON (Mask R-CNN)
    zoo: str = ""  # the Detectron2 model-zoo config this file's model is ("" for none)
    released: str = ""  # Detectron2's trained checkpoint of ``zoo``: a teacher's weights

    @property
    def pretrained(self):
        return PRETRAINED[self.weights]

    @property
    def distill_meta_arch(self) -> str:
        return {"RetinaNet": "DistillRetinaNet", "GeneralizedRCNN": "DistillGeneralizedRCNN"}[
            self.meta_arch
        ]


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

_D2_ZOO = "detectron2://{}/{}"  # Detectron2's released checkpoints (model_zoo.py's URL suffixes)
_R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
_R101 = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
_X101 = "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"
_X101_RESNETS = (("DEPTH", 101), ("NUM_GROUPS", 32), ("WIDTH_PER_GROUP", 8),
                 ("STRIDE_IN_1X1", False))  # fmt: skip


def _rcnn_models(mask: bool):
    """Faster (or Mask) R-CNN R50-FPN, R101-FPN and X101-32x8d-FPN as Detectron2's model zoo has
    them; the two teachers point to its released 3x checkpoints."""
    kind, zoo_dir = ("mask", "COCO-InstanceSegmentation") if mask else ("faster", "COCO-Detection")
    title = "Mask R-CNN" if mask else "Faster R-CNN"
    short = "mrcnn" if mask else "frcnn"
    released = {  # Detectron2 model_zoo.py: config -> released checkpoint; MODEL_ZOO.md numbers
        False: {"R_101": ("137851257/model_final_f6e8b1.pkl", "42.0 box AP"),
                "X_101_32x8d": ("139173657/model_final_68b088.pkl", "43.0 box AP")},
        True: {"R_101": ("138205316/model_final_a3ec72.pkl", "42.9 box / 38.6 mask AP"),
               "X_101_32x8d": ("139653917/model_final_2d9806.pkl", "44.3 box / 39.5 mask AP")},
    }[mask]  # fmt: skip

    def teacher(arch: str, name: str, resnets, weights) -> DetModelSpec:
        zoo = f"{zoo_dir}/{kind}_rcnn_{arch}_FPN_3x"
        suffix, score = released[arch]
        return DetModelSpec(
            f"{kind}_rcnn_{arch}_FPN", f"{short}{name.lower()}",
            f"{title}-{name}", f"{short}_{name.lower()}", resnets, weights,
            f"Teacher: {title} {name}-FPN, the model of Detectron2's {zoo}.yaml, whose released "
            f"checkpoint ({score} on COCO val, Detectron2's MODEL_ZOO.md) the distillation "
            "configs load; this file retrains it",
            "GeneralizedRCNN", mask, zoo, _D2_ZOO.format(zoo, suffix),
        )

    student = DetModelSpec(
        f"{kind}_rcnn_R_50_FPN", f"{short}r50", f"{title}-R50", f"{short}_r50", (("DEPTH", 50),),
        _R50,
        f"Student: {title} R50-FPN, the model of Detectron2's {zoo_dir}/{kind}_rcnn_R_50_FPN_1x"
        ".yaml (" + ("38.6 box / 35.2 mask AP" if mask else "37.9 box AP") + " at 1x, "
        "MODEL_ZOO.md)",
        "GeneralizedRCNN", mask, f"{zoo_dir}/{kind}_rcnn_R_50_FPN_1x",
    )  # fmt: skip
    return (
        student,
        teacher("R_101", "R101", (("DEPTH", 101),), _R101),
        teacher("X_101_32x8d", "X101", _X101_RESNETS, _X101),
    )


DET_MODELS.update({m.key: m for mask in (False, True) for m in _rcnn_models(mask)})

_LEVELS = ("p3", "p4", "p5", "p6", "p7")
RCNN_LEVELS = ("p2", "p3", "p4", "p5", "p6")  # the FPN levels of Faster / Mask R-CNN


def _fpn(key: str, title: str, weight: float, note: str, levels=_LEVELS, **opts) -> MethodSpec:
    taps = tuple((p, p, key, weight) for p in levels)
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

_RCNN4 = RCNN_LEVELS[:4]  # p2-p5: the levels with an FPN output conv (p6 pools p5)

# The same losses on Faster / Mask R-CNN's levels, with each method's published two-stage setting
RCNN_METHODS: Dict[str, MethodSpec] = {
    m.key: m
    for m in (
        _fpn("fkd", "FKD", 1.0,
             "FKD (Zhang & Ma, ICLR 2021) on p2-p6 with the coefficients of its one-stage setting "
             "(T 0.5, feature 4e-4, attention 2e-2; its two-stage values are not reproduced "
             "here); tap weight 1", RCNN_LEVELS,
             **{"FKD.TEMPERATURE": 0.5, "FKD.FEATURE_WEIGHT": 0.0004,
                "FKD.ATTENTION_WEIGHT": 0.02}),
        _fpn("cwd", "CWD", 10.0,
             "CWD (Shu et al., ICCV 2021) on p2-p6 as mmrazor's Faster R-CNN R101 -> R50 config "
             "(cwd_fpn_frcnn_r101_frcnn_r50_1x_coco): tau 1, loss weight 10 per level",
             RCNN_LEVELS, **{"CWD.TAU": 1.0}),
        _fpn("fgd", "FGD", 1.0,
             "FGD (Yang et al., CVPR 2022) on p2-p5 with its published two-stage coefficients (the "
             "authors' Faster / Mask R-CNN R101 -> R50 configs: T 0.5, alpha 5e-5, beta 2.5e-5, "
             "gamma 5e-5, lambda 5e-7); tap weight 1", _RCNN4,
             **{"FGD.TEMPERATURE": 0.5, "FGD.ALPHA": 0.00005, "FGD.BETA": 0.000025,
                "FGD.GAMMA": 0.00005, "FGD.LAMBDA": 0.0000005}),
        _fpn("mgd", "MGD", 1.0,
             "MGD (Yang et al., ECCV 2022) on p2-p5 with its published two-stage setting (the "
             "authors' Faster / Mask R-CNN configs): alpha 5e-7, mask ratio 0.45; tap weight 1",
             _RCNN4, **{"MGD.ALPHA": 0.0000005, "MGD.MASK_RATIO": 0.45}),
        _fpn("pkd", "PKD", 6.0,
             "PKD (Cao et al., NeurIPS 2022) on p2-p5 as mmrazor's Faster R-CNN R101 -> R50 2x "
             "config: weight 6 per level, channel statistics over the whole batch",
             _RCNN4, **{"PKD.BATCH_STATS": True}),
        _fpn("lad", "LAD (Ours)", 10.0,
             "LAD (Eq. 5) on every FPN level p2-p6, lambda_ad = 10 per level (the paper's default; "
             "not validated on two-stage detectors: on the synthetic scenes it helped a Mask "
             "R-CNN student far from its plateau and hurt one near it, see "
             "docs/results/2026-12-05-demo-rcnn.md)", RCNN_LEVELS),
        _fpn("cad", "CAD (Ours)", 10.0,
             "CAD (Eq. 7) on every FPN level p2-p6, lambda_ad = 10 per level (the paper's "
             "default)", RCNN_LEVELS),
        _fpn("pad", "PAD (Ours)", 10.0,
             "PAD (Eq. 8) on every FPN level p2-p6, lambda_ad = 10 per level (the paper's "
             "default)", RCNN_LEVELS),
    )
}  # fmt: skip

# MODEL.DISTILL keys every Faster / Mask R-CNN distillation shares: no logit KD, and the student
# starts from ImageNet alone (the published two-stage configs of MGD, PKD and CWD inherit nothing
# from the teacher)
RCNN_DISTILL_COMMON: Tuple[Tuple[str, object], ...] = (
    ("STUDENT_META_ARCHITECTURE", "GeneralizedRCNN"),
    ("KD_WEIGHT", 0.0),
    ("CONNECTOR", "conv"),  # used only if channels differ
    ("DIAGNOSTICS_PERIOD", 20),
)

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
    teacher_dataset: Optional[DetDatasetSpec] = None  # the teacher's recipe (default: the same)
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
        if self.role != "distill":
            return None
        return DetRun(self.teacher_dataset or self.dataset, self.teacher, "teacher")

    @property
    def teacher_weights(self) -> str:
        """MODEL.DISTILL.TEACHER.WEIGHTS: the teacher's released checkpoint, else its run's."""
        return self.teacher.released or f"{self.teacher_run.output_dir}/model_final.pth"

    @property
    def distill_common(self) -> Tuple[Tuple[str, object], ...]:
        return RCNN_DISTILL_COMMON if self.model.meta_arch == "GeneralizedRCNN" else DET_DISTILL_COMMON
