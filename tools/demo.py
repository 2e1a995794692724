#!/usr/bin/env python
"""The main job: teacher -> student distillation on the embedded synthetic data, with a report.

Four tasks, one shape. The regime is the paper's at small scale: the students do not start from
nothing but from one shared, briefly trained checkpoint (the paper's start from ImageNet
weights), and only the distilled arms continue under the teacher. In order:

1. the teacher, or teachers (``--teacher-iters``);
2. the starting point: the student without KD (``--start-iters``);
3. ``--seeds`` times (default 3), from that checkpoint, ``--iters`` more iterations of every
   student arm: the student without KD and the distilled arms.

``--task seg`` (the default, ``make demo``): PSPNet-R18 x1/2 teacher (800 iterations) ->
PSPNet-R18 x1/4 student (150 shared + 300); arms: no KD, LAD on res5 (lambda_ad 10) + logit KD
(lambda_kd 10 at the reference scale, 10/6 per pixel), and logit KD alone (the control: LAD + KD
against KD alone is what the angular term adds). Scored by mIoU (SemSegEvaluator).

``--task det`` (``make demo-det``): RetinaNet X50-tiny teacher -> RetinaNet MobileNetV2 x0.5
student (a third of its parameters, a fifth of its backbone FLOPs) on the synthetic detection
scenes; arms: no KD, LAD on every FPN level p3-p7 (lambda_ad 10 per
level, the paper's default) and MGD on p3-p7 with its published RetinaNet coefficients (the
Table 7 baseline). Scored by box AP, AP50, AP75, AP_S, AP_M, AP_L (COCOEvaluator), with the
gradient balance of every term at every FPN level.

``--task rcnn`` (``make demo-rcnn``): Mask R-CNN X50-tiny teacher -> Mask R-CNN MobileNetV2 x0.5
student on the synthetic scenes with masks; arms: no KD and LAD on P2-P6. Scored by box and mask
AP (docs/detection.md, "Faster and Mask R-CNN students").

``--task multi`` (``make demo-multi``): two PSPNet-R18 x1/2 teachers, A trained with ring and
cross marked ignored in its labels, B with disk, square and triangle ignored (each strong on its
half, blind on the other; ``DATASETS.SYNTHETIC.PARTIAL_IGNORE``), on 64 px scenes; the PSPNet-R18
x1/4 student (150 shared + 300) without KD, under A alone, under B alone and under both
(``MODEL.DISTILL.TEACHERS``, the KD target the mean of their probabilities). ``--split val
--regime all`` runs every regime of ``MULTI_REGIMES`` and applies the rule fixed in advance;
the test split runs the chosen one (``MULTI_CHOICE``) and answers one question, paired over
seeds: both teachers vs the better single teacher. One run at a time on one thread by default.

Every run is scored on the held-out test split (256 scenes from their own random stream); each
regime was chosen on the validation split (docs/results/2026-12-05-demo-seg.md and
2026-12-05-demo-det.md). The report (``radkd_d2.evaluation.report``) gives per arm the mean ± sample
std over seeds and Δ vs no KD ± its standard error, marked significant only when Δ > 2·SE; it is
written with times to ``<output>/report.md`` (CSV tables in ``<output>/report/``) and printed.

    python tools/demo.py [--task seg|det|rcnn|multi] [--output DIR] [--iters N] [--seeds N]

Seeds: seed k of a student arm trains with SEED = 42 + k into ``<output>/<arm>/seed<k>/``; the
teacher and the starting point train once, with SEED 42. By default (``--lanes 2``) the teacher
trains beside the starting point and the no-KD seeds, one thread each, the distilled seeds start
once the teacher is done and the last run gets every thread; ``--lanes 1`` runs one after another
with every thread (:func:`radkd_d2.analysis.launch.run_jobs`). One progress bar counts all
iterations, with an ETA; the table gives each run's time and threads.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Tuple

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
from radkd_d2.analysis.launch import (  # noqa: E402
    Job,
    PlannedRun,
    claim_folder,
    log_tail,
    plan_seeds,
    run_jobs,
    seeds_arg,
)
from radkd_d2.engine.inputs import run_tool, writable_output  # noqa: E402
from radkd_d2.evaluation.runs import read_run  # noqa: E402
from radkd_d2.evaluation.summary import contrast_text  # noqa: E402
from radkd_d2.evaluation.report import (  # noqa: E402
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)

# the detection demo's iterations (teacher, shared start, each arm), chosen on val (README)
DET_ITERATIONS = (1500, 1000, 300)
# the R-CNN student learns fast: from a 1000-iteration start it sat near its own plateau, where
# LAD only hurt (val and test stream 3); a 200-iteration start, chosen on val, leaves it room
RCNN_ITERATIONS = (1500, 200, 300)


@dataclass(frozen=True)
class Arm:
    """One student arm of a demo: ``name`` (its runs' arm, the report's row), trained from
    ``config`` into ``<output>/<folder>/`` with ``opts`` on top of the shared overrides, after
    the ``teachers`` (their run names) it distils from."""

    label: str
    config: str
    name: str
    folder: str
    opts: Tuple[str, ...] = ()
    teachers: Tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoTask:
    """What one task of the demo trains and reports.

    Runs are ``(label, config, sub-folder)``; ``contrasts`` are ``(text, arm, against arm)``
    lines of Δ ± SE over seeds; ``columns`` the per-run table's ``(header, metric)`` pairs."""

    name: str
    teachers: Tuple[Tuple[str, str, str], ...]
    start: Tuple[str, str, str]
    students: Tuple[Tuple[str, str, str], ...]
    distilled: FrozenSet[str]
    splits: Dict[str, str]
    iterations: Tuple[int, int, int]  # teacher, shared start, each student arm
    metric: str
    columns: Tuple[Tuple[str, str], ...]
    contrasts: Tuple[Tuple[str, str, str], ...]
    output: str
    scenes: str
    # SOLVER.STEPS as fractions of each run's MAX_ITER (None: the config's schedule as it is)
    steps: Optional[Tuple[float, ...]] = None
    # metrics of the contrast lines (default: ``metric`` alone)
    contrast_metrics: Tuple[str, ...] = ()
    # --lanes and --threads when not given (threads None: the machine's cores)
    lanes: int = 2
    threads: Optional[int] = None

    @property
    def arms(self) -> List[str]:
        return [sub for _, _, sub in self.students]

    def student_arms(self, args: argparse.Namespace, out: Path) -> List[Arm]:
        """The student arms of a run of the demo: every student, the distilled ones reading the
        teacher's checkpoint in ``out`` (the LAD arm changed by --lad-weight, --lad-levels)."""
        _, _, teacher_run = self.teachers[0]
        teacher = ["MODEL.DISTILL.TEACHER.WEIGHTS", str(out / teacher_run / "model_final.pth")]
        if args.opts:  # the teacher was trained under the same overrides
            teacher += ["MODEL.DISTILL.TEACHER.OPTS", repr([str(x) for x in args.opts])]
        arms = []
        for label, config, sub in self.students:
            if sub not in self.distilled:
                arms.append(Arm(label, config, sub, sub))
                continue
            opts, folder = list(teacher), sub
            if sub == "student_lad" and (args.lad_weight is not None or args.lad_levels):
                taps = lad_taps(REPO / config, args.lad_weight, args.lad_levels)
                opts += ["MODEL.DISTILL.TAPS", repr(taps)]
                suffix = []
                if args.lad_weight is not None:
                    suffix.append(f"w{args.lad_weight:g}")
                    label += f", λ {args.lad_weight:g}"
                if args.lad_levels:
                    suffix.append("-".join(args.lad_levels))
                    label += f", on {','.join(args.lad_levels)}"
                folder = "_".join([sub, *suffix])
            arms.append(Arm(label, config, sub, folder, tuple(opts), (teacher_run,)))
        return arms

    def report_lines(self, plan: List[PlannedRun], scores: Dict[Path, dict], args) -> List[str]:
        """The task's own sections after the per-run table: what each term adds."""
        return contrast_lines(plan, scores, self, args.split)


@dataclass(frozen=True)
class MultiRegime:
    """A distillation regime of the multi-teacher demo: each teacher's feature taps (the same
    for every teacher, in the single-teacher arms too), λ_kd and each teacher's KD_MIX."""

    text: str
    taps: Tuple[Tuple[str, str, str, float], ...] = ()
    kd_weight: float = 10.0
    kd_mix: Tuple[float, float] = (0.5, 0.5)


# The regimes the multi-teacher demo chooses from on the validation split, fixed before any
# run: logit KD alone (the seg demo's finding: all of its gain was logit KD's) and LAD on res5
# added per teacher. KD_MIX 0.5 each: neither teacher is preferred.
MULTI_REGIMES = {
    "kd": MultiRegime("logit KD alone (λ_kd 10)"),
    "lad_kd": MultiRegime("LAD on res5 (λ 10 per teacher) + logit KD (λ_kd 10)", (("res5", "res5", "lad", 10.0),)),
}
# The rule, fixed before the validation runs: the regime whose both-teachers arm has the best
# mean val mIoU; under it, the better single teacher is the single-teacher arm with the better
# mean val mIoU. The test split then answers one question: both teachers vs that one. Chosen on
# val (--split val --regime all, 3 seeds, docs/results/2026-12-08-multi-teacher-demo.md): both-teachers arm
# 34.28 (kd) against 21.19 (lad_kd); under kd, teacher A alone 40.21 against B alone 25.97.
MULTI_CHOICE = {"regime": "kd", "better_single": "student_a"}


@dataclass(frozen=True)
class MultiTeacherTask(DemoTask):
    """The multi-teacher demo: two teachers, each trained on half the classes (the other half
    marked ignored), and the student under each alone and under both (``--regime``)."""

    def student_arms(self, args: argparse.Namespace, out: Path) -> List[Arm]:
        """No KD, then per regime: under teacher A, under teacher B, under both (arms named
        ``student_a``, ``student_b``, ``student_ab``; ``..._<regime>`` with ``--regime all``)."""
        from fvcore.common.config import CfgNode

        names = list(MULTI_REGIMES) if args.regime == "all" else [args.regime]
        runs = {sub: out / sub / "model_final.pth" for _, _, sub in self.teachers}
        teacher_opts = [str(x) for x in args.opts]  # the teachers trained under the same overrides
        (nokd_label, nokd_config, nokd), *distilled = self.students
        arms = [Arm(nokd_label, nokd_config, nokd, nokd)]
        for regime in names:
            r = MULTI_REGIMES[regime]
            suffix = f"_{regime}" if len(names) > 1 else ""
            for label, config, sub in distilled:
                label = f"{label}, {r.text}"
                opts = ["MODEL.DISTILL.KD_WEIGHT", repr(r.kd_weight)]
                if sub == "student_ab":
                    entries = CfgNode.load_yaml_with_base(str(REPO / config), allow_unsafe=False)["MODEL"]["DISTILL"]["TEACHERS"]
                    teachers = [
                        dict(e, WEIGHTS=str(runs[f"teacher_{e['NAME']}"]), TAPS=[list(t) for t in r.taps], KD_MIX=mix,
                             **({"OPTS": teacher_opts} if teacher_opts else {}))
                        for e, mix in zip(entries, r.kd_mix)
                    ]
                    opts += ["MODEL.DISTILL.TEACHERS", repr(teachers)]
                    needs = tuple(runs)
                else:
                    teacher = f"teacher_{sub.rsplit('_', 1)[1]}"
                    opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", str(runs[teacher]), "MODEL.DISTILL.TAPS", repr([list(t) for t in r.taps])]
                    opts += ["MODEL.DISTILL.TEACHER.OPTS", repr(teacher_opts)] if teacher_opts else []
                    needs = (teacher,)
                arms.append(Arm(label, config, sub + suffix, sub + suffix, tuple(opts), needs))
        return arms

    def report_lines(self, plan: List[PlannedRun], scores: Dict[Path, dict], args) -> List[str]:
        """Δ ± SE seed by seed (both teachers vs the better single one first), per-class IoU
        against each teacher's half, the gradient balance of every teacher's terms."""
        from radkd_d2.analysis.multi_teacher import multi_teacher_sections

        halves = {sub: config for _, config, sub in self.teachers}
        return multi_teacher_sections(
            plan, scores, {sub: REPO / c for sub, c in halves.items()}, args.split, args.regime,
            MULTI_REGIMES, MULTI_CHOICE,
        )


BASELINE = "student_nokd"
SEG = "configs/synthetic/demo"
DET = "configs/synthetic/demo_det"
RCNN = "configs/synthetic/demo_rcnn"
MULTI = "configs/synthetic/demo_multi"
TASKS = {
    "seg": DemoTask(
        name="seg",
        teachers=(("teacher PSPNet-R18 x1/2", f"{SEG}/teacher_pspnet_r18x2_synthetic.yaml", "teacher"),),
        start=(
            "student PSPNet-R18 x1/4, shared start (no KD)",
            f"{SEG}/student_pspnet_r18x4_synthetic.yaml",
            "student_start",
        ),
        students=(
            ("student continued without KD", f"{SEG}/student_pspnet_r18x4_synthetic.yaml", BASELINE),
            (
                "student continued with LAD (res5) + KD",
                f"{SEG}/lad_res5_pspr18x2_pspr18x4_synthetic.yaml",
                "student_lad",
            ),
            (
                "student continued with logit KD alone",
                f"{SEG}/kd_logits_pspr18x2_pspr18x4_synthetic.yaml",
                "student_kd",
            ),
        ),
        distilled=frozenset({"student_lad", "student_kd"}),
        splits={"test": "synthetic_sem_seg_test", "val": "synthetic_sem_seg_val"},
        iterations=(800, 150, 300),
        metric="mIoU",
        columns=(("mIoU (%)", "mIoU"), ("pixel acc (%)", "pACC")),
        contrasts=(
            ("logit KD alone vs no KD", "student_kd", BASELINE),
            ("LAD + KD vs logit KD alone (the angular term)", "student_lad", "student_kd"),
            ("LAD + KD vs no KD", "student_lad", BASELINE),
        ),
        output="output/demo",
        scenes="synthetic scenes",
    ),
    "det": DemoTask(
        name="det",
        teachers=(("teacher RetinaNet X50-tiny", f"{DET}/teacher_retinanet_x50_synthetic.yaml", "teacher"),),
        start=(
            "student RetinaNet MV2 x0.5, shared start (no KD)",
            f"{DET}/student_retinanet_mv2_synthetic.yaml",
            "student_start",
        ),
        students=(
            ("student continued without KD", f"{DET}/student_retinanet_mv2_synthetic.yaml", BASELINE),
            (
                "student continued with LAD (p3-p7)",
                f"{DET}/lad_fpn_retx50_retmv2_synthetic.yaml",
                "student_lad",
            ),
            (
                "student continued with MGD (p3-p7)",
                f"{DET}/mgd_fpn_retx50_retmv2_synthetic.yaml",
                "student_mgd",
            ),
        ),
        distilled=frozenset({"student_lad", "student_mgd"}),
        splits={"test": "synthetic_det_test", "val": "synthetic_det_val"},
        iterations=DET_ITERATIONS,
        metric="AP",
        columns=(("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75")),
        contrasts=(
            ("LAD vs no KD", "student_lad", BASELINE),
            ("MGD vs no KD", "student_mgd", BASELINE),
            ("LAD vs MGD", "student_lad", "student_mgd"),
        ),
        output="output/demo_det",
        scenes="synthetic detection scenes",
        steps=(0.8, 0.93),
    ),
    "rcnn": DemoTask(
        name="rcnn",
        teachers=(("teacher Mask R-CNN X50-tiny", f"{RCNN}/teacher_mask_rcnn_x50_synthetic.yaml", "teacher"),),
        start=(
            "student Mask R-CNN MV2 x0.5, shared start (no KD)",
            f"{RCNN}/student_mask_rcnn_mv2_synthetic.yaml",
            "student_start",
        ),
        students=(
            ("student continued without KD", f"{RCNN}/student_mask_rcnn_mv2_synthetic.yaml", BASELINE),
            (
                "student continued with LAD (p2-p6)",
                f"{RCNN}/lad_fpn_mrcnnx50_mrcnnmv2_synthetic.yaml",
                "student_lad",
            ),
        ),
        distilled=frozenset({"student_lad"}),
        splits={"test": "synthetic_det_test", "val": "synthetic_det_val"},
        iterations=RCNN_ITERATIONS,
        metric="AP",
        columns=(("box AP", "AP"), ("box AP50", "AP50"), ("mask AP", "mask_AP"), ("mask AP50", "mask_AP50")),
        contrasts=(("LAD vs no KD", "student_lad", BASELINE),),
        output="output/demo_rcnn",
        scenes="synthetic detection scenes with instance masks",
        steps=(0.8, 0.93),
        contrast_metrics=("AP", "mask_AP"),
    ),
    "multi": MultiTeacherTask(
        name="multi",
        teachers=(
            ("teacher A PSPNet-R18 x1/2, trained without ring and cross", f"{MULTI}/teacher_a_pspnet_r18x2_synthetic.yaml", "teacher_a"),
            ("teacher B PSPNet-R18 x1/2, trained without disk, square and triangle", f"{MULTI}/teacher_b_pspnet_r18x2_synthetic.yaml", "teacher_b"),
        ),
        start=(
            "student PSPNet-R18 x1/4, shared start (no KD)",
            f"{MULTI}/student_pspnet_r18x4_synthetic.yaml",
            "student_start",
        ),
        students=(
            ("student continued without KD", f"{MULTI}/student_pspnet_r18x4_synthetic.yaml", BASELINE),
            ("student under teacher A", f"{MULTI}/kd_logits_pspr18x2a_pspr18x4_synthetic.yaml", "student_a"),
            ("student under teacher B", f"{MULTI}/kd_logits_pspr18x2b_pspr18x4_synthetic.yaml", "student_b"),
            ("student under both teachers", f"{MULTI}/kd_logits_pspr18x2ab_pspr18x4_synthetic.yaml", "student_ab"),
        ),
        distilled=frozenset({"student_a", "student_b", "student_ab"}),
        splits={"test": "synthetic_sem_seg_test", "val": "synthetic_sem_seg_val"},
        iterations=(800, 150, 300),
        metric="mIoU",
        columns=(("mIoU (%)", "mIoU"), ("pixel acc (%)", "pACC")),
        contrasts=(),
        output="output/demo_multi",
        scenes="64 px synthetic scenes, two teachers each trained on half the object classes",
        # one run at a time on one thread: the regime the multi-teacher figures were measured in
        lanes=1,
        threads=1,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="seg",
        help="seg: PSPNet segmentation (the default, make demo); det: RetinaNet detection "
        "(make demo-det); rcnn: Mask R-CNN, box and mask AP; multi: two teachers, each trained "
        "on half the classes (make demo-multi)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="output folder (default output/demo, output/demo_det, output/demo_rcnn, output/demo_multi)",
    )
    parser.add_argument(
        "--teacher-iters",
        type=int,
        default=None,
        help=f"teacher iterations (seg {TASKS['seg'].iterations[0]}, det {TASKS['det'].iterations[0]})",
    )
    parser.add_argument(
        "--start-iters",
        type=int,
        default=None,
        help="iterations of the shared starting point "
        f"(seg {TASKS['seg'].iterations[1]}, det {TASKS['det'].iterations[1]})",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="iterations of each student arm from the start "
        f"(seg {TASKS['seg'].iterations[2]}, det {TASKS['det'].iterations[2]})",
    )
    parser.add_argument(
        "--seeds",
        type=seeds_arg,
        default=3,
        help="runs (seeds) per student arm, SEED 42, 43, ...; the teacher trains once (default 3)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="split every run is scored on: test (held out, the default) or val (for choosing a "
        "regime; the test split must not be looked at while choosing)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="runs trained at the same time, each once the runs it needs have finished, the CPU "
        "threads shared between them (default 2, multi 1: the regimes the README's tables were "
        "measured in; the thread count changes floating-point order, so another value trains "
        "another starting point, see README)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads shared by the running runs (default: the machine's cores; multi 1)",
    )
    parser.add_argument(
        "--regime",
        choices=[*MULTI_REGIMES, "all"],
        default=None,
        help="--task multi: the distillation regime of the teacher arms (default "
        f"{MULTI_CHOICE['regime']}, chosen on val); all: every regime, for choosing on --split val",
    )
    parser.add_argument(
        "--lad-weight",
        type=float,
        default=None,
        help="λ of every tap of the LAD arm instead of its config's (10, the paper's); the arm "
        "then trains into <output>/student_lad_w<λ>/ (for choosing λ on --split val)",
    )
    parser.add_argument(
        "--lad-levels",
        default=None,
        help="comma-separated positions the LAD arm keeps of its config's (e.g. p2,p3); the arm "
        "then trains into <output>/student_lad_<positions>/ (with --lad-weight: "
        "student_lad_w<λ>_<positions>/), for choosing the levels on --split val",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse runs that finished earlier in --output with the same config and iterations "
        "(after an interruption) instead of training them again; a run whose teacher or start "
        "is trained again is trained again too",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="KEY VALUE config overrides for every run, the teacher's too (e.g. MODEL.DEVICE "
        "cuda); not part of the documented regime",
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """The command line with the task's defaults filled in (iterations, output folder)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    args.lanes = task.lanes if args.lanes is None else args.lanes
    args.threads = task.threads if args.threads is None else args.threads
    if args.lanes < 1 or (args.threads is not None and args.threads < 1):
        parser.error(
            f"--lanes and --threads must be at least 1, got {args.lanes} and {args.threads}"
        )
    if len(args.opts) % 2:
        parser.error(f"the KEY VALUE overrides have an odd number of items: {args.opts}")
    if args.regime is not None and task.name != "multi":
        parser.error("--regime is for --task multi")
    if task.name == "multi":
        args.regime = args.regime or MULTI_CHOICE["regime"]
        if args.regime == "all" and args.split != "val":
            parser.error("--regime all is for choosing the regime: use it with --split val only")
    for key, default in zip(("teacher_iters", "start_iters", "iters"), task.iterations):
        if getattr(args, key) is None:
            setattr(args, key, default)
        elif getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.lad_weight is not None and not args.lad_weight > 0:
        parser.error(f"--lad-weight must be positive, got {args.lad_weight}")
    if args.lad_levels is not None:
        args.lad_levels = [lv.strip() for lv in args.lad_levels.split(",") if lv.strip()]
        _, config, _ = next(x for x in task.students if x[2] == "student_lad")
        known = [t[0] for t in lad_taps(REPO / config)]
        unknown = [lv for lv in args.lad_levels if lv not in known]
        if not args.lad_levels or unknown:
            parser.error(
                f"--lad-levels must name positions of the LAD arm's taps {known}, got "
                f"{args.lad_levels}"
            )
    args.output = args.output or task.output
    return args


def plan_runs(args: argparse.Namespace) -> List[Tuple[PlannedRun, int]]:
    """The demo's runs in training order with their iterations: the teacher, the shared
    starting point, then seed by seed every student arm (continued from the starting point).

    Args:
        args: :func:`parse_args` arguments.
    """
    task = TASKS[args.task]
    out = (REPO / args.output).resolve()

    split = ["DATASETS.TEST", f"('{task.splits[args.split]}',)"]

    def iters(n: int) -> list:
        steps = []
        if task.steps:  # the LR drops at the same fractions of every run, whatever its length
            at = sorted({int(f * n) for f in task.steps} & set(range(1, n)))  # increasing, < n
            steps = ["SOLVER.STEPS", repr(tuple(at))]
        return [
            *args.opts,
            "SOLVER.MAX_ITER",
            str(n),
            "SOLVER.CHECKPOINT_PERIOD",
            str(n),
            *steps,
            *split,
        ]

    plan = []
    for label, config, sub in task.teachers:
        plan += [
            (r, args.teacher_iters)
            for r in plan_seeds(sub, REPO / config, iters(args.teacher_iters), out / sub, 1, label=label)
        ]
    label, config, sub = task.start
    plan += [
        (r, args.start_iters)
        for r in plan_seeds(sub, REPO / config, iters(args.start_iters), out / sub, 1, label=label)
    ]
    start = ["MODEL.WEIGHTS", str(out / "student_start" / "model_final.pth")]
    per_arm = [
        plan_seeds(arm.name, REPO / arm.config, [*iters(args.iters), *start, *arm.opts], out / arm.folder,
                   args.seeds, label=arm.label)
        for arm in task.student_arms(args, out)
    ]
    # seed-major: an interrupted demo still has whole sets of arms to compare
    for k in range(args.seeds):
        plan += [(runs[k], args.iters) for runs in per_arm]
    return plan


def lad_taps(config: Path, weight: Optional[float] = None, levels=None) -> list:
    """The config's ``MODEL.DISTILL.TAPS`` with every LAD entry's λ set to ``weight`` (None: as
    it is) and only the LAD entries at the student positions ``levels`` kept (None: all)."""
    from fvcore.common.config import CfgNode

    taps = CfgNode.load_yaml_with_base(str(config), allow_unsafe=False)["MODEL"]["DISTILL"]["TAPS"]
    return [
        [s, t, loss, weight if loss == "lad" and weight is not None else w]
        for s, t, loss, w in taps
        if loss != "lad" or levels is None or s in levels
    ]


def schedule(plan: List[Tuple[PlannedRun, int]], arms: List[Arm]) -> List[Job]:
    """The plan as jobs: the teachers and the starting point need nothing; the no-KD arm needs
    the start; a distilled arm also waits for its teachers. Teachers and start train side by
    side (with several lanes)."""
    needs_of = {a.name: ("student_start", *a.teachers) for a in arms}
    return [Job(run, n_iter, needs_of.get(run.arm, ())) for run, n_iter in plan]


def contrast_lines(
    plan: List[PlannedRun], scores: Dict[Path, dict], task: DemoTask, split: str
) -> List[str]:
    """The demo's questions, one line each: an arm against another (no KD, or the control),
    Δ ± SE over seeds of the task's metric (of each of ``contrast_metrics``, named, when set).

    Args:
        scores: each run's metrics, by its folder."""
    metrics = task.contrast_metrics or (task.metric,)
    values = {
        (arm, m): [v for r in plan if r.arm == arm if (v := scores[r.out_dir].get(m)) is not None]
        for arm in task.arms
        for m in metrics
    }

    def line(text: str, arm: str, base: str) -> str:
        if len(metrics) == 1:
            return f"- {text}: {contrast_text(values[arm, metrics[0]], values[base, metrics[0]]) or 'n/a'}"
        parts = [
            f"{m.replace('mask_', 'mask ')} {contrast_text(values[arm, m], values[base, m]) or 'n/a'}"
            for m in metrics
        ]
        return f"- {text}: " + "; ".join(parts)

    title = task.metric if len(metrics) == 1 else ", ".join(m.replace("mask_", "mask ") for m in metrics)
    return [
        f"## What each term adds ({split} {title}, Δ ± SE over seeds; * where |Δ| > 2·SE)",
        "",
        *(line(text, arm, base) for text, arm, base in task.contrasts),
    ]


def demo_task_of(out: Path) -> Optional[str]:
    """The task a demo folder made before folder claims holds, from its report's title."""
    report = out / "report.md"
    if not report.is_file():
        return None
    m = re.search(r"radkd-d2 demo \((\w+)\)", report.read_text(errors="replace")[:2000])
    return m.group(1) if m else None


def main(argv=None):
    args = parse_args(argv)
    task = TASKS[args.task]
    out = (REPO / args.output).resolve()
    writable_output(out, "--output", folder=True)  # a read-only mount: one line, before any run
    claim_folder(out, "tools/demo.py", f"--task {task.name}", infer=lambda o: (f"--task {t}" if (t := demo_task_of(o)) else None))
    plan = plan_runs(args)
    t0 = time.time()
    seconds = {}
    threads = {}
    with tqdm(
        total=sum(n for _, n in plan), unit="it", desc=f"demo {task.name}", dynamic_ncols=True
    ) as bar:
        jobs = []
        for job in schedule(plan, task.student_arms(args, out)):  # a run's needs come before it
            if (
                args.resume
                and read_run(job.run.out_dir, max_iter=job.max_iter).status == "finished"
            ):
                changed = job.run.config_changes()
                # a run read from a checkpoint that is trained again is stale too
                retrained = [n for n in job.needs if n not in seconds]
                if not changed and not retrained:
                    bar.write(f"{job.run.label}: finished earlier, reused")
                    bar.update(job.max_iter)
                    seconds[job.run.name], threads[job.run.name] = 0.0, 0
                    continue
                if changed:
                    keys = ", ".join(k for k, _, _ in changed[:6]) + (", ..." if len(changed) > 6 else "")
                    why = f"with another config ({keys})"
                else:
                    why = f"but its {' and '.join(retrained)} is trained again"
                bar.write(f"{job.run.label}: finished earlier {why}: trained again")
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
    teachers = [r.out_dir for r in plan if r.arm in {sub for _, _, sub in task.teachers}]
    distilled = {a.name for a in task.student_arms(args, out) if a.teachers}
    infos = collect_runs(
        [r.out_dir for arm in sorted(distilled) for r in plan if r.arm == arm],
        teachers=teachers,
        baselines=[r.out_dir for r in plan if r.arm == BASELINE],
    )
    report = build_report(infos)
    title = (
        f"radkd-d2 demo ({task.name}): {task.scenes} ({args.split} split), "
        f"{'teachers' if len(task.teachers) > 1 else 'teacher'} "
        f"{args.teacher_iters} iterations, students {args.start_iters} shared + {args.iters} per "
        f"arm, {args.seeds} seed{'s' if args.seeds > 1 else ''} per arm, CPU"
    )
    write_report(report, out / "report", title)  # report.md + CSV tables
    scores = {r.out_dir: read_run(r.out_dir).metrics for r in plan}  # every run, the start too
    headers = " | ".join(h for h, _ in task.columns)
    lines = [
        report_markdown(report, title),
        f"## Every run ({args.split} split)",
        "",
        f"| run | {headers} | train+eval time (s) | CPU threads |",
        "|---|" + "---:|" * (len(task.columns) + 2),
    ]
    lines += [
        f"| {r.label} ({r.name}) | "
        + " | ".join(f"{scores[r.out_dir].get(m, float('nan')):.2f}" for _, m in task.columns)
        + f" | {seconds[r.name]:.0f} | {threads[r.name] or 'reused'} |"
        for r in plan
    ]
    lines += ["", *task.report_lines(plan, scores, args)]
    lines += ["", f"Total wall time: {time.time() - t0:.0f} s. Runs: {out}"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print("\n" + text)
    print(f"report written to {out / 'report.md'} (CSV tables in {out / 'report'})")


if __name__ == "__main__":
    run_tool(main)
