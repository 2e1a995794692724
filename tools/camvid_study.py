#!/usr/bin/env python
"""The CamVid real-data study in one command: teacher, a shared student start, students (no
KD, naive, LAD, CAD, logit KD alone, the LAD term alone; PAD on request), a loss-weight sweep
(naive vs LAD), then the report with the schedule checks (teacher and plain-student val curves),
the sweep plot (Fig. 1/5), the magnitude plot (Fig. 2) and feature heatmaps (Fig. 6).

    python tools/camvid_study.py --data-root ../shared/data            # CPU scale (about 60 min on 2 cores)
    python tools/camvid_study.py --data-root DIR --scale gpu --jobs 6  # larger, on one GPU
    python tools/camvid_study.py --data-root ../shared/data --scale pretrained  # the paper's regime

The paper's shape at small scale, as in the demo: the students do not start from nothing but from
one shared checkpoint of the plain student (``--start-iters``; the paper's ImageNet start), and
every student arm continues it for ``--iters`` iterations, with or without a teacher.

Scales (all on configs/camvid/*.yaml, overridden here):
  cpu: images at half size (random scale 0.25-0.5, crop 90x120, batch 8; evaluated at half size,
       shortest edge 180, against the full-size labels): teacher PSPNet-R18 at 1/2 width (head 128)
       trained 2400 iterations; students PSPNet-R18 at 1/8 width (head 64, about 1/16 of the
       teacher's convolution cost), start 600 iterations, arms 300 more.
  gpu: teacher PSPNet-R101 (full width), students PSPNet-R18 (full width); crop 360x480 of
       images scaled 0.5-2.0, batch 8, bf16 AMP; start 1000, arms 1000, teacher 4000.
  pretrained: the paper's regime (--scale pretrained): students PSPNet-MV2 (the paper's student,
       output stride 8) from the ImageNet MobileNetV2 of ../shared/data/pretrained, no shared
       start; teacher PSPNet-MV2 from the COCO+VOC segmentation backbone, 1000 iterations; crop
       120x160 of images scaled 0.375-0.75, batch 8, students 200 iterations, evaluated at half
       size. The pretrained files go through tools/convert_weights.py into <out>/pretrained/.
       --pad-type auto first trains the plain student with PyTorch's and with TensorFlow's
       padding (MODEL.MOBILENETV2.PAD_TYPE) and keeps the better on val; it chose "same", now
       the scale's default.
  pretrained-gpu: the same at 360x480 crops (scale 0.5-2.0, full-size evaluation, bf16 AMP),
       teacher 4000 and students 1000 iterations; tools/gpu_camvid_study.sh runs it on a lent
       GPU in commands of at most 10 minutes (--time-limit).
Runs go to ``<out>/<name>/``; already finished runs are skipped and an interrupted one resumes
from its last checkpoint, so the command can be rerun (``--time-limit S`` stops it after S
seconds on purpose).

Seeds: ``--seeds N`` (default 3) trains every main student arm N times and ``--sweep-seeds M``
(default 2) every sweep point M times, seed k into ``<name>/seed<k>/`` with SEED = 42 + k (42 is
the CamVid configs' SEED); the teacher and the start train once. The report shows each setting's
mean ± sample std over seeds and Δ ± its standard error, the sweep table and plot the means, and
the magnitude plot and heatmaps seed 0. The teacher, the start and the first no-KD seed are
evaluated every ``--eval-period`` iterations: the report's "Schedule" section shows those curves,
the gain over their last quarter and the teacher's lead over the plain student.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radkd_d2.analysis.launch import (  # noqa: E402
    PlannedRun,
    claim_folder,
    config_seed,
    log_tail,
    plan_seeds,
    run_training,
    seeds_arg,
    train_command,
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
from radkd_d2.engine.inputs import run_tool, writable_output  # noqa: E402
from radkd_d2.evaluation.runs import (  # noqa: E402
    log_wall_seconds,
    per_class_iou,
    read_run,
    read_scalars,
    seed_folder,
)
from radkd_d2.evaluation.summary import contrast_text, mean_std, paired_contrast_text  # noqa: E402

CFG = REPO / "configs/camvid"
# the models of a scale: teacher and student configs, the distillation configs' pair name
# ("<method>_res5_<pair>_camvid.yaml"), the lead the teacher must have over the plain student,
# and for the pretrained scales the ../shared/data/pretrained file each model starts from
_R18_FAMILY = dict(
    pair="pspr101_pspr18",
    teacher_config="pspnet_r101_camvid.yaml",
    student_config="pspnet_r18_camvid.yaml",
    lead=8,
)
_MV2_FAMILY = dict(
    pair="mv2_pspmv2",
    teacher_config="pspnet_mv2_teacher_camvid.yaml",
    student_config="pspnet_mv2_camvid.yaml",
    lead=5,
    pretrained=dict(
        student="mobilenet_v2_imagenet_torchvision.pth",
        teacher="mobilenet_v2_cocovoc_seg_backbone_torchvision.pth",
    ),
    checkpoint_period=100,  # a killed study resumes its running run from here
    # measured with --pad-type auto (2026-12-05, padding.json): val mIoU, seeds 42/43/44, same
    # 29.29 / 31.49 / 34.65 vs torch 29.15 / 29.72 / 32.60 (same − torch +1.32 ± 1.89, higher in
    # every seed): the weights' own TensorFlow padding
    pad="same",
)
# the road-scene regime: a DeepLab trained on Cityscapes (MobileNet-EdgeTPU x0.75, ASPP-lite,
# ../shared/data/pretrained), fine-tuned on CamVid from its own classes through the class map
# of its config, teaches PSPNet-MV2 students from ImageNet. Taps: the last backbone feature of
# each (the teacher's 1280-channel head conv, the student's res5)
_DLCS_FAMILY = dict(
    pair="dlcs_pspmv2",
    teacher_config="deeplab_edgetpu_cityscapes_camvid.yaml",
    student_config="pspnet_mv2_camvid.yaml",
    lead=8,
    pretrained=dict(
        student="mobilenet_v2_imagenet_torchvision.pth",
        teacher="deeplab_mobilenet_edgetpu075_cityscapes.pth",
    ),
    # converter of each pretrained file (tools/convert_weights.py --source)
    sources=dict(student="torchvision_mobilenetv2", teacher="tf_deeplab_edgetpu"),
    # the config each pretrained file is converted against (the source model's own classes)
    convert_configs=dict(teacher="../cityscapes/deeplab_edgetpu_cityscapes.yaml"),
    # the Cityscapes model scored on CamVid val through the class map, without training
    zero_shot_config="deeplab_edgetpu_cityscapes_zeroshot_camvid.yaml",
    checkpoint_period=100,
    pad="same",
    methods=("kd", "lad", "lad_nokd", "cad"),
    seeds=5,
    sweep_weights=(),
    tap_key="res5_to_head",  # the distiller's name of the (res5, head) tap in diagnostics
    curves="every arm",  # seed 0 of every arm evaluated every eval_period: the students' curves
)
# the per-class IoUs the road-scene study checks the teacher's lead on (CamVid names)
HARD_CLASSES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")


def _gpu_common(workers: int, extra: Sequence = ()) -> list:
    """The GPU scales' data and precision: crop 360x480, batch 8, bf16 AMP."""
    return [
        "INPUT.SEM_SEG.CROP_SIZE", "(360, 480)", *extra, "SOLVER.IMS_PER_BATCH", 8,
        "DATALOADER.NUM_WORKERS", workers, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16",
    ]  # fmt: skip


def _pretrained_cpu_common(crop: str) -> list:
    """The pretrained CPU scales' data: crops ``crop`` of CamVid images scaled 0.375-0.75,
    evaluated at half size (shortest edge 180), batch 8, one loader worker."""
    return [
        "INPUT.SEM_SEG.CROP_SIZE", crop, "INPUT.MIN_SIZE_TEST", 180, "INPUT.SEM_SEG.SCALE_RANGE", "(0.375, 0.75)",
        "SOLVER.IMS_PER_BATCH", 8, "DATALOADER.NUM_WORKERS", 1,
    ]  # fmt: skip


# MobileNetV2 padding (MODEL.MOBILENETV2.PAD_TYPE) of a pretrained scale: "torch" (symmetric) or
# "same" (TensorFlow's, as the weights were trained); "auto" trains the plain student with both
# and keeps the better on val
PAD_TYPES = {"torch": "", "same": "same"}
SCALES = {
    "cpu": dict(
        teacher=[
            "MODEL.DRN.DEPTH",
            18,
            "MODEL.DRN.WIDTH_MULT",
            0.5,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM",
            128,
        ],
        student=["MODEL.DRN.WIDTH_MULT", 0.125, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64],
        common=[
            "INPUT.SEM_SEG.CROP_SIZE",
            "(90, 120)",
            "INPUT.MIN_SIZE_TEST",
            180,
            "INPUT.SEM_SEG.SCALE_RANGE",
            "(0.25, 0.5)",
            "SOLVER.IMS_PER_BATCH",
            8,
            "DATALOADER.NUM_WORKERS",
            1,
        ],
        iters=300,
        start_iters=600,
        teacher_iters=2400,
        **_R18_FAMILY,
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
        common=_gpu_common(workers=2),
        iters=1000,
        start_iters=1000,
        teacher_iters=4000,
        **_R18_FAMILY,
    ),
    # the paper's regime: ImageNet-pretrained PSPNet-MV2 students (no shared start: ImageNet is
    # the start) under a PSPNet-MV2 teacher started from the COCO+VOC segmentation backbone
    "pretrained": dict(
        teacher=[],
        student=[],
        common=_pretrained_cpu_common("(120, 160)"),
        iters=200,
        start_iters=0,
        teacher_iters=1000,
        eval_period=100,
        **_MV2_FAMILY,
    ),
    # the road-scene regime (--scale cityscapes): the pretrained scale's data (crops 128 x 160, a
    # multiple of both strides) and students, trained to their plateau (1000 iterations), under
    # the fine-tuned Cityscapes DeepLab
    "cityscapes": dict(
        teacher=[],
        student=[],
        # 128 = 8 x 16: the stride-8 student and the stride-16 teacher need no padding, so
        # the distilled arms' students see exactly the plain students' inputs
        common=_pretrained_cpu_common("(128, 160)"),
        iters=1000,
        start_iters=0,
        teacher_iters=2000,
        eval_period=125,
        **_DLCS_FAMILY,
    ),
    "cityscapes-gpu": dict(
        teacher=[],
        student=[],
        common=_gpu_common(workers=4, extra=["INPUT.SEM_SEG.SCALE_RANGE", "(0.5, 2.0)"]),
        iters=2000,
        start_iters=0,
        teacher_iters=4000,
        eval_period=500,
        **_DLCS_FAMILY,
    ),
    "pretrained-gpu": dict(
        teacher=[],
        student=[],
        common=_gpu_common(workers=4, extra=["INPUT.SEM_SEG.SCALE_RANGE", "(0.5, 2.0)"]),
        iters=1000,
        start_iters=0,
        teacher_iters=4000,
        eval_period=500,
        **_MV2_FAMILY,
    ),
}
# the teacher the students learn from: its best val evaluation (model_best.pth), not its last
BEST = ["TEST.BEST_CHECKPOINT_METRIC", "sem_seg/mIoU"]
# the study's arms besides no KD: method -> (arm folder, config, overrides). Every feature arm
# carries logit KD (λ_kd 10) beside its res5 term (λ 10); "kd" (KD alone) and "lad_nokd" (the LAD
# term alone) tell the two terms apart
# ({pair}: the scale's, e.g. "lad_res5_mv2_pspmv2_camvid.yaml")
ARMS = {
    "naive": ("naive_res5", "naive_res5_{pair}_camvid.yaml", []),
    "lad": ("lad_res5", "lad_res5_{pair}_camvid.yaml", []),
    "cad": ("cad_res5", "cad_res5_{pair}_camvid.yaml", []),
    "pad": ("pad_res5", "pad_res5_{pair}_camvid.yaml", []),
    "kd": ("kd_logits", "kd_logits_{pair}_camvid.yaml", []),
    "lad_nokd": ("lad_res5_nokd", "lad_res5_{pair}_camvid.yaml", ["MODEL.DISTILL.KD_WEIGHT", 0.0]),
}
MAIN_METHODS = ("naive", "lad", "cad", "kd", "lad_nokd")
KD_ALONE = "kd_logits"  # the arm the report's second Δ is taken against
ALL_METHODS = tuple(ARMS)
SWEEP_METHODS = ("naive", "lad")
PLATEAU_GAIN = 0.5  # a val curve gaining less over its last quarter has reached its plateau
MAIN_WEIGHT = 10.0  # λ of the main runs (their configs'): the sweep's λ = 10 points


@dataclass
class StudyPlan:
    """The study's runs: the teacher, the shared start, then every student run (main runs and
    sweep points, each seed its own run), and what the report and figures need to find them."""

    out: Path
    iters: int
    start_iters: int
    teacher_iters: int
    seeds: int
    sweep_seeds: int
    methods: List[str]
    teacher: PlannedRun
    start: Optional[PlannedRun]
    students: List[PlannedRun]
    sweep_dir: Path
    sweep_weights: List[float]
    common: list
    teacher_opts: list
    sweep_weight: dict  # out_dir of a sweep run -> its λ
    pad: Optional[str] = None  # MobileNetV2 padding of a pretrained scale ("torch", "same")

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
    p.add_argument("--iters", type=int, help="iterations of every student arm (default: the scale's)")
    p.add_argument(
        "--start-iters",
        type=int,
        help="iterations of the shared plain-student start the arms continue from (default: the "
        "scale's; 0: every arm from scratch)",
    )
    p.add_argument(
        "--teacher-iters",
        type=int,
        help="iterations of the teacher (default: the scale's); it should reach its plateau",
    )
    p.add_argument(
        "--eval-period",
        type=int,
        help="val evaluation period of the teacher, the start and the first no-KD seed, for the "
        "schedule curves (default: the scale's, 200 for cpu/gpu; each evaluation of the 101 val "
        "images costs 10-30 s on CPU)",
    )
    p.add_argument(
        "--pad-type",
        choices=["auto", *PAD_TYPES],
        help="MobileNetV2 padding of the pretrained scales: torch (symmetric), same (TensorFlow's, "
        "as the weights were trained), or auto: the plain student with both, every seed, keeping "
        "the better val mean (the comparison is in the report). Default: the scale's measured "
        "setting (same)",
    )
    p.add_argument(
        "--pretrained-root",
        help="folder holding the MobileNetV2 files of the pretrained scales (default: "
        "<data-root>/pretrained)",
    )
    p.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for every run, after the scale's (e.g. a smaller crop to try the "
        "study at a tiny size)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=0,
        help="seconds after which the study stops its running run (it resumes from its last "
        "checkpoint) and exits with code 3: rerun the same command to go on (0: no limit; the "
        "GPU preset runs in commands of at most 10 minutes)",
    )
    p.add_argument("--jobs", type=int, default=1, help="student runs trained in parallel")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report and figures from the runs finished so far",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        default=None,
        help="distilled arms besides no KD (default: the scale's; naive lad cad kd lad_nokd, for "
        "the cityscapes scales kd lad lad_nokd cad; kd is logit KD alone, lad_nokd the LAD term "
        "alone, the others a res5 term + logit KD)",
    )
    p.add_argument(
        "--sweep-weights",
        type=float,
        nargs="*",
        default=None,
        help="λ of the naive/LAD sweep besides the main runs' 10 (default: the scale's, 1 100 "
        "1000; none for the cityscapes scales; an empty list: no sweep)",
    )
    p.add_argument(
        "--seeds",
        type=seeds_arg,
        default=None,
        help="runs (seeds) of every main student arm, SEED 42, 43, ... shared across arms, so "
        "that seed k of every arm has the same initialisation and data order (default: the "
        "scale's, 3; 5 for the cityscapes scales)",
    )
    p.add_argument(
        "--sweep-seeds",
        type=seeds_arg,
        default=2,
        help="runs (seeds) of every sweep point (default 2)",
    )
    return p


def last_quarter_gain(points: Sequence[Tuple[int, float]]) -> float:
    """How much a val curve ``[(iteration, mIoU), ...]`` still rose over its last quarter of
    iterations: the last value minus the last one at or before 3/4 of the final iteration (a
    flattened curve gains about nothing)."""
    end = points[-1][0]
    before = [v for it, v in points if it <= 0.75 * end] or [points[0][1]]
    return points[-1][1] - before[-1]


def _iters(n: int, period: Optional[int] = None) -> list:
    """MAX_ITER n, a checkpoint at the end (and every ``period`` iterations, for resuming)."""
    return ["SOLVER.MAX_ITER", n, "SOLVER.CHECKPOINT_PERIOD", min(n, period or n)]


def pretrained_file(out: Path, model: str, scale: dict) -> Optional[Path]:
    """Where the study writes the converted ``../shared/data/pretrained`` file that ``model``
    ("student" or "teacher") starts from; None for a scale trained from random weights."""
    name = scale.get("pretrained", {}).get(model)
    return out / "pretrained" / name if name else None


def padding_dir(out: Path, pad: str) -> Path:
    """The plain-student arm of one padding ("torch" or "same"): the padding comparison, and
    the study's no-KD arm for the padding it keeps."""
    return out / "padding" / pad


def plan_runs(args: argparse.Namespace, pad: Optional[str] = None) -> StudyPlan:
    """Every run of the study with its config overrides, OUTPUT_DIR and SEED, without training.

    Args:
        args: parsed :func:`build_parser` arguments.
        pad: MobileNetV2 padding of a pretrained scale ("torch" or "same"); default the
            ``--pad-type`` argument ("auto" plans the padding comparison's "torch" side).
    """
    s = SCALES[args.scale]
    methods = list(args.methods or s.get("methods", MAIN_METHODS))
    seeds = args.seeds or s.get("seeds", 3)
    sweep_weights = list(s.get("sweep_weights", (1, 100, 1000)) if args.sweep_weights is None else args.sweep_weights)
    iters = args.iters or s["iters"]
    start_iters = s["start_iters"] if args.start_iters is None else args.start_iters
    teacher_iters = args.teacher_iters or s["teacher_iters"]
    eval_period = args.eval_period or s.get("eval_period", 200)
    out = (REPO / args.out).resolve()
    pad = pad or (args.pad_type if args.pad_type not in (None, "auto") else s.get("pad", "torch"))
    pretrained = "pretrained" in s
    pad_opts = ["MODEL.MOBILENETV2.PAD_TYPE", PAD_TYPES[pad]] if pretrained else []
    period = s.get("checkpoint_period")
    common = [
        "DATASETS.ROOT",
        args.data_root,
        *s["common"],
        *pad_opts,
        *args.opts,
        *_iters(iters, period),
        "TEST.EVAL_PERIOD",
        0,
        "MODEL.DISTILL.DIAGNOSTICS_PERIOD",
        20,
    ]
    curve = ["TEST.EVAL_PERIOD", eval_period]
    weights = {
        m: (["MODEL.WEIGHTS", f] if (f := pretrained_file(out, m, s)) else [])
        for m in ("student", "teacher")
    }
    teacher_dir = out / "teacher"
    teacher_opts = [
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        teacher_dir / "model_best.pth",
        "MODEL.DISTILL.TEACHER.OPTS",
        # the teacher inside a distillation run is built as in its own run: its scale's
        # overrides and the study's --opts (a model override reaches both)
        repr([str(x) for x in [*s["teacher"], *pad_opts, *args.opts]]),
    ]
    teacher = plan_seeds(
        "teacher",
        CFG / s["teacher_config"],
        [*common, *s["teacher"], *weights["teacher"], *_iters(teacher_iters, period), *curve, *BEST],
        teacher_dir,
        1,
    )[0]
    student_cfg = CFG / s["student_config"]
    start, from_start = None, weights["student"]
    if start_iters:
        start = plan_seeds(
            "student_start",
            student_cfg,
            [*common, *s["student"], *from_start, *_iters(start_iters, period), *curve],
            out / "student_start",
            1,
        )[0]
        from_start = ["MODEL.WEIGHTS", start.out_dir / "model_final.pth"]
    nokd_dir = padding_dir(out, pad) if pretrained else out / "student_nokd"
    students = plan_seeds(
        "student_nokd", student_cfg, [*common, *s["student"], *from_start], nokd_dir, seeds
    )
    students[0].opts.extend(curve)  # the plain student's val curve: has it flattened?
    for m in methods:
        arm, config, extra = ARMS[m]
        runs = plan_seeds(
            arm,
            CFG / config.format(pair=s["pair"]),
            [*common, *s["student"], *teacher_opts, *from_start, *extra],
            out / arm,
            seeds,
        )
        if s.get("curves") == "every arm":  # seed 0 of each arm with the same evaluations
            runs[0].opts.extend(curve)
        students += runs
    sweep_dir = out / "sweep"
    sweep_weight = {}
    for m in SWEEP_METHODS:
        cfg = CFG / f"{m}_res5_{s['pair']}_camvid.yaml"
        base = config_seed(cfg) if args.sweep_seeds > 1 else -1
        for pt in plan_sweep(sweep_dir, [m], sweep_weights, args.sweep_seeds, base_seed=base):
            opts = [*common, *s["student"], *teacher_opts, *from_start, *point_opts(pt, "res5")]
            sweep_weight[pt.path] = pt.weight
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
        start_iters,
        teacher_iters,
        seeds,
        args.sweep_seeds,
        methods,
        teacher,
        start,
        students,
        sweep_dir,
        sweep_weights,
        common,
        teacher_opts,
        sweep_weight,
        pad if pretrained else None,
    )


def teacher_best_dir(plan: StudyPlan) -> Path:
    """Where the eval-only run of the teacher's ``model_best.pth`` (the checkpoint the students
    learn from) writes its val scores."""
    return plan.out / "teacher_best"


def _arm_values(dirs: Sequence[Path]) -> List[float]:
    return [v for v in _seed_values(dirs) if v is not None]


def _seed_values(dirs: Sequence[Path]) -> List[Optional[float]]:
    """Val mIoU of each seed folder in seed order, None where the run has not finished: seed k
    of one arm pairs with seed k of another (same SEED, initialisation and data order)."""
    return [read_run(d).metrics.get("mIoU") for d in dirs]


def zero_shot_dir(plan: "StudyPlan") -> Path:
    """Where the eval-only run of the source model through the class map writes its scores."""
    return plan.out / "zero_shot"


# the test every conclusion of the report rests on, fixed before any arm was looked at
TEST_STATEMENT = (
    "Conclusions rest on the **paired** Δ: seed k of every arm shares SEED 42 + k (same student "
    "initialisation and data order), so Δ is the mean of the per-seed differences ± its standard "
    "error (sample std / √n), significant (*) when |Δ| > 2·SE. The unpaired Δ (difference of "
    "the means ± √(s²/n + s_b²/n_b)) is shown beside it."
)


def contrast_section(plan: StudyPlan) -> str:
    """The report's main table: every arm's val mIoU (mean ± sample std over seeds, the seeds'
    values), Δ against the plain student and Δ against logit KD alone, each ± the SE of the
    difference (``*``: |Δ| > 2·SE). The second Δ is what a feature term adds over KD."""
    arms = ["student_nokd"] + [ARMS[m][0] for m in plan.methods]
    base = _seed_values(plan.arm_dirs("student_nokd"))
    kd = _seed_values(plan.arm_dirs(KD_ALONE)) if KD_ALONE in arms else []
    lines = [
        "## Arms against no KD and against KD alone (val mIoU)", "", TEST_STATEMENT, "",
        "| arm | seeds | mean ± std (seed values) | Δ vs no KD, paired | Δ vs no KD, unpaired "
        "| Δ vs KD alone, paired | Δ vs KD alone, unpaired |",
        "|---|---:|---|---|---|---|---|",
    ]  # fmt: skip
    for arm in arms:
        by_seed = _seed_values(plan.arm_dirs(arm))
        values = [v for v in by_seed if v is not None]
        if not values:
            lines.append(f"| {arm} | 0 | (not finished) | | | | |")
            continue
        m, sd, _ = mean_std(values)
        text = f"{m:.2f} ± {sd:.2f}" if math.isfinite(sd) else f"{m:.2f}"
        text += " (" + " / ".join("–" if v is None else f"{v:.2f}" for v in by_seed) + ")"
        cells = []
        for ref, skip in ((base, ("student_nokd",)), (kd, ("student_nokd", KD_ALONE))):
            if arm in skip or not ref:
                cells += ["", ""]
            else:
                cells += [paired_contrast_text(by_seed, ref), contrast_text(values, [v for v in ref if v is not None])]
        lines.append(f"| {arm} | {len(values)} | {text} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wall_time_section(plan: StudyPlan) -> str:
    """Time each part of the study ran (from the runs' log.txt time stamps; a stop and resume
    is not counted): the zero-shot score, the teacher, every arm (its runs summed, and per run)."""
    parts = [("zero-shot score", [zero_shot_dir(plan)]), ("teacher", [plan.teacher.out_dir, teacher_best_dir(plan)])]
    parts += [("shared start", [plan.start.out_dir])] if plan.start else []
    parts += [(arm, plan.arm_dirs(arm)) for arm in ["student_nokd"] + [ARMS[m][0] for m in plan.methods]]
    lines = ["## Wall time (from the runs' logs)", "", "| part | runs | total (min) | per run (min) |", "|---|---:|---:|---:|"]
    total = 0.0
    for label, dirs in parts:
        secs = [t for t in (log_wall_seconds(d) for d in dirs) if t is not None]
        if not secs:
            continue
        total += sum(secs)
        lines.append(f"| {label} | {len(secs)} | {sum(secs) / 60:.1f} | {sum(secs) / len(secs) / 60:.1f} |")
    lines += ["", f"Total: {total / 3600:.2f} h of runs (two at a time with --jobs 2, so less on the clock)."]
    return "\n".join(lines) + "\n"


def per_class_section(plan: StudyPlan, lead_needed: float, hard: Sequence[str] = HARD_CLASSES) -> str:
    """Per-class val IoU: the source model zero-shot (when the scale has one), the teacher the
    students learn from, and the mean over seeds of every arm; then the teacher's lead over the
    plain student overall and on the ``hard`` classes, against ``lead_needed``."""
    columns = []
    if zero_shot_dir(plan).is_dir():
        columns.append(("zero-shot", [per_class_iou(zero_shot_dir(plan))]))
    columns.append(("teacher", [per_class_iou(teacher_best_dir(plan))]))
    for arm in ["student_nokd"] + [ARMS[m][0] for m in plan.methods]:
        columns.append((arm, [per_class_iou(d) for d in plan.arm_dirs(arm)]))
    columns = [(name, [c for c in runs if c]) for name, runs in columns]
    columns = [(name, runs) for name, runs in columns if runs]
    if not columns:
        return "## Per-class val IoU\n\n(no evaluations yet)\n"
    classes = list(columns[0][1][0])
    mean = lambda runs, c: sum(r.get(c, math.nan) for r in runs) / len(runs)  # noqa: E731
    lines = [
        "## Per-class val IoU (mean over the finished seeds)", "",
        "| class | " + " | ".join(f"{n} ({len(r)})" for n, r in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]  # fmt: skip
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(f"{mean(r, c):.1f}" for _, r in columns) + " |")
    by_name = dict(columns)
    if "teacher" in by_name and "student_nokd" in by_name:
        t, p = by_name["teacher"], by_name["student_nokd"]
        rows = [("mIoU (overall)", read_run(teacher_best_dir(plan)).metrics.get("mIoU"),
                 mean_std(_arm_values(plan.arm_dirs("student_nokd")))[0])]
        rows += [(c, mean(t, c), mean(p, c)) for c in hard if c in classes]
        lines += ["", f"Teacher lead over the plain student (at least {lead_needed:g} points asked):", "",
                  "| class | teacher | plain student | lead | |", "|---|---:|---:|---:|---|"]  # fmt: skip
        for c, tv, pv in rows:
            if tv is None or pv is None:
                continue
            lead = tv - pv
            ok = "ok" if lead >= lead_needed else f"short by {lead_needed - lead:.1f}"
            lines.append(f"| {c} | {tv:.1f} | {pv:.1f} | {lead:+.1f} | {ok} |")
    return "\n".join(lines) + "\n"


def padding_section(plan: StudyPlan) -> str:
    """The padding comparison of a pretrained scale (``padding.json``): the plain student's
    val mIoU with each padding and the one kept."""
    record = plan.out / "padding.json"
    if plan.pad is None:
        return ""
    if not record.is_file():
        return f"## MobileNetV2 padding\n\n{plan.pad} padding (set with --pad-type; not compared)\n"
    data = json.loads(record.read_text())
    lines = ["## MobileNetV2 padding (plain student, val mIoU)", "", "| padding | mean ± std (seeds) |", "|---|---|"]
    for pad, values in data["val_mIoU"].items():
        m, sd, _ = mean_std(values)
        lines.append(f"| {pad} | {m:.2f} ± {sd:.2f} ({' / '.join(f'{v:.2f}' for v in values)}) |")
    (torch_v, same_v) = (data["val_mIoU"]["torch"], data["val_mIoU"]["same"])
    lines += ["", f"same − torch: {contrast_text(same_v, torch_v)}; kept: {data['choice']} (the study's setting)."]
    return "\n".join(lines) + "\n"


def schedule_section(plan: StudyPlan, lead_needed: float = 8) -> str:
    """The report's "Schedule" section: val mIoU curves of the teacher, the start and the first
    no-KD seed, each curve's gain over its last quarter, and the teacher's lead over the plain
    student (mean over seeds)."""
    lines = ["## Schedule (val mIoU curves)", ""]
    curves = [("teacher", plan.teacher.out_dir)]
    curves += [("shared start", plan.start.out_dir)] if plan.start else []
    curves += [("no KD, seed 0 (from the start)" if plan.start else "no KD, seed 0", plan.arm_dirs("student_nokd")[0])]
    curves += [(f"{ARMS[m][0]}, seed 0", plan.arm_dirs(ARMS[m][0])[0]) for m in plan.methods]
    lines += ["| run | curve (iteration: mIoU) | gain over the last quarter |", "|---|---|---:|"]
    gains = {}
    for label, d in curves:
        pts = read_scalars(d, "sem_seg/mIoU").get("sem_seg/mIoU", [])
        if len(pts) < 2:  # an arm whose seed 0 is scored only at its end has no curve
            if label.startswith(("teacher", "no KD")):
                lines.append(f"| {label} | (no evaluations) | |")
            continue
        end = read_run(d).max_iter or pts[-1][0] + 1
        # a periodic evaluation is logged at the iteration before its count, the final one after
        text = ", ".join(f"{min(it + 1, end)}: {v:.1f}" for it, v in pts)
        gains[label] = last_quarter_gain(pts)
        lines.append(f"| {label} | {text} | {gains[label]:+.1f} |")
    plain = next((g for label, g in gains.items() if label.startswith("no KD")), None)
    if plain is not None:
        verdict = "at its plateau" if plain < PLATEAU_GAIN else "NOT at its plateau"
        lines += ["", f"Plain student (seed 0): {plain:+.2f} points over the last quarter of its schedule, {verdict} "
                  f"(a gain under {PLATEAU_GAIN:g} counts as the plateau)."]
    teach = read_run(teacher_best_dir(plan)).metrics.get("mIoU")
    plain = [read_run(d).metrics.get("mIoU") for d in plan.arm_dirs("student_nokd")]
    plain = [v for v in plain if v is not None]
    if teach is not None and plain:
        lead = teach - sum(plain) / len(plain)
        verdict = "at least" if lead >= lead_needed else "LESS than"
        lines += ["", f"Teacher (model_best.pth, its best val evaluation) {teach:.1f} vs plain student {sum(plain) / len(plain):.1f} (mean of "
                  f"{len(plain)}): lead {lead:+.1f} points, {verdict} the {lead_needed:g} the study asks for."]
    return "\n".join(lines) + "\n"


class TimeLimit(Exception):
    """The study's ``--time-limit`` ran out: rerun the same command to go on."""


class Deadline:
    """``--time-limit``: no run starts after it, and the running one is interrupted at it (as
    Ctrl-C: it exits cleanly, and ``--resume`` continues it from its last checkpoint)."""

    GRACE = 60.0  # seconds an interrupted run gets to stop before it is terminated (SIGTERM)

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds if seconds > 0 else None
        self.hit = False

    def left(self) -> Optional[float]:
        return None if self.end is None else self.end - time.monotonic()

    def watch(self, proc) -> None:
        """Interrupt ``proc`` when the time runs out (a daemon timer)."""
        left = self.left()
        if left is None:
            return

        def stop():
            if proc.poll() is None:
                self.hit = True
                proc.send_signal(signal.SIGINT)
                # a child that ignores SIGINT (inherited from a background shell) still stops
                later = threading.Timer(self.GRACE, lambda: proc.poll() is None and proc.terminate())
                later.daemon = True
                later.start()

        timer = threading.Timer(max(0.0, left), stop)
        timer.daemon = True
        timer.start()


def convert_pretrained(args, s: dict, out: Path) -> None:
    """Convert the ``../shared/data/pretrained`` files of a pretrained scale into the study's
    ``pretrained/`` folder through ``tools/convert_weights.py`` (every backbone key checked
    against the model of the config; nothing dropped silently). Converted files are kept."""
    root = Path(args.pretrained_root or Path(args.data_root) / "pretrained")
    configs = {"student": s["student_config"], "teacher": s["teacher_config"], **s.get("convert_configs", {})}
    for model, config in configs.items():
        dst = pretrained_file(out, model, s)
        if dst is None or dst.is_file():
            continue
        src = root / s["pretrained"][model]
        if not src.is_file():
            sys.exit(
                f"the {model}'s pretrained weights {src} are missing: the {args.scale} scale needs "
                f"{sorted(s['pretrained'].values())} in {root} (see ../shared/data/pretrained/"
                "README.md), or --pretrained-root"
            )
        tmp = dst.with_name(dst.stem + ".partial.pth")
        cmd = [
            sys.executable, str(REPO / "tools/convert_weights.py"), "--source",
            s.get("sources", {}).get(model, "torchvision_mobilenetv2"), "--input", str(src), "--output", str(tmp),
            "--config-file", str(CFG / config), "MODEL.WEIGHTS", "",
        ]  # fmt: skip
        log = out / "pretrained" / f"convert_{model}.log"
        if run_training(cmd, log, label=f"convert {src.name}", cwd=REPO):
            print(log_tail(log))
            sys.exit(f"converting {src} failed (log: {log})")
        tmp.replace(dst)
        print(f"pretrained {model} weights: {src} -> {dst}", flush=True)


def choose_padding(args, train) -> str:
    """``--pad-type auto``: the plain student with both paddings, every seed (seed-major), and
    the padding of the better val mean, written to ``<out>/padding.json`` (read back on resume).
    The kept padding's runs are the study's no-KD arm."""
    plans = {pad: plan_runs(args, pad) for pad in PAD_TYPES}
    record = next(iter(plans.values())).out / "padding.json"
    runs = {pad: [r for r in p.students if r.arm == "student_nokd"] for pad, p in plans.items()}
    print(f"[0/3] padding: the plain student with {' and '.join(PAD_TYPES)} padding", flush=True)
    order = sorted(((r.index, pad, r) for pad, rs in runs.items() for r in rs), key=lambda t: t[:2])
    failed = [r.name for _, _, r in order if train(r)[1]]
    if failed:
        sys.exit(f"padding comparison: runs failed: {failed}")
    means = {}
    for pad, rs in runs.items():
        values = [read_run(r.out_dir).metrics.get("mIoU") for r in rs]
        if None in values:
            sys.exit(f"padding comparison: no val mIoU in {[str(r.out_dir) for r in rs]}")
        means[pad] = values
    choice = max(means, key=lambda pad: (sum(means[pad]) / len(means[pad]), pad == "torch"))
    record.write_text(json.dumps({"choice": choice, "val_mIoU": means}, indent=1))
    print(f"padding: {choice} kept (val mIoU {means})", flush=True)
    return choice


def study_scale_of(out: Path) -> Optional[str]:
    """The scale a study folder made before folder claims holds, from its report's title."""
    report = out / "report" / "report.md"
    if not report.is_file():
        return None
    m = re.search(r"CamVid study \(([\w-]+) scale", report.read_text(errors="replace")[:3000])
    return f"--scale {m.group(1)}" if m else None


def main(argv=None):
    args = build_parser().parse_args(argv)
    s = SCALES[args.scale]
    pretrained = "pretrained" in s
    deadline = Deadline(args.time_limit)

    def train(run: PlannedRun, max_iter=None, alone=False):
        """Train ``run`` (resuming it), ``alone``: no other run beside it (all the threads)."""
        max_iter = max_iter or iters
        if read_run(run.out_dir, max_iter=max_iter).status == "finished":
            print(f"{run.name}: finished earlier, skipped", flush=True)
            return run.name, 0
        if deadline.left() is not None and deadline.left() <= 0:
            raise TimeLimit(run.name)
        log = run.out_dir / "study.log"
        # runs side by side (--jobs) share the cores: each gets its part of the threads, so its
        # floating-point order (and result) does not depend on what runs beside it
        threads = None if alone or args.jobs == 1 else max(1, (os.cpu_count() or 1) // args.jobs)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
        # --resume: a run interrupted earlier goes on from its last checkpoint
        rc = run_training(
            run.command(resume=True), log, label=run.label, max_iter=max_iter, cwd=REPO,
            started=deadline.watch, env=env,
        )  # fmt: skip
        if deadline.hit:
            raise TimeLimit(run.name)
        print(f"{run.name}: {'done' if rc == 0 else f'FAILED ({rc})'}", flush=True)
        if rc:
            print(log_tail(log))
        return run.name, rc

    plan = plan_runs(args)
    iters = plan.iters
    if not args.report_only:
        writable_output(plan.out, "--out", folder=True)  # a read-only mount: one line, before any run
        claim_folder(plan.out, "tools/camvid_study.py", f"--scale {args.scale}", infer=study_scale_of)
    try:
        if args.report_only:
            failed = []
            record = plan.out / "padding.json"
            if pretrained and args.pad_type == "auto" and record.is_file():
                plan = plan_runs(args, json.loads(record.read_text())["choice"])
        else:
            if pretrained:
                convert_pretrained(args, s, plan.out)
                if args.pad_type == "auto":
                    plan = plan_runs(args, choose_padding(args, train))
            failed = _train_all(plan, train, args.jobs, s)
    except TimeLimit as e:
        print(
            f"time limit ({args.time_limit:g} s) reached at {e}: stopped; rerun the same command to "
            "go on (finished runs are skipped, the interrupted one resumes from its checkpoint)",
            flush=True,
        )
        sys.exit(3)
    _report(plan, args, s, plan.out, iters, plan.teacher_iters)
    sys.exit(1 if failed else 0)


def _train_all(plan: StudyPlan, train, jobs: int, s: dict) -> List[str]:
    """The zero-shot score of the source model (scales that have one), the teacher, the start,
    then every student run; returns the names of failed runs."""
    if s.get("zero_shot_config"):
        zs = zero_shot_dir(plan)
        if per_class_iou(zs):
            print("      zero-shot score: finished earlier, skipped", flush=True)
        else:
            opts = [*plan.common, "OUTPUT_DIR", zs, "MODEL.WEIGHTS", pretrained_file(plan.out, "teacher", s)]
            cmd = train_command(CFG / s["zero_shot_config"], opts, eval_only=True, replace=True)
            print("[0/3] the source model on val through the class map (no training)", flush=True)
            if run_training(cmd, zs / "study.log", label="zero-shot, val", cwd=REPO):
                print(log_tail(zs / "study.log"))
                sys.exit(1)
    teacher_iters = plan.teacher_iters
    print(f"[1/3] teacher ({teacher_iters} iterations)", flush=True)
    if train(plan.teacher, teacher_iters, alone=True)[1]:
        sys.exit(1)
    best = teacher_best_dir(plan)
    if read_run(best).metrics.get("mIoU") is None:
        # the teacher the students learn from, scored on val on its own (the report's T row)
        opts = [*plan.teacher.opts, "OUTPUT_DIR", best, "MODEL.WEIGHTS", plan.teacher.out_dir / "model_best.pth"]
        cmd = train_command(plan.teacher.config, opts, eval_only=True)
        if run_training(cmd, best / "study.log", label="teacher model_best.pth, val", cwd=REPO):
            print(log_tail(best / "study.log"))
            sys.exit(1)
    if plan.start is not None:
        print(f"      shared student start ({plan.start_iters} iterations)", flush=True)
        if train(plan.start, plan.start_iters, alone=True)[1]:
            sys.exit(1)
    # seed-major main arms first (an interrupted study still has whole seeds to compare), then
    # the sweep points seed-major too, the largest λ first, naive and LAD side by side
    sweep = [r for r in plan.students if r not in plan.main_runs()]
    order = sorted(plan.main_runs(), key=lambda r: r.index) + sorted(
        sweep, key=lambda r: (r.index, -plan.sweep_weight[r.out_dir])
    )
    seeds = f" ({plan.seeds} seeds per arm, {plan.sweep_seeds} per sweep point)"
    print(f"[2/3] {len(order)} student runs{seeds}, {jobs} at a time", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        return [n for n, rc in pool.map(train, order) if rc]


def _report(plan: StudyPlan, args, s: dict, out: Path, iters: int, teacher_iters: int) -> None:
    """The report (tables, schedule curves), the sweep table and plot, the magnitude plot and the
    heatmaps, from the runs that finished (missing ones are listed in the report)."""
    print("[3/3] report and figures", flush=True)
    # the sweep's λ = 10 points are the main naive/LAD runs
    # roles given, not guessed: the teacher and the plain student may share an architecture
    nokd = plan.arm_dirs("student_nokd")
    distilled = [r.out_dir for r in plan.main_runs() if r.out_dir not in nokd]
    start = f"start {plan.start_iters} + " if plan.start else ""
    title = (
        f"CamVid study ({args.scale} scale, students {start}{iters} iterations, teacher "
        f"{teacher_iters}, {plan.seeds} seeds per arm, val split)"
    )
    infos = collect_runs(distilled, teachers=[teacher_best_dir(plan)], baselines=nokd)
    write_report(build_report(infos), out / "report", title=title)
    with open(out / "report" / "report.md", "a") as f:
        f.write("\n" + contrast_section(plan))
        f.write("\n" + schedule_section(plan, s["lead"]))
        f.write("\n" + per_class_section(plan, s["lead"]))
        f.write("\n" + wall_time_section(plan))
        f.write("\n" + padding_section(plan))
    if plan.sweep_weights:  # the naive/LAD sweep (a scale without one has no sweep table or plot)
        collected = collect_sweep(plan.sweep_dir, list(SWEEP_METHODS), plan.sweep_weights, plan.sweep_seeds)
        for method in SWEEP_METHODS:
            main_pts = [(MAIN_WEIGHT, read_run(d)) for d in plan.arm_dirs(f"{method}_res5")]
            collected[method] = sorted(collected.get(method, []) + main_pts, key=lambda x: x[0])
        print(format_sweep(collected))
        base = [read_run(d).metrics.get("mIoU") for d in plan.arm_dirs("student_nokd")]
        base = [v for v in base if v is not None]
        teach = read_run(teacher_best_dir(plan)).metrics.get("mIoU")
        plot_sweep(
            sweep_curves(collected),
            out / "sweep.png",
            baseline=sum(base) / len(base) if base else None,
            teacher=teach,
        )
    # the figures of single runs show seed 0
    first = {ARMS[m][0]: plan.arm_dirs(ARMS[m][0])[0] for m in plan.methods}
    sweep_first = [
        (f"naive λ={w:g}", seed_folder(plan.sweep_dir / run_dir_name("naive", w), 0, plan.sweep_seeds))
        for w in plan.sweep_weights
    ]
    plot_magnitudes(
        sweep_first + [(f"{label} λ=10", first[a]) for label, a in (("naive", "naive_res5"), ("LAD", "lad_res5")) if a in first],
        out / "magnitudes.png",
        taps=[s.get("tap_key", "res5")],
    )
    try:
        from radkd_d2.analysis.heatmaps import heatmaps_from_config
        from radkd_d2.engine.setup import load_config

        for m in (m for m in ("lad", "cad", "pad") if m in plan.methods):
            arm, config, extra = ARMS[m]
            cfg = load_config(
                str(CFG / config.format(pair=s["pair"])),
                [*plan.common, *s["student"], *plan.teacher_opts, *extra, "MODEL.DEVICE", "cpu"],
                validate=False,
            )
            heatmaps_from_config(
                cfg,
                str(first[arm] / "model_final.pth"),
                out / f"heatmaps_{m}.png",
                tap="res5",
                num_images=3,
            )
    except Exception as e:  # figures are a bonus: report the failure, keep the tables
        print(f"heatmaps failed: {e}")
    print((out / "report" / "report.md").read_text())
    print(f"outputs in {out}")


if __name__ == "__main__":
    run_tool(main)
