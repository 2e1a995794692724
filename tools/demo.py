#!/usr/bin/env python
"""The main job: teacher -> student distillation on the embedded synthetic data, with a report.

Trains (1) the teacher PSPNet-R18 at 1/2 width once, then, --seeds times each (default 3),
(2) the student PSPNet-R18 at 1/8 width without KD and (3) the same student with LAD + logit KD
(the paper's Eq. 9), all with the same iterations and schedule; evaluates each on the synthetic
validation set and writes the report (``radkd_d2.evaluation.report``: per arm the mean mIoU
± its sample std over seeds, Δ vs no-KD ± its standard error, significance, every run's status)
plus pixel accuracy and train time to ``output/demo/report.md`` (CSV tables next to it), and
prints it.

    python tools/demo.py [--output output/demo] [--iters N] [--seeds N]

Seeds: seed k of a student arm trains with SEED = 42 + k (42 is the demo configs' SEED, so seed
0 is the run the demo made before it had seeds) into ``<output>/<arm>/seed<k>/``; the teacher
trains once, with SEED 42, into ``<output>/teacher/``. ``--seeds 1`` gives one run per arm in
``<output>/<arm>/`` as before. Runs go seed by seed (seed 0 of both student arms first), under
one progress bar over all iterations, with an ETA.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import List

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
from radkd_d2.analysis.launch import (  # noqa: E402
    PlannedRun,
    log_tail,
    plan_seeds,
    run_training,
    seeds_arg,
)
from radkd_d2.evaluation.report import (  # noqa: E402
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)

DEMO = "configs/synthetic/demo"
TEACHER = ("teacher PSPNet-R18 x1/2", f"{DEMO}/teacher_pspnet_r18x2_synthetic.yaml", "teacher")
STUDENTS = [
    (
        "student PSPNet-R18 x1/8, no KD",
        f"{DEMO}/student_pspnet_r18x8_synthetic.yaml",
        "student_nokd",
    ),
    (
        "student + LAD (res5) + KD",
        f"{DEMO}/lad_res5_pspr18x2_pspr18x8_synthetic.yaml",
        "student_lad",
    ),
]
DISTILLED = {"student_lad"}
BASELINE = "student_nokd"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="output/demo", help="output folder (default output/demo)"
    )
    parser.add_argument("--iters", type=int, default=300, help="training iterations per model")
    parser.add_argument(
        "--seeds",
        type=seeds_arg,
        default=3,
        help="runs (seeds) per student arm, SEED 42, 43, ...; the teacher trains once (default 3)",
    )
    return parser


def plan_runs(args: argparse.Namespace) -> List[PlannedRun]:
    """The demo's runs in training order: the teacher, then seed by seed both student arms.

    Args:
        args: parsed :func:`build_parser` arguments (``output``, ``iters``, ``seeds``).
    """
    out = (REPO / args.output).resolve()
    common = ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(args.iters)]
    label, config, sub = TEACHER
    plan = plan_seeds(sub, REPO / config, common, out / sub, 1, label=label)
    per_arm = []
    for label, config, sub in STUDENTS:
        # the distillation runs read the teacher this demo trains first
        extra = (
            ["MODEL.DISTILL.TEACHER.WEIGHTS", str(out / "teacher" / "model_final.pth")]
            if sub in DISTILLED
            else []
        )
        per_arm.append(
            plan_seeds(sub, REPO / config, [*common, *extra], out / sub, args.seeds, label=label)
        )
    # seed-major: an interrupted demo still has whole (no KD, LAD) pairs to compare
    for k in range(args.seeds):
        plan += [runs[k] for runs in per_arm]
    return plan


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = (REPO / args.output).resolve()
    plan = plan_runs(args)
    t0 = time.time()
    seconds = {}
    with tqdm(total=len(plan) * args.iters, unit="it", desc="demo", dynamic_ncols=True) as bar:
        for i, run in enumerate(plan):
            start = time.time()
            log = run.out_dir / "demo_stdout.log"
            rc = run_training(
                run.command(),
                log,
                bar=bar,
                offset=i * args.iters,
                max_iter=args.iters,
                label=f"[{i + 1}/{len(plan)}] {run.label}",
            )
            seconds[run.name] = time.time() - start
            if rc != 0:
                bar.close()
                print(f"\n{run.label} failed (exit {rc}); last lines of {log}:\n{log_tail(log)}")
                sys.exit(rc)
    dirs = {arm: [r.out_dir for r in plan if r.arm == arm] for arm in ("teacher", *DISTILLED)}
    infos = collect_runs(
        [d for arm in sorted(DISTILLED) for d in dirs[arm]],
        teachers=dirs["teacher"],
        baselines=[r.out_dir for r in plan if r.arm == BASELINE],
    )
    report = build_report(infos)
    title = (
        f"radkd-d2 demo: synthetic scenes, {args.iters} iterations per model, "
        f"{args.seeds} seed{'s' if args.seeds > 1 else ''} per student, CPU"
    )
    write_report(report, out / "report", title)  # report.md + CSV tables
    pacc = {i.result.path: i.metrics.get("pACC", float("nan")) for i in infos}
    lines = [
        report_markdown(report, title),
        "## Pixel accuracy and time",
        "",
        "| run | pixel acc (%) | train+eval time (s) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {r.label} ({r.name}) | {pacc.get(r.out_dir, float('nan')):.2f} "
        f"| {seconds[r.name]:.0f} |"
        for r in plan
    ]
    lines += ["", f"Total wall time: {time.time() - t0:.0f} s. Runs: {out}"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print("\n" + text)
    print(f"report written to {out / 'report.md'} (CSV tables in {out / 'report'})")


if __name__ == "__main__":
    main()
