#!/usr/bin/env python
"""The CamVid real-data study in one command: teacher, students (no KD, naive, LAD, CAD, PAD),
a loss-weight sweep (naive vs LAD), then the report, the sweep plot (Fig. 1/5), the magnitude
plot (Fig. 2) and feature heatmaps (Fig. 6).

    python tools/camvid_study.py --data-root ../shared/data            # CPU scale (about 1 h on 2 cores)
    python tools/camvid_study.py --data-root DIR --scale gpu --jobs 6  # larger, on one GPU
    python tools/camvid_study.py --data-root DIR --seeds 3             # 3 seeds per student run

Scales (all on configs/camvid/*.yaml, overridden here):
  cpu: teacher PSPNet-R50/4 (deep stem, OS 8), students PSPNet-R18/4; crop 180x240 of images
       scaled 0.5-1.0, batch 8, ITERS iterations (default 300), eval at 360x480.
  gpu: teacher PSPNet-R101 (full width), students PSPNet-R18 (full width); crop 360x480 of
       images scaled 0.5-2.0, batch 8, bf16 AMP, ITERS iterations (default 1000).
Runs go to ``<out>/<name>/``; already finished runs are skipped, so the command can be rerun.

Seeds: ``--seeds N`` (default 1) trains every student run (the main runs and every sweep point)
N times, seed k into ``<name>/seed<k>/`` with SEED = 42 + k (42 is the CamVid configs' SEED, so
seed 0 is the single-seed run); the teacher trains once. The report then shows each setting's
mean ± sample std over seeds and Δ ± its standard error, the sweep table and plot the means, and
the magnitude plot and heatmaps seed 0. With one seed the folders and SEED are those of before.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radkd_d2.analysis.launch import (  # noqa: E402
    PlannedRun,
    config_seed,
    log_tail,
    plan_seeds,
    run_training,
    seeds_arg,
)
from radkd_d2.analysis.plots import plot_magnitudes, plot_sweep  # noqa: E402
from radkd_d2.analysis.sweep import (  # noqa: E402
    collect_sweep,
    format_sweep,
    plan_sweep,
    point_opts,
    run_dir_name,
    sweep_curves,
)
from radkd_d2.evaluation.report import build_report, collect_runs, write_report  # noqa: E402
from radkd_d2.evaluation.runs import read_run, seed_folder  # noqa: E402

CFG = REPO / "configs/camvid"
SCALES = {
    "cpu": dict(
        teacher=[
            "MODEL.DRN.DEPTH",
            50,
            "MODEL.DRN.WIDTH_MULT",
            0.25,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            128,
        ],
        student=["MODEL.DRN.WIDTH_MULT", 0.25, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 128],
        common=[
            "INPUT.SEM_SEG.CROP_SIZE",
            "(180, 240)",
            "INPUT.SEM_SEG.SCALE_RANGE",
            "(0.5, 1.0)",
            "SOLVER.IMS_PER_BATCH",
            8,
            "DATALOADER.NUM_WORKERS",
            1,
        ],
        iters=300,
    ),
    "gpu": dict(
        teacher=[
            "MODEL.DRN.DEPTH",
            101,
            "MODEL.DRN.WIDTH_MULT",
            1.0,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            512,
        ],
        student=["MODEL.DRN.WIDTH_MULT", 1.0, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 512],
        common=[
            "INPUT.SEM_SEG.CROP_SIZE",
            "(360, 480)",
            "SOLVER.IMS_PER_BATCH",
            8,
            "DATALOADER.NUM_WORKERS",
            2,
            "SOLVER.AMP.ENABLED",
            True,
            "SOLVER.AMP.PRECISION",
            "bfloat16",
        ],
        iters=1000,
    ),
}
MAIN_METHODS = ("naive", "lad", "cad", "pad")
SWEEP_METHODS = ("naive", "lad")
MAIN_WEIGHT = 10.0  # λ of the main runs (their configs'): the sweep's λ = 10 points


@dataclass
class StudyPlan:
    """The study's runs: the teacher, then every student run (main runs and sweep points,
    each seed its own run), and what the report and figures need to find them."""

    out: Path
    iters: int
    teacher_iters: int
    seeds: int
    teacher: PlannedRun
    students: List[PlannedRun]
    sweep_dir: Path
    sweep_weights: List[float]
    common: list
    teacher_opts: list

    def main_runs(self) -> List[PlannedRun]:
        """The student runs outside the sweep (no KD and the λ = 10 methods), every seed."""
        return [r for r in self.students if not r.out_dir.is_relative_to(self.sweep_dir)]

    def arm_dirs(self, arm: str) -> List[Path]:
        """The seed folders of a main arm ("student_nokd", "lad_res5", ...)."""
        return [r.out_dir for r in self.main_runs() if r.arm == arm]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="folder holding camvid/")
    p.add_argument("--out", default="output/camvid_study")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--iters", type=int, help="iterations per run (default: the scale's)")
    p.add_argument(
        "--teacher-iters",
        type=int,
        help="iterations of the teacher (default: --iters); a deeper teacher trained from "
        "scratch needs more than the students to get ahead of them",
    )
    p.add_argument("--jobs", type=int, default=1, help="student runs trained in parallel")
    p.add_argument(
        "--sweep-weights",
        type=float,
        nargs="+",
        default=[1, 100, 1000],
        help="λ of the naive/LAD sweep besides the main runs' 10",
    )
    p.add_argument(
        "--seeds",
        type=seeds_arg,
        default=1,
        help="runs (seeds) of every student setting, SEED 42, 43, ...; the teacher "
        "trains once (default 1)",
    )
    return p


def plan_runs(args: argparse.Namespace) -> StudyPlan:
    """Every run of the study with its config overrides, OUTPUT_DIR and SEED, without training.

    Args:
        args: parsed :func:`build_parser` arguments.
    """
    s = SCALES[args.scale]
    iters = args.iters or s["iters"]
    teacher_iters = args.teacher_iters or iters
    out = (REPO / args.out).resolve()
    common = [
        "DATASETS.ROOT",
        args.data_root,
        *s["common"],
        "SOLVER.MAX_ITER",
        iters,
        "SOLVER.CHECKPOINT_PERIOD",
        iters,
        "TEST.EVAL_PERIOD",
        0,
        "MODEL.DISTILL.DIAGNOSTICS_PERIOD",
        20,
    ]
    teacher_dir = out / "teacher"
    teacher_opts = [
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        teacher_dir / "model_final.pth",
        "MODEL.DISTILL.TEACHER.OPTS",
        repr([str(x) for x in s["teacher"]]),
    ]
    longer = ["SOLVER.MAX_ITER", teacher_iters, "SOLVER.CHECKPOINT_PERIOD", teacher_iters]
    teacher = plan_seeds(
        "teacher",
        CFG / "pspnet_r101_camvid.yaml",
        [*common, *s["teacher"], *longer],
        teacher_dir,
        1,
    )[0]
    students = plan_seeds(
        "student_nokd",
        CFG / "pspnet_r18_camvid.yaml",
        [*common, *s["student"]],
        out / "student_nokd",
        args.seeds,
    )
    for m in MAIN_METHODS:
        students += plan_seeds(
            f"{m}_res5",
            CFG / f"{m}_res5_pspr101_pspr18_camvid.yaml",
            [*common, *s["student"], *teacher_opts],
            out / f"{m}_res5",
            args.seeds,
        )
    sweep_dir = out / "sweep"
    for m in SWEEP_METHODS:
        cfg = CFG / f"{m}_res5_pspr101_pspr18_camvid.yaml"
        base = config_seed(cfg) if args.seeds > 1 else -1
        for pt in plan_sweep(sweep_dir, [m], args.sweep_weights, args.seeds, base_seed=base):
            opts = [*common, *s["student"], *teacher_opts, *point_opts(pt, "res5")]
            students.append(
                PlannedRun(
                    run_dir_name(pt.method, pt.weight),
                    pt.name,
                    cfg,
                    opts,
                    pt.path,
                    pt.seed,
                    pt.index,
                    pt.name,
                )
            )
    return StudyPlan(
        out,
        iters,
        teacher_iters,
        args.seeds,
        teacher,
        students,
        sweep_dir,
        list(args.sweep_weights),
        common,
        teacher_opts,
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    plan = plan_runs(args)
    s, out, iters, teacher_iters = SCALES[args.scale], plan.out, plan.iters, plan.teacher_iters

    def train(run: PlannedRun, max_iter=iters):
        if read_run(run.out_dir, max_iter=max_iter).status == "finished":
            print(f"{run.name}: finished earlier, skipped", flush=True)
            return run.name, 0
        log = run.out_dir / "study.log"
        rc = run_training(run.command(), log, label=run.label, max_iter=max_iter)
        print(f"{run.name}: {'done' if rc == 0 else f'FAILED ({rc})'}", flush=True)
        if rc:
            print(log_tail(log))
        return run.name, rc

    print(f"[1/3] teacher ({teacher_iters} iterations)", flush=True)
    if train(plan.teacher, teacher_iters)[1]:
        sys.exit(1)
    seeds = f" ({plan.seeds} seeds per setting)" if plan.seeds > 1 else ""
    print(f"[2/3] {len(plan.students)} student runs{seeds}, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [n for n, rc in pool.map(train, plan.students) if rc]

    print("[3/3] report and figures", flush=True)
    # the sweep's λ = 10 points are the main naive/LAD runs
    main_runs = [plan.teacher.out_dir] + [r.out_dir for r in plan.main_runs()]
    title = f"CamVid study ({args.scale} scale, {iters} iterations, teacher {teacher_iters}"
    title += f", {plan.seeds} seeds)" if plan.seeds > 1 else ")"
    write_report(build_report(collect_runs(main_runs)), out / "report", title=title)
    collected = collect_sweep(plan.sweep_dir, list(SWEEP_METHODS), plan.sweep_weights, plan.seeds)
    for method in SWEEP_METHODS:
        main_pts = [(MAIN_WEIGHT, read_run(d)) for d in plan.arm_dirs(f"{method}_res5")]
        collected[method] = sorted(collected.get(method, []) + main_pts, key=lambda x: x[0])
    print(format_sweep(collected))
    base = [read_run(d).metrics.get("mIoU") for d in plan.arm_dirs("student_nokd")]
    base = [v for v in base if v is not None]
    teach = read_run(plan.teacher.out_dir).metrics.get("mIoU")
    plot_sweep(
        sweep_curves(collected),
        out / "sweep.png",
        baseline=sum(base) / len(base) if base else None,
        teacher=teach,
    )
    # the figures of single runs show seed 0
    first = {arm: plan.arm_dirs(arm)[0] for arm in (f"{m}_res5" for m in MAIN_METHODS)}
    sweep_first = [
        (f"naive λ={w:g}", seed_folder(plan.sweep_dir / run_dir_name("naive", w), 0, plan.seeds))
        for w in plan.sweep_weights
    ]
    plot_magnitudes(
        sweep_first + [("naive λ=10", first["naive_res5"]), ("LAD λ=10", first["lad_res5"])],
        out / "magnitudes.png",
        taps=["res5"],
    )
    try:
        from radkd_d2.analysis.heatmaps import heatmaps_from_config
        from radkd_d2.engine.setup import load_config

        for m in ("lad", "cad", "pad"):
            cfg = load_config(
                str(CFG / f"{m}_res5_pspr101_pspr18_camvid.yaml"),
                [*plan.common, *s["student"], *plan.teacher_opts, "MODEL.DEVICE", "cpu"],
                validate=False,
            )
            heatmaps_from_config(
                cfg,
                str(first[f"{m}_res5"] / "model_final.pth"),
                out / f"heatmaps_{m}.png",
                tap="res5",
                num_images=3,
            )
    except Exception as e:  # figures are a bonus: report the failure, keep the tables
        print(f"heatmaps failed: {e}")
    print((out / "report" / "report.md").read_text())
    print(f"outputs in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
