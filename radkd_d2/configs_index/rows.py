"""Table rows and their config files (runs): which file reproduces which row of the paper's
Tables 1, 3, 5, 6, 7 and Fig. 1 (and of the Faster / Mask R-CNN matrix beyond the paper), and the
printed listing with train commands."""
from __future__ import annotations

import posixpath

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .detection import COCO, COCO_RCNN, DET_METHODS, DET_MODELS, RCNN_METHODS, DetRun
from .specs import (
    DATASETS,
    FIG1_WEIGHTS,
    METHODS,
    MODELS,
    RECIPES,
    DatasetSpec,
    MethodSpec,
    ModelSpec,
    RecipeSpec,
    method_at,
)


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
            return f"{m.prefix}_{m.tap}_{t}_{s}_{self.schedule}_{d}"
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
    """One cell group of a paper table (or a point of a figure): a row label on one data set,
    and its config."""

    table: str  # a key of TABLES: "1", "3", "5", "6", "7", "fig1" or "rcnn"
    label: str  # row as the paper writes it, prefixed by the student where the table repeats
    run: Union[Run, DetRun]
    paper: Optional[float]  # the paper's val mIoU (segmentation) or box AP (Table 7); None: none
    reference: str = ""  # beyond the paper: a published number for the row, with its source

    @property
    def dataset(self) -> str:
        return self.run.dataset.key

    @property
    def metric(self) -> str:
        return "AP" if getattr(self.run.dataset, "task", "sem_seg") == "detection" else "mIoU"


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

_T7 = {  # COCO val box AP (mAP column)
    "teacher": 41.0, "student": 37.4, "fkd": 39.6, "cwd": 40.8, "fgd": 40.7, "mgd": 41.0,
    "lad": 41.0,
}  # fmt: skip
_T7_EXTRA = ("cad", "pad", "pkd")  # configs beyond the paper's rows (no paper number)

TABLES = {
    "1": "Table 1: teacher PSPNet-R101 -> four students, val mIoU (Cityscapes, VOC, ADE20K)",
    "3": "Table 3: CIRKD's setup, DeepLabV3-R101 -> DeepLabV3-R18 (* rows: CIRKD's numbers)",
    "5": "Table 5: distillation position, PSPNet-R101 -> PSPNet-R18",
    "6": "Table 6: UPerNet-SwinB -> UPerNet-SwinT",
    "7": "Table 7: RetinaNet X101-64x4d-FPN -> RetinaNet R50-FPN, COCO val box AP",
    "fig1": "Fig. 1: naive feature distillation vs magnitude distillation (Eq. 4) at loss weights "
    f"w in {{{', '.join(f'{w:g}' for w in FIG1_WEIGHTS)}}}, on res5 "
    "(figure only: no paper numbers)",
    "rcnn": "Beyond the paper: Faster / Mask R-CNN R101-FPN or X101-32x8d-FPN -> R50-FPN, COCO "
    "val box (/ mask) AP; reference numbers name their source",
}


def item_name(table: str) -> str:
    """How the paper names a key of :data:`TABLES`: "Table 1", "Fig. 1" ("rcnn": not the
    paper's)."""
    if table == "rcnn":
        return "R-CNN matrix"
    return f"Fig. {table[3:]}" if table.startswith("fig") else f"Table {table}"


def dataset_titles() -> Dict[str, str]:
    """Every data set of the index: key -> title (segmentation, then detection)."""
    return {**{k: d.title for k, d in DATASETS.items()}, COCO.key: COCO.title}


def _table1(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    teacher = MODELS["pspnet_r101"]
    rows = [Row("1", f"T: {teacher.title}", Run(d, teacher, paper, "teacher"), _T1_TEACHER[col])]
    for student_key, methods in _T1_METHODS.items():
        s = MODELS[student_key]
        numbers = _T1[student_key]
        rows.append(Row("1", f"S: {s.title}", Run(d, s, paper, "student"), numbers["student"][col]))
        for m in methods:
            method = METHODS[(m, _DEFAULT_TAP[m])]
            run = Run(d, s, paper, "distill", teacher, method)
            rows.append(Row("1", f"{s.title} + {method.title}", run, numbers[m][col]))
    return rows


def _table3(d: DatasetSpec, col: int) -> List[Row]:
    cirkd = RECIPES["cirkd"]
    t, s = MODELS["deeplabv3_r101"], MODELS["deeplabv3_r18"]
    rows = [
        Row("3", f"T: {t.title}*", Run(d, t, cirkd, "teacher"), _T3["teacher"][col]),
        Row("3", f"S: {s.title}*", Run(d, s, cirkd, "student"), _T3["student"][col]),
    ]
    for m, title in (("cirkd", "CIRKD*"), ("cad", "CAD (Ours)"), ("lad", "LAD (Ours)")):
        method = METHODS[(m, _DEFAULT_TAP[m])]
        rows.append(Row("3", f"+ {title}", Run(d, s, cirkd, "distill", t, method), _T3[m][col]))
    return rows


def _table5(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    t, s = MODELS["pspnet_r101"], MODELS["pspnet_r18"]
    rows = []
    for tap in ("res5", "decoder", "logits"):
        for m in ("naive", "pad", "cad", "lad"):
            method = METHODS[(m, tap)]
            label = f"{method.title.split(' ')[0]}-{_TAP_TITLE[tap]}"
            rows.append(Row("5", label, Run(d, s, paper, "distill", t, method), _T5[(m, tap)][col]))
    return rows


def _table6(d: DatasetSpec, col: int) -> List[Row]:
    paper = RECIPES["paper"]
    t, s = MODELS["upernet_swin_b"], MODELS["upernet_swin_t"]
    rows = [
        Row("6", f"T: {t.title}", Run(d, t, paper, "teacher"), _T6["teacher"][col]),
        Row("6", f"S: {s.title}", Run(d, s, paper, "student"), _T6["student"][col]),
    ]
    for m in ("cwd", "lad", "cad"):
        method = METHODS[(m, _DEFAULT_TAP[m])]
        rows.append(
            Row("6", f"+ {method.title}", Run(d, s, paper, "distill", t, method), _T6[m][col])
        )
    return rows


def _fig1(d: DatasetSpec) -> List[Row]:
    """Fig. 1's three panels on Cityscapes: naive and MD on res5 at each weight of the grid, and
    the lines the figure draws (teacher, student without KD, SKD and IFVD of Table 1)."""
    paper = RECIPES["paper"]
    rows = []
    for t_key, s_key, lines in (
        ("pspnet_r101", "pspnet_r18", ("skd", "ifvd")),
        ("pspnet_r101", "pspnet_mv2", ("skd", "ifvd")),
        ("upernet_swin_b", "upernet_swin_t", ()),
    ):
        t, s = MODELS[t_key], MODELS[s_key]
        rows += [
            Row("fig1", f"{s.title}: T {t.title}", Run(d, t, paper, "teacher"), None),
            Row("fig1", f"{s.title}: w/o KD", Run(d, s, paper, "student"), None),
        ]
        for m in lines:
            method = METHODS[(m, _DEFAULT_TAP[m])]
            rows.append(Row("fig1", f"{s.title}: {method.title}",
                            Run(d, s, paper, "distill", t, method), None))  # fmt: skip
        for key in ("naive", "md"):
            for w in FIG1_WEIGHTS:
                method = method_at(key, "res5", w)
                label = f"{s.title}: {method.title.split(' ')[0]} w={w:g}"
                rows.append(Row("fig1", label, Run(d, s, paper, "distill", t, method), None))
    return rows


def _table7() -> List[Row]:
    t, s = DET_MODELS["retinanet_X101_64x4d_FPN"], DET_MODELS["retinanet_R50_FPN"]
    rows = [
        Row("7", f"T: {t.title}", DetRun(COCO, t, "teacher"), _T7["teacher"]),
        Row("7", f"S: {s.title}", DetRun(COCO, s, "student"), _T7["student"]),
    ]
    for key in ("fkd", "cwd", "fgd", "mgd", "lad") + _T7_EXTRA:
        m = DET_METHODS[key]
        title = m.title + (" (not in the paper's table)" if key in _T7_EXTRA else "")
        rows.append(Row("7", f"+ {title}", DetRun(COCO, s, "distill", t, m), _T7.get(key)))
    return rows


# Published numbers for the R-CNN rows, each with its source (none is the paper's). Detectron2's
# MODEL_ZOO.md: its releases; mmdetection's 2x students are the FGD / MGD / PKD baselines
# (single-scale training, so only roughly comparable with Detectron2's multi-scale recipe).
_RCNN_REFS = {
    ("faster", "teacher", "R_101"): "42.0 (Detectron2 MODEL_ZOO.md, 3x release)",
    ("faster", "teacher", "X_101_32x8d"): "43.0 (Detectron2 MODEL_ZOO.md, 3x release)",
    ("faster", "student", "1x"): "37.9 (Detectron2 MODEL_ZOO.md)",
    ("faster", "student", "2x"): "38.4 (mmdetection 2x; FGD/MGD/PKD baseline)",
    ("faster", "pkd", "2x"): "40.3 (PKD in mmrazor, under mmdetection's R101 2x teacher, 39.8)",
    ("mask", "teacher", "R_101"): "42.9 / 38.6 (Detectron2 MODEL_ZOO.md, 3x release)",
    ("mask", "teacher", "X_101_32x8d"): "44.3 / 39.5 (Detectron2 MODEL_ZOO.md, 3x release)",
    ("mask", "student", "1x"): "38.6 / 35.2 (Detectron2 MODEL_ZOO.md)",
    ("mask", "student", "2x"): "39.2 / 35.4 (mmdetection 2x; FGD/MGD baseline)",
}  # fmt: skip
_RCNN_ORDER = ("fkd", "cwd", "fgd", "mgd", "pkd", "lad", "cad", "pad")


def _rcnn() -> List[Row]:
    """Faster and Mask R-CNN: every method at R101 -> R50, 2x (the published two-stage protocol's
    pair and schedule); LAD also at 1x and under the X101 teacher."""
    rows: List[Row] = []
    teacher_recipe = COCO_RCNN["3x"]
    for kind in ("faster", "mask"):
        s = DET_MODELS[f"{kind}_rcnn_R_50_FPN"]
        teachers = {a: DET_MODELS[f"{kind}_rcnn_{a}_FPN"] for a in ("R_101", "X_101_32x8d")}
        for arch, t in teachers.items():
            run = DetRun(teacher_recipe, t, "teacher")
            rows.append(Row("rcnn", f"T: {t.title}", run, None, _RCNN_REFS[kind, "teacher", arch]))
        for sched in ("1x", "2x"):
            run = DetRun(COCO_RCNN[sched], s, "student")
            rows.append(Row("rcnn", f"S: {s.title} {sched}", run, None,
                            _RCNN_REFS[kind, "student", sched]))  # fmt: skip

        def distill(t, sched, key) -> Row:
            m = RCNN_METHODS[key]
            run = DetRun(COCO_RCNN[sched], s, "distill", t, m, teacher_recipe)
            label = f"+ {m.title}, {t.title.split('-')[-1]} -> {s.title.split('-')[-1]} {sched}"
            return Row("rcnn", label, run, None, _RCNN_REFS.get((kind, key, sched), ""))

        rows += [distill(teachers["R_101"], "2x", key) for key in _RCNN_ORDER]
        rows += [distill(teachers["R_101"], "1x", "lad"), distill(teachers["X_101_32x8d"], "2x", "lad")]
    return rows


def all_rows() -> List[Row]:
    """Every row of Tables 1, 3, 5, 6, Fig. 1 and Table 7, table by table, data set by data
    set, then the R-CNN matrix."""
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
    return rows + _fig1(DATASETS["cityscapes"]) + _table7() + _rcnn()


def all_runs() -> List[Union[Run, DetRun]]:
    """Every config file of the index, once: the rows' runs plus the teachers they need."""
    runs: Dict[str, Union[Run, DetRun]] = {}
    for row in all_rows():
        for run in (row.run, row.run.teacher_run, row.run.base_run):
            if run is not None:
                runs.setdefault(run.path, run)
    return list(runs.values())


def select_rows(
    table: Optional[Union[str, int]] = None, dataset: Optional[str] = None
) -> List[Row]:
    """Rows of one table (a key of :data:`TABLES`; 1 is "1") and/or data set (None: all)."""
    table = None if table is None else str(table)
    if table is not None and table not in TABLES:
        raise ValueError(f"table {table} is not in the matrix; choose one of {list(TABLES)}")
    if dataset is not None and dataset not in dataset_titles():
        raise ValueError(
            f"data set {dataset!r} is not in the matrix; choose one of {list(dataset_titles())}"
        )
    return [
        r
        for r in all_rows()
        if (table is None or r.table == table) and (dataset is None or r.dataset == dataset)
    ]


def train_command(run: Union[Run, DetRun], num_gpus: int = 8) -> str:
    """The command that trains ``run`` (from the repository root)."""
    return f"python tools/train_net.py --config-file {run.path} --num-gpus {num_gpus}"


def _groups(rows: Iterable[Row]):
    groups: Dict[Tuple[str, str], List[Row]] = {}
    for r in rows:
        groups.setdefault((r.table, r.dataset), []).append(r)
    return groups.items()


def format_rows(rows: Sequence[Row], num_gpus: int = 8) -> str:
    """Plain-text listing: per table and data set, each row, its paper number, config and
    command (a distillation row also names the teacher run it needs first)."""
    lines = []
    for (table, dataset), group in _groups(rows):
        lines.append(f"== {TABLES[table]} -- {dataset_titles()[dataset]}")
        for r in group:
            lines.append(f"{r.label}  [{_score_name(r)} {_score(r)}]")
            lines.append(f"  config:  {r.run.path}")
            if r.run.teacher_run is not None:
                released = getattr(r.run.teacher, "released", "")
                how = f"Detectron2's release {released}" if released else "train it first"
                lines.append(f"  teacher: {r.run.teacher_run.path} ({how})")
            lines.append(f"  {train_command(r.run, num_gpus)}")
        lines.append("")
    return "\n".join(lines)


def markdown_tables(
    rows: Optional[Sequence[Row]] = None, num_gpus: int = 8, links_from: str = "configs", level: int = 3
) -> str:
    """One Markdown table per (paper table, data set): row, paper number, config file.

    ``links_from``: the folder the Markdown file is in (config links are relative to it);
    ``level``: the heading level of each table's title."""
    rows = all_rows() if rows is None else rows
    out = []
    for (table, dataset), group in _groups(rows):
        out += [f"{'#' * level} {TABLES[table]} -- {dataset_titles()[dataset]}", ""]
        teacher = "`teacher_*`" if group[0].metric == "mIoU" else "teacher"
        needs = (
            "load their teacher's weights from Detectron2's model zoo (no teacher to train)"
            if table == "rcnn"
            else f"need their teacher (a {teacher} config) trained first"
        )
        out += [
            f"Train a row: `python tools/train_net.py --config-file configs/{dataset}/<config>.yaml"
            f" --num-gpus {num_gpus}`; distillation rows {needs}.",
            "",
        ]
        head = "Reference AP (source)" if table == "rcnn" else f"Paper {group[0].metric}"
        out += [f"| Row | {head} | Config |", "| --- | ---: | --- |"]
        for r in group:
            out.append(
                f"| {r.label} | {_score(r)} | [`{r.run.name}`]({posixpath.relpath(r.run.path, links_from)}) |"
            )
        out.append("")
    return "\n".join(out)


def _score_name(row: Row) -> str:
    return "reference" if row.table == "rcnn" else "paper"


def _score(row: Row) -> str:
    """The paper's number of a row, as printed: "76.86" (mIoU), "41.0" (box AP), "-" (none);
    beyond the paper, the reference with its source."""
    if row.reference:
        return row.reference
    if row.paper is None:
        return "-"
    return f"{row.paper:.1f}" if row.metric == "AP" else f"{row.paper:.2f}"
