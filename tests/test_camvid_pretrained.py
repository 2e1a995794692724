"""The CamVid study in the paper's regime (tools/camvid_study.py --scale pretrained /
pretrained-gpu): its plan (pretrained starts, padding, no shared start, resumable runs), the
padding choice, the contrasts against no KD and against KD alone, --time-limit, and the GPU
preset's script run end to end on CPU at a tiny size (on the real CamVid and pretrained files,
skipped when they are absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA
from test_report_seeds import SEED0, _opts, _tool, fake_run, seg_config

PRETRAINED = SHARED_DATA / "pretrained"


def _plan(study, tmp_path, *extra, pad=None):
    args = study.build_parser().parse_args(
        ["--data-root", "DATA", "--out", str(tmp_path), "--scale", "pretrained", *extra]
    )
    return study.plan_runs(args, pad)


def test_pretrained_plan_starts_from_the_pretrained_files(tmp_path):
    from radkd_d2.engine.setup import load_config

    study = _tool("camvid_study")
    assert _plan(study, tmp_path).pad == "same"  # the measured setting is the default
    assert _plan(study, tmp_path, "--pad-type", "torch").pad == "torch"
    plan = _plan(study, tmp_path, pad="same")
    assert plan.start is None and plan.pad == "same"
    assert (plan.iters, plan.teacher_iters) == (200, 1000)
    imagenet = tmp_path / "pretrained" / "mobilenet_v2_imagenet_torchvision.pth"
    cocovoc = tmp_path / "pretrained" / "mobilenet_v2_cocovoc_seg_backbone_torchvision.pth"
    # every student from the ImageNet weights (no shared start), the teacher from COCO+VOC
    assert {_opts(r.opts)["MODEL.WEIGHTS"] for r in plan.students} == {str(imagenet)}
    assert _opts(plan.teacher.opts)["MODEL.WEIGHTS"] == str(cocovoc)
    # the padding reaches the students, the teacher and the teacher as the students build it
    for run in [plan.teacher, *plan.students]:
        cfg = load_config(str(run.config), [str(x) for x in run.opts], validate=False)
        assert cfg.MODEL.MOBILENETV2.PAD_TYPE == "same", run.name
        assert cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_backbone"
        assert cfg.SOLVER.CHECKPOINT_PERIOD == 100  # a killed run resumes from here
        if run.arm != "teacher" and cfg.MODEL.META_ARCHITECTURE.startswith("Distill"):
            assert list(cfg.MODEL.DISTILL.TEACHER.OPTS) == ["MODEL.MOBILENETV2.PAD_TYPE", "same"]
            assert cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE.endswith("pspnet_mv2_teacher_camvid.yaml")
    # the no-KD arm is the padding comparison's arm of the kept padding
    assert plan.arm_dirs("student_nokd") == [tmp_path / "padding" / "same" / f"seed{k}" for k in range(3)]
    assert sorted({r.arm for r in plan.main_runs()}) == [
        "cad_res5", "kd_logits", "lad_res5", "lad_res5_nokd", "naive_res5", "student_nokd"]
    assert len([r for r in plan.students if r not in plan.main_runs()]) == 12
    # every run is launched with --resume (an interrupted study goes on from checkpoints)
    assert "--resume" in plan.students[0].command(resume=True)
    # the R18 scales are unchanged: their own configs, no padding key
    cpu = study.plan_runs(study.build_parser().parse_args(["--data-root", "D", "--out", str(tmp_path)]))
    assert cpu.pad is None and cpu.teacher.config.name == "pspnet_r101_camvid.yaml"
    assert all("MODEL.MOBILENETV2.PAD_TYPE" not in _opts(r.opts) for r in cpu.students)


def test_padding_choice_and_the_contrasts(tmp_path, monkeypatch, capsys):
    """choose_padding trains both paddings' plain students and keeps the better val mean; the
    report gives every arm Δ against no KD and against KD alone."""
    study = _tool("camvid_study")
    args = study.build_parser().parse_args(
        ["--data-root", "D", "--out", str(tmp_path), "--scale", "pretrained", "--methods", "kd", "lad"]
    )
    score = {"torch": 40.0, "same": 41.0}
    trained = []

    def train(run, max_iter=None):
        trained.append(run.name)
        pad = run.out_dir.parent.name
        fake_run(run.out_dir, seg_config(), seed=run.seed, seg={"mIoU": score[pad] + run.index}, iters=200)
        return run.name, 0

    assert study.choose_padding(args, train) == "same"
    assert len(trained) == 6
    record = json.loads((tmp_path / "padding.json").read_text())
    assert record == {"choice": "same", "val_mIoU": {"torch": [40.0, 41.0, 42.0], "same": [41.0, 42.0, 43.0]}}
    plan = study.plan_runs(args, "same")
    for arm, values in (("kd_logits", [42.0, 43.0, 44.0]), ("lad_res5", [45.0, 47.0, 46.0])):
        for d, v in zip(plan.arm_dirs(arm), values):
            fake_run(d, seg_config(), seed=SEED0, seg={"mIoU": v}, iters=200)
    text = study.contrast_section(plan)
    # kd: +1 in every seed vs no KD (paired SE 0; unpaired SE sqrt(1/3 + 1/3) = 0.82); lad:
    # +4, +5, +3 vs no KD (paired SE 1/sqrt(3) = 0.58), +3, +4, +2 vs KD alone
    assert "| kd_logits | 3 | 43.00 ± 1.00 (42.00 / 43.00 / 44.00) | +1.00 ± 0.00 (n 3) * | +1.00 ± 0.82 |  |  |" in text
    assert ("| lad_res5 | 3 | 46.00 ± 1.00 (45.00 / 47.00 / 46.00) | +4.00 ± 0.58 (n 3) * | +4.00 ± 0.82 * "
            "| +3.00 ± 0.58 (n 3) * | +3.00 ± 0.82 * |") in text
    padding = study.padding_section(plan)
    assert "same − torch: +1.00 ± 0.82; kept: same" in padding


def test_time_limit_stops_the_running_run_and_exits_3(tmp_path, monkeypatch, capsys):
    """--time-limit interrupts the running training (as Ctrl-C) and exits with 3; nothing is
    reported, and the next call starts where this one stopped."""
    study = _tool("camvid_study")
    started = []

    def slow_training(cmd, log, *, started=None, **kwargs):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        if started is not None:
            started(proc)
        t0 = time.monotonic()
        rc = proc.wait()
        started_at.append(time.monotonic() - t0)
        return rc

    started_at = started
    monkeypatch.setattr(study, "run_training", slow_training)
    # the child may have SIGINT ignored (inherited, as under a background shell or a test
    # runner's worker): the deadline then terminates it after the grace period
    monkeypatch.setattr(study.Deadline, "GRACE", 2.0)
    # the stand-in training sleeps 600 s: stopped at the limit, it returns long before that
    monkeypatch.setattr(study, "convert_pretrained", lambda *a: None)
    argv = ["--data-root", "D", "--out", str(tmp_path), "--scale", "pretrained", "--pad-type", "torch",
            "--time-limit", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        study.main(argv)
    assert e.value.code == 3
    assert len(started) == 1 and started[0] < 300  # the teacher's run was stopped, not waited for
    assert "time limit (1 s) reached at teacher" in capsys.readouterr().out
    assert not (tmp_path / "report").exists()


def test_missing_pretrained_file_is_named(tmp_path):
    study = _tool("camvid_study")
    args = study.build_parser().parse_args(
        ["--data-root", str(tmp_path), "--out", str(tmp_path / "out"), "--scale", "pretrained"]
    )
    with pytest.raises(SystemExit, match=r"mobilenet_v2_imagenet_torchvision.pth are missing"):
        study.convert_pretrained(args, study.SCALES["pretrained"], tmp_path / "out")
    assert not (tmp_path / "out" / "pretrained").exists() or not any((tmp_path / "out" / "pretrained").iterdir())


@pytest.mark.slow
def test_gpu_preset_script_runs_tiny_on_cpu(tmp_path):
    """tools/gpu_camvid_study.sh tiny: the GPU preset's study (the Cityscapes teacher) end to
    end at a tiny size on CPU, with the real pretrained files converted by convert_weights:
    zero-shot score, padding comparison, teacher, KD-alone and LAD arms, sweep, report. No time
    limit: a loaded machine only makes it slower."""
    for need in (
        SHARED_DATA / "camvid" / "val",
        PRETRAINED / "mobilenet_v2_imagenet_torchvision.pth",
        PRETRAINED / "deeplab_mobilenet_edgetpu075_cityscapes.pth",
    ):
        if not need.exists():
            pytest.skip(f"{need} is absent (the shared CamVid data and pretrained weights)")
    out = tmp_path / "study"
    env = dict(os.environ, TINY_OUT=str(out), RADKD_SHARED_DATA=str(SHARED_DATA), OUT=str(tmp_path / "device_out"))
    (tmp_path / "device_out").mkdir()
    proc = subprocess.run(
        ["bash", str(REPO / "tools/gpu_camvid_study.sh"), "tiny"], env=env, capture_output=True, text=True,
        timeout=3600,  # a hang guard only
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "device_out" / "report.md").read_text()
    assert "## Arms against no KD and against KD alone" in report
    assert "## MobileNetV2 padding" in report and (tmp_path / "device_out" / "padding.json").is_file()
    assert "LESS than the 8" in report or "at least the 8" in report
    assert "## Per-class val IoU" in report and "| class | zero-shot (1) | teacher (1) |" in report
    for model, name in (("student", "mobilenet_v2_imagenet_torchvision.pth"), ("teacher", "deeplab_mobilenet_edgetpu075_cityscapes.pth")):
        assert (out / "pretrained" / name).is_file()
        assert "0 missing target keys" in (out / "pretrained" / f"convert_{model}.log").read_text()
    assert not list((out / "pretrained").glob("*.partial.pth"))
