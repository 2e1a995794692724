#!/usr/bin/env python
"""The CamVid real-data study in one command: teacher, students (no KD, naive, LAD, CAD, PAD),
a loss-weight sweep (naive vs LAD), then the report, the sweep plot (Fig. 1/5), the magnitude
plot (Fig. 2) and feature heatmaps (Fig. 6).

    python tools/camvid_study.py --data-root ../shared/data            # CPU scale (about 1 h on 2 cores)
    python tools/camvid_study.py --data-root DIR --scale gpu --jobs 6  # larger, on one GPU

Scales (all on configs/camvid/*.yaml, overridden here):
  cpu: teacher PSPNet-R50/4 (deep stem, OS 8), students PSPNet-R18/4; crop 180x240 of images
       scaled 0.5-1.0, batch 8, ITERS iterations (default 300), eval at 360x480.
  gpu: teacher PSPNet-R101 (full width), students PSPNet-R18 (full width); crop 360x480 of
       images scaled 0.5-2.0, batch 8, bf16 AMP, ITERS iterations (default 1000).
Runs go to ``<out>/<name>/``; already finished runs are skipped, so the command can be rerun.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radkd_d2.analysis.launch import log_tail, run_training, train_command  # noqa: E402
from radkd_d2.analysis.plots import plot_magnitudes, plot_sweep  # noqa: E402
from radkd_d2.analysis.sweep import collect_sweep, format_sweep, plan_sweep, point_opts, sweep_curves  # noqa: E402
from radkd_d2.evaluation.report import build_report, collect_runs, write_report  # noqa: E402
from radkd_d2.evaluation.runs import read_run  # noqa: E402

CFG = REPO / "configs/camvid"
SCALES = {
    "cpu": dict(
        teacher=["MODEL.DRN.DEPTH", 50, "MODEL.DRN.WIDTH_MULT", 0.25, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 128],
        student=["MODEL.DRN.WIDTH_MULT", 0.25, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 128],
        common=["INPUT.SEM_SEG.CROP_SIZE", "(180, 240)", "INPUT.SEM_SEG.SCALE_RANGE", "(0.5, 1.0)",
                "SOLVER.IMS_PER_BATCH", 8, "DATALOADER.NUM_WORKERS", 1],
        iters=300,
    ),
    "gpu": dict(
        teacher=["MODEL.DRN.DEPTH", 101, "MODEL.DRN.WIDTH_MULT", 1.0, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 512],
        student=["MODEL.DRN.WIDTH_MULT", 1.0, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 512],
        common=["INPUT.SEM_SEG.CROP_SIZE", "(360, 480)", "SOLVER.IMS_PER_BATCH", 8,
                "DATALOADER.NUM_WORKERS", 2, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16"],
        iters=1000,
    ),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder holding camvid/")
    p.add_argument("--out", default="output/camvid_study")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--iters", type=int, help="iterations per run (default: the scale's)")
    p.add_argument("--teacher-iters", type=int,
                   help="iterations of the teacher (default: --iters); a deeper teacher trained from "
                        "scratch needs more than the students to get ahead of them")
    p.add_argument("--jobs", type=int, default=1, help="student runs trained in parallel")
    p.add_argument("--sweep-weights", type=float, nargs="+", default=[1, 100, 1000],
                   help="λ of the naive/LAD sweep besides the main runs' 10")
    args = p.parse_args(argv)
    s = SCALES[args.scale]
    iters = args.iters or s["iters"]
    teacher_iters = args.teacher_iters or iters
    out = (REPO / args.out).resolve()
    common = ["DATASETS.ROOT", args.data_root, *s["common"], "SOLVER.MAX_ITER", iters,
              "SOLVER.CHECKPOINT_PERIOD", iters, "TEST.EVAL_PERIOD", 0, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 20]
    teacher_dir = out / "teacher"
    teacher_opts = ["MODEL.DISTILL.TEACHER.WEIGHTS", teacher_dir / "model_final.pth",
                    "MODEL.DISTILL.TEACHER.OPTS", repr([str(x) for x in s["teacher"]])]

    longer = ["SOLVER.MAX_ITER", teacher_iters, "SOLVER.CHECKPOINT_PERIOD", teacher_iters]
    jobs = [("teacher", CFG / "pspnet_r101_camvid.yaml", [*common, *s["teacher"], *longer], teacher_dir)]
    students = [("student_nokd", CFG / "pspnet_r18_camvid.yaml", [*common, *s["student"]], out / "student_nokd")]
    for m in ("naive", "lad", "cad", "pad"):
        students.append((f"{m}_res5", CFG / f"{m}_res5_pspr101_pspr18_camvid.yaml",
                         [*common, *s["student"], *teacher_opts], out / f"{m}_res5"))
    sweep_dir = out / "sweep"
    points = plan_sweep(sweep_dir, ["naive", "lad"], args.sweep_weights)
    for pt in points:
        students.append((pt.name, CFG / f"{pt.method}_res5_pspr101_pspr18_camvid.yaml",
                         [*common, *s["student"], *teacher_opts, *point_opts(pt, "res5")], pt.path))

    def train(job, max_iter=iters):
        name, cfg, opts, run_dir = job
        if read_run(run_dir, max_iter=max_iter).status == "finished":
            print(f"{name}: finished earlier, skipped", flush=True)
            return name, 0
        opts = [*opts, "OUTPUT_DIR", run_dir]
        rc = run_training(train_command(cfg, opts), run_dir / "study.log", label=name, max_iter=max_iter)
        print(f"{name}: {'done' if rc == 0 else f'FAILED ({rc})'}", flush=True)
        if rc:
            print(log_tail(run_dir / "study.log"))
        return name, rc

    print(f"[1/3] teacher ({teacher_iters} iterations)", flush=True)
    if train(jobs[0], teacher_iters)[1]:
        sys.exit(1)
    print(f"[2/3] {len(students)} student runs, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        failed = [n for n, rc in pool.map(train, students) if rc]

    print("[3/3] report and figures", flush=True)
    main_runs = [teacher_dir] + [j[3] for j in students if not j[3].is_relative_to(sweep_dir)]
    # the sweep's λ = 10 points are the main naive/LAD runs
    write_report(build_report(collect_runs(main_runs)), out / "report", title=f"CamVid study ({args.scale} scale, {iters} iterations, teacher {teacher_iters})")
    collected = collect_sweep(sweep_dir, ["naive", "lad"], args.sweep_weights)
    for method, run in (("naive", out / "naive_res5"), ("lad", out / "lad_res5")):
        collected[method] = sorted(collected.get(method, []) + [(10.0, read_run(run))], key=lambda x: x[0])
    print(format_sweep(collected))
    base, teach = read_run(out / "student_nokd").metrics.get("mIoU"), read_run(teacher_dir).metrics.get("mIoU")
    plot_sweep(sweep_curves(collected), out / "sweep.png", baseline=base, teacher=teach)
    plot_magnitudes([(f"naive λ={w:g}", sweep_dir / f"naive_w{w:g}") for w in args.sweep_weights]
                    + [("naive λ=10", out / "naive_res5"), ("LAD λ=10", out / "lad_res5")], out / "magnitudes.png", taps=["res5"])
    try:
        from radkd_d2.analysis.heatmaps import heatmaps_from_config
        from radkd_d2.engine.setup import load_config

        for m in ("lad", "cad", "pad"):
            cfg = load_config(str(CFG / f"{m}_res5_pspr101_pspr18_camvid.yaml"),
                              [*common, *s["student"], *teacher_opts, "MODEL.DEVICE", "cpu"], validate=False)
            heatmaps_from_config(cfg, str(out / f"{m}_res5" / "model_final.pth"), out / f"heatmaps_{m}.png",
                                 tap="res5", num_images=3)
    except Exception as e:  # figures are a bonus: report the failure, keep the tables
        print(f"heatmaps failed: {e}")
    print((out / "report" / "report.md").read_text())
    print(f"outputs in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
