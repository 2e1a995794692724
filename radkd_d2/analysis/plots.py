"""Figures of the paper's analyses as PNG files: feature magnitudes during training (Fig. 2) and
metric versus distillation loss weight (Figs. 1 and 5).

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no display), at an
exact pixel size: ``size=(width, height)`` in pixels at ``dpi``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from radkd_d2.evaluation.runs import read_scalars

Series = List[Tuple[int, float]]


def new_figure(size: Tuple[int, int], dpi: int = 100) -> Figure:
    """A Figure of exactly ``size`` = (width, height) pixels when saved at ``dpi``."""
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi)  # no bbox_inches="tight": keep the requested pixel size
    return out


def _use_log(values: Sequence[float], mode: str) -> bool:
    """``mode`` "log"/"linear", or "auto": log when all values are > 0 and span > 10x."""
    if mode != "auto":
        return mode == "log"
    vals = [v for v in values if v == v]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 10


def magnitude_series(run_dir: str | Path) -> "OrderedDict[str, Dict[str, Series]]":
    """``tap -> {"m": series, "n": series, "mn_over_N": series, "cos_theta": series}`` from the
    ``distill/<tap>/<stat>`` scalars that FeatureDistiller writes to metrics.json."""
    taps: "OrderedDict[str, Dict[str, Series]]" = OrderedDict()
    for key, series in read_scalars(run_dir, "distill/").items():
        tap, _, stat = key[len("distill/") :].rpartition("/")
        if tap:
            taps.setdefault(tap, {})[stat] = series
    return taps


def plot_magnitudes(
    runs: Sequence[Tuple[str, str | Path]],
    out: str | Path,
    *,
    taps: Optional[Sequence[str]] = None,
    size: Tuple[int, int] = (1000, 800),
    dpi: int = 100,
    yscale: str = "auto",
    title: str = "Feature magnitudes during distillation (Eq. 3)",
) -> Path:
    """Fig. 2: mn/N (top) and m = ‖F_t‖, n = ‖F_s‖ (bottom) over iterations, one colour per
    (run, tap); m dashed, n solid.

    Args:
        runs: ``(label, run folder)`` pairs.
        taps: tap keys to draw (default: every tap logged, e.g. ``res5`` and ``logits``).
        yscale: "auto" (log when the values span more than 10x), "log" or "linear".

    Raises:
        ValueError: no run has ``distill/<tap>/{m,n,mn_over_N}`` scalars for the chosen taps.
    """
    curves = []
    for label, path in runs:
        for tap, stats in magnitude_series(path).items():
            if taps and tap not in taps:
                continue
            if all(k in stats for k in ("m", "n", "mn_over_N")):
                curves.append((f"{label} · {tap}", stats))
    if not curves:
        names = ", ".join(str(p) for _, p in runs)
        raise ValueError(
            "no distill/<tap>/{m,n,mn_over_N} scalars"
            f"{' for taps ' + ','.join(taps) if taps else ''} "
            f"in the metrics.json of {names}; they are logged by distillation runs every "
            "MODEL.DISTILL.DIAGNOSTICS_PERIOD iterations (> 0)"
        )
    fig = new_figure(size, dpi)
    ax_mn, ax_norm = fig.subplots(2, 1, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(curves))]
    mn_vals, norm_vals = [], []
    for (label, stats), c in zip(curves, colours):
        it, v = zip(*stats["mn_over_N"])
        ax_mn.plot(it, v, color=c, marker=".", label=label)
        mn_vals += v
        for stat, style, who in (("m", "--", "m (teacher)"), ("n", "-", "n (student)")):
            it, v = zip(*stats[stat])
            ax_norm.plot(it, v, color=c, linestyle=style, marker=".", label=f"{label}: {who}")
            norm_vals += v
    ax_mn.set_yscale("log" if _use_log(mn_vals, yscale) else "linear")
    ax_norm.set_yscale("log" if _use_log(norm_vals, yscale) else "linear")
    ax_mn.set_title("mn/N: scale of the angular term in the naive loss (Eq. 3)")
    ax_mn.set_ylabel("mn/N (feature units², per element)")
    ax_norm.set_title("m = ‖F_t‖ (teacher, dashed) and n = ‖F_s‖ (student, solid)")
    ax_norm.set_ylabel("‖F‖ (L2 norm)")
    ax_norm.set_xlabel("iteration")
    for ax in (ax_mn, ax_norm):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return save_figure(fig, out)


def plot_sweep(
    curves: Dict[str, Series],
    out: str | Path,
    *,
    baseline: Optional[float] = None,
    teacher: Optional[float] = None,
    metric: str = "mIoU",
    size: Tuple[int, int] = (900, 600),
    dpi: int = 100,
    title: str = "Sensitivity to the distillation loss weight",
) -> Path:
    """Figs. 1/5: ``metric`` against the loss weight λ (log x axis), one line per method, with
    horizontal lines for the no-KD student (``baseline``) and the ``teacher`` when given.

    Args:
        curves: ``method label -> [(λ, metric value), ...]``; λ <= 0 cannot be drawn on a log
            axis and is left out.
    """
    fig = new_figure(size, dpi)
    ax = fig.subplots()
    drawn = 0
    for i, (method, points) in enumerate(curves.items()):
        pts = sorted((w, v) for w, v in points if w > 0 and v is not None)
        if not pts:
            continue
        ws, vs = zip(*pts)
        ax.plot(ws, vs, marker="o", color=f"C{i % 10}", label=method)
        drawn += 1
    if baseline is not None:
        ax.axhline(baseline, color="0.4", linestyle="--", label=f"S w/o KD ({baseline:.2f})")
    if teacher is not None:
        ax.axhline(teacher, color="k", linestyle=":", label=f"T ({teacher:.2f})")
    ax.set_xscale("log")
    weights = sorted({w for pts in curves.values() for w, v in pts if w > 0 and v is not None})
    if weights:  # tick exactly the swept λ values, written 1, 10, 100 rather than 10^0 ...
        ax.xaxis.set_major_locator(FixedLocator(weights))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("loss weight λ (log scale)")
    ax.set_ylabel(f"val {metric} (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if drawn or baseline is not None or teacher is not None:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, out)


# panels of plot_adversarial: (metrics.json key, title); the G row is the student's, the D row
# the holistic critic's (MODEL.DISTILL.HOLISTIC, radkd_d2/engine/adversarial.py)
ADVERSARIAL_PANELS = (
    ("total_loss", "G: total_loss"),
    ("loss_sem_seg", "G: loss_sem_seg"),
    ("loss_distill_holistic", "G: loss_distill_holistic = λ·(−E[D(s)])"),
    ("holistic/critic_loss", "D: critic loss (objective + GP, weighted)"),
    ("holistic/wasserstein", "D: Wasserstein estimate E[D(t)] − E[D(s)]"),
    ("holistic/gp", "D: gradient penalty E[(‖∇D‖ − 1)²]"),
)


def plot_adversarial(
    runs: Sequence[str | Path], out: str | Path, labels: Optional[Sequence[str]] = None, title: str = ""
) -> Path:
    """The student's (G) and the holistic critic's (D) losses over iterations, one line per run,
    from each run's metrics.json (a run without the holistic term has only G lines)."""
    labels = list(labels) if labels else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    data = [read_scalars(r) for r in runs]
    if not any(data):
        raise ValueError(f"no scalars in the metrics.json of {[str(r) for r in runs]}")
    fig = new_figure((1500, 800))
    axes = fig.subplots(2, 3)
    for (key, name), ax in zip(ADVERSARIAL_PANELS, axes.flat):
        for c, (label, scalars) in enumerate(zip(labels, data)):
            if scalars.get(key):
                it, v = zip(*scalars[key])
                ax.plot(it, v, color=f"C{c}", label=label, marker=".", markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
            if _use_log([y for line in ax.lines for y in line.get_ydata()], "auto"):
                ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)
