#!/usr/bin/env python
"""Heatmaps of teacher and student feature activations at a tap (the paper's Fig. 6).

    python tools/heatmaps.py --config configs/camvid/lad_res5_pspr101_pspr18_camvid.yaml \\
        --weights output/camvid/lad_res5_pspr101_pspr18_camvid/model_final.pth \\
        --images a.png b.png --tap res5 --out heat.png
    python tools/heatmaps.py --config CFG --weights CKPT --num-images 4 --out heat.png  # test set
    python tools/heatmaps.py --config CFG --weights CKPT --out heat.png --opts DATASETS.ROOT /data

Per image, one row: the image, the teacher's channel mean of |F|, and the student's (after its
connector when the tap has one), each map scaled to [0, 1] on its own. The teacher comes from
the config's MODEL.DISTILL.TEACHER.*; --weights is the distillation run's checkpoint (student +
connectors). Taps: a configured tap (res5), any position (res4, decoder, logits), or
student:teacher.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import radkd_d2  # noqa: E402,F401  (registers models, losses, data sets)
from radkd_d2.analysis.heatmaps import heatmaps_from_config  # noqa: E402
from radkd_d2.engine.inputs import existing_file, readable_checkpoint, run_tool, writable_output  # noqa: E402
from radkd_d2.engine.setup import load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="distillation config (DistillSemanticSegmentor)"
    )
    parser.add_argument(
        "--weights", default="", help="checkpoint of the distillation run ('' = random student)"
    )
    parser.add_argument(
        "--images", nargs="+", help="image files (default: the test set's first --num-images)"
    )
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument(
        "--tap", default="res5", help="tap key or position, or student:teacher (default res5)"
    )
    parser.add_argument("--out", default="heatmaps.png", help="PNG path")
    parser.add_argument("--width", type=int, default=1200, help="figure width in pixels")
    parser.add_argument("--row-height", type=int, default=360, help="pixels per image row")
    parser.add_argument(
        "--non-strict", action="store_true", help="load a checkpoint that matches only in part"
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides (last)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    existing_file(args.config, "--config", "config file")
    if args.weights:
        readable_checkpoint(args.weights, "--weights")
    for image in args.images or []:
        existing_file(image, "--images", "image")
    writable_output(args.out, "--out", folder=False)
    cfg = load_config(args.config, args.opts, validate=False)
    out = heatmaps_from_config(
        cfg,
        args.weights,
        args.out,
        tap=args.tap,
        images=args.images,
        num_images=args.num_images,
        strict=not args.non_strict,
        width=args.width,
        row_height=args.row_height,
    )
    print(f"heatmaps written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
