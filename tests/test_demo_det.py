"""The detection demo (``tools/demo.py --task det``): its plan (teacher stronger than the
student, one shared start, the arms' losses and weights, the held-out split), its report with
a fake train_net (Table 7's columns, Δ ± SE, the per-level loss balance) and one real tiny run
end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_report_seeds import SEED0, expected_se, fake_run
from test_reports import _csv, _tool

LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _cfg(run):
    from radkd_d2.engine.setup import load_config

    return load_config(str(run.config), [str(x) for x in run.opts], validate=False)


def test_det_plan_is_one_start_three_arms_on_the_held_out_split(tmp_path):
    demo = _tool("demo")
    args = demo.parse_args(["--task", "det", "--output", str(tmp_path)])
    assert (args.teacher_iters, args.start_iters, args.iters) == demo.DET_ITERATIONS
    assert demo.parse_args(["--task", "det"]).output == "output/demo_det"
    planned = demo.plan_runs(args)
    plan = [r for r, _ in planned]
    assert [n for _, n in planned] == list(demo.DET_ITERATIONS[:2]) + [demo.DET_ITERATIONS[2]] * 9
    assert [r.arm for r in plan] == ["teacher", "student_start"] + [
        "student_nokd", "student_lad", "student_mgd"
    ] * 3  # fmt: skip
    cfgs = {r.out_dir: _cfg(r) for r in plan}
    teacher, start = (cfgs[plan[0].out_dir], cfgs[plan[1].out_dir])
    # a teacher clearly bigger than the student: ResNeXt-50 against MobileNetV2 x0.5, same FPN
    assert (teacher.MODEL.RESNETS.DEPTH, teacher.MODEL.RESNETS.NUM_GROUPS) == (50, 4)
    assert start.MODEL.BACKBONE.NAME == "build_retinanet_mobilenetv2_fpn_backbone"
    assert start.MODEL.MOBILENETV2.WIDTH_MULT == 0.5 and start.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert tuple(teacher.SOLVER.STEPS) == (int(0.8 * args.teacher_iters), int(0.93 * args.teacher_iters))
    assert teacher.MODEL.FPN.OUT_CHANNELS == start.MODEL.FPN.OUT_CHANNELS
    start_file = str(tmp_path / "student_start" / "model_final.pth")
    for r in plan[2:]:
        cfg = cfgs[r.out_dir]
        assert cfg.MODEL.WEIGHTS == start_file  # every arm continues the one start
        assert cfg.SEED == SEED0 + r.index and cfg.OUTPUT_DIR == str(tmp_path / r.arm / f"seed{r.index}")
        # the same data, solver and clipping in every arm, the no-KD one too; the LR drops at
        # 80 % and 93 % of each run's iterations
        solver = {k: v for k, v in cfg.SOLVER.items() if k not in ("MAX_ITER", "CHECKPOINT_PERIOD", "STEPS")}
        assert solver == {k: v for k, v in start.SOLVER.items() if k in solver}
        assert tuple(cfg.SOLVER.STEPS) == (int(0.8 * args.iters), int(0.93 * args.iters))
        assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED
        # scored on the held-out test split, from a stream the segmentation demo never used
        assert tuple(cfg.DATASETS.TEST) == ("synthetic_det_test",)
        assert cfg.DATASETS.SYNTHETIC.NUM_TEST == 256 and cfg.DATASETS.SYNTHETIC.TEST_STREAM == 3
        if r.arm == "student_nokd":
            assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
            continue
        d = cfg.MODEL.DISTILL
        assert cfg.MODEL.META_ARCHITECTURE == "DistillRetinaNet"
        assert d.TEACHER.WEIGHTS == str(tmp_path / "teacher" / "model_final.pth")
        assert d.TEACHER.CONFIG_FILE == str(plan[0].config.relative_to(REPO))
        assert list(d.INIT_STUDENT_FROM_TEACHER) == []  # nothing copied over the shared start
        assert d.KD_WEIGHT == 0.0
        method, weight = {"student_lad": ("lad", 10.0), "student_mgd": ("mgd", 1.0)}[r.arm]
        assert [list(t) for t in d.TAPS] == [[lv, lv, method, weight] for lv in LEVELS]
        if r.arm == "student_mgd":  # MGD's published RetinaNet setting
            assert (d.MGD.ALPHA, d.MGD.MASK_RATIO) == (2e-5, 0.65)
    # --split val scores the validation scenes; overrides reach every run and the teacher
    val = demo.plan_runs(
        demo.parse_args(["--task", "det", "--output", str(tmp_path), "--split", "val", "MODEL.DEVICE", "cpu"])
    )
    lad = next(r for r, _ in val if r.arm == "student_lad")
    cfg = _cfg(lad)
    assert tuple(cfg.DATASETS.TEST) == ("synthetic_det_val",) and cfg.MODEL.DEVICE == "cpu"
    assert list(cfg.MODEL.DISTILL.TEACHER.OPTS) == ["MODEL.DEVICE", "cpu"]


def test_det_demo_bad_arguments_fail_at_once(capsys):
    demo = _tool("demo")
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "det", "--iters", "0"])
    assert "--iters must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "det", "SOLVER.BASE_LR"])
    assert "odd number of items" in capsys.readouterr().err


def test_det_demo_report_has_table7_columns_and_the_per_level_balance(tmp_path, monkeypatch):
    """The whole detection demo with train_net replaced by a fake that writes the folder the
    real one would: box AP per arm over seeds, Δ ± SE, LAD vs MGD, grad ratios per FPN level."""
    demo = _tool("demo")
    ap = {"teacher": 20.0, "student_start": 5.0, "student_nokd": 8.0, "student_lad": 9.0, "student_mgd": 8.5}
    ratio = {"student_lad": 50.0, "student_mgd": 2.0}

    def fake_training(cmd, log, **kwargs):
        from radkd_d2.engine.setup import load_config

        at = cmd.index("--config-file")
        cfg = load_config(cmd[at + 1], [a for a in cmd[at + 2 :] if not a.startswith("--")], validate=False)
        run = Path(cfg.OUTPUT_DIR)
        arm = run.name if run.name in ("teacher", "student_start") else run.parent.name
        k = cfg.SEED - SEED0
        m = {"AP": ap[arm] + k, "AP50": 2 * ap[arm], "AP75": ap[arm] / 2, "APs": 1.0, "APm": 2.0, "APl": float("nan")}
        ratios = None
        if arm in ratio:  # level i's ratio is the arm's × 10^i: p6 and p7 far above p3
            method = arm.split("_")[1]
            ratios = [{f"loss_distill_{method}_{lv}": ratio[arm] * 10**i for i, lv in enumerate(LEVELS)}]
        fake_run(run, yaml.safe_load(cfg.dump()), seed=cfg.SEED, det=m, ratios=ratios, iters=cfg.SOLVER.MAX_ITER, replace=True)
        return 0

    monkeypatch.setattr("radkd_d2.analysis.launch.run_training", fake_training)
    out = tmp_path / "demo"
    demo.main(["--task", "det", "--output", str(out), "--seeds", "2", "--iters", "20", "--teacher-iters", "30", "--start-iters", "10"])
    det = {r["run"]: r for r in _csv(out / "report" / "detection.csv")}
    assert set(det) == {"teacher", "student_nokd", "student_lad", "student_mgd"}
    assert float(det["student_lad"]["AP"]) == pytest.approx(9.5)
    assert float(det["student_lad"]["delta_AP"]) == pytest.approx(1.0)
    assert float(det["student_lad"]["delta_AP_se"]) == pytest.approx(expected_se([9, 10], [8, 9]), abs=1e-4)
    text = (out / "report.md").read_text()
    assert "| Teacher | Student | Method | tap | λ | AP | AP50 | AP75 | APs | APm | APl |" in text
    assert "| RetinaNet-X50 | RetinaNet-MV2/2 | LAD | p3,p4,p5,p6,p7 | 10 |" in text
    # AP_L is NaN (no large object in the set): an empty cell, not a crash or a NaN mean
    assert "|  | RetinaNet-MV2/2 | w/o KD |  |  | 8.5 ± 0.7 (2) |" in text
    assert all(line.endswith("| – |") for line in text.splitlines() if "RetinaNet-MV2/2 | LAD | p3" in line)
    assert "| run | AP | AP50 | AP75 | train+eval time (s) | CPU threads |" in text
    assert "(student_start) | 5.00 | 10.00 | 2.50 |" in text
    # the per-level balance: one column per FPN level, each arm's medians
    assert "| run | data set | model | method | λ | λ_kd | seeds | p3 | p4 | p5 | p6 | p7 |" in text
    lad_row = next(line for line in text.splitlines() if line.startswith("| student_lad | "))
    assert lad_row.endswith("| 50 | 500 | 5e+03 | 5e+04 | 5e+05 |")
    # the contrasts: LAD and MGD against no KD, and LAD against MGD (9, 10 vs 8.5, 9.5)
    assert "## What each term adds (test AP" in text
    assert f"- LAD vs MGD: +0.50 ± {expected_se([9, 10], [8.5, 9.5]):.2f}\n" in text
    assert "- MGD vs no KD: +0.50" in text


@pytest.mark.slow
def test_det_demo_trains_and_reports_for_real(tmp_path, data_root, capsys):
    """Two iterations of every run on a handful of scenes: the shared start loads strictly into
    both distillation wrappers, the teacher's overrides reach it, COCOEvaluator scores every run
    and the report has every arm and every level's gradient ratio."""
    demo = _tool("demo")
    out = tmp_path / "demo_det"
    tiny = [
        "DATASETS.ROOT", data_root, "DATASETS.SYNTHETIC.NUM_TRAIN", 8, "DATASETS.SYNTHETIC.NUM_VAL", 4,
        "DATASETS.SYNTHETIC.NUM_TEST", 4, "SOLVER.IMS_PER_BATCH", 2, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1,
        "TEST.DETECTIONS_PER_IMAGE", 10, "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 50,
    ]  # fmt: skip
    demo.main(
        ["--task", "det", "--output", str(out), "--teacher-iters", "2", "--start-iters", "2",
         "--iters", "2", "--seeds", "1", "--lanes", "1", "--threads", "1", *map(str, tiny)]
    )  # fmt: skip
    for arm in ("teacher", "student_start", "student_nokd", "student_lad", "student_mgd"):
        log = (out / arm / "log.txt").read_text()
        assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log, arm  # COCOEvaluator ran
    text = (out / "report.md").read_text()
    for arm in ("student_lad", "student_mgd"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} | "))
        assert row.count("|") == 13 and "–" not in row.split("|", 8)[8], row  # every level
    assert "LAD vs MGD" in text
    # --resume reuses every run of the same config; a changed key trains that run again
    args = ["--task", "det", "--output", str(out), "--teacher-iters", "2", "--start-iters", "2",
            "--iters", "2", "--seeds", "1", "--lanes", "1", "--threads", "1", "--resume", *map(str, tiny)]  # fmt: skip
    capsys.readouterr()
    demo.main(args)
    said = capsys.readouterr().out
    assert said.count("finished earlier, reused") == 5 and "trained again" not in said
    start_log = (out / "student_start" / "log.txt").stat().st_mtime
    demo.main([*args, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.5"])
    said = capsys.readouterr().out
    assert said.count("finished earlier with another config (") == 5 and "reused" not in said
    assert said.count(": trained again") == 5
    assert said.count("MODEL.RETINANET.FOCAL_LOSS_GAMMA") == 5  # (the distilled: TEACHER.OPTS too)
    assert (out / "student_start" / "log.txt").stat().st_mtime > start_log
    # a longer start alone: the arms continued from the old start are stale, the teacher is not
    at = args.index("--start-iters") + 1
    longer = [*args[:at], "3", *args[at + 1:]]
    demo.main([*longer, "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "1.5"])
    said = capsys.readouterr().out
    assert "teacher RetinaNet" in said and said.count("finished earlier, reused") == 1
    assert said.count("finished earlier but its student_start is trained again: trained again") == 3  # no KD, LAD, MGD


def test_lad_weight_reweights_the_lad_arm_into_its_own_folder(tmp_path):
    demo = _tool("demo")
    plan = [r for r, _ in demo.plan_runs(demo.parse_args(["--task", "det", "--output", str(tmp_path), "--lad-weight", "0.5"]))]
    lad = [r for r in plan if r.arm == "student_lad"]
    assert [r.out_dir for r in lad] == [tmp_path / "student_lad_w0.5" / f"seed{k}" for k in range(3)]
    cfg = _cfg(lad[0])
    assert [list(t) for t in cfg.MODEL.DISTILL.TAPS] == [[lv, lv, "lad", 0.5] for lv in LEVELS]
    mgd = _cfg(next(r for r in plan if r.arm == "student_mgd"))  # the other arms as they were
    assert [t[3] for t in mgd.MODEL.DISTILL.TAPS] == [1.0] * 5
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "det", "--lad-weight", "0"])


def test_lad_levels_keep_only_those_lad_taps_in_their_own_folder(tmp_path, capsys):
    demo = _tool("demo")
    args = ["--task", "det", "--output", str(tmp_path), "--lad-levels", "p3,p4"]
    lad = [r for r, _ in demo.plan_runs(demo.parse_args(args)) if r.arm == "student_lad"]
    assert [r.out_dir for r in lad] == [tmp_path / "student_lad_p3-p4" / f"seed{k}" for k in range(3)]
    assert [list(t) for t in _cfg(lad[0]).MODEL.DISTILL.TAPS] == [[lv, lv, "lad", 10.0] for lv in ("p3", "p4")]
    both = [r for r, _ in demo.plan_runs(demo.parse_args([*args, "--lad-weight", "2"])) if r.arm == "student_lad"]
    assert both[0].out_dir == tmp_path / "student_lad_w2_p3-p4" / "seed0"
    assert [list(t) for t in _cfg(both[0]).MODEL.DISTILL.TAPS] == [[lv, lv, "lad", 2.0] for lv in ("p3", "p4")]
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "det", "--lad-levels", "p2,p3"])  # RetinaNet has no p2
    assert "--lad-levels must name positions of the LAD arm's taps ['p3', 'p4', 'p5', 'p6', 'p7'], got ['p2', 'p3']" in capsys.readouterr().err


def test_rcnn_demo_plan_and_report_with_mask_ap(tmp_path, monkeypatch):
    """--task rcnn: Mask R-CNN X50-tiny teacher, MobileNetV2 x0.5 Mask R-CNN student, no KD and
    LAD on P2-P6 from one start; the report has box and mask AP and both contrasts."""
    demo = _tool("demo")
    plan = [r for r, _ in demo.plan_runs(demo.parse_args(["--task", "rcnn", "--output", str(tmp_path / "p")]))]
    assert [r.arm for r in plan] == ["teacher", "student_start"] + ["student_nokd", "student_lad"] * 3
    assert [n for _, n in demo.plan_runs(demo.parse_args(["--task", "rcnn"]))][:3] == [1500, 200, 300]
    teacher, start = _cfg(plan[0]), _cfg(plan[1])
    assert teacher.MODEL.MASK_ON and teacher.MODEL.RESNETS.DEPTH == 50
    assert start.MODEL.MASK_ON and start.MODEL.BACKBONE.NAME == "build_mobilenetv2_fpn_backbone"
    lad = _cfg(next(r for r in plan if r.arm == "student_lad"))
    assert lad.MODEL.META_ARCHITECTURE == "DistillGeneralizedRCNN" and lad.INPUT.MASK_FORMAT == "bitmask"
    assert [list(t) for t in lad.MODEL.DISTILL.TAPS] == [[lv, lv, "lad", 10.0] for lv in ("p2", "p3", "p4", "p5", "p6")]

    box = {"teacher": 20.0, "student_start": 4.0, "student_nokd": 6.0, "student_lad": 8.0}

    def fake_training(cmd, log, **kwargs):
        from radkd_d2.engine.setup import load_config

        at = cmd.index("--config-file")
        cfg = load_config(cmd[at + 1], [a for a in cmd[at + 2 :] if not a.startswith("--")], validate=False)
        run = Path(cfg.OUTPUT_DIR)
        arm = run.name if run.name in ("teacher", "student_start") else run.parent.name
        b = box[arm] + cfg.SEED - SEED0
        fake_run(run, yaml.safe_load(cfg.dump()), seed=cfg.SEED, det={"AP": b, "AP50": 2 * b, "AP75": 1, "APs": 1, "APm": 1, "APl": 1},
                 iters=cfg.SOLVER.MAX_ITER, replace=True)  # fmt: skip
        with open(run / "metrics.json", "a") as f:  # the masks score 1 point below the boxes
            f.write(json.dumps({"iteration": cfg.SOLVER.MAX_ITER, "segm/AP": b - 1, "segm/AP50": 2 * b - 2}) + "\n")
        return 0

    monkeypatch.setattr("radkd_d2.analysis.launch.run_training", fake_training)
    out = tmp_path / "demo"
    demo.main(["--task", "rcnn", "--output", str(out), "--seeds", "2", "--iters", "5", "--teacher-iters", "5", "--start-iters", "5"])
    text = (out / "report.md").read_text()
    assert ": box AP (%)" in text and ": mask AP (%)" in text
    assert "| run | box AP | box AP50 | mask AP | mask AP50 | train+eval time (s) | CPU threads |" in text
    se = expected_se([8, 9], [6, 7])
    assert f"- LAD vs no KD: AP +2.00 ± {se:.2f} *; mask AP +2.00 ± {se:.2f} *" in text
