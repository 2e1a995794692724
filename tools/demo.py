#!/usr/bin/env python
"""The main job: teacher -> student distillation on the embedded synthetic data, with a report.

Trains (1) the teacher PSPNet-R18 at 1/2 width, (2) the student PSPNet-R18 at 1/8 width without
KD, (3) the same student with LAD + logit KD (the paper's Eq. 9), all with the same seed,
iterations and schedule; evaluates each on the synthetic validation set and writes the report
(``radkd_d2.evaluation.report``: mIoU, Δ vs no-KD, and every run's status) plus train time to
``output/demo/report.md`` (CSV tables next to it), and prints it.

    python tools/demo.py [--output output/demo] [--iters N]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
from radkd_d2.analysis.launch import log_tail, run_training, train_command  # noqa: E402
from radkd_d2.evaluation.report import (
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)  # noqa: E402

RUNS = [
    ("teacher PSPNet-R18 x1/2", "configs/synthetic/demo/teacher_pspnet_r18x2_synthetic.yaml", "teacher"),
    ("student PSPNet-R18 x1/8, no KD", "configs/synthetic/demo/student_pspnet_r18x8_synthetic.yaml", "student_nokd"),
    (
        "student + LAD (res5) + KD",
        "configs/synthetic/demo/lad_res5_pspr18x2_pspr18x8_synthetic.yaml",
        "student_lad",
    ),
]
DISTILLED = {"student_lad"}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="output/demo", help="output folder (default output/demo)"
    )
    parser.add_argument("--iters", type=int, default=300, help="training iterations per model")
    args = parser.parse_args(argv)
    out = (REPO / args.output).resolve()
    teacher_weights = out / "teacher" / "model_final.pth"
    t0 = time.time()
    seconds = {}
    with tqdm(total=len(RUNS) * args.iters, unit="it", desc="demo", dynamic_ncols=True) as bar:
        for i, (label, config, sub) in enumerate(RUNS):
            # the distillation run reads the teacher this demo just trained
            extra = ["MODEL.DISTILL.TEACHER.WEIGHTS", str(teacher_weights)] if sub in DISTILLED else []
            opts = [
                "OUTPUT_DIR",
                str(out / sub),
                "SOLVER.MAX_ITER",
                str(args.iters),
                "SOLVER.CHECKPOINT_PERIOD",
                str(args.iters),
                *extra,
            ]
            start = time.time()
            log = out / sub / "demo_stdout.log"
            rc = run_training(
                train_command(REPO / config, opts),
                log,
                bar=bar,
                offset=i * args.iters,
                max_iter=args.iters,
                label=f"[{i + 1}/{len(RUNS)}] {label}",
            )
            seconds[sub] = time.time() - start
            if rc != 0:
                bar.close()
                print(f"\n{label} failed (exit {rc}); last lines of {log}:\n{log_tail(log)}")
                sys.exit(rc)
    infos = collect_runs(
        [out / "student_lad"], teachers=[out / "teacher"], baselines=[out / "student_nokd"]
    )
    report = build_report(infos)
    title = f"radkd-d2 demo: synthetic scenes, {args.iters} iterations per model, CPU"
    write_report(report, out / "report", title)  # report.md + CSV tables
    pacc = {i.result.path.name: i.metrics.get("pACC", float("nan")) for i in infos}
    lines = [
        report_markdown(report, title),
        "## Pixel accuracy and time",
        "",
        "| run | pixel acc (%) | train+eval time (s) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {label} ({sub}) | {pacc.get(sub, float('nan')):.2f} | {seconds[sub]:.0f} |"
        for label, _, sub in RUNS
    ]
    lines += ["", f"Total wall time: {time.time() - t0:.0f} s. Runs: {out}"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print("\n" + text)
    print(f"report written to {out / 'report.md'} (CSV tables in {out / 'report'})")


if __name__ == "__main__":
    main()
