#!/usr/bin/env python
"""The main job: teacher -> student distillation on the embedded synthetic data, with a report.

The regime is the paper's at small scale: the students do not start from nothing but from one
shared, briefly trained checkpoint (the paper's start from ImageNet weights), and only one arm
continues under the teacher. In order:

1. the teacher, PSPNet-R18 at 1/2 width (``--teacher-iters``, default 800);
2. the starting point: PSPNet-R18 at 1/4 width without KD (``--start-iters``, default 150);
3. ``--seeds`` times (default 3), from that checkpoint, ``--iters`` more iterations (default 300)
   of (a) the student without KD, (b) the student with LAD on res5 (lambda_ad 10) + logit KD
   (lambda_kd 10 at the reference scale, 10/6 per pixel) and (c) logit KD alone (the control:
   (b) against (c) is what the angular term adds), weights warmed up over 50 iterations.

Every run is scored on the held-out test split (256 scenes from their own random stream); the
regime was chosen on the validation split (README, "What the demo does and prints"). The report
(``radkd_d2.evaluation.report``) gives per arm the mean mIoU ± sample std over seeds and
Δ vs no-KD ± its standard error, marked significant only when Δ > 2·SE; it is written with pixel
accuracy and times to ``output/demo/report.md`` (CSV tables next to it) and printed.

    python tools/demo.py [--output output/demo] [--iters N] [--seeds N]

Seeds: seed k of a student arm trains with SEED = 42 + k into ``<output>/<arm>/seed<k>/``; the
teacher and the starting point train once, with SEED 42. By default (``--lanes 2``) the teacher
trains beside the starting point and the no-KD seeds, one thread each, the distilled seeds start
once the teacher is done and the last run gets every thread; ``--lanes 1`` runs one after another
with every thread (:func:`radkd_d2.analysis.launch.run_jobs`). One progress bar counts all
iterations, with an ETA; the table gives each run's time and threads.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import List, Tuple

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
from radkd_d2.analysis.launch import (  # noqa: E402
    Job,
    PlannedRun,
    log_tail,
    plan_seeds,
    run_jobs,
    seeds_arg,
)
from radkd_d2.evaluation.runs import read_run  # noqa: E402
from radkd_d2.evaluation.summary import contrast_text  # noqa: E402
from radkd_d2.evaluation.report import (  # noqa: E402
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)

DEMO = "configs/synthetic/demo"
STUDENT_CONFIG = f"{DEMO}/student_pspnet_r18x4_synthetic.yaml"
TEACHER = ("teacher PSPNet-R18 x1/2", f"{DEMO}/teacher_pspnet_r18x2_synthetic.yaml", "teacher")
START = ("student PSPNet-R18 x1/4, shared start (no KD)", STUDENT_CONFIG, "student_start")
STUDENTS = [
    ("student continued without KD", STUDENT_CONFIG, "student_nokd"),
    (
        "student continued with LAD (res5) + KD",
        f"{DEMO}/lad_res5_pspr18x2_pspr18x4_synthetic.yaml",
        "student_lad",
    ),
    (
        "student continued with logit KD alone",
        f"{DEMO}/kd_logits_pspr18x2_pspr18x4_synthetic.yaml",
        "student_kd",
    ),
]
DISTILLED = {"student_lad", "student_kd"}
KD_ALONE = "student_kd"  # the control arm: what LAD adds is LAD + KD against it
BASELINE = "student_nokd"
SPLITS = {"test": "synthetic_sem_seg_test", "val": "synthetic_sem_seg_val"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="output/demo", help="output folder (default output/demo)"
    )
    parser.add_argument("--teacher-iters", type=int, default=800, help="teacher iterations (800)")
    parser.add_argument(
        "--start-iters", type=int, default=150, help="iterations of the shared starting point (150)"
    )
    parser.add_argument(
        "--iters", type=int, default=300, help="iterations of each student arm from the start (300)"
    )
    parser.add_argument(
        "--seeds",
        type=seeds_arg,
        default=3,
        help="runs (seeds) per student arm, SEED 42, 43, ...; the teacher trains once (default 3)",
    )
    parser.add_argument(
        "--split",
        choices=sorted(SPLITS),
        default="test",
        help="split every run is scored on: test (held out, the default) or val (for choosing a "
        "regime; the test split must not be looked at while choosing)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=2,
        help="runs trained at the same time, each once the runs it needs have finished, the CPU "
        "threads shared between them (default 2, the regime the README's table was measured "
        "in; the thread count changes floating-point order, so another value trains another "
        "starting point, see README)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads shared by the running runs (default: the machine's cores)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse runs that finished earlier in --output with the same iterations "
        "(after an interruption) instead of training them again",
    )
    return parser


def plan_runs(args: argparse.Namespace) -> List[Tuple[PlannedRun, int]]:
    """The demo's runs in training order with their iterations: the teacher, the shared
    starting point, then seed by seed both student arms (continued from the starting point).

    Args:
        args: parsed :func:`build_parser` arguments.
    """
    out = (REPO / args.output).resolve()

    split = ["DATASETS.TEST", f"('{SPLITS[args.split]}',)"]

    def iters(n: int) -> list:
        return ["SOLVER.MAX_ITER", str(n), "SOLVER.CHECKPOINT_PERIOD", str(n), *split]

    label, config, sub = TEACHER
    plan = [
        (r, args.teacher_iters)
        for r in plan_seeds(
            sub, REPO / config, iters(args.teacher_iters), out / sub, 1, label=label
        )
    ]
    label, config, sub = START
    plan += [
        (r, args.start_iters)
        for r in plan_seeds(sub, REPO / config, iters(args.start_iters), out / sub, 1, label=label)
    ]
    start = ["MODEL.WEIGHTS", str(out / "student_start" / "model_final.pth")]
    teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", str(out / "teacher" / "model_final.pth")]
    per_arm = [
        plan_seeds(
            sub,
            REPO / config,
            [*iters(args.iters), *start, *(teacher if sub in DISTILLED else [])],
            out / sub,
            args.seeds,
            label=label,
        )
        for label, config, sub in STUDENTS
    ]
    # seed-major: an interrupted demo still has whole (no KD, LAD) pairs to compare
    for k in range(args.seeds):
        plan += [(runs[k], args.iters) for runs in per_arm]
    return plan


def schedule(plan: List[Tuple[PlannedRun, int]]) -> List[Job]:
    """The plan as jobs: the starting point and the no-KD arm need nothing but the start; the
    distilled arm also waits for the teacher. The teacher and the start train side by side."""
    jobs = []
    for run, n_iter in plan:
        needs: Tuple[str, ...] = ()
        if run.arm != "teacher" and run.arm != "student_start":
            needs = ("student_start",) + (("teacher",) if run.arm in DISTILLED else ())
        jobs.append(Job(run, n_iter, needs))
    return jobs


def angular_term_lines(plan: List[PlannedRun], split: str) -> List[str]:
    """The demo's question in two lines: what logit KD alone adds over no KD, and what the
    angular term adds over logit KD (LAD + KD against KD alone), each Δ ± SE over seeds."""
    values = {
        arm: [v for r in plan if r.arm == arm if (v := read_run(r.out_dir).metrics.get("mIoU")) is not None]
        for arm in (BASELINE, "student_lad", KD_ALONE)
    }
    return [
        f"## What each term adds ({split} mIoU, Δ ± SE over seeds; * where |Δ| > 2·SE)",
        "",
        f"- logit KD alone vs no KD: {contrast_text(values[KD_ALONE], values[BASELINE]) or 'n/a'}",
        f"- LAD + KD vs logit KD alone (the angular term): "
        f"{contrast_text(values['student_lad'], values[KD_ALONE]) or 'n/a'}",
        f"- LAD + KD vs no KD: {contrast_text(values['student_lad'], values[BASELINE]) or 'n/a'}",
    ]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lanes < 1 or (args.threads is not None and args.threads < 1):
        parser.error(
            f"--lanes and --threads must be at least 1, got {args.lanes} and {args.threads}"
        )
    out = (REPO / args.output).resolve()
    plan = plan_runs(args)
    t0 = time.time()
    seconds = {}
    threads = {}
    with tqdm(total=sum(n for _, n in plan), unit="it", desc="demo", dynamic_ncols=True) as bar:
        jobs = []
        for job in schedule(plan):
            if (
                args.resume
                and read_run(job.run.out_dir, max_iter=job.max_iter).status == "finished"
            ):
                bar.write(f"{job.run.label}: finished earlier, reused")
                bar.update(job.max_iter)
                seconds[job.run.name], threads[job.run.name] = 0.0, 0
                continue
            jobs.append(job)
        reused = set(seconds)
        jobs = [Job(j.run, j.max_iter, tuple(n for n in j.needs if n not in reused)) for j in jobs]
        took, used, failed = run_jobs(
            jobs, "demo_stdout.log", lanes=args.lanes, threads=args.threads, bar=bar, cwd=REPO
        )
        seconds.update(took)
        threads.update(used)
    if failed is not None:
        log = failed.run.out_dir / "demo_stdout.log"
        print(f"\n{failed.run.label} failed; last lines of {log}:\n{log_tail(log)}")
        sys.exit(1)
    plan = [r for r, _ in plan]
    dirs = {arm: [r.out_dir for r in plan if r.arm == arm] for arm in ("teacher", *DISTILLED)}
    infos = collect_runs(
        [d for arm in sorted(DISTILLED) for d in dirs[arm]],
        teachers=dirs["teacher"],
        baselines=[r.out_dir for r in plan if r.arm == BASELINE],
    )
    report = build_report(infos)
    title = (
        f"radkd-d2 demo: synthetic scenes ({args.split} split), teacher {args.teacher_iters} iterations, "
        f"students {args.start_iters} shared + {args.iters} per arm, "
        f"{args.seeds} seed{'s' if args.seeds > 1 else ''} per arm, CPU"
    )
    write_report(report, out / "report", title)  # report.md + CSV tables
    scores = {r.out_dir: read_run(r.out_dir).metrics for r in plan}  # every run, the start too
    lines = [
        report_markdown(report, title),
        f"## Every run ({args.split} split)",
        "",
        "| run | mIoU (%) | pixel acc (%) | train+eval time (s) | CPU threads |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.label} ({r.name}) | {scores[r.out_dir].get('mIoU', float('nan')):.2f} "
        f"| {scores[r.out_dir].get('pACC', float('nan')):.2f} | {seconds[r.name]:.0f} "
        f"| {threads[r.name] or 'reused'} |"
        for r in plan
    ]
    lines += ["", *angular_term_lines(plan, args.split)]
    lines += ["", f"Total wall time: {time.time() - t0:.0f} s. Runs: {out}"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print("\n" + text)
    print(f"report written to {out / 'report.md'} (CSV tables in {out / 'report'})")


if __name__ == "__main__":
    main()
