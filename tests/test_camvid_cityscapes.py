"""The road-scene CamVid study (tools/camvid_study.py --scale cityscapes): its plan (the
Cityscapes teacher, five paired seeds, a curve for every arm, no sweep, --opts reaching the
teacher inside the students' runs), the paired and unpaired contrasts, the per-class table with
the teacher's lead, and the statistics they rest on; the teacher sanity evaluation at the run's
test size; student initialisation shared by the plain and distilled arms of a seed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from detectron2.modeling import build_model

from radkd_d2.evaluation.runs import EVAL_RESULTS_FILE, per_class_iou
from radkd_d2.evaluation.summary import (
    contrast,
    contrast_text,
    paired_contrast,
    paired_contrast_text,
    significant,
)

from conftest import REPO, load_cfg
from test_report_seeds import _opts, _tool, fake_run, seg_config

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]


def _plan(study, tmp_path, *extra):
    args = study.build_parser().parse_args(
        ["--data-root", "DATA", "--out", str(tmp_path), "--scale", "cityscapes", *extra]
    )
    return study.plan_runs(args)


def test_plan_pairs_five_seeds_across_arms_under_the_cityscapes_teacher(tmp_path):
    from radkd_d2.engine.setup import load_config

    study = _tool("camvid_study")
    plan = _plan(study, tmp_path, "--opts", "MODEL.SEM_SEG_HEAD.DROPOUT", "0.2")
    assert (plan.iters, plan.teacher_iters, plan.seeds, plan.sweep_weights) == (1000, 2000, 5, [])
    assert plan.methods == ["kd", "lad", "lad_nokd", "cad"]
    assert not [r for r in plan.students if r not in plan.main_runs()]  # no sweep
    arms = sorted({r.arm for r in plan.main_runs()})
    assert arms == ["cad_res5", "kd_logits", "lad_res5", "lad_res5_nokd", "student_nokd"]
    # seed k of every arm: SEED 42 + k, so init and data order pair up
    for arm in arms:
        runs = sorted((r for r in plan.main_runs() if r.arm == arm), key=lambda r: r.index)
        assert [int(_opts(r.opts)["SEED"]) for r in runs] == [42, 43, 44, 45, 46], arm
        # seed 0 of every arm is scored along the way (the students' curves), the others at the end
        periods = [int(_opts(r.opts)["TEST.EVAL_PERIOD"]) for r in runs]
        assert periods == [125, 0, 0, 0, 0], arm
    cs = tmp_path / "pretrained" / "deeplab_mobilenet_edgetpu075_cityscapes.pth"
    assert _opts(plan.teacher.opts)["MODEL.WEIGHTS"] == str(cs)
    teacher_cfg = load_config(str(plan.teacher.config), [str(x) for x in plan.teacher.opts], validate=False)
    assert teacher_cfg.MODEL.BACKBONE.NAME == "build_mobilenet_edgetpu_backbone"
    assert teacher_cfg.MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE == "init" and teacher_cfg.SOLVER.MAX_ITER == 2000
    assert teacher_cfg.MODEL.SEM_SEG_HEAD.DROPOUT == 0.2
    lad = next(r for r in plan.main_runs() if r.arm == "lad_res5")
    cfg = load_config(str(lad.config), [str(x) for x in lad.opts], validate=False)
    assert [list(t) for t in cfg.MODEL.DISTILL.TAPS] == [["res5", "head", "lad", 10.0]]
    assert cfg.MODEL.DISTILL.KD_WEIGHT == 10.0 and cfg.MODEL.DISTILL.KD_REDUCTION == "element"
    assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS == str(tmp_path / "teacher" / "model_best.pth")
    # the study's --opts reach the teacher as the students' runs build it, not only its own run
    assert list(cfg.MODEL.DISTILL.TEACHER.OPTS)[-2:] == ["MODEL.SEM_SEG_HEAD.DROPOUT", "0.2"]
    assert cfg.MODEL.SEM_SEG_HEAD.DROPOUT == 0.2


def _scores(path, miou, per_class):
    fake_run(path, seg_config(), seed=42, seg={"mIoU": miou, **{f"IoU-{c}": v for c, v in per_class.items()}}, iters=1000)


def test_report_pairs_seeds_and_tables_classes_with_the_teacher_lead(tmp_path):
    study = _tool("camvid_study")
    plan = _plan(study, tmp_path, "--seeds", "3", "--methods", "kd", "lad")
    base = [30.0, 34.0, 32.0]
    for d, v in zip(plan.arm_dirs("student_nokd"), base):
        _scores(d, v, {c: v for c in CLASSES})
    # KD: +1 in every seed (a seed effect far larger than the gain: only pairing sees it)
    for d, v in zip(plan.arm_dirs("kd_logits"), base):
        _scores(d, v + 1, {c: v + 1 for c in CLASSES})
    # LAD: seed 2 not finished yet
    for d, v in zip(plan.arm_dirs("lad_res5")[:2], [29.0, 33.5]):
        _scores(d, v, {c: v for c in CLASSES})
    text = study.contrast_section(plan)
    assert "Conclusions rest on the **paired** Δ" in text
    assert "| kd_logits | 3 | 33.00 ± 2.00 (31.00 / 35.00 / 33.00) | +1.00 ± 0.00 (n 3) * | +1.00 ± 1.63 |" in text
    # LAD: pairs only the seeds it has; -1 and -0.5 (SE 0.25) vs no KD, -2, -1.5 vs KD alone
    assert "| lad_res5 | 2 | 31.25 ± 3.18 (29.00 / 33.50 / –) | -0.75 ± 0.25 (n 2) * |" in text
    assert "| -1.75 ± 0.25 (n 2) * |" in text
    teacher = {c: 50.0 for c in CLASSES} | {"Pole": 35.0}
    (study.teacher_best_dir(plan)).mkdir(parents=True)
    fake_run(study.teacher_best_dir(plan), seg_config(), seed=42, seg={"mIoU": 48.6, **{f"IoU-{c}": v for c, v in teacher.items()}}, iters=1000, replace=True)
    zs = study.zero_shot_dir(plan)
    zs.mkdir(parents=True)
    (zs / EVAL_RESULTS_FILE).write_text(json.dumps({"sem_seg": {"mIoU": 45.0, **{f"IoU-{c}": 40.0 for c in CLASSES}}}))
    table = study.per_class_section(plan, 8)
    assert "| class | zero-shot (1) | teacher (1) | student_nokd (3) | kd_logits (3) | lad_res5 (2) |" in table
    assert "| Pole | 40.0 | 35.0 | 32.0 | 33.0 | 31.2 |" in table
    assert "| mIoU (overall) | 48.6 | 32.0 | +16.6 | ok |" in table
    assert "| Pole | 35.0 | 32.0 | +3.0 | short by 5.0 |" in table
    assert "| Fence | 50.0 | 32.0 | +18.0 | ok |" in table


def test_wall_time_counts_each_part_without_the_pauses(tmp_path):
    from radkd_d2.evaluation.runs import log_wall_seconds

    study = _tool("camvid_study")
    plan = _plan(study, tmp_path, "--seeds", "2", "--methods", "kd")
    plan.teacher.out_dir.mkdir(parents=True)
    # 10 minutes, a 2-hour pause (a stopped study resumed), 5 more minutes
    (plan.teacher.out_dir / "log.txt").write_text(
        "[12/07 23:00:00] d2 INFO: start\n[12/07 23:10:00] d2 INFO: x\nno stamp here\n"
        "[12/08 01:10:00] d2 INFO: resumed\n[12/08 01:15:00] d2 INFO: end\n"
    )
    assert log_wall_seconds(plan.teacher.out_dir) == 15 * 60
    for d in plan.arm_dirs("kd_logits"):
        d.mkdir(parents=True)
        (d / "log.txt").write_text("[12/31 23:58:00] a\n[12/31 23:59:30] b\n")
    text = study.wall_time_section(plan)
    assert "| teacher | 1 | 15.0 | 15.0 |" in text and "| kd_logits | 2 | 3.0 | 1.5 |" in text
    assert "Total: 0.30 h of runs" in text


def test_per_class_iou_reads_training_and_eval_only_runs(tmp_path):
    fake_run(tmp_path / "train", seg_config(), seed=1, seg={"mIoU": 3.0, "IoU-Sky": 7.5}, iters=20)
    assert per_class_iou(tmp_path / "train") == {"Sky": 7.5}
    (tmp_path / "eval").mkdir()
    assert per_class_iou(tmp_path / "eval") == {}
    results = {"camvid_val": {"sem_seg": {"mIoU": 1.0, "IoU-Road": 9.0}}, "camvid_test": {"sem_seg": {"IoU-Road": 2.0}}}
    (tmp_path / "eval" / EVAL_RESULTS_FILE).write_text(json.dumps(results))
    assert per_class_iou(tmp_path / "eval") == {"Road": 9.0}  # the first test set


# --- the statistics -----------------------------------------------------------------------


def test_paired_contrast_is_the_mean_per_seed_difference():
    delta, se, n = paired_contrast([31.0, 35.0, 34.0], [30.0, 34.0, 32.0])
    assert (n, delta) == (3, pytest.approx(4 / 3)) and se == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    # seeds missing on either side drop out of the pairs
    assert paired_contrast([31.0, None, 34.0], [30.0, 34.0, float("nan")])[:2] == (1.0, pytest.approx(math.nan, nan_ok=True))
    assert paired_contrast_text([31.0, None], [30.0, 1.0]) == "+1.00 (n 1)"
    assert paired_contrast_text([None], [1.0]) == ""
    with pytest.raises(ValueError):
        paired_contrast([None], [1.0])


def test_unequal_seed_counts_and_negative_deltas():
    # Δ ± SE with 5 seeds against 3: sqrt(s²/5 + s_b²/3)
    a, b = [40.0, 42.0, 41.0, 43.0, 44.0], [45.0, 46.0, 47.0]
    delta, se = contrast(a, b)
    assert delta == pytest.approx(42.0 - 46.0)
    assert se == pytest.approx(math.sqrt(2.5 / 5 + 1.0 / 3))
    # a loss beyond 2·SE is marked as significant too, and is never a significant gain
    assert contrast_text(a, b) == f"-4.00 ± {se:.2f} *"
    assert not significant(delta, se) and significant(-delta, se)
    assert paired_contrast_text([30.0, 31.0, 29.5], [32.0, 33.0, 32.0]).endswith("(n 3) *")


# --- side defects ---------------------------------------------------------------------------


def test_teacher_sanity_evaluation_uses_the_runs_test_size():
    from radkd_d2.engine.trainer import teacher_eval_config

    cfg = load_cfg(
        "configs/camvid/lad_res5_dlcs_pspmv2_camvid.yaml", "INPUT.MIN_SIZE_TEST", 180,
        "INPUT.MAX_SIZE_TEST", 640, "OUTPUT_DIR", "/tmp/x", validate=False,
    )  # fmt: skip
    tcfg = teacher_eval_config(cfg)
    assert (tcfg.INPUT.MIN_SIZE_TEST, tcfg.INPUT.MAX_SIZE_TEST) == (180, 640)
    assert tcfg.MODEL.BACKBONE.NAME == "build_mobilenet_edgetpu_backbone"  # the teacher's own model
    assert tcfg.DATASETS.TEST == cfg.DATASETS.TEST and tcfg.OUTPUT_DIR == "/tmp/x/teacher_eval"


def test_no_declared_key_is_never_read():
    """TEST.SEM_SEG_EVAL_PIXEL_ACC was declared and never read; keys like it must not return."""
    text = "\n".join(p.read_text() for p in (REPO / "radkd_d2").rglob("*.py") if p.name != "config.py")
    assert "SEM_SEG_EVAL_PIXEL_ACC" not in (REPO / "radkd_d2" / "config.py").read_text() + text


def test_plain_and_distilled_students_of_a_seed_start_identical():
    """Seed k of every arm pairs up: the distillation wrapper builds the student before its
    teacher and connectors, so the student's initial weights equal the plain model's."""
    cfg = load_cfg("configs/camvid/pspnet_mv2_camvid.yaml", "MODEL.WEIGHTS", "", "SEED", 43, validate=False)
    torch.manual_seed(cfg.SEED)
    plain = build_model(cfg).state_dict()
    dcfg = load_cfg(
        "configs/camvid/lad_res5_dlcs_pspmv2_camvid.yaml", "MODEL.WEIGHTS", "", "SEED", 43,
        "MODEL.DISTILL.TEACHER.WEIGHTS", "", validate=False,
    )  # fmt: skip
    torch.manual_seed(dcfg.SEED)
    distilled = build_model(dcfg).state_dict()
    student = {k: v for k, v in distilled.items() if k.startswith(("backbone.", "sem_seg_head."))}
    assert student.keys() == plain.keys()
    assert all(torch.equal(student[k], plain[k]) for k in plain)
