"""Table rows and their config files (runs): which file reproduces which row, and the printed
listing with train commands."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .specs import DATASETS, METHODS, MODELS, RECIPES, DatasetSpec, MethodSpec, ModelSpec, RecipeSpec


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
