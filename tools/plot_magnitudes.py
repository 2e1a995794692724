#!/usr/bin/env python
"""Feature magnitudes during distillation (the paper's Fig. 2) from runs' metrics.json.

    python tools/plot_magnitudes.py output/camvid/sweep/naive_w1 output/camvid/sweep/naive_w1000 \\
        --out fig2.png [--taps res5] [--labels "naive λ=1" "naive λ=1000"] [--yscale log]

Top panel: mn/N (the weight of the angular term in the naive loss, Eq. 3); bottom panel: the
teacher norm m = ‖F_t‖ (dashed) and the student norm n = ‖F_s‖ (solid), per tap, over
iterations. The values are logged by distillation runs every MODEL.DISTILL.DIAGNOSTICS_PERIOD
iterations as distill/<tap>/{m,n,mn_over_N}.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radkd_d2.analysis.plots import plot_magnitudes  # noqa: E402
from radkd_d2.engine.inputs import ToolInputError, run_tool, writable_output  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="distillation run folders")
    parser.add_argument("--out", default="fig2.png", help="PNG path (default fig2.png)")
    parser.add_argument(
        "--taps", nargs="+", help="taps to draw (default: all logged, e.g. res5 logits)"
    )
    parser.add_argument("--labels", nargs="+", help="legend label per run (default: folder names)")
    parser.add_argument(
        "--yscale",
        default="auto",
        choices=("auto", "log", "linear"),
        help="auto: log when values span more than 10x",
    )
    parser.add_argument(
        "--size", nargs=2, type=int, default=(1000, 800), metavar=("W", "H"), help="pixels"
    )
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (Path(run) / "metrics.json").is_file():
            raise ToolInputError(f"run folder {run}: no metrics.json (not a run folder?)")
    writable_output(args.out, "--out", folder=False)
    labels = args.labels or [Path(r).resolve().name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"{len(args.runs)} runs but {len(labels)} --labels")
    try:
        out = plot_magnitudes(
            list(zip(labels, args.runs)),
            args.out,
            taps=args.taps,
            size=tuple(args.size),
            dpi=args.dpi,
            yscale=args.yscale,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"plot written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
