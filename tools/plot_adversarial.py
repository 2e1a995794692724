#!/usr/bin/env python
"""Student (G) and critic (D) losses of runs with and without SKD's holistic term, from their
metrics.json (one point per Detectron2 writer period):

    python tools/plot_adversarial.py output/skd output/skd_holistic --labels SKD "SKD + holistic" \
        --out holistic.png

G: total_loss, loss_sem_seg, loss_distill_holistic; D: holistic/critic_loss,
holistic/wasserstein, holistic/gp (MODEL.DISTILL.HOLISTIC, radkd_d2/engine/adversarial.py).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radkd_d2.analysis.plots import plot_adversarial  # noqa: E402
from radkd_d2.engine.inputs import run_tool, writable_output  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", default="holistic.png", help="PNG path (default holistic.png)")
    parser.add_argument("--labels", nargs="+", help="legend label per run (default: folder names)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (Path(run) / "metrics.json").is_file():
            parser.error(f"{run}: no metrics.json (not a run folder?)")
    writable_output(args.out, "--out", folder=False)
    print(plot_adversarial(args.runs, args.out, args.labels, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
