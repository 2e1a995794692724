"""Paper-style comparison tables from run folders (Tables 1/5/6 for segmentation, Table 7 for
detection), as Markdown and CSV.

Each run is described from its own ``config.yaml`` (model, data set, distillation taps and
weights, teacher config) and the last evaluation in its ``metrics.json``:

* **role**: "teacher", "baseline" (the student trained without KD) or "student" (distilled).
  ``Distill*`` meta-architectures are students; other runs are teachers when their model is
  the teacher of some distilled run on the same data set, else baselines (or as given).
* **method** from the loss names in ``MODEL.DISTILL.TAPS`` (with several teachers, in every
  ``MODEL.DISTILL.TEACHERS`` entry's ``TAPS``) ("LAD", "Naive", "CWD", ...), "KD"
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
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Tuple

from radkd_d2.losses import DISTILL_LOSS_REGISTRY

from .runs import DET_METRICS, MASK_METRICS
from .summary import (
    BALANCE_CSV_FIELDS,
    DET_CSV_FIELDS,
    SEG_CSV_FIELDS,
    SIGNIFICANCE_NOTE,
    Report,
    _delta_text,
    _order_key,
    _summary_text,
    _tap_rank,
    build_report,
    collect_runs,
)

__all__ = ["Report", "build_report", "collect_runs", "report_markdown", "write_report"]

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
    # plain runs no student uses, and runs whose role is unknown (a folder without config.yaml)
    orphans = [
        r for r in rows
        if (r["role"] == "baseline" and r["run"] not in used_baselines) or r["role"] not in ("student", "teacher", "baseline")
    ]
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
    """Table-7-style tables, one per data set: teacher, no-KD student, distilled students; box
    AP, and mask AP too where a run scored masks (Mask R-CNN)."""
    out = []
    for ds in OrderedDict.fromkeys(r["dataset"] for r in report.det_rows):
        rows = [r for r in report.det_rows if r["dataset"] == ds]
        out += _det_table(rows, f"### {ds}: box AP (%)", DET_METRICS)
        if any(r.get("mask_AP") is not None for r in rows):
            out += _det_table(rows, f"### {ds}: mask AP (%)", MASK_METRICS)
    return out


def _det_table(rows: List[dict], heading: str, metrics) -> List[str]:
    out = [
        heading,
        "",
        _cells_legend("AP", "distilled mean"),
        "",
        "| Teacher | Student | Method | tap | λ | " + " | ".join(m.removeprefix("mask_") for m in metrics) + " |",
        "|---|---|---|---|---:|" + "---:|" * len(metrics),
    ]
    marks = {
        m: _rank_marks({i: r[m] for i, r in enumerate(rows) if r["role"] == "student"})
        for m in metrics
    }
    for i, r in enumerate(rows):
        teacher = r["model"] if r["role"] == "teacher" else r["teacher"]
        student = "" if r["role"] == "teacher" else r["model"]
        method = {"teacher": "(teacher)", "baseline": "w/o KD"}.get(r["role"], r["method"])
        w = "" if r["weight"] is None else f"{r['weight']:g}"
        vals = []
        for m in metrics:
            text = _summary_text(r, m, 1, marks[m].get(i))
            if r["role"] == "student" and r[f"delta_{m}"] is not None:
                text += f", {_delta_text(r[f'delta_{m}'], r[f'delta_{m}_se'], 1)}"
            vals.append(text)
        out.append(f"| {teacher} | {student} | {method} | {r['tap']} | {w} | " + " | ".join(vals) + " |")
    return out + [""]


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


def split_term(term: str) -> Tuple[str, str]:
    """``loss_distill_<loss>_<tap key>`` -> ``(loss, tap key)`` with the longest registered loss
    name that fits (``loss_distill_cirkd_memory_res5`` -> ``("cirkd_memory", "res5")``); a term
    of another shape -> ``("", term)``."""
    body = term[len("loss_distill_") :] if term.startswith("loss_distill_") else ""
    names = sorted((n for n, _ in DISTILL_LOSS_REGISTRY), key=len, reverse=True)
    for n in names:
        if body.startswith(n + "_") and len(body) > len(n) + 1:
            return n, body[len(n) + 1 :]
    return "", term


def _balance_section(report: Report) -> List[str]:
    """One row per setting, one column per distilled position (an FPN level, res5, the
    logits): the median gradient ratio of the setting's term there. Two terms of one setting at
    one position share the cell, each named."""
    if not report.balance_rows:
        return []
    split = {t: split_term(t) for t in report.balance_terms}
    taps = sorted({tap for _, tap in split.values()}, key=lambda t: (_tap_rank(t), t))
    out = [
        "## Loss balance (median gradient ratio to the task loss, per distilled position)",
        "",
        "Per setting and distilled position: the median, over every diagnostics period "
        "(MODEL.DISTILL.DIAGNOSTICS_PERIOD) and every seed, of the distillation term's gradient "
        "norm over the task loss's at the same student feature (`grad_ratio/<term>` in "
        "metrics.json; every term's column is in loss_balance.csv). Far above 1 the term's "
        "gradient swamps the task's; far below 1 the term barely acts.",
        "",
        f"| run | data set | model | method | λ | λ_kd | seeds | {' | '.join(taps)} |",
        "|---|---|---|---|---:|---:|---:|" + "---:|" * len(taps),
    ]
    for r in report.balance_rows:
        w = "" if r["weight"] is None else f"{r['weight']:g}"
        kd = f"{r['kd_weight']:g}" if r["role"] == "student" else ""
        cells = []
        for tap in taps:
            here = [
                (loss, r[f"grad_ratio/{t}"])
                for t, (loss, at) in split.items()
                if at == tap and r[f"grad_ratio/{t}"] is not None
            ]
            if not here:
                cells.append("–")
            elif len(here) == 1:
                cells.append(f"{here[0][1]:.3g}")
            else:
                cells.append(", ".join(f"{loss} {v:.3g}" for loss, v in here))
        out.append(
            f"| {r['run']} | {r['dataset']} | {r['model']} | {r['method']} | {w} | {kd} "
            f"| {r['seeds']} | " + " | ".join(cells) + " |"
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
    lines += _balance_section(report) + _speed_section(report) + _left_out_section(report) + _runs_section(report)
    return "\n".join(lines).rstrip() + "\n"


def _speed_section(report: Report) -> List[str]:
    """The student's inference speed against its teacher's, per backend, size and batch."""
    rows = [r for r in report.speed_rows if r["model"] == "student"]
    if not rows:
        return []
    teacher = {(r["backend"], r["size"], r["batch"]): r for r in report.speed_rows if r["model"] == "teacher"}
    lines = ["## Inference speed", "", "Medians of interleaved rounds (bench/bench_export.py).", "",
             "| machine | backend | size | batch | teacher ms / image | student ms / image | student speed-up |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        t = teacher.get((r["backend"], r["size"], r["batch"]))
        t_ms = f"{t['ms_per_image']:.2f}" if t else "-"
        lines.append(f"| {r['machine']} | {r['backend']} | {r['size']} | {r['batch']} | {t_ms} | "
                     f"{r['ms_per_image']:.2f} | {r['speedup_vs_teacher']:.2f}x |")
    return lines + [""]


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
