#!/usr/bin/env python
"""Loss-weight sweep (the paper's Figs. 1/5): train or collect runs over λ, plot the metric
against λ, print each method's spread (max − min) across λ.

    # launch naive and LAD at λ = 1, 10, 100, 1000 on res5, then plot
    python tools/sweep.py --config configs/camvid/lad_res5_pspr101_pspr18_camvid.yaml \\
        --methods naive lad --weights 1 10 100 1000 --tap res5 --out output/camvid/sweep \\
        --baseline output/camvid/pspnet_r18_camvid --teacher output/camvid/pspnet_r101_camvid
    # only read finished runs and plot
    python tools/sweep.py --collect --out output/camvid/sweep --baseline ... --teacher ...
    # three seeds per grid point: mean ± std per λ, spreads of the means
    python tools/sweep.py --config CFG --methods naive lad --seeds 3 --out output/camvid/sweep
    # extra config overrides for every run go last
    python tools/sweep.py --config CFG --out DIR --max-iter 500 --opts MODEL.DISTILL.KD_WEIGHT 0

Runs go to ``<out>/<method>_w<λ>/``, sequentially, each through tools/train_net.py, with one
progress bar (iterations of the whole grid, ETA). Finished runs are skipped and unfinished ones
resumed. The plot goes to ``<out>/sweep.png`` unless --plot says otherwise.

Seeds: ``--seeds N`` (default 1) trains every grid point N times, seed k into
``<out>/<method>_w<λ>/seed<k>/`` with SEED = the config's SEED + k (0 + k when the config's is
random), so seed 0 is the run a single-seed sweep makes; the table then shows the mean ± sample
std over the finished seeds (their number in brackets), and the plot and spreads use the means.
With one seed the folders and the SEED are those of before. --collect reads every seed<k>
folder it finds unless --seeds is given (then seeds never run are listed as missing).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radkd_d2.analysis.plots import plot_sweep  # noqa: E402
from radkd_d2.analysis.sweep import (  # noqa: E402
    DEFAULT_WEIGHTS,
    collect_sweep,
    format_sweep,
    launch_sweep,
    plan_sweep,
    point_opts,
    sweep_curves,
)
from radkd_d2.analysis.launch import claim_folder, seeds_arg, train_command  # noqa: E402
from radkd_d2.evaluation.runs import SEM_SEG_METRICS, read_run, seed_run_dirs  # noqa: E402


def _reference(path, metric, what):
    """The metric of a reference run for a horizontal line: the mean over its finished seeds
    when ``path`` is an arm folder of ``seed<k>`` runs."""
    if not path:
        return None
    values = []
    for run_dir in seed_run_dirs(path):
        res = read_run(run_dir)
        if res.status == "finished" and metric in res.metrics:
            values.append(res.metrics[metric])
        else:
            print(f"{what} run {run_dir}: {res.status}{' — ' + res.note if res.note else ''}")
    if not values:
        print(f"no finished {what} run in {path}: no {what} line")
        return None
    return sum(values) / len(values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="base distillation config (needed unless --collect)")
    parser.add_argument(
        "--methods", nargs="+", help="feature losses: naive md lad cad pad ... (default naive lad)"
    )
    parser.add_argument("--weights", nargs="+", type=float, help="λ values (default 1 10 100 1000)")
    parser.add_argument(
        "--tap", default="res5", help="distilled position, or student:teacher (default res5)"
    )
    parser.add_argument(
        "--out", required=True, help="sweep folder; runs go to <out>/<method>_w<λ>/"
    )
    parser.add_argument(
        "--max-iter", type=int, help="SOLVER.MAX_ITER of every run (default: the config's)"
    )
    parser.add_argument(
        "--collect", action="store_true", help="do not train: read the runs under --out"
    )
    parser.add_argument(
        "--seeds",
        type=seeds_arg,
        help="runs per grid point, SEED = config's + k (default 1; --collect: all found)",
    )
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the train_net commands and stop"
    )
    parser.add_argument("--baseline", help="no-KD student run folder (horizontal line)")
    parser.add_argument("--teacher", help="teacher run folder (horizontal line)")
    parser.add_argument("--metric", default="mIoU", choices=SEM_SEG_METRICS)
    parser.add_argument("--plot", help="PNG path (default <out>/sweep.png)")
    parser.add_argument(
        "--size", nargs=2, type=int, default=(900, 600), metavar=("W", "H"), help="pixels"
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides for every run (last)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()

    failed = False
    if not args.collect:
        if not args.config:
            parser.error("--config is needed to launch runs (or use --collect)")
        methods = args.methods or ["naive", "lad"]
        weights = args.weights or list(DEFAULT_WEIGHTS)
        seeds = args.seeds or 1
        opts = list(args.opts)
        if args.max_iter:
            opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
        from radkd_d2.engine.setup import load_config  # torch + Detectron2: only when launching

        cfg = load_config(str(Path(args.config).resolve()), opts, validate=False)  # typos fail here
        # seed k gets the config's SEED (after --opts) + k: seed 0 is the single-seed run
        points = plan_sweep(out, methods, weights, seeds, base_seed=cfg.SEED)
        from radkd_d2.losses import DISTILL_LOSS_REGISTRY

        unknown = [m for m in methods if m.lower() not in DISTILL_LOSS_REGISTRY]
        if unknown:
            parser.error(
                f"unknown losses {unknown}; registered: {sorted(n for n, _ in DISTILL_LOSS_REGISTRY)}"
            )
        if args.dry_run:
            for p in points:
                # shell-quoted: the TAPS value has spaces and quotes, and the line is for pasting
                cmd = train_command(Path(args.config).resolve(), [*opts, *point_opts(p, args.tap)])
                print(shlex.join(cmd))
            return 0
        # a sweep folder holds one config's sweep on one tap: another's would mix into its table
        claim_folder(out, "tools/sweep.py", f"{Path(args.config).name}, tap {args.tap}")
        print(
            f"sweep: {len(points)} runs ({', '.join(methods)} × "
            f"λ {', '.join(f'{w:g}' for w in weights)}"
            + (f" × {seeds} seeds" if seeds > 1 else "")
            + f") on {args.tap}, {cfg.SOLVER.MAX_ITER} iterations each, into {out}"
        )
        outcome = launch_sweep(
            str(Path(args.config).resolve()),
            points,
            tap=args.tap,
            opts=opts,
            max_iter=cfg.SOLVER.MAX_ITER,
            force=args.force,
        )
        failed = any(v.startswith("failed") for v in outcome.values())
        collected = collect_sweep(out, methods, weights, seeds)
    else:
        collected = collect_sweep(out, args.methods, args.weights, args.seeds)
        if not collected:
            print(f"no <method>_w<λ> run folders under {out}")
            return 1

    print(format_sweep(collected, args.metric))
    plot = plot_sweep(
        sweep_curves(collected, args.metric),
        args.plot or out / "sweep.png",
        baseline=_reference(args.baseline, args.metric, "no-KD"),
        teacher=_reference(args.teacher, args.metric, "teacher"),
        metric=args.metric,
        size=tuple(args.size),
    )
    print(f"plot written to {plot}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
