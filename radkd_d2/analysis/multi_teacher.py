"""Report sections of the multi-teacher demo (``tools/demo.py --task multi``).

Two teachers, each trained on half the object classes (the other half marked ignored,
``DATASETS.SYNTHETIC.PARTIAL_IGNORE``); the student under teacher A, under teacher B and under
both (``MODEL.DISTILL.TEACHERS``), every arm from the same start with the same seeds. Arms are
compared seed by seed (paired Δ ± SE: seed k of every arm has SEED 42 + k and the same start),
marked significant only when |Δ| > 2·SE. Per-class IoU shows each teacher's strong and weak half;
the gradient balance (``grad_ratio/<term>`` in ``metrics.json``, the term's gradient norm over the
task loss's at the same student feature) shows how hard each teacher's terms pull.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from radkd_d2.data.synthetic import CLASSES
from radkd_d2.evaluation.runs import grad_ratios, per_class_iou, read_metrics_json, read_scalars
from radkd_d2.evaluation.summary import mean_std, paired_contrast, paired_contrast_text

from .launch import PlannedRun

METRIC = "mIoU"
KD_TEACHER_PREFIX = "distill/kd_teacher/"


def teacher_classes(config: str | Path) -> List[str]:
    """The object classes a teacher config trains on: every class but background and those its
    ``DATASETS.SYNTHETIC.PARTIAL_IGNORE`` marks ignored."""
    from fvcore.common.config import CfgNode

    cfg = CfgNode.load_yaml_with_base(str(config), allow_unsafe=False)
    ignored = set(cfg.get("DATASETS", {}).get("SYNTHETIC", {}).get("PARTIAL_IGNORE", []) or [])
    return [c for i, c in enumerate(CLASSES) if i > 0 and i not in ignored]


def _arms(plan: Sequence[PlannedRun]) -> "OrderedDict[str, List[PlannedRun]]":
    """Runs by arm, in plan order, each arm's runs by seed index."""
    arms: "OrderedDict[str, List[PlannedRun]]" = OrderedDict()
    for r in plan:
        arms.setdefault(r.arm, []).append(r)
    for runs in arms.values():
        runs.sort(key=lambda r: r.index)
    return arms


def _values(runs: Sequence[PlannedRun], scores: Mapping[Path, dict]) -> List[Optional[float]]:
    """The metric of each seed (None where a run has none), by seed index."""
    return [scores.get(r.out_dir, {}).get(METRIC) for r in runs]


def _mean_text(values: Sequence[Optional[float]]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    m, s, n = mean_std(vals)
    if m is None:
        return "–"
    return f"{m:.2f}" + (f" ± {s:.2f}" if n > 1 else "") + f" ({n})"


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(vals) if vals else None


def regime_arms(arms: Mapping[str, list], regime: str, several: bool) -> Dict[str, str]:
    """``{"a": arm, "b": arm, "ab": arm}`` of one regime (arm names carry ``_<regime>`` when the
    plan holds several regimes); only the arms the plan has."""
    suffix = f"_{regime}" if several else ""
    return {k: f"student_{k}{suffix}" for k in ("a", "b", "ab") if f"student_{k}{suffix}" in arms}


def choose(
    arms: Mapping[str, List[PlannedRun]], scores: Mapping[Path, dict], regimes: Sequence[str]
) -> Tuple[str, str]:
    """The rule of the validation split, fixed before its runs: the regime whose both-teachers
    arm has the best mean; under it, the single-teacher arm with the better mean. Returns
    ``(regime, single arm without its regime suffix)``."""
    several = len(regimes) > 1
    best = max(
        regimes,
        key=lambda g: _mean(_values(arms[regime_arms(arms, g, several)["ab"]], scores))
        or -math.inf,
    )
    names = regime_arms(arms, best, several)
    single = max(("a", "b"), key=lambda k: _mean(_values(arms[names[k]], scores)) or -math.inf)
    return best, f"student_{single}"


def _verdict(values, base) -> str:
    try:
        delta, se, n = paired_contrast(values, base)
    except ValueError:
        return "no seed has both values: no verdict"
    if not math.isfinite(se):
        return f"one seed only (Δ {delta:+.2f}): no verdict"
    if delta > 2 * se:
        return "two teachers beat the better single teacher (Δ > 2·SE)"
    if delta < -2 * se:
        return "two teachers are worse than the better single teacher (Δ < −2·SE)"
    return "two teachers do not beat the better single teacher (|Δ| ≤ 2·SE)"


def contrast_section(
    plan: Sequence[PlannedRun],
    scores: Mapping[Path, dict],
    split: str,
    regime: str,
    regimes: Mapping[str, object],
    choice: Mapping[str, str],
) -> List[str]:
    """Every arm's mean ± std and per-seed values, then per regime the paired contrasts: both
    teachers vs the better single teacher (the question decided before the test split was
    run), vs the other one, and each arm vs no KD."""
    arms = _arms(plan)
    names = list(regimes) if regime == "all" else [regime]
    several = len(names) > 1
    base = arms.get("student_nokd", [])
    out = [
        f"## Two teachers against one ({split} {METRIC}, %)",
        "",
        "Mean ± sample std over seeds (number of seeds), each seed's value (SEED 42, 43, ...), and "
        "Δ vs the no-KD arm seed by seed (paired: seed k of every arm has the same SEED and start) "
        "± its standard error; * where |Δ| > 2·SE.",
        "",
        f"| run | {METRIC} | per seed | Δ vs no KD (paired) |",
        "|---|---|---|---|",
    ]
    for arm, runs in arms.items():
        vals = _values(runs, scores)
        per_seed = " / ".join("–" if v is None else f"{v:.2f}" for v in vals)
        delta = (
            paired_contrast_text(vals, _values(base, scores))
            if arm.startswith("student_") and arm not in ("student_start", "student_nokd") and base
            else ""
        )
        out.append(
            f"| {runs[0].label.split(', seed')[0]} ({arm}) | {_mean_text(vals)} | {per_seed} | {delta} |"
        )
    out.append("")
    for g in names:
        a = regime_arms(arms, g, several)
        if set(a) != {"a", "b", "ab"}:
            continue
        text = getattr(regimes.get(g), "text", g)
        val = lambda k: _values(arms[a[k]], scores)  # noqa: E731
        out += [f"### Regime {g}: {text}", ""]
        if split == "test" and g == choice.get("regime"):
            better = choice["better_single"].removeprefix("student_")
            other = "b" if better == "a" else "a"
            out += [
                f"**The question decided before the test split was run:** both teachers vs the "
                f"better single teacher chosen on the validation split (teacher {better.upper()}, "
                f"regime {g}), paired Δ ± SE of test {METRIC}: "
                f"**{paired_contrast_text(val('ab'), val(better)) or 'n/a'}**: {_verdict(val('ab'), val(better))}.",
                "",
                f"- both vs teacher {other.upper()} alone: {paired_contrast_text(val('ab'), val(other)) or 'n/a'}",
            ]
        else:
            if split == "test":
                out += [
                    f"(No validation choice for regime {g}: both contrasts shown, neither decided in advance.)",
                    "",
                ]
            out += [
                f"- both vs teacher A alone: {paired_contrast_text(val('ab'), val('a')) or 'n/a'}",
                f"- both vs teacher B alone: {paired_contrast_text(val('ab'), val('b')) or 'n/a'}",
            ]
        if base:
            out += [
                f"- {k.upper()} alone vs no KD: {paired_contrast_text(val(k), _values(base, scores)) or 'n/a'}"
                for k in ("a", "b")
            ]
            out.append(
                f"- both vs no KD: {paired_contrast_text(val('ab'), _values(base, scores)) or 'n/a'}"
            )
        out.append("")
    if split == "val" and all(
        set(regime_arms(arms, g, several)) == {"a", "b", "ab"} for g in names
    ):
        best, single = choose(arms, scores, names)
        out += [
            "### The choice on the validation split",
            "",
            "Rule, fixed before these runs: the regime whose both-teachers arm has the best mean val "
            f"{METRIC}; under it, the single-teacher arm with the better mean is the better single "
            f"teacher. Chosen: regime **{best}**, better single teacher **{single}** "
            "(tools/demo.py MULTI_CHOICE holds it for the test split).",
            "",
        ]
    return out


def per_class_section(
    plan: Sequence[PlannedRun], halves: Mapping[str, List[str]], split: str
) -> List[str]:
    """Per-class IoU (mean over seeds) of every run, the classes marked with the teacher that
    learnt them, and each teacher's half averaged."""
    arms = _arms(plan)
    owner = {
        c: run.removeprefix("teacher_").upper() for run, classes in halves.items() for c in classes
    }
    header = [f"{c} ({owner[c]})" if c in owner else c for c in CLASSES]
    half_cols = [f"{run.removeprefix('teacher_').upper()}'s half" for run in halves]
    out = [
        f"## Per-class IoU ({split} split, %, mean over seeds)",
        "",
        "A class marked (A) is one teacher A was trained on; teacher A never saw the classes "
        "marked (B) labelled (they were ignored in its training labels), and the other way round. "
        "The half columns average the IoU over each teacher's classes.",
        "",
        "| run | " + " | ".join(header + half_cols) + " |",
        "|---|" + "---:|" * (len(header) + len(half_cols)),
    ]
    for arm, runs in arms.items():
        per_run = [per_class_iou(r.out_dir) for r in runs]
        mean = {c: _mean([p.get(c) for p in per_run]) for c in CLASSES}
        cells = ["–" if mean[c] is None else f"{mean[c]:.1f}" for c in CLASSES]
        for classes in halves.values():
            vals = [mean[c] for c in classes if mean[c] is not None]
            cells.append(f"{statistics.fmean(vals):.1f}" if vals else "–")
        out.append(f"| {arm} | " + " | ".join(cells) + " |")
    return out + [""]


def balance_section(plan: Sequence[PlannedRun]) -> List[str]:
    """Per distilled arm, the median over logged periods and seeds of every term's gradient
    ratio, and, with several teachers, of each teacher's own KD term against the student
    (``distill/kd_teacher/<name>``: a diagnostic, not optimised)."""
    arms = _arms(plan)
    rows = []
    terms: "OrderedDict[str, None]" = OrderedDict()
    kd_names: "OrderedDict[str, None]" = OrderedDict()
    for arm, runs in arms.items():
        ratios: Dict[str, List[float]] = {}
        kd: Dict[str, List[float]] = {}
        for r in runs:
            for term, vals in grad_ratios(read_metrics_json(r.out_dir / "metrics.json")).items():
                ratios.setdefault(term, []).extend(vals)
            for key, series in read_scalars(r.out_dir, KD_TEACHER_PREFIX).items():
                kd.setdefault(key[len(KD_TEACHER_PREFIX) :], []).extend(v for _, v in series)
        if not ratios:
            continue
        terms.update((t, None) for t in ratios)
        kd_names.update((n, None) for n in kd)
        rows.append((arm, len(runs), ratios, kd))
    if not rows:
        return []
    out = [
        "## Gradient balance (median over every diagnostics period and seed)",
        "",
        "`grad_ratio/<term>`: the term's gradient norm over the task loss's at the same student "
        "feature (a teacher's own terms end in `_<its NAME>`; `loss_distill_kd_logits` of the "
        "both-teachers arm is the one KD term against the mixed target). `KD vs <name>`: that "
        "teacher's own KD term against the student, as weighted in the loss (logged, not "
        "optimised).",
        "",
        "| arm | seeds | " + " | ".join([*terms, *(f"KD vs {n}" for n in kd_names)]) + " |",
        "|---|---:|" + "---:|" * (len(terms) + len(kd_names)),
    ]
    for arm, n, ratios, kd in rows:
        cells = [f"{statistics.median(ratios[t]):.3g}" if ratios.get(t) else "–" for t in terms]
        cells += [f"{statistics.median(kd[k]):.3g}" if kd.get(k) else "–" for k in kd_names]
        out.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    return out + [""]


def multi_teacher_sections(
    plan: Sequence[PlannedRun],
    scores: Mapping[Path, dict],
    teacher_configs: Mapping[str, Path],
    split: str,
    regime: str,
    regimes: Mapping[str, object],
    choice: Mapping[str, str],
) -> List[str]:
    """The demo's own sections: contrasts (:func:`contrast_section`), per-class IoU and the
    gradient balance.

    Args:
        teacher_configs: each teacher's run name (``teacher_a``) and config file.
        regime: the regime run (``all``: every one of ``regimes``, arms suffixed).
        choice: ``{"regime", "better_single"}`` chosen on the validation split.
    """
    halves = {run: teacher_classes(cfg) for run, cfg in teacher_configs.items()}
    return (
        contrast_section(plan, scores, split, regime, regimes, choice)
        + per_class_section(plan, halves, split)
        + balance_section(plan)
    )
