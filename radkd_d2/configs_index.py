"""The paper's segmentation experiments as data: which config file reproduces which table row.

Tables 1, 3, 5 and 6 of the paper (val mIoU on Cityscapes, Pascal VOC aug, ADE20K) map to
config files under ``configs/<dataset>/``. This module is the single source of truth for
``tools/make_config_matrix.py`` (which writes those files and ``configs/README.md``) and
``tools/list_configs.py`` (which prints each row's config and train command).

File names: ``<method>_<tap>_<teacher>_<student>_<schedule>_<dataset>.yaml`` for distillation,
``teacher_<model>_<schedule>_<dataset>.yaml`` / ``student_<model>_<schedule>_<dataset>.yaml`` for
a model trained on its own (``<model>`` names a ``configs/models/<model>.yaml``). Inheritance
(``_BASE_`` takes one file, so it is a chain)::

    configs/Base-SemSeg.yaml                 model-independent defaults
      <- configs/<dataset>/Base-<Dataset>.yaml   the data set recipe (paper Sec. 4.2)
        <- teacher_* / student_*                 + MODEL of configs/models/<model>.yaml
          <- <method>_<tap>_*                    + MODEL.DISTILL (teacher, taps, weights)

so a distilled student has exactly the keys of its own baseline config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from radkd_d2.losses import loss_label
from radkd_d2.modeling.backbone import BACKBONE_INFO

__all__ = [
    "DATASETS",
    "MODELS",
    "METHODS",
    "RECIPES",
    "DatasetSpec",
    "HANDWRITTEN_KD",
    "KDFamily",
    "ModelSpec",
    "MethodSpec",
    "RecipeSpec",
    "Run",
    "Row",
    "TABLES",
    "all_rows",
    "all_runs",
    "select_rows",
    "train_command",
    "format_rows",
    "kd_families",
    "kd_per_pixel_weight",
    "markdown_tables",
    "reduced_size_opts",
    "REDUCED_DISTILL_OPTS",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A data set and the paper's recipe for it (Sec. 4.2)."""

    key: str  # folder under configs/ and file-name suffix
    title: str
    train: str  # registered data set names
    test: str
    num_classes: int
    ignore: int
    crop: Tuple[int, int]  # (h, w) training crop
    max_iter: int  # the paper's schedule

    @property
    def recipe_file(self) -> str:
        return f"Base-{self.title.replace(' ', '')}.yaml"


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model: ``configs/models/<key>.yaml``."""

    key: str
    short: str  # abbreviation used in distillation file names
    title: str  # as the paper writes it
    family: str  # student family, for reporting and test sampling


@dataclass(frozen=True)
class MethodSpec:
    """A distillation method at one position: the ``MODEL.DISTILL`` keys of its configs."""

    key: str  # file-name prefix
    tap: str  # file-name position label: res5, decoder, logits, decoder-logits
    title: str  # as the paper writes it
    taps: Tuple[Tuple[str, str, str, float], ...]  # MODEL.DISTILL.TAPS entries
    kd_weight: float  # MODEL.DISTILL.KD_WEIGHT (lambda_kd) in the paper's recipe; 0: no logit KD
    note: str  # the weights and where they come from (written into each config)
    distill_opts: Tuple[Tuple[str, object], ...] = ()  # other MODEL.DISTILL keys
    per_dataset_opts: Tuple[Tuple[str, Tuple[Tuple[str, object], ...]], ...] = ()  # by data set

    def opts_for(self, dataset: str) -> Tuple[Tuple[str, object], ...]:
        """``distill_opts`` plus the data set's own entries of ``per_dataset_opts``."""
        return self.distill_opts + dict(self.per_dataset_opts).get(dataset, ())


@dataclass(frozen=True)
class RecipeSpec:
    """Training schedule: the paper's (per data set) or a variant that overrides it."""

    key: str
    note: str
    solver: Tuple[Tuple[str, object], ...] = ()  # SOLVER overrides
    student_model: Tuple[Tuple[str, object], ...] = ()  # MODEL overrides of student baselines
    max_iter: Optional[int] = None  # None: the data set's
    # Logit KD of the code base the recipe follows: its lambda_kd for every method with logit KD
    # (None: the method's own) and its normalisation (MODEL.DISTILL.KD_REDUCTION; the two differ
    # by the factor K, see radkd_d2/losses/logits.py), with where both come from.
    kd_weight: Optional[float] = None
    kd_reduction: str = "element"
    kd_note: str = ""

    def iterations(self, dataset: DatasetSpec) -> int:
        return self.max_iter or dataset.max_iter


DATASETS: Dict[str, DatasetSpec] = {
    d.key: d
    for d in (
        DatasetSpec("cityscapes", "Cityscapes", "cityscapes_fine_sem_seg_train",
                    "cityscapes_fine_sem_seg_val", 19, 255, (512, 1024), 80000),
        DatasetSpec("voc", "VOC", "voc_aug_sem_seg_train", "voc_aug_sem_seg_val",
                    21, 255, (512, 512), 80000),
        DatasetSpec("ade20k", "ADE20K", "ade20k_sem_seg_train", "ade20k_sem_seg_val",
                    150, 255, (512, 512), 160000),
    )
}  # fmt: skip

MODELS: Dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec("pspnet_r101", "pspr101", "PSPNet-R101", "psp_r101"),
        ModelSpec("pspnet_r18", "pspr18", "PSPNet-R18", "psp_r18"),
        ModelSpec("pspnet_mv2", "pspmv2", "PSPNet-MV2", "psp_mv2"),
        ModelSpec("deeplabv3_r101", "dlv3r101", "DeepLabV3-R101", "dlv3_r101"),
        ModelSpec("deeplabv3_r18", "dlv3r18", "DeepLabV3-R18", "dlv3_r18"),
        ModelSpec("deeplabv3_mv2", "dlv3mv2", "DeepLabV3-MV2", "dlv3_mv2"),
        ModelSpec("upernet_swin_b", "upswinb", "UPerNet-SwinB", "upernet_swinb"),
        ModelSpec("upernet_swin_t", "upswint", "UPerNet-SwinT", "upernet_swint"),
    )
}

RECIPES: Dict[str, RecipeSpec] = {
    "paper": RecipeSpec(
        "paper",
        "the paper's recipe (Sec. 4.2): SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9, batch 16",
        kd_reduction="element",
        kd_note="lambda_kd 10 following SKD, CWD and IFVD (paper Sec. 4.2), at the scale of the "
        "code it follows: KD_REDUCTION element, the KL averaged over all B*K*h*w elements "
        "(PyTorch KLDivLoss default 'mean', as in IFVD's and CWD's released code)",
    ),
    # CIRKD's setup (Table 3): winycg/CIRKD train_cirkd.py defaults (lr 0.02, 40k iterations,
    # batch 16, wd 1e-4) and its ResNet students' auxiliary head on res4 with weight 0.4.
    "cirkd": RecipeSpec(
        "cirkd",
        "CIRKD's setup (Table 3; winycg/CIRKD train_cirkd.py): lr 0.02, 40k iterations, batch 16, "
        "wd 1e-4, ResNet students with an auxiliary head (weight 0.4)",
        solver=(("BASE_LR", 0.02), ("WEIGHT_DECAY", 0.0001)),
        student_model=(
            ("SEM_SEG_HEAD.AUX_IN_FEATURE", "res4"),
            ("SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.4),
        ),
        max_iter=40000,
        # The paper ran its own methods in CIRKD's code for this table (Sec. 4.3), so LAD and
        # CAD get CIRKD's logit KD too, not the lambda_kd 10 of the paper's recipe.
        kd_weight=1.0,
        kd_reduction="pixel",
        kd_note="CIRKD's, for every method of Table 3 (the paper ran its methods in CIRKD's "
        "code): lambda_kd 1 (train_cirkd.py --lambda-kd 1) with KD_REDUCTION pixel, the KL "
        "summed over classes and averaged over the B*h*w pixels (losses/kd.py, batchmean)",
    ),
}


def _ours(key: str, tap: str, eq: str) -> MethodSpec:
    name = loss_label(key)
    what = "naive FitNets MSE" if key == "naive" else f"{name} ({eq})"
    return MethodSpec(
        key,
        tap,
        f"{name} (Ours)" if key != "naive" else "Naive",
        ((tap, tap, key, 10.0),),
        10.0,
        f"{what} on {tap}, weight 10 (lambda_ad, paper Sec. 4.2 / Tab. 5), + pixel-wise logit KD "
        "(lambda_kd 10 in the paper's recipe, Sec. 4.2; see Logit KD).",
    )


_METHOD_LIST = [
    MethodSpec(
        "skd", "decoder", "SKD",
        (("decoder", "decoder", "skd", 0.5),), 10.0,
        "SKD (Liu et al., CVPR 2019), official code irfanICMLL/structure_knowledge_distillation: "
        "pair-wise term on the decoder feature weight 0.5 (--lambda-pa 0.5, nodes 2x2: "
        "MODEL.DISTILL.SKD.POOL_SCALE 0.5), pixel-wise KD 10 (--lambda-pi 10). Its holistic "
        "(adversarial, --lambda-d 0.1) term is not a tap loss in radkd-d2 and is not used.",
    ),
    MethodSpec(
        "ifvd", "decoder", "IFVD",
        (("decoder", "decoder", "ifvd", 200.0),), 10.0,
        "IFVD (Wang et al., ECCV 2020), official code YukangWang/IFVD: IFV loss on the decoder "
        "feature weight 200 (--lambda-ifv 200), pixel-wise KD 10 (--lambda-kd 10). The "
        "adversarial term of its code is not a tap loss in radkd-d2 and is not used.",
    ),
    MethodSpec(
        "cwd", "decoder-logits", "CWD",
        (("decoder", "decoder", "cwd", 50.0), ("logits", "logits", "cwd", 3.0)), 10.0,
        "CWD (Shu et al., ICCV 2021): tau 4 (MODEL.DISTILL.CWD.TAU) and weight 3 on the logits "
        "(paper Sec. 4.1); weight 50 on the decoder feature as in the CWD baseline of "
        "winycg/CIRKD (train_scripts/train_kd/train_cwd.sh: --lambda-cwd-fea 50 "
        "--lambda-cwd-logit 3); + pixel-wise KD 10 (the RAD paper: lambda_kd 10 following SKD, "
        "CWD, IFVD). Its adversarial term is not used.",
    ),
    MethodSpec(
        "mgd", "res5", "MGD",
        (("res5", "res5", "mgd", 1.0),), 0.0,
        "MGD (Yang et al., ECCV 2022), official mmseg config (psp_r101 -> psp_r18): last backbone "
        "stage, alpha_mgd 2e-5, mask ratio 0.75 (MODEL.DISTILL.MGD.*; tap weight 1 keeps them), "
        "a plain 1x1 conv to align channels (CONNECTOR conv), use_logit False (KD_WEIGHT 0).",
        distill_opts=(("CONNECTOR", "conv"),),
    ),
    MethodSpec(
        "cirkd", "decoder", "CIRKD",
        (("decoder", "decoder", "cirkd_minibatch", 1.0),
         ("decoder", "decoder", "cirkd_memory", 1.0)),
        1.0,
        "CIRKD (Yang et al., CVPR 2022), winycg/CIRKD train_cirkd.py: on the feature after ASPP "
        "(decoder), mini-batch pixel-to-pixel weight 1 (--lambda-minibatch-pixel 1), memory "
        "pixel/region weights 0.1 (Cityscapes, ADE20K defaults) and 0.01 (VOC, "
        "train_scripts/train_cirkd/voc/deeplabv3_res18.sh) as MODEL.DISTILL.CIRKD.*_WEIGHT, "
        "logit KD 1 at T 1 (--lambda-kd 1).",
        per_dataset_opts=(("voc", (("CIRKD.PIXEL_WEIGHT", 0.01), ("CIRKD.REGION_WEIGHT", 0.01))),),
    ),
]  # fmt: skip
for _tap in ("res5", "decoder", "logits"):
    _METHOD_LIST += [
        _ours("lad", _tap, "Eq. 5"),
        _ours("cad", _tap, "Eq. 7"),
        _ours("pad", _tap, "Eq. 8"),
        _ours("naive", _tap, "Eq. 1"),
    ]
METHODS: Dict[Tuple[str, str], MethodSpec] = {(m.key, m.tap): m for m in _METHOD_LIST}


@dataclass(frozen=True)
class Run:
    """One config file: a model trained on its own (``method`` None) or a distillation."""

    dataset: DatasetSpec
    model: ModelSpec  # the trained model (student of a distillation)
    recipe: RecipeSpec
    role: str  # "teacher", "student" or "distill"
    teacher: Optional[ModelSpec] = None
    method: Optional[MethodSpec] = None

    @property
    def schedule(self) -> str:
        return f"{self.recipe.iterations(self.dataset) // 1000}k"

    @property
    def name(self) -> str:
        d = self.dataset.key
        if self.role == "distill":
            m, t, s = self.method, self.teacher.short, self.model.short
            return f"{m.key}_{m.tap}_{t}_{s}_{self.schedule}_{d}"
        return f"{self.role}_{self.model.key}_{self.schedule}_{d}"

    @property
    def path(self) -> str:
        """Config file, relative to the repository root."""
        return f"configs/{self.dataset.key}/{self.name}.yaml"

    @property
    def output_dir(self) -> str:
        return f"output/{self.dataset.key}/{self.name}"

    @property
    def kd_weight(self) -> float:
        """``MODEL.DISTILL.KD_WEIGHT``: 0 without logit KD, else the recipe's lambda_kd where it
        sets one, else the method's."""
        if self.role != "distill" or self.method.kd_weight == 0:
            return 0.0
        return self.method.kd_weight if self.recipe.kd_weight is None else self.recipe.kd_weight

    @property
    def kd_reduction(self) -> Optional[str]:
        """``MODEL.DISTILL.KD_REDUCTION`` of a run with logit KD (the recipe's), else None."""
        return self.recipe.kd_reduction if self.kd_weight > 0 else None

    @property
    def base_run(self) -> Optional["Run"]:
        """The student baseline a distillation run inherits from."""
        if self.role != "distill":
            return None
        return Run(self.dataset, self.model, self.recipe, "student")

    @property
    def teacher_run(self) -> Optional["Run"]:
        """The teacher's own run (its config file and ``model_final.pth``)."""
        if self.role != "distill":
            return None
        return Run(self.dataset, self.teacher, self.recipe, "teacher")


@dataclass(frozen=True)
class Row:
    """One cell group of a paper table: a row label on one data set, and its config."""

    table: int
    label: str  # row as the paper writes it, prefixed by the student where the table repeats
    run: Run
    paper_miou: Optional[float]

    @property
    def dataset(self) -> str:
        return self.run.dataset.key


# Paper val mIoU (%), per row and data set, in the tables' column order.
_T1 = {  # Cityscapes, VOC, ADE20K
    "pspnet_r18": {"student": (72.65, 71.35, 35.03), "skd": (74.23, 72.01, 35.26),
                   "ifvd": (74.55, 72.00, 35.92), "cwd": (75.91, 73.49, 36.78),
                   "mgd": (75.90, 74.98, 36.84), "cad": (76.77, 75.72, 38.99),
                   "lad": (76.86, 75.74, 39.63)},
    "pspnet_mv2": {"student": (72.73, 69.14, 33.33), "skd": (72.90, 69.62, 33.39),
                   "ifvd": (73.74, 69.45, 33.85), "cwd": (74.73, 71.28, 35.26),
                   "mgd": (71.42, 52.67, 20.36), "cad": (74.73, 73.03, 36.82),
                   "lad": (75.76, 74.13, 38.92)},
    "deeplabv3_r18": {"student": (74.96, 71.98, 37.19), "skd": (75.32, 73.03, 36.91),
                      "ifvd": (76.01, 72.87, 37.66), "cwd": (77.13, 73.78, 38.64),
                      "cad": (77.24, 76.31, 39.44), "lad": (77.23, 76.33, 41.12)},
    "deeplabv3_mv2": {"student": (73.98, 69.92, 35.14), "skd": (75.78, 70.13, 35.11),
                      "ifvd": (75.24, 70.32, 35.35), "cwd": (76.59, 71.68, 36.49),
                      "cad": (77.36, 74.91, 37.91), "lad": (77.47, 74.93, 39.66)},
}  # fmt: skip
_T1_TEACHER = (79.76, 78.52, 44.39)
_T3 = {  # Cityscapes, VOC, ADE20K
    "teacher": (78.07, 77.67, 42.70), "student": (74.21, 73.21, 33.91),
    "cirkd": (76.38, 74.50, 35.41), "cad": (76.81, 74.94, 37.18), "lad": (76.78, 75.53, 38.61),
}  # fmt: skip
_T5 = {  # (method, tap) -> Cityscapes, VOC, ADE20K
    ("naive", "res5"): (74.50, 71.98, 35.36), ("pad", "res5"): (75.52, 74.81, 39.36),
    ("cad", "res5"): (76.77, 75.72, 38.99), ("lad", "res5"): (76.86, 75.74, 39.63),
    ("naive", "decoder"): (74.97, 70.73, 35.98), ("pad", "decoder"): (75.02, 71.26, 35.43),
    ("cad", "decoder"): (75.44, 73.67, 38.60), ("lad", "decoder"): (75.27, 71.39, 36.62),
    ("naive", "logits"): (73.73, 63.84, 29.68), ("pad", "logits"): (75.25, 69.43, 31.18),
    ("cad", "logits"): (75.19, 71.40, 37.92), ("lad", "logits"): (74.96, 70.11, 31.18),
}  # fmt: skip
_T6 = {  # Cityscapes, ADE20K
    "teacher": (81.17, 47.99), "student": (77.94, 43.72), "cwd": (79.38, 45.08),
    "lad": (79.51, 45.47), "cad": (79.54, 46.12),
}  # fmt: skip

_T1_METHODS = {  # Table 1 row order per student (no MGD rows for the DeepLabV3 students)
    "pspnet_r18": ("skd", "ifvd", "cwd", "mgd", "cad", "lad"),
    "pspnet_mv2": ("skd", "ifvd", "cwd", "mgd", "cad", "lad"),
    "deeplabv3_r18": ("skd", "ifvd", "cwd", "cad", "lad"),
    "deeplabv3_mv2": ("skd", "ifvd", "cwd", "cad", "lad"),
}
_DEFAULT_TAP = {"skd": "decoder", "ifvd": "decoder", "cwd": "decoder-logits", "mgd": "res5",
                "cirkd": "decoder", "lad": "res5", "cad": "res5"}  # fmt: skip
_TAP_TITLE = {"res5": "backbone", "decoder": "decoder", "logits": "logits"}

TABLES = {
    1: "Table 1: teacher PSPNet-R101 -> four students, val mIoU (Cityscapes, VOC, ADE20K)",
    3: "Table 3: CIRKD's setup, DeepLabV3-R101 -> DeepLabV3-R18 (* rows: CIRKD's numbers)",
    5: "Table 5: distillation position, PSPNet-R101 -> PSPNet-R18",
    6: "Table 6: UPerNet-SwinB -> UPerNet-SwinT",
}


def _table1(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    teacher = MODELS["pspnet_r101"]
    rows = [Row(1, f"T: {teacher.title}", Run(d, teacher, paper, "teacher"), _T1_TEACHER[col])]
    for student_key, methods in _T1_METHODS.items():
        s = MODELS[student_key]
        numbers = _T1[student_key]
        rows.append(Row(1, f"S: {s.title}", Run(d, s, paper, "student"), numbers["student"][col]))
        for m in methods:
            method = METHODS[(m, _DEFAULT_TAP[m])]
            run = Run(d, s, paper, "distill", teacher, method)
            rows.append(Row(1, f"{s.title} + {method.title}", run, numbers[m][col]))
    return rows


def _table3(d: DatasetSpec, col: int) -> List[Row]:
    cirkd = RECIPES["cirkd"]
    t, s = MODELS["deeplabv3_r101"], MODELS["deeplabv3_r18"]
    rows = [
        Row(3, f"T: {t.title}*", Run(d, t, cirkd, "teacher"), _T3["teacher"][col]),
        Row(3, f"S: {s.title}*", Run(d, s, cirkd, "student"), _T3["student"][col]),
    ]
    for m, title in (("cirkd", "CIRKD*"), ("cad", "CAD (Ours)"), ("lad", "LAD (Ours)")):
        method = METHODS[(m, _DEFAULT_TAP[m])]
        rows.append(Row(3, f"+ {title}", Run(d, s, cirkd, "distill", t, method), _T3[m][col]))
    return rows


def _table5(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    t, s = MODELS["pspnet_r101"], MODELS["pspnet_r18"]
    rows = []
    for tap in ("res5", "decoder", "logits"):
        for m in ("naive", "pad", "cad", "lad"):
            method = METHODS[(m, tap)]
            label = f"{method.title.split(' ')[0]}-{_TAP_TITLE[tap]}"
            rows.append(Row(5, label, Run(d, s, paper, "distill", t, method), _T5[(m, tap)][col]))
    return rows


def _table6(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    t, s = MODELS["upernet_swin_b"], MODELS["upernet_swin_t"]
    rows = [
        Row(6, f"T: {t.title}", Run(d, t, paper, "teacher"), _T6["teacher"][col]),
        Row(6, f"S: {s.title}", Run(d, s, paper, "student"), _T6["student"][col]),
    ]
    for m in ("cwd", "lad", "cad"):
        method = METHODS[(m, _DEFAULT_TAP[m])]
        rows.append(
            Row(6, f"+ {method.title}", Run(d, s, paper, "distill", t, method), _T6[m][col])
        )
    return rows


def all_rows() -> List[Row]:
    """Every row of Tables 1, 3, 5 and 6, table by table, data set by data set."""
    rows: List[Row] = []
    three = ("cityscapes", "voc", "ade20k")
    for build, datasets in (
        (_table1, three),
        (_table3, three),
        (_table5, three),
        (_table6, ("cityscapes", "ade20k")),
    ):
        for col, key in enumerate(datasets):
            rows += build(DATASETS[key], col)
    return rows


def all_runs() -> List[Run]:
    """Every config file of the matrix, once: the rows' runs plus the teachers they need."""
    runs: Dict[str, Run] = {}
    for row in all_rows():
        for run in (row.run, row.run.teacher_run, row.run.base_run):
            if run is not None:
                runs.setdefault(run.path, run)
    return list(runs.values())


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
    if reduction not in ("element", "pixel"):
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
        numbers = ", ".join(map(str, sorted(tables[recipe, dataset])))
        what = "CIRKD's protocol" if recipe == "cirkd" else "paper recipe"
        families.append(
            KDFamily(f"{d.title}, Table{'s' if ',' in numbers else ''} {numbers} ({what})",
                     f"`{d.key}/*_{RECIPES[recipe].iterations(d) // 1000}k_{d.key}.yaml`",
                     kd_weight, reduction, d.num_classes)
        )  # fmt: skip
    return families + list(HANDWRITTEN_KD)


def select_rows(table: Optional[int] = None, dataset: Optional[str] = None) -> List[Row]:
    """Rows of one table and/or data set (None: all)."""
    if table is not None and table not in TABLES:
        raise ValueError(f"table {table} is not in the matrix; choose one of {sorted(TABLES)}")
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(
            f"data set {dataset!r} is not in the matrix; choose one of {list(DATASETS)}"
        )
    return [
        r
        for r in all_rows()
        if (table is None or r.table == table) and (dataset is None or r.dataset == dataset)
    ]


def train_command(run: Run, num_gpus: int = 8) -> str:
    """The command that trains ``run`` (from the repository root)."""
    return f"python tools/train_net.py --config-file {run.path} --num-gpus {num_gpus}"


def _groups(rows: Iterable[Row]):
    groups: Dict[Tuple[int, str], List[Row]] = {}
    for r in rows:
        groups.setdefault((r.table, r.dataset), []).append(r)
    return groups.items()


def format_rows(rows: Sequence[Row], num_gpus: int = 8) -> str:
    """Plain-text listing: per table and data set, each row, its paper mIoU, config and command
    (a distillation row also names the teacher run it needs first)."""
    lines = []
    for (table, dataset), group in _groups(rows):
        lines.append(f"== {TABLES[table]} -- {DATASETS[dataset].title}")
        for r in group:
            miou = f"{r.paper_miou:.2f}" if r.paper_miou is not None else "-"
            lines.append(f"{r.label}  [paper {miou}]")
            lines.append(f"  config:  {r.run.path}")
            if r.run.teacher_run is not None:
                lines.append(f"  teacher: {r.run.teacher_run.path} (train it first)")
            lines.append(f"  {train_command(r.run, num_gpus)}")
        lines.append("")
    return "\n".join(lines)


def markdown_tables(rows: Optional[Sequence[Row]] = None, num_gpus: int = 8) -> str:
    """One Markdown table per (paper table, data set): row, paper mIoU, config file."""
    rows = all_rows() if rows is None else rows
    out = []
    for (table, dataset), group in _groups(rows):
        out += [f"### {TABLES[table]} -- {DATASETS[dataset].title}", ""]
        out += [
            f"Train a row: `python tools/train_net.py --config-file configs/{dataset}/<config>.yaml"
            f" --num-gpus {num_gpus}`; distillation rows need their teacher (a `teacher_*`"
            " config) trained first.",
            "",
        ]
        out += ["| Row | Paper mIoU | Config |", "| --- | ---: | --- |"]
        for r in group:
            miou = f"{r.paper_miou:.2f}" if r.paper_miou is not None else "-"
            out.append(f"| {r.label} | {miou} | [`{r.run.name}`]({r.run.path[len('configs/'):]}) |")
        out.append("")
    return "\n".join(out)


REDUCED_DISTILL_OPTS = [  # CIRKD's banks hold 20000 pixels per class at full size (GBs on ADE20K)
    "MODEL.DISTILL.CIRKD.PIXEL_MEMORY_SIZE", "64", "MODEL.DISTILL.CIRKD.REGION_MEMORY_SIZE", "8",
    "MODEL.DISTILL.CIRKD.PIXEL_CONTRAST_SIZE", "64",
    "MODEL.DISTILL.CIRKD.REGION_CONTRAST_SIZE", "16",
]  # fmt: skip


def reduced_size_opts(cfg) -> List[str]:
    """KEY VALUE overrides (strings, usable as ``MODEL.DISTILL.TEACHER.OPTS``) that shrink the
    model of ``cfg`` -- a config of a ResNet, MobileNetV2 or Swin model -- for CPU tests:
    ResNet width 1/8, MobileNetV2 width 0.35, Swin with one block per stage, 16-channel heads."""
    name = cfg.MODEL.BACKBONE.NAME
    info = BACKBONE_INFO.get(name)
    if info is None or info.reduced_opts is None:
        raise ValueError(f"no reduced size known for backbone {name!r}")
    return list(info.reduced_opts(cfg)) + ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "16"]
