#!/usr/bin/env python
"""Table 7 as one command: RetinaNet distillation with the paper's detection method list (no
KD, FKD, CWD, FGD, MGD, LAD on every FPN level, each with its published coefficients) for one
config family, every arm with seeds, and the table in Table 7's layout (box AP, AP50, AP75,
AP_S, AP_M, AP_L: mean ± std over seeds, Δ ± SE against no KD) from COCOEvaluator.

    # the paper's COCO protocol (X101-64x4d teacher -> R50 student, 2x), on GPUs
    python tools/table7.py --family coco --teacher-weights X101_retinanet.pth --num-gpus 8 \\
        --out /runs/table7 DATASETS.ROOT /data
    # the same list on tiny COCO on CPU: a smoke test of the pipeline, not a result
    python tools/table7.py --family tiny_coco --iters 20 --teacher-iters 40 --out /tmp/t7
    python tools/table7.py --family synthetic --seeds 3 --out /tmp/t7syn

Families (configs/<family>/ and configs/<family>/distill/<method>_fpn_*.yaml):
  coco       RetinaNet X101-64x4d-FPN -> R50-FPN, 2x (configs/coco); --teacher-weights needed
  tiny_coco  RetinaNet X50 tiny -> R18 tiny on ../shared/data/tiny_coco (50 train / 50 val images)
  synthetic  RetinaNet X50 tiny -> R18 tiny on the embedded synthetic detection scenes
Without --teacher-weights the tool trains the family's teacher first (not for coco). Runs go to
``<out>/<arm>/seed<k>/``; a finished run is reused only when its config is this command's (and its
teacher was not trained again), else trained afresh (the old one kept in ``replaced-<time>/``); an
interrupted one resumes, so the command can be rerun. KEY VALUE overrides after the flags apply to every run (the teacher's too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radkd_d2.analysis.launch import (  # noqa: E402
    PlannedRun,
    log_tail,
    plan_seeds,
    run_training,
    seeds_arg,
)
from radkd_d2.engine.inputs import existing_file, run_tool, writable_output  # noqa: E402
from radkd_d2.evaluation.report import (  # noqa: E402
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)
from radkd_d2.evaluation.runs import read_run  # noqa: E402

# Table 7's rows, in its order (the baseline first)
METHODS = ("nokd", "fkd", "cwd", "fgd", "mgd", "lad")
FAMILIES: Dict[str, dict] = {
    "coco": dict(
        student="configs/coco/retinanet_R50_FPN_2x_coco.yaml",
        teacher="configs/coco/retinanet_X101_64x4d_FPN_2x_coco.yaml",
        distill="configs/coco/distill/{m}_fpn_retx101_retr50_2x_coco.yaml",
        trains_teacher=False,  # the X101 teacher is the user's (a 2x COCO schedule on GPUs)
    ),
    "tiny_coco": dict(
        student="configs/tiny_coco/retinanet_r18_tiny_coco.yaml",
        teacher="configs/tiny_coco/retinanet_x50_tiny_coco.yaml",
        distill="configs/tiny_coco/distill/{m}_fpn_retx50_retr18_tiny_tiny_coco.yaml",
        trains_teacher=True,
    ),
    "synthetic": dict(
        student="configs/synthetic/retinanet_r18_tiny.yaml",
        teacher="configs/synthetic/retinanet_x50_tiny.yaml",
        distill="configs/synthetic/distill/{m}_fpn_retx50_retr18_tiny_synthetic.yaml",
        trains_teacher=True,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), required=True)
    p.add_argument("--out", required=True, help="folder of the runs and the report")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rows (default: all)")
    p.add_argument("--seeds", type=seeds_arg, default=1, help="runs per row, SEED = the config's + k")
    p.add_argument("--iters", type=int, help="SOLVER.MAX_ITER of every student run (default: the configs')")
    p.add_argument("--teacher-weights", help="a trained teacher of the family (default: train it; required for coco)")
    p.add_argument("--teacher-iters", type=int, help="SOLVER.MAX_ITER of the teacher the tool trains")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per run (train_net --num-gpus)")
    p.add_argument("--dry-run", action="store_true", help="print the train_net commands and stop")
    p.add_argument("--report-only", action="store_true", help="train nothing: the table of the finished runs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return p


def _iters(n: Optional[int]) -> list:
    return [] if not n else ["SOLVER.MAX_ITER", n, "SOLVER.CHECKPOINT_PERIOD", n]


def plan(args) -> tuple[Optional[PlannedRun], Path, List[PlannedRun]]:
    """(the teacher run to train or None, the teacher weights, the student runs row by row)."""
    fam = FAMILIES[args.family]
    out = Path(args.out).resolve()
    opts = list(args.opts)
    teacher_run = None
    if args.teacher_weights:
        weights = Path(args.teacher_weights).resolve()
    else:
        teacher_run = plan_seeds("teacher", REPO / fam["teacher"], [*opts, *_iters(args.teacher_iters)],
                                 out / "teacher", 1)[0]  # fmt: skip
        weights = teacher_run.out_dir / "model_final.pth"
    students: List[PlannedRun] = []
    for m in args.methods:
        if m == "nokd":
            students += plan_seeds("nokd", REPO / fam["student"], [*opts, *_iters(args.iters)], out / "nokd", args.seeds)
            continue
        config = REPO / fam["distill"].format(m=m)
        extra = ["MODEL.DISTILL.TEACHER.WEIGHTS", weights, *_iters(args.iters)]
        if args.opts:  # the teacher was trained (or is evaluated) under the same overrides
            extra += ["MODEL.DISTILL.TEACHER.OPTS", repr([str(x) for x in args.opts])]
        students += plan_seeds(m, config, [*opts, *extra], out / m, args.seeds)
    return teacher_run, weights, students


def _stale(run: PlannedRun, teacher_retrained: bool) -> str:
    """Why a finished run is not this plan's ("" when it is): another config (the changed keys
    named), or a teacher trained again since."""
    changed = run.config_changes()
    if changed:
        keys = ", ".join(k for k, _, _ in changed[:6]) + (", ..." if len(changed) > 6 else "")
        return f"with another config ({keys})"
    return "under a teacher trained again since" if teacher_retrained else ""


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fam = FAMILIES[args.family]
    for flag, value in (("--iters", args.iters), ("--teacher-iters", args.teacher_iters), ("--num-gpus", args.num_gpus)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: give a positive count (leave the flag out for the config's own value)")
    if len(args.opts) % 2:
        parser.error(f"the KEY VALUE overrides have an odd number of items: {args.opts}")
    if args.teacher_weights:
        existing_file(args.teacher_weights, "--teacher-weights", "checkpoint")
    elif not fam["trains_teacher"] and not args.report_only:
        parser.error(f"--family {args.family} needs --teacher-weights (its teacher is not trained here)")
    writable_output(args.out, "--out", folder=True)
    teacher_run, weights, students = plan(args)
    flags = ["--num-gpus", str(args.num_gpus)] if args.num_gpus > 1 else []
    runs = ([teacher_run] if teacher_run else []) + students
    if args.dry_run:
        for r in runs:
            print(" ".join(map(str, r.command(resume=True)[:3] + flags + r.command(resume=True)[3:])))
        return 0
    stale = set()
    if not args.report_only:
        retrained = False  # a teacher trained again makes every finished student stale
        for i, r in enumerate(runs):
            finished = read_run(r.out_dir).status == "finished"
            why = _stale(r, retrained and r is not teacher_run) if finished else ""
            if finished and not why:
                print(f"[{i + 1}/{len(runs)}] {r.name}: finished earlier with the same config, reused", flush=True)
                continue
            if finished:
                # trained afresh; train_net --replace-run keeps the old run in <run>/replaced-<time>/
                print(f"[{i + 1}/{len(runs)}] {r.name}: finished earlier {why}: trained again", flush=True)
                cmd = r.command(replace=True)
            else:
                cmd = r.command(resume=True)
            retrained = retrained or r is teacher_run
            cmd = cmd[:3] + flags + cmd[3:]
            log = r.out_dir / "table7.log"
            print(f"[{i + 1}/{len(runs)}] {r.name}", flush=True)
            if run_training(cmd, log, label=r.label, cwd=REPO):
                print(f"{r.name} failed; last lines of {log}:\n{log_tail(log)}")
                return 1
    else:  # the table holds only runs of this plan's config
        stale = {r.out_dir for r in runs if read_run(r.out_dir).status == "finished" and _stale(r, False)}
        for d in sorted(stale):
            print(f"{d}: finished with another config than this command's: left out of the table", flush=True)
    arms = {m: [r.out_dir for r in students if r.arm == m and r.out_dir not in stale] for m in args.methods}
    infos = collect_runs(
        [d for m in args.methods if m != "nokd" for d in arms[m]],
        teachers=[teacher_run.out_dir] if teacher_run else [],
        baselines=arms.get("nokd", []),
    )
    title = f"Table 7 layout: RetinaNet distillation, family {args.family}, {args.seeds} seed(s) per row"
    if args.family != "coco":
        title += " (a small-scale run of the pipeline, not the paper's numbers)"
    report = build_report(infos)
    write_report(report, Path(args.out) / "report", title)
    print(report_markdown(report, title))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
