"""Runs as settings: what a run is (:class:`RunInfo`, its role, method and model), seeds grouped
into settings, mean ± std over seeds, Δ vs the no-KD baseline with its standard error, and the
:class:`Report` of table rows built from them (see :mod:`radkd_d2.evaluation.report`)."""

from __future__ import annotations

import math
import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .naming import METHOD_ORDER, classify_method, dataset_name, distill_taps, model_name, teacher_name
from .runs import (
    DET_METRICS,
    MASK_METRICS,
    SEM_SEG_METRICS,
    RunResult,
    cfg_get,
    read_run,
    seed_run_dirs,
    setting_key,
)

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
    *_metric_fields(DET_METRICS + MASK_METRICS),
    "seeds",
    *[f for m in DET_METRICS + MASK_METRICS for f in (f"delta_{m}", f"delta_{m}_se")],
    *_CSV_SOURCE_FIELDS,
]
BALANCE_CSV_FIELDS = [*_CSV_RUN_FIELDS, "seeds", "run", "path"]  # + grad_ratio/<term> columns

_SEED_SUFFIX = re.compile(r"/seed\d+$")  # run_name of a seed folder: <arm>/seed<k>
SIGNIFICANCE_NOTE = "`*`: Δ > 2·SE of the difference, SE = sqrt(s²/n + s_b²/n_b)."


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
        """``metric`` of every seed that has it. NaN counts as absent: COCOEvaluator gives NaN
        for a size range with no object in the set (AP_L on small images), not a score."""
        vals = [float(r.metrics[metric]) for r in self.runs if r.metrics.get(metric) is not None]
        return [v for v in vals if not math.isnan(v)]

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


def contrast(values: Sequence[float], base: Sequence[float]) -> Tuple[float, float]:
    """``(Δ, SE)`` of two arms given by their per-seed values: the difference of their means and
    :func:`delta_se` with their sample standard deviations (SE NaN when either has one seed)."""
    if not values or not base:
        raise ValueError("contrast needs at least one value on each side")
    (m, s, n), (mb, sb, nb) = mean_std(values), mean_std(base)
    return m - mb, delta_se(s, n, sb, nb)


def contrast_text(values: Sequence[float], base: Sequence[float]) -> str:
    """``"+1.23 ± 0.45"`` (Δ ± SE of :func:`contrast`), ``" *"`` appended when |Δ| > 2·SE (a
    significant gain or loss); just ``"+1.23"`` when the SE is undefined; "" when a side is
    empty. NaN values (a metric with nothing to score) are left out."""
    values = [v for v in values if not math.isnan(v)]
    base = [v for v in base if not math.isnan(v)]
    if not values or not base:
        return ""
    delta, se = contrast(values, base)
    if not math.isfinite(se):
        return f"{delta:+.2f}"
    return f"{delta:+.2f} ± {se:.2f}" + (" *" if abs(delta) > 2 * se else "")


def paired_contrast(values: Sequence[Optional[float]], base: Sequence[Optional[float]]) -> Tuple[float, float, int]:
    """``(Δ, SE, n)`` of two arms compared seed by seed: ``values[k]`` and ``base[k]`` come from
    the same seed (same initialisation and data order), so Δ is the mean of the per-seed
    differences and SE their sample standard deviation / sqrt(n). Seeds missing (None or NaN)
    on either side are left out; SE is NaN with fewer than two pairs."""
    diffs = [
        v - b
        for v, b in zip(values, base)
        if v is not None and b is not None and not (math.isnan(v) or math.isnan(b))
    ]
    if not diffs:
        raise ValueError("paired_contrast needs at least one seed with a value on both sides")
    m, s, n = mean_std(diffs)
    return m, (s / math.sqrt(n) if n > 1 else math.nan), n


def paired_contrast_text(values: Sequence[Optional[float]], base: Sequence[Optional[float]]) -> str:
    """``"+1.23 ± 0.45 (n 5)"`` of :func:`paired_contrast`, ``" *"`` appended when |Δ| > 2·SE;
    "" when no seed has both values."""
    try:
        delta, se, n = paired_contrast(values, base)
    except ValueError:
        return ""
    if not math.isfinite(se):
        return f"{delta:+.2f} (n {n})"
    return f"{delta:+.2f} ± {se:.2f} (n {n})" + (" *" if abs(delta) > 2 * se else "")


def significant(delta: Optional[float], se: Optional[float]) -> bool:
    """Whether an improvement Δ is more than twice its standard error (never when the SE is
    undefined)."""
    return delta is not None and se is not None and math.isfinite(se) and delta > 2 * se


def describe_run(result: RunResult, role: Optional[str] = None) -> RunInfo:
    """A :class:`RunInfo` from a run's config.yaml and metrics (role as given, else inferred
    later by :func:`assign_roles`)."""
    cfg = result.config
    info = RunInfo(result, role=role or "?")
    if result.task:  # what its evaluation scored, with or without a config.yaml beside it
        info.task = result.task
    if not cfg:
        return info
    meta = cfg_get(cfg, "MODEL.META_ARCHITECTURE", "")
    info.method, info.tap, info.weight, info.kd_weight = classify_method(
        meta, distill_taps(cfg), cfg_get(cfg, "MODEL.DISTILL.KD_WEIGHT", 0.0)
    )
    info.model = model_name(cfg)
    info.dataset = dataset_name((cfg_get(cfg, "DATASETS.TEST") or ["?"])[0])
    if not result.task:
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
    # inference speed of the pair (bench/bench_export.py --json rows), shown when given
    speed_rows: List[dict] = field(default_factory=list)

    @property
    def left_out(self) -> List[RunInfo]:
        return [r for r in self.runs if r.status != "finished"]


def _fmt(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _mark(text: str, mark: Optional[str]) -> str:
    return f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text


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


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _add_delta(row: dict, base: Optional[dict], metric: str, key: str, se_key: str) -> None:
    """``row[key]`` = row mean − baseline mean of ``metric``, ``row[se_key]`` its SE."""
    if base is None or not _finite(row.get(metric)) or not _finite(base.get(metric)):
        # no Δ against a missing or undefined (NaN: COCOEvaluator without detections) mean
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
        for m in SEM_SEG_METRICS if info.task == "sem_seg" else DET_METRICS + MASK_METRICS:
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
            for m in DET_METRICS + MASK_METRICS:
                _add_delta(row, base, m, f"delta_{m}", f"delta_{m}_se")
            det_rows.append(row)
    seg_rows.sort(key=lambda r: (r["dataset"],) + _order_key(r))
    det_rows.sort(key=lambda r: (r["dataset"], _order_key(r)[0], r["model"]) + _order_key(r)[1:])
    terms, balance = _balance_rows(list(infos))
    return Report(list(infos), seg_rows, det_rows, seg_metric, balance, terms)
