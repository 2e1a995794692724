"""Paper-style comparison tables from run folders (Tables 1/5/6 for segmentation, Table 7 for
detection), as Markdown and CSV.

Each run is described from its own ``config.yaml`` (model, data set, distillation taps and
weights, teacher config) and the last evaluation in its ``metrics.json``:

* **role**: "teacher", "baseline" (the student trained without KD) or "student" (distilled).
  ``Distill*`` meta-architectures are students; other runs are teachers when their model is
  the teacher of some distilled run on the same data set, else baselines (or as given).
* **method** from the loss names in ``MODEL.DISTILL.TAPS`` ("LAD", "Naive", "CWD", ...), "KD"
  when only logit KD is on, "none" for plain models; **tap** and **λ** from the same entries,
  **λ_kd** from ``MODEL.DISTILL.KD_WEIGHT``.

Seeds: runs whose configs differ only in ``SEED`` and ``OUTPUT_DIR`` (and that have the same
role) are seeds of one setting and make one table row: the mean over seeds, the sample standard
deviation (ddof 1; none for one seed) and the number of seeds, ``52.00 ± 8.00 (5)`` in Markdown
and ``mIoU``, ``mIoU_std``, ``seeds`` in the CSV (likewise for every metric shown).

Δ is a distilled setting's mean minus that of the no-KD baseline with the same student model on
the same data set, with the standard error of that difference of means,
``delta_se = sqrt(s²/n + s_b²/n_b)`` (undefined, blank, when either side has one seed). A Δ is
marked significant (``*``) when Δ > 2·delta_se. Runs that are missing or unfinished never enter
a table; they are listed one per run folder in a section of their own (and in ``runs.csv``).

Loss balance: distillation runs log ``grad_ratio/<term>`` (the gradient norm of a distillation
term over that of the task loss at the same student feature) every
MODEL.DISTILL.DIAGNOSTICS_PERIOD iterations; the report gives, per setting, the median of each
term's ratio over all logged periods and seeds (``loss_balance.csv``).
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .runs import (
    DET_METRICS,
    SEM_SEG_METRICS,
    RunResult,
    cfg_get,
    read_run,
    seed_run_dirs,
    setting_key,
)


# registered loss name -> name in the paper's tables
LOSS_LABELS = {
    "naive": "Naive",
    "md": "MD",
    "magnitude": "MD",
    "fitnet": "FitNet",
    "lad": "LAD",
    "cad": "CAD",
    "pad": "PAD",
    "cwd": "CWD",
    "mgd": "MGD",
    "skd": "SKD",
    "ifvd": "IFVD",
    "cirkd_minibatch": "CIRKD",
    "cirkd_memory": "CIRKD",
    "fgd": "FGD",
    "pkd": "PKD",
    "fkd": "FKD",
    "kd": "KD",
}
# row order inside a student block: the paper's (prior methods first, ours last)
METHOD_ORDER = [
    "none",
    "KD",
    "Naive",
    "MD",
    "FitNet",
    "SKD",
    "IFVD",
    "CWD",
    "MGD",
    "CIRKD",
    "FKD",
    "FGD",
    "PKD",
    "PAD",
    "CAD",
    "LAD",
]
HEAD_NAMES = {"PSPHead": "PSPNet", "DeepLabV3Head": "DeepLabV3", "UPerNetHead": "UPerNet"}
META_NAMES = {"GeneralizedRCNN": "FasterRCNN"}
# data set name prefix -> display name (longest prefix wins)
DATASET_NAMES = {
    "cityscapes": "Cityscapes",
    "voc": "VOC",
    "pascal_voc": "VOC",
    "ade20k": "ADE20K",
    "ade": "ADE20K",
    "camvid": "CamVid",
    "coco": "COCO",
    "tiny_coco": "tiny-COCO",
    "synthetic_sem_seg": "Synthetic",
    "synthetic_det": "Synthetic-det",
}
# CSV columns: what identifies a setting, its metrics over seeds (and deltas), where it came
# from. A metric column is the mean over seeds, <metric>_std their sample std, seeds their count.
_CSV_RUN_FIELDS = ["role", "dataset", "teacher", "model", "method", "tap", "weight", "kd_weight"]
_CSV_SOURCE_FIELDS = ["baseline_run", "baseline_seeds", "iterations", "seed_values", "run", "path"]


def _metric_fields(metrics: Sequence[str]) -> List[str]:
    return [f for m in metrics for f in (m, f"{m}_std")]


# "delta" is renamed after the metric it is of when written (delta_mIoU by default)
SEG_CSV_FIELDS = [
    *_CSV_RUN_FIELDS,
    *_metric_fields(SEM_SEG_METRICS),
    "seeds",
    "delta",
    "delta_se",
    *_CSV_SOURCE_FIELDS,
]
DET_CSV_FIELDS = [
    *_CSV_RUN_FIELDS,
    *_metric_fields(DET_METRICS),
    "seeds",
    *[f for m in DET_METRICS for f in (f"delta_{m}", f"delta_{m}_se")],
    *_CSV_SOURCE_FIELDS,
]
BALANCE_CSV_FIELDS = [*_CSV_RUN_FIELDS, "seeds", "run", "path"]  # + grad_ratio/<term> columns
_SEED_SUFFIX = re.compile(r"/seed\d+$")  # run_name of a seed folder: <arm>/seed<k>
SIGNIFICANCE_NOTE = "`*`: Δ > 2·SE of the difference, SE = sqrt(s²/n + s_b²/n_b)."
RUNS_CSV_FIELDS = [
    "run",
    "status",
    "note",
    "role",
    "task",
    "dataset",
    "teacher",
    "model",
    "method",
    "tap",
    "weight",
    "kd_weight",
    "seed",
    "iterations",
    "path",
]


@dataclass
class RunInfo:
    """A run with what the tables need to know about it (see the module doc)."""

    result: RunResult
    role: str = "?"
    task: str = "?"
    dataset: str = "?"
    model: str = "?"
    teacher: str = ""
    method: str = "?"
    tap: str = ""
    weight: Optional[float] = None
    kd_weight: float = 0.0

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def metrics(self) -> dict:
        return self.result.metrics

    @property
    def distilled(self) -> bool:
        return self.method not in ("none", "?")

    @property
    def setting(self) -> tuple:
        """What this run's seeds share: role, task and the config without SEED/OUTPUT_DIR (a
        run without a config is a setting of its own)."""
        cfg = self.result.config
        return (self.role, self.task, setting_key(cfg) if cfg else f"run:{self.result.path}")


@dataclass
class RunGroup:
    """The seeds of one setting (runs equal but for SEED and OUTPUT_DIR), in the order read."""

    runs: List[RunInfo]

    @property
    def info(self) -> RunInfo:
        """The first seed: what describes the setting (role, model, method, ...)."""
        return self.runs[0]

    @property
    def name(self) -> str:
        """``lad_res5`` for the seeds ``lad_res5/seed<k>`` (or a single run); other seeds of
        one setting in folders of their own are named together, ``run_a,run_b``."""
        arms = OrderedDict.fromkeys(_SEED_SUFFIX.sub("", r.name) for r in self.runs)
        return ",".join(arms)

    def values(self, metric: str) -> List[float]:
        """``metric`` of every seed that has it."""
        return [float(r.metrics[metric]) for r in self.runs if r.metrics.get(metric) is not None]

    def grad_ratios(self) -> Dict[str, List[float]]:
        """``term -> every grad_ratio/<term> value`` of every seed, pooled."""
        pooled: "OrderedDict[str, List[float]]" = OrderedDict()
        for r in self.runs:
            for term, vals in r.result.grad_ratios.items():
                pooled.setdefault(term, []).extend(vals)
        return pooled


def group_runs(infos: Iterable[RunInfo]) -> List[RunGroup]:
    """Runs grouped by :attr:`RunInfo.setting`, groups in the order of their first run. A
    folder given twice counts once: a seed read twice would shrink the std and the SE."""
    groups: "OrderedDict[tuple, RunGroup]" = OrderedDict()
    for info in infos:
        group = groups.setdefault(info.setting, RunGroup([]))
        if all(r.result.path.resolve() != info.result.path.resolve() for r in group.runs):
            group.runs.append(info)
    return list(groups.values())


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], float, int]:
    """``(mean, sample std with ddof 1, n)``; mean None for no value, std NaN for fewer than 2."""
    n = len(values)
    if n == 0:
        return None, math.nan, 0
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else math.nan), n


def delta_se(std: float, n: int, std_b: float, n_b: int) -> float:
    """Standard error of a difference of two means, ``sqrt(std²/n + std_b²/n_b)``; NaN when
    either side has fewer than two seeds (its spread is unknown)."""
    if n < 2 or n_b < 2 or not (math.isfinite(std) and math.isfinite(std_b)):
        return math.nan
    return math.sqrt(std**2 / n + std_b**2 / n_b)


def significant(delta: Optional[float], se: Optional[float]) -> bool:
    """Whether an improvement Δ is more than twice its standard error (never when the SE is
    undefined)."""
    return delta is not None and se is not None and math.isfinite(se) and delta > 2 * se


# ---------------------------------------------------------------------------------------------
# describing a run from its config
# ---------------------------------------------------------------------------------------------
def _width_suffix(mult) -> str:
    if mult is None or float(mult) == 1.0:
        return ""
    inv = 1.0 / float(mult)
    return f"/{inv:g}" if abs(inv - round(inv)) < 1e-6 else f"×{float(mult):g}"


def _swin_size(cfg: dict) -> str:
    embed, depths = cfg_get(cfg, "MODEL.SWIN.EMBED_DIM"), cfg_get(cfg, "MODEL.SWIN.DEPTHS") or []
    if embed == 96:
        return "S" if len(depths) > 2 and depths[2] == 18 else "T"
    return {128: "B", 192: "L"}.get(embed, "")


def backbone_name(cfg: dict) -> str:
    """Short backbone name: "R18/4" (dilated ResNet-18, 1/4 width), "X101", "MV2", "SwinT"."""
    name = str(cfg_get(cfg, "MODEL.BACKBONE.NAME", "") or "")
    low = name.lower()
    if "dilated_resnet" in low:
        depth, width = cfg_get(cfg, "MODEL.DRN.DEPTH", "?"), cfg_get(cfg, "MODEL.DRN.WIDTH_MULT")
        return f"R{depth}{_width_suffix(width)}"
    if "resnet" in low:
        prefix = "X" if (cfg_get(cfg, "MODEL.RESNETS.NUM_GROUPS", 1) or 1) > 1 else "R"
        return f"{prefix}{cfg_get(cfg, 'MODEL.RESNETS.DEPTH', '?')}"
    if "mobilenet" in low:
        return "MV2" + _width_suffix(cfg_get(cfg, "MODEL.MOBILENETV2.WIDTH_MULT"))
    if "swin" in low:
        return "Swin" + _swin_size(cfg)
    return name.removeprefix("build_").removesuffix("_backbone") or "?"


def model_name(cfg: dict) -> str:
    """Display name of the model a config trains (the student of a Distill* config):
    "PSPNet-R18/4", "DeepLabV3-R101", "RetinaNet-X101"."""
    meta = str(cfg_get(cfg, "MODEL.META_ARCHITECTURE", "") or "")
    if meta.startswith("Distill"):
        meta = cfg_get(cfg, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE") or meta[len("Distill") :]
    if not meta:
        return "?"
    if meta == "SemanticSegmentor":
        head = str(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.NAME", "") or "")
        arch = HEAD_NAMES.get(head, head.removesuffix("Head") or "SemSeg")
    else:
        arch = META_NAMES.get(meta, meta)
    return f"{arch}-{backbone_name(cfg)}"


def dataset_name(name: str) -> str:
    """Display name of a registered data set: "cityscapes_fine_sem_seg_val" -> "Cityscapes"."""
    low = (name or "?").lower()
    for prefix in sorted(DATASET_NAMES, key=len, reverse=True):
        if low.startswith(prefix):
            return DATASET_NAMES[prefix] + (" (test)" if "_test" in low else "")
    return name or "?"


def classify_method(meta_arch: str, taps: Sequence, kd_weight: float = 0.0):
    """``(method, tap, weight, kd_weight)`` of a run from its MODEL.DISTILL keys.

    ``taps`` are ``[student_pos, teacher_pos, loss, weight]`` entries; a ``kd`` entry on the
    logits counts as logit KD. A meta-architecture that is not ``Distill*`` gives "none".
    """
    if not str(meta_arch or "").startswith("Distill"):
        return "none", "", None, 0.0
    names, positions, weights = [], [], []
    kd = float(kd_weight or 0.0)
    for entry in taps or []:
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            continue
        s, t, loss, w = entry
        if str(loss).lower() == "kd":
            kd += float(w)
            continue
        label = LOSS_LABELS.get(str(loss).lower(), str(loss).upper())
        if label not in names:
            names.append(label)
        pos = s if s == t else f"{s}_to_{t}"
        if pos not in positions:
            positions.append(pos)
        weights.append(float(w))
    if not names:
        return ("KD" if kd > 0 else "none"), "", None, kd
    weight = weights[0] if len(set(weights)) == 1 else None
    return "+".join(names), ",".join(positions), weight, kd


def _find_file(name: str, run_dir: Path) -> Optional[Path]:
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, run_dir / p]):
        if cand.is_file():
            return cand
    return None


def _set_key(cfg: dict, key: str, value) -> None:
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def teacher_name(cfg: dict, run_dir: Path) -> str:
    """Model name of a Distill* run's teacher, from MODEL.DISTILL.TEACHER.CONFIG_FILE (+ OPTS);
    the file's stem when it cannot be read."""
    cfg_file = str(cfg_get(cfg, "MODEL.DISTILL.TEACHER.CONFIG_FILE", "") or "")
    if not cfg_file:
        return "?"
    found = _find_file(cfg_file, run_dir)
    if found is None:
        return Path(cfg_file).stem
    try:
        import yaml
        from fvcore.common.config import CfgNode

        tcfg = CfgNode.load_yaml_with_base(str(found), allow_unsafe=False)
        opts = list(cfg_get(cfg, "MODEL.DISTILL.TEACHER.OPTS", []) or [])
        for key, value in zip(opts[0::2], opts[1::2]):
            _set_key(tcfg, str(key), yaml.safe_load(str(value)))
        return model_name(tcfg)
    except Exception:  # a broken teacher config must not break the report: name it by file
        return Path(cfg_file).stem


def describe_run(result: RunResult, role: Optional[str] = None) -> RunInfo:
    """A :class:`RunInfo` from a run's config.yaml and metrics (role as given, else inferred
    later by :func:`assign_roles`)."""
    cfg = result.config
    info = RunInfo(result, role=role or "?")
    if not cfg:
        return info
    meta = cfg_get(cfg, "MODEL.META_ARCHITECTURE", "")
    info.method, info.tap, info.weight, info.kd_weight = classify_method(
        meta, cfg_get(cfg, "MODEL.DISTILL.TAPS", []), cfg_get(cfg, "MODEL.DISTILL.KD_WEIGHT", 0.0)
    )
    info.model = model_name(cfg)
    info.dataset = dataset_name((cfg_get(cfg, "DATASETS.TEST") or ["?"])[0])
    if result.task:
        info.task = result.task
    else:
        student_meta = (
            cfg_get(cfg, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", "")
            if meta.startswith("Distill")
            else meta
        )
        info.task = "sem_seg" if "Semantic" in str(student_meta) else "bbox"
    if info.distilled:
        info.teacher = teacher_name(cfg, result.path)
        info.role = "student"
    return info


def _norm(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def assign_roles(infos: List[RunInfo]) -> None:
    """Plain (non-distilled) runs without a role: "teacher" when their model teaches some
    distilled run on the same data set, else "baseline" (the no-KD student). Names are compared
    case- and punctuation-blind (a teacher config named ``retinanet_x101.yaml`` that could not
    be read matches "RetinaNet-X101"); matched students then show the teacher run's name."""
    teachers = {(_norm(i.teacher), i.dataset) for i in infos if i.distilled}
    for info in infos:
        if info.role == "?" and info.method == "none":
            info.role = "teacher" if (_norm(info.model), info.dataset) in teachers else "baseline"
    names = {
        (_norm(i.model), i.dataset): i.model
        for i in infos
        if i.role == "teacher" and i.model != "?"
    }
    for info in infos:
        if info.distilled:
            info.teacher = names.get((_norm(info.teacher), info.dataset), info.teacher)


def collect_runs(
    runs: Iterable, teachers: Iterable = (), baselines: Iterable = ()
) -> List[RunInfo]:
    """Read and describe run folders; ``teachers``/``baselines`` force those roles. A folder
    without run files of its own but ``seed<k>`` subfolders is read as those seeds; a folder
    met twice is read once (with the role it had first)."""
    infos, seen = [], set()
    for role, paths in ((None, runs), ("teacher", teachers), ("baseline", baselines)):
        for p in paths:
            # an arm folder of a --seeds run stands for its seed<k> folders
            for run_dir in seed_run_dirs(p):
                key = Path(run_dir).resolve()
                if key not in seen:  # a folder given twice (a glob and its arm) is one run
                    seen.add(key)
                    infos.append(describe_run(read_run(run_dir), role))
    assign_roles(infos)
    return infos


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    """Finished runs as table rows, one per setting over its seeds; the loss balance of every
    setting that logged gradient ratios; and every run read.

    ``seg_rows``/``det_rows`` are dicts with the CSV fields (SEG_CSV_FIELDS / DET_CSV_FIELDS)
    plus ``<metric>_n``, the number of seeds with that metric. ``balance_rows`` have
    BALANCE_CSV_FIELDS and ``grad_ratio/<term>`` (a median) for each term of ``balance_terms``.
    """

    runs: List[RunInfo]
    seg_rows: List[dict]
    det_rows: List[dict]
    seg_metric: str = "mIoU"
    balance_rows: List[dict] = field(default_factory=list)
    balance_terms: List[str] = field(default_factory=list)

    @property
    def left_out(self) -> List[RunInfo]:
        return [r for r in self.runs if r.status != "finished"]


def _fmt(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _summary_text(row: dict, metric: str, digits: int, mark: Optional[str] = None) -> str:
    """``**52.00** ± 8.00 (5)``: the mean (with its rank mark), the sample std when there are
    two seeds or more, and the number of seeds; "–" when no seed has the metric."""
    mean = row.get(metric)
    if mean is None:
        return "–"
    text = _mark(_fmt(mean, digits), mark)
    std = row.get(f"{metric}_std")
    if _finite(std):
        text += f" ± {std:.{digits}f}"
    return text + f" ({row.get(f'{metric}_n', 0)})"


def _delta_text(delta: float, se: Optional[float], digits: int) -> str:
    """``Δ +1.60 ± 4.10*``: the difference of means, ± its standard error when defined, and the
    significance mark when Δ > 2·SE."""
    text = f"Δ {delta:+.{digits}f}"
    if _finite(se):
        text += f" ± {se:.{digits}f}"
    return text + ("*" if significant(delta, se) else "")


def _tap_rank(tap: str) -> int:
    """Backbone stages first, then FPN levels, decoder, logits (the order of Table 5)."""
    first = (tap or "").split(",")[0].split("_to_")[0]
    if first[:3] == "res" and first[3:].isdigit():
        return int(first[3:])
    if first[:1] == "p" and first[1:].isdigit():
        return 10 + int(first[1:])
    return {"decoder": 30, "logits": 40}.get(first, 50)


def _order_key(row: dict):
    role_rank = {"teacher": 0, "baseline": 1, "student": 2}.get(row["role"], 3)
    method = row["method"].split("+")[0]
    m_rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    w = row["weight"] if row["weight"] is not None else -1.0
    return (
        role_rank,
        _tap_rank(row["tap"]),
        row["tap"],
        m_rank,
        row["method"],
        w,
        row["kd_weight"],
        row["run"],
    )


def _base_row(group: RunGroup) -> dict:
    """What identifies a setting and where its seeds came from (no metrics yet)."""
    info = group.info
    results = [r.result for r in group.runs]
    return {
        "role": info.role,
        "dataset": info.dataset,
        "teacher": info.teacher,
        "model": info.model,
        "method": info.method,
        "tap": info.tap,
        "weight": info.weight,
        "kd_weight": info.kd_weight,
        "seeds": len(results),
        "baseline_run": "",
        "baseline_seeds": None,
        "iterations": ";".join(OrderedDict.fromkeys(r.progress for r in results)),
        "seed_values": ";".join(str(r.seed) for r in results if r.seed is not None),
        "run": group.name,
        "path": ";".join(str(r.path) for r in results),
    }


def _add_summary(row: dict, group: RunGroup, metric: str) -> None:
    row[metric], row[f"{metric}_std"], row[f"{metric}_n"] = mean_std(group.values(metric))


def _add_delta(row: dict, base: Optional[dict], metric: str, key: str, se_key: str) -> None:
    """``row[key]`` = row mean − baseline mean of ``metric``, ``row[se_key]`` its SE."""
    if base is None or row.get(metric) is None or base.get(metric) is None:
        row[key] = row[se_key] = None
        return
    row[key] = row[metric] - base[metric]
    row[se_key] = delta_se(
        row[f"{metric}_std"], row[f"{metric}_n"], base[f"{metric}_std"], base[f"{metric}_n"]
    )


def _balance_rows(infos: List[RunInfo]) -> Tuple[List[str], List[dict]]:
    """``(terms, rows)``: per setting (over its seeds, finished or not: a run that diverged is
    where the balance matters most) the median of each term's pooled grad_ratio values."""
    groups = group_runs(i for i in infos if i.result.grad_ratios)
    terms = sorted({t for g in groups for t in g.grad_ratios()})
    rows = []
    for g in groups:
        row = {k: v for k, v in _base_row(g).items() if k in BALANCE_CSV_FIELDS}
        pooled = g.grad_ratios()
        for t in terms:
            row[f"grad_ratio/{t}"] = statistics.median(pooled[t]) if pooled.get(t) else None
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"],) + _order_key(r))
    return terms, rows


def build_report(infos: List[RunInfo], seg_metric: str = "mIoU") -> Report:
    """Rows for the segmentation and detection tables from the finished runs, one per setting
    (its seeds grouped, see the module doc), with Δ and its standard error versus the no-KD
    baseline of the same student model and data set; and the loss-balance rows."""
    if seg_metric not in SEM_SEG_METRICS:
        raise ValueError(f"segmentation metric {seg_metric!r}: choose one of {SEM_SEG_METRICS}")
    done = [i for i in infos if i.status == "finished"]
    rows: List[Tuple[RunGroup, dict]] = []
    baselines: Dict[tuple, dict] = {}
    for g in group_runs(done):
        info, row = g.info, _base_row(g)
        for m in SEM_SEG_METRICS if info.task == "sem_seg" else DET_METRICS:
            _add_summary(row, g, m)
        rows.append((g, row))
        if info.role == "baseline":
            baselines.setdefault((info.task, info.model, info.dataset), row)
    seg_rows, det_rows = [], []
    for g, row in rows:
        info = g.info
        base = (
            baselines.get((info.task, info.model, info.dataset)) if info.role == "student" else None
        )
        row["baseline_run"] = base["run"] if base else ""
        row["baseline_seeds"] = base["seeds"] if base else None
        if info.task == "sem_seg":
            _add_delta(row, base, seg_metric, "delta", "delta_se")
            seg_rows.append(row)
        else:
            for m in DET_METRICS:
                _add_delta(row, base, m, f"delta_{m}", f"delta_{m}_se")
            det_rows.append(row)
    seg_rows.sort(key=lambda r: (r["dataset"],) + _order_key(r))
    det_rows.sort(key=lambda r: (r["dataset"], _order_key(r)[0], r["model"]) + _order_key(r)[1:])
    terms, balance = _balance_rows(list(infos))
    return Report(list(infos), seg_rows, det_rows, seg_metric, balance, terms)


def _row_label(row: dict) -> str:
    if row["role"] == "teacher":
        return f"T: {row['model']}"
    if row["role"] == "baseline":
        return f"S: {row['model']}"
    return f"+ {row['method']}"


def _rank_marks(values: Dict[tuple, float]) -> Dict[tuple, str]:
    """Best in bold, second best underlined (the paper's marks)."""
    ranked = sorted({v for v in values.values() if v is not None}, reverse=True)
    marks = {}
    for key, v in values.items():
        if ranked and v == ranked[0]:
            marks[key] = "bold"
        elif len(ranked) > 1 and v == ranked[1]:
            marks[key] = "underline"
    return marks


def _mark(text: str, mark: Optional[str]) -> str:
    return f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text


def _cells_legend(metric: str, best: str) -> str:
    return (
        f"Cells: {metric}, mean ± sample std over seeds (number of seeds); for a distilled "
        "setting, Δ = its mean − that of the no-KD student of the same model ± the standard "
        f"error of that difference (no ± with one seed on either side). {SIGNIFICANCE_NOTE} "
        f"**Best**/<u>second best</u> {best}."
    )


def _seg_tables(report: Report) -> List[str]:
    """One Table-1-style table per teacher: rows T / S / + method, one column per data set."""
    metric = report.seg_metric
    rows = report.seg_rows
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in rows))
    teachers = list(OrderedDict.fromkeys(r["teacher"] for r in rows if r["role"] == "student"))
    teachers += [r["model"] for r in rows if r["role"] == "teacher" and r["model"] not in teachers]
    out = []
    used_baselines = set()
    groups = [
        (
            t,
            [
                r
                for r in rows
                if (r["role"] == "student" and r["teacher"] == t)
                or (r["role"] == "teacher" and r["model"] == t)
            ],
        )
        for t in teachers
    ]
    students_of = {t: {r["model"] for r in g if r["role"] == "student"} for t, g in groups}
    for t, g in groups:
        g += [r for r in rows if r["role"] == "baseline" and r["model"] in students_of[t]]
        used_baselines.update(r["run"] for r in g if r["role"] == "baseline")
    orphans = [r for r in rows if r["role"] == "baseline" and r["run"] not in used_baselines]
    if orphans:
        groups.append(("", orphans))
    for t, g in groups:
        out.append(
            f"### {'Teacher ' + t if t else 'Models without a distilled student'}: {metric} (%)"
            " (validation split unless a column says test)"
        )
        out.append("")
        out.append(_cells_legend(metric, "distilled mean per student and data set"))
        out.append("")
        out.append("| Method | tap | λ | λ_kd | " + " | ".join(datasets) + " |")
        out.append("|---|---|---:|---:|" + "---:|" * len(datasets))
        lines = _table_lines(g, datasets, metric)
        out += lines + [""]
    return out


def _table_lines(group: List[dict], datasets: List[str], metric: str) -> List[str]:
    """Markdown lines of one teacher group: teacher rows, then per student its baseline and
    distilled rows; a row is one (method, tap, λ, λ_kd) setting, a cell one data set."""

    def key(r):
        same = (r["role"], r["model"], r["method"], r["tap"], r["weight"], r["kd_weight"])
        return same

    cells: "OrderedDict[tuple, dict]" = OrderedDict()
    for r in group:
        k = key(r)
        if r["dataset"] in cells.get(k, {}):  # two runs of one setting: keep both, by run name
            k = k + (r["run"],)
        cells.setdefault(k, {"row": r})[r["dataset"]] = r
    teacher_keys = [k for k in cells if k[0] == "teacher"]
    students = list(OrderedDict.fromkeys(k[1] for k in cells if k[0] != "teacher"))
    lines = []
    for k in teacher_keys:
        lines.append(_md_row(cells[k], datasets, metric, {}, k))
    for s in students:
        keys = sorted(
            (k for k in cells if k[0] != "teacher" and k[1] == s),
            key=lambda k: _order_key(cells[k]["row"]),
        )
        marks = {}
        for ds in datasets:
            vals = {k: cells[k][ds][metric] for k in keys if ds in cells[k] and k[0] == "student"}
            marks.update({(k, ds): m for k, m in _rank_marks(vals).items()})
        for k in keys:
            lines.append(_md_row(cells[k], datasets, metric, marks, k))
    return lines


def _md_row(cell: dict, datasets, metric, marks, k) -> str:
    r = cell["row"]
    label = _row_label(r) + (f" ({r['run']})" if len(k) > 6 else "")
    w = "" if r["weight"] is None else f"{r['weight']:g}"
    kd = f"{r['kd_weight']:g}" if r["role"] == "student" else ""
    vals = []
    for ds in datasets:
        c = cell.get(ds)
        if c is None:
            vals.append("–")
            continue
        text = _summary_text(c, metric, 2, marks.get((k, ds)))
        if c["role"] == "student":
            delta = c["delta"]
            text += f", {_delta_text(delta, c['delta_se'], 2)}" if delta is not None else ""
            text += "" if delta is not None else " (no baseline)"
        vals.append(text)
    return f"| {label} | {r['tap']} | {w} | {kd} | " + " | ".join(vals) + " |"


def _det_tables(report: Report) -> List[str]:
    """Table-7-style tables, one per data set: teacher, no-KD student, distilled students."""
    out = []
    for ds in OrderedDict.fromkeys(r["dataset"] for r in report.det_rows):
        rows = [r for r in report.det_rows if r["dataset"] == ds]
        out += [
            f"### {ds}: box AP (%)",
            "",
            _cells_legend("AP", "distilled mean"),
            "",
            "| Teacher | Student | Method | tap | λ | " + " | ".join(DET_METRICS) + " |",
            "|---|---|---|---|---:|" + "---:|" * len(DET_METRICS),
        ]
        marks = {
            m: _rank_marks({i: r[m] for i, r in enumerate(rows) if r["role"] == "student"})
            for m in DET_METRICS
        }
        for i, r in enumerate(rows):
            teacher = r["model"] if r["role"] == "teacher" else r["teacher"]
            student = "" if r["role"] == "teacher" else r["model"]
            method = {"teacher": "(teacher)", "baseline": "w/o KD"}.get(r["role"], r["method"])
            w = "" if r["weight"] is None else f"{r['weight']:g}"
            vals = []
            for m in DET_METRICS:
                text = _summary_text(r, m, 1, marks[m].get(i))
                if r["role"] == "student" and r[f"delta_{m}"] is not None:
                    text += f", {_delta_text(r[f'delta_{m}'], r[f'delta_{m}_se'], 1)}"
                vals.append(text)
            out.append(
                f"| {teacher} | {student} | {method} | {r['tap']} | {w} | "
                + " | ".join(vals)
                + " |"
            )
        out.append("")
    return out


def _left_out_section(report: Report) -> List[str]:
    out = ["## Runs not in the tables (missing or unfinished)", ""]
    left = report.left_out
    if not left:
        return out + [f"None: all {len(report.runs)} runs finished and are in the tables.", ""]
    out += [
        "| run | status | why | iterations | last metrics | folder |",
        "|---|---|---|---:|---|---|",
    ]
    for i in left:
        last = ", ".join(f"{k} {v:.2f}" for k, v in i.metrics.items()) or "–"
        out.append(
            f"| {i.name} | {i.status} | {i.result.note} | {i.result.progress or '–'} | {last} "
            f"| {i.result.path} |"
        )
    return out + [""]


def _balance_section(report: Report) -> List[str]:
    """One row per setting, one column per distillation term: median gradient ratios."""
    if not report.balance_rows:
        return []
    terms = report.balance_terms
    out = [
        "## Loss balance (median gradient ratio to the task loss)",
        "",
        "Per setting and distillation term: the median, over every diagnostics period "
        "(MODEL.DISTILL.DIAGNOSTICS_PERIOD) and every seed, of the term's gradient norm over the "
        "task loss's at the same student feature (`grad_ratio/<term>` in metrics.json). Far "
        "above 1 the term's gradient swamps the task's; far below 1 the term barely acts.",
        "",
        f"| run | data set | model | method | tap | λ | λ_kd | seeds | {' | '.join(terms)} |",
        "|---|---|---|---|---|---:|---:|---:|" + "---:|" * len(terms),
    ]
    for r in report.balance_rows:
        w = "" if r["weight"] is None else f"{r['weight']:g}"
        kd = f"{r['kd_weight']:g}" if r["role"] == "student" else ""
        vals = [r[f"grad_ratio/{t}"] for t in terms]
        out.append(
            f"| {r['run']} | {r['dataset']} | {r['model']} | {r['method']} | {r['tap']} | {w} "
            f"| {kd} | {r['seeds']} | "
            + " | ".join("–" if v is None else f"{v:.3g}" for v in vals)
            + " |"
        )
    return out + [""]


def _runs_section(report: Report) -> List[str]:
    out = [
        "## Runs read",
        "",
        "| run | status | role | data set | model | teacher | method | tap | λ | λ_kd | SEED |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for i in report.runs:
        w = "" if i.weight is None else f"{i.weight:g}"
        kd = f"{i.kd_weight:g}" if i.distilled else ""
        seed = "" if i.result.seed is None else i.result.seed
        out.append(
            f"| {i.name} | {i.status} | {i.role} | {i.dataset} | {i.model} | {i.teacher} "
            f"| {i.method} | {i.tap} | {w} | {kd} | {seed} |"
        )
    return out + [""]


def report_markdown(report: Report, title: str = "radkd-d2 report") -> str:
    """The whole report: segmentation tables, detection tables, loss balance, runs left out,
    runs read."""
    lines = [f"# {title}", ""]
    n_fin = sum(r.status == "finished" for r in report.runs)
    lines += [
        f"{len(report.runs)} runs read, {n_fin} finished, "
        f"{len(report.left_out)} missing or unfinished.",
        "",
    ]
    if report.seg_rows:
        lines += ["## Semantic segmentation", ""] + _seg_tables(report)
    if report.det_rows:
        lines += ["## Object detection", ""] + _det_tables(report)
    if not report.seg_rows and not report.det_rows:
        lines += ["No finished run: no table.", ""]
    lines += _balance_section(report) + _left_out_section(report) + _runs_section(report)
    return "\n".join(lines).rstrip() + "\n"


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if math.isfinite(v) else ""
    return v


def _write_csv(path: Path, fields: List[str], rows: List[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in fields})


def write_report(
    report: Report, out_dir: str | Path, title: str = "radkd-d2 report"
) -> Dict[str, Path]:
    """Write ``report.md``, ``segmentation.csv``, ``detection.csv``, ``loss_balance.csv`` (each
    when there are such rows) and ``runs.csv`` (every run folder with its status) under
    ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "runs": out / "runs.csv"}
    paths["markdown"].write_text(report_markdown(report, title))
    if report.seg_rows:
        paths["segmentation"] = out / "segmentation.csv"
        # the Δ column is named after the metric it is of: delta_mIoU by default
        fields = [f"delta_{report.seg_metric}" if f == "delta" else f for f in SEG_CSV_FIELDS]
        rows = [{**r, f"delta_{report.seg_metric}": r["delta"]} for r in report.seg_rows]
        _write_csv(paths["segmentation"], fields, rows)
    if report.det_rows:
        paths["detection"] = out / "detection.csv"
        _write_csv(paths["detection"], DET_CSV_FIELDS, report.det_rows)
    if report.balance_rows:
        paths["loss_balance"] = out / "loss_balance.csv"
        columns = [f"grad_ratio/{t}" for t in report.balance_terms]
        fields = [*BALANCE_CSV_FIELDS[:-2], *columns, *BALANCE_CSV_FIELDS[-2:]]
        # ratios span decades (1e-4 .. 1e3): significant digits, not the 4 decimals of metrics
        rows = [
            {**r, **{c: "" if r[c] is None else f"{r[c]:.6g}" for c in columns}}
            for r in report.balance_rows
        ]
        _write_csv(paths["loss_balance"], fields, rows)
    runs = [
        {
            "run": i.name,
            "status": i.status,
            "note": i.result.note,
            "role": i.role,
            "task": i.task,
            "dataset": i.dataset,
            "teacher": i.teacher,
            "model": i.model,
            "method": i.method,
            "tap": i.tap,
            "weight": i.weight,
            "kd_weight": i.kd_weight if i.distilled else None,
            "seed": i.result.seed,
            "iterations": i.result.progress,
            "path": str(i.result.path),
        }
        for i in report.runs
    ]
    _write_csv(paths["runs"], RUNS_CSV_FIELDS, runs)
    return paths
