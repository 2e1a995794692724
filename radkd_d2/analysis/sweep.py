"""Loss-weight (λ) sweeps (the paper's Figs. 1 and 5): a grid of distillation runs that differ
only in the feature loss and its weight on one tap, launched sequentially through
``tools/train_net.py`` or collected from their folders ``<out>/<method>_w<λ>/``.

With several seeds per grid point, seed k runs in ``<out>/<method>_w<λ>/seed<k>/`` with
SEED = base + k (see :mod:`radkd_d2.analysis.launch`), and the curves and spreads are of the
mean over the seeds that finished.
"""

from __future__ import annotations

import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from radkd_d2.evaluation.runs import RunResult, read_run, run_name, seed_folder, seed_run_dirs
from radkd_d2.evaluation.summary import describe_run
from radkd_d2.losses import loss_label

from .launch import log_tail, run_training, seed_values, train_command

SWEEP_METHODS = ("naive", "md", "lad", "cad", "pad")  # Fig. 1: naive, md; Fig. 5: lad, cad (pad)
DEFAULT_WEIGHTS = (1.0, 10.0, 100.0, 1000.0)
_DIR_RE = re.compile(r"^(?P<method>[a-z0-9_]+?)_w(?P<weight>[0-9][0-9.eE+-]*)$")


@dataclass
class SweepPoint:
    """One run of the grid: feature loss ``method`` with weight ``weight`` in ``path``, seed
    ``index`` with SEED ``seed`` (None: the config's own, the single-seed case)."""

    method: str
    weight: float
    path: Path
    seed: Optional[int] = None
    index: int = 0

    @property
    def name(self) -> str:
        """``naive_w10``, or ``naive_w10/seed1`` for a seed folder."""
        return run_name(self.path)


def run_dir_name(method: str, weight: float) -> str:
    """``naive_w1000``, ``lad_w0.1``: the folder of one grid point."""
    return f"{method}_w{weight:g}"


def plan_sweep(
    out: str | Path,
    methods: Sequence[str],
    weights: Sequence[float],
    seeds: int = 1,
    base_seed: int = -1,
) -> List[SweepPoint]:
    """The grid ``methods × weights × seeds`` under ``out``, method-major, then λ, then seed.

    Args:
        seeds: runs per grid point; one keeps the config's SEED and the folder
            ``<method>_w<λ>``, several go to ``<method>_w<λ>/seed<k>`` with SEED base + k.
        base_seed: the config's SEED (< 0: random, and the seeds start at 0).
    """
    points = []
    for m in methods:
        for w in weights:
            arm = Path(out) / run_dir_name(m.lower(), w)
            for k, seed in enumerate(seed_values(seeds, base_seed)):
                points.append(SweepPoint(m.lower(), float(w), seed_folder(arm, k, seeds), seed, k))
    return points


def parse_tap(tap: str) -> Tuple[str, str]:
    """``"res5"`` -> ("res5", "res5"); ``"res4:res5"`` -> student res4, teacher res5."""
    s, _, t = tap.partition(":")
    return s, (t or s)


def point_opts(point: SweepPoint, tap: str) -> List[str]:
    """Config overrides of a grid point: its single tap entry, its output folder and, for one
    of several seeds, its SEED."""
    s, t = parse_tap(tap)
    opts = [
        "MODEL.DISTILL.TAPS",
        repr([[s, t, point.method, point.weight]]),
        "OUTPUT_DIR",
        str(point.path),
    ]
    return opts + ([] if point.seed is None else ["SEED", str(point.seed)])


def launch_sweep(
    config: str | Path,
    points: Sequence[SweepPoint],
    *,
    tap: str = "res5",
    opts: Sequence[str] = (),
    max_iter: int,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> Dict[str, str]:
    """Train the grid points one after the other with ``tools/train_net.py``.

    Finished points are skipped unless ``force``; unfinished ones are resumed from their last
    checkpoint (``--resume``); a point started afresh moves an old metrics.json to
    ``metrics.json.prev``. One tqdm bar counts the iterations of the whole grid and gives
    the ETA. A failed run is reported (with the tail of its log) and the sweep goes on.

    Args:
        config: base distillation config (its taps are replaced by one entry per point).
        opts: KEY VALUE overrides for every run (``SOLVER.MAX_ITER`` must equal ``max_iter``).
        max_iter: iterations per run, for the progress bar.

    Returns:
        ``run name -> "done" | "skipped" | "failed (exit N)"``.
    """
    todo, outcome = [], OrderedDict()
    for p in points:
        if not force and read_run(p.path, max_iter=max_iter).status == "finished":
            outcome[p.name] = "skipped"
        else:
            todo.append(p)
    if outcome:
        echo(f"already finished, skipped (--force reruns them): {', '.join(outcome)}")
    with tqdm(total=len(todo) * max_iter, unit="it", desc="sweep", dynamic_ncols=True) as bar:
        for i, p in enumerate(todo):
            resume = not force and (p.path / "last_checkpoint").is_file()
            metrics = p.path / "metrics.json"
            if not resume and metrics.is_file():
                # Detectron2 appends to metrics.json: keep an old run's rows out of the new one
                metrics.replace(p.path / "metrics.json.prev")
            # a point trained again replaces what its folder holds (--replace-run moves it aside)
            cmd = train_command(config, [*opts, *point_opts(p, tap)], resume=resume, replace=not resume)
            log = p.path / "sweep_stdout.log"
            rc = run_training(
                cmd,
                log,
                bar=bar,
                offset=i * max_iter,
                max_iter=max_iter,
                label=f"[{i + 1}/{len(todo)}] {p.name}",
            )
            if rc == 0:
                outcome[p.name] = "done"
            else:
                outcome[p.name] = f"failed (exit {rc})"
                bar.write(f"{p.name} failed (exit {rc}); last lines of {log}:\n{log_tail(log)}")
    return dict(outcome)


def collect_sweep(
    out: str | Path,
    methods: Optional[Sequence[str]] = None,
    weights: Optional[Sequence[float]] = None,
    seeds: Optional[int] = None,
) -> "OrderedDict[str, List[Tuple[float, RunResult]]]":
    """Read a sweep's runs: ``method -> [(λ, RunResult), ...]`` sorted by λ, one entry per
    seed (in seed order within a λ).

    With ``methods`` and ``weights`` the grid is planned and every point is read, so points
    never run come back as "missing"; otherwise every ``<method>_w<λ>`` folder under ``out`` is
    read (``methods`` alone filters them). With ``seeds`` every planned seed folder is read (a
    seed never run is "missing"); without, a point's ``seed<k>`` folders are those found (the
    point's folder itself when it has none). λ comes from the run's config when it has one.
    """
    out = Path(out)
    if methods and weights:
        arms = [(p.method, p.weight, p.path) for p in plan_sweep(out, methods, weights)]
    else:
        arms = []
        for d in sorted(out.iterdir()) if out.is_dir() else []:
            m = _DIR_RE.match(d.name)
            if (
                d.is_dir()
                and m
                and (not methods or m.group("method") in [x.lower() for x in methods])
            ):
                arms.append((m.group("method"), float(m.group("weight")), d))
    points = []
    for method, weight, arm in arms:
        dirs = (
            seed_run_dirs(arm)
            if seeds is None
            else [seed_folder(arm, k, seeds) for k in range(seeds)]
        )
        points += [SweepPoint(method, weight, d, index=k) for k, d in enumerate(dirs)]
    result: "OrderedDict[str, List[Tuple[float, RunResult]]]" = OrderedDict()
    for p in points:
        res = read_run(p.path)
        weight = p.weight
        if res.config:
            info = describe_run(res)
            weight = info.weight if info.weight is not None else weight
        result.setdefault(p.method, []).append((weight, res))
    for pts in result.values():
        pts.sort(key=lambda x: x[0])
    return result


def method_label(method: str) -> str:
    """``"naive"`` -> "Naive", ``"lad"`` -> "LAD" (the paper's names)."""
    return loss_label(method)


def sweep_stats(
    collected, metric: str = "mIoU"
) -> "OrderedDict[str, List[Tuple[float, float, float, int]]]":
    """``method label -> [(λ, mean, sample std, n), ...]`` over the finished seeds of each λ
    (λ without a finished seed left out; std NaN for one seed)."""
    out: "OrderedDict[str, List[Tuple[float, float, float, int]]]" = OrderedDict()
    for m, pts in collected.items():
        by_w: "OrderedDict[float, List[float]]" = OrderedDict()
        for w, r in pts:
            if r.status == "finished" and metric in r.metrics:
                by_w.setdefault(w, []).append(float(r.metrics[metric]))
        out[method_label(m)] = [
            (w, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan"), len(v))
            for w, v in by_w.items()
        ]
    return out


def sweep_curves(collected, metric: str = "mIoU") -> "OrderedDict[str, List[Tuple[float, float]]]":
    """``method label -> [(λ, metric), ...]`` of the finished runs only, the mean over seeds
    when a λ has several."""
    return OrderedDict(
        (label, [(w, mean) for w, mean, _, _ in pts])
        for label, pts in sweep_stats(collected, metric).items()
    )


def spreads(curves) -> "OrderedDict[str, dict]":
    """Per method: ``min``, ``max``, ``spread`` (max − min across λ), ``best_weight``, ``n``;
    ``spread`` is None for a method with no finished run."""
    out = OrderedDict()
    for method, pts in curves.items():
        vals = [v for _, v in pts]
        if not vals:
            out[method] = {"min": None, "max": None, "spread": None, "best_weight": None, "n": 0}
            continue
        best_w = max(pts, key=lambda x: x[1])[0]
        out[method] = {
            "min": min(vals),
            "max": max(vals),
            "spread": max(vals) - min(vals),
            "best_weight": best_w,
            "n": len(vals),
        }
    return out


def format_sweep(collected, metric: str = "mIoU") -> str:
    """Text table: the metric per method and λ (with several seeds: mean ± sample std (number
    of finished seeds)), each method's spread (max − min of the means), and the runs that are
    missing or unfinished."""
    per_w = sweep_stats(collected, metric)
    curves = sweep_curves(collected, metric)
    weights = sorted({w for pts in collected.values() for w, _ in pts})
    seeded = any(
        sum(1 for w2, _ in pts if w2 == w) > 1 for pts in collected.values() for w, _ in pts
    )
    width = 20 if seeded else 10
    of = "the mean over seeds of " if seeded else ""
    lines = [
        f"{metric} (%) per loss weight λ"
        + (", mean ± sample std (finished seeds):" if seeded else ":"),
        "method   "
        + "".join(f"{'λ=' + format(w, 'g'):>{width}}" for w in weights)
        + f"{'spread':>10}",
    ]
    stats = spreads(curves)
    for m, pts in collected.items():
        label = method_label(m)
        done = {w: (mean, std, n) for w, mean, std, n in per_w[label]}
        first = OrderedDict()
        for w, r in pts:
            first.setdefault(w, r)
        cells = []
        for w in weights:
            if w in done:
                mean, std, n = done[w]
                text = f"{mean:.2f}"
                if seeded:
                    text += (f" ± {std:.2f}" if n > 1 else "") + f" ({n})"
                cells.append(text)
            else:
                cells.append("—" if w not in first else first[w].status)
        s = stats[label]["spread"]
        lines.append(
            f"{label:<9}"
            + "".join(f"{c:>{width}}" for c in cells)
            + f"{'n/a' if s is None else format(s, '.2f'):>10}"
        )
    lines.append("")
    lines.append(f"spread = max − min of {of}{metric} across λ (finished runs only):")
    for label, st in stats.items():
        if st["spread"] is None:
            lines.append(f"  {label}: no finished run")
        else:
            runs = sum(n for _, _, _, n in per_w[label])
            count = f"{runs} runs" if runs == st["n"] else f"{st['n']} λ, {runs} runs"
            lines.append(
                f"  {label}: spread {st['spread']:.2f} (min {st['min']:.2f}, max {st['max']:.2f} "
                f"at λ={st['best_weight']:g}, {count})"
            )
    left = [
        (method_label(m), w, r)
        for m, pts in collected.items()
        for w, r in pts
        if r.status != "finished"
    ]
    if left:
        lines.append("not in the plot (missing or unfinished):")
        lines += [f"  {r.name}: {r.status}{' — ' + r.note if r.note else ''}" for _, _, r in left]
    return "\n".join(lines)
