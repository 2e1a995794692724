"""The multi-teacher demo (``tools/demo.py --task multi``): the partial training labels of its
two teachers, its plan (complementary halves, one shared start, paired seeds, the both-teachers
arm with two MODEL.DISTILL.TEACHERS entries), its report with a fake train_net (paired Δ ± SE
against the better single teacher, per-class IoU by half, each teacher's gradient terms) and
one real tiny run end to end (slow)."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import load_cfg
from test_report_seeds import SEED0, fake_run
from test_reports import _csv, _tool

MULTI = "configs/synthetic/demo_multi"
CLASSES = ("background", "disk", "square", "triangle", "ring", "cross")


def _cfg(run):
    from radkd_d2.engine.setup import load_config

    return load_config(str(run.config), [str(x) for x in run.opts], validate=False)


def test_partial_labels_mark_the_other_half_ignored(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from radkd_d2.errors import ConfigError

    tiny = ["DATASETS.SYNTHETIC.NUM_TRAIN", 6, "DATASETS.SYNTHETIC.NUM_VAL", 2, "DATASETS.SYNTHETIC.NUM_TEST", 2]
    seen = {}
    for teacher, ignored in (("a", {4, 5}), ("b", {1, 2, 3})):
        cfg = load_cfg(f"{MULTI}/teacher_{teacher}_pspnet_r18x2_synthetic.yaml", *tiny, data_root=tmp_path)
        assert tuple(cfg.DATASETS.TRAIN) == ("synthetic_sem_seg_train_partial",)
        name = "synthetic_sem_seg_train_partial"
        assert MetadataCatalog.get(name).ignored_classes == [CLASSES[c] for c in sorted(ignored)]
        for d in DatasetCatalog.get(name):
            partial = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
            full = cv2.imread(str(Path(d["sem_seg_file_name"]).parents[1] / "labels" / Path(d["file_name"]).name), cv2.IMREAD_UNCHANGED)
            gone = np.isin(full, list(ignored))
            assert (partial[gone] == 255).all() and (partial[~gone] == full[~gone]).all()
            seen.setdefault(teacher, set()).update(np.unique(partial).tolist())
    assert seen["a"] - {255} <= {0, 1, 2, 3} and seen["b"] - {255} <= {0, 4, 5}
    # the student's config registers no partial set; the full labels stay synthetic_sem_seg_train
    load_cfg(f"{MULTI}/student_pspnet_r18x4_synthetic.yaml", *tiny, data_root=tmp_path)
    assert "synthetic_sem_seg_train_partial" not in DatasetCatalog.list()
    with pytest.raises(ConfigError, match=r"DATASETS.SYNTHETIC.PARTIAL_IGNORE = \[0, 1, 2, 3, 4, 5\]: give some, not all"):
        load_cfg(f"{MULTI}/teacher_a_pspnet_r18x2_synthetic.yaml", *tiny, "DATASETS.SYNTHETIC.PARTIAL_IGNORE", "[0, 1, 2, 3, 4, 5]", data_root=tmp_path)


def test_multi_plan_two_teachers_on_complementary_halves_and_paired_arms(tmp_path, capsys):
    demo = _tool("demo")
    args = demo.parse_args(["--task", "multi", "--output", str(tmp_path)])
    assert (args.lanes, args.threads, args.regime) == (1, 1, demo.MULTI_CHOICE["regime"])
    assert demo.parse_args(["--task", "multi"]).output == "output/demo_multi"
    planned = demo.plan_runs(args)
    plan = [r for r, _ in planned]
    assert [n for _, n in planned] == [800, 800, 150] + [300] * 12
    assert [r.arm for r in plan] == ["teacher_a", "teacher_b", "student_start"] + [
        "student_nokd", "student_a", "student_b", "student_ab"
    ] * 3  # fmt: skip
    cfgs = {r.out_dir: _cfg(r) for r in plan}
    halves = []
    for r in plan[:2]:  # each teacher trains on the partial labels of its own half
        cfg = cfgs[r.out_dir]
        assert tuple(cfg.DATASETS.TRAIN) == ("synthetic_sem_seg_train_partial",)
        halves.append(set(range(1, 6)) - set(cfg.DATASETS.SYNTHETIC.PARTIAL_IGNORE))
        assert cfg.MODEL.DRN.WIDTH_MULT == 0.5 and cfg.DATASETS.SYNTHETIC.SIZE == 64
    assert halves == [{1, 2, 3}, {4, 5}]  # disjoint, and together every object class
    regime = demo.MULTI_REGIMES[args.regime]
    taps = [list(t) for t in regime.taps]
    weights = {t: str(tmp_path / f"teacher_{t}" / "model_final.pth") for t in "ab"}
    for r in plan[3:]:
        cfg = cfgs[r.out_dir]
        assert cfg.MODEL.WEIGHTS == str(tmp_path / "student_start" / "model_final.pth")
        assert cfg.SEED == SEED0 + r.index and cfg.OUTPUT_DIR == str(tmp_path / r.arm / f"seed{r.index}")
        assert tuple(cfg.DATASETS.TRAIN) == ("synthetic_sem_seg_train",)  # students see every label
        assert tuple(cfg.DATASETS.TEST) == ("synthetic_sem_seg_test",) and cfg.DATASETS.SYNTHETIC.TEST_STREAM == 4
        assert cfg.SOLVER.MAX_ITER == 300 and cfg.MODEL.DRN.WIDTH_MULT == 0.25
        d = cfg.MODEL.DISTILL
        if r.arm == "student_nokd":
            assert cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
            continue
        assert d.KD_WEIGHT == regime.kd_weight and d.WARMUP_ITERS == 50
        if r.arm == "student_ab":
            assert d.TEACHER.CONFIG_FILE == "" and [list(t) for t in d.TAPS] == [["res5", "res5", "lad", 10.0]]
            assert [(e["NAME"], e["WEIGHTS"], e["TAPS"], e["KD_MIX"]) for e in d.TEACHERS] == [
                (t, weights[t], taps, mix) for t, mix in zip("ab", regime.kd_mix)
            ]
            assert [e["CONFIG_FILE"] for e in d.TEACHERS] == [f"{MULTI}/teacher_{t}_pspnet_r18x2_synthetic.yaml" for t in "ab"]
        else:
            t = r.arm[-1]
            assert list(d.TEACHERS) == [] and d.TEACHER.WEIGHTS == weights[t]
            assert d.TEACHER.CONFIG_FILE == f"{MULTI}/teacher_{t}_pspnet_r18x2_synthetic.yaml"
            assert [list(x) for x in d.TAPS] == taps
    # each arm waits for the start and for its own teachers only
    arms = demo.TASKS["multi"].student_arms(args, tmp_path)
    needs = {j.run.arm: j.needs for j in demo.schedule(planned, arms)}
    assert needs == {"teacher_a": (), "teacher_b": (), "student_start": (), "student_nokd": ("student_start",),
                     "student_a": ("student_start", "teacher_a"), "student_b": ("student_start", "teacher_b"),
                     "student_ab": ("student_start", "teacher_a", "teacher_b")}  # fmt: skip
    # choosing on val: every regime, arms named by regime; never on the test split
    val = demo.parse_args(["--task", "multi", "--output", str(tmp_path), "--split", "val", "--regime", "all", "--seeds", "1"])
    assert [r.arm for r, _ in demo.plan_runs(val)][3:] == ["student_nokd"] + [
        f"student_{k}_{g}" for g in demo.MULTI_REGIMES for k in ("a", "b", "ab")
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "multi", "--regime", "all"])
    assert "--regime all is for choosing the regime: use it with --split val only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.parse_args(["--task", "seg", "--regime", "kd"])
    assert "--regime is for --task multi" in capsys.readouterr().err


# test mIoU per arm and seed of the fake runs; per-class IoU: teacher A knows disk..triangle,
# B ring and cross; the both-teachers arm is good on both halves
MIOU = {
    "teacher_a": [50.0], "teacher_b": [40.0], "student_start": [30.0], "student_nokd": [40.0, 41.0, 42.0],
    "student_a": [42.0, 44.0, 43.0], "student_b": [41.0, 41.5, 42.5], "student_ab": [45.0, 46.0, 48.0],
}  # fmt: skip
HALF_IOU = {"teacher_a": (80.0, 0.0), "teacher_b": (0.0, 70.0), "student_start": (20.0, 20.0),
            "student_nokd": (30.0, 30.0), "student_a": (40.0, 25.0), "student_b": (28.0, 38.0),
            "student_ab": (40.0, 38.0)}  # fmt: skip
RATIO = {"student_a": {"loss_distill_kd_logits": 1.5}, "student_b": {"loss_distill_kd_logits": 2.5},
         "student_ab": {"loss_distill_kd_logits": 2.0, "loss_distill_lad_res5_a": 0.5, "loss_distill_lad_res5_b": 4.0}}  # fmt: skip


def _fake_training(cmd, log, *, miou=MIOU, **kwargs):
    """train_net's run folder for the arm of ``OUTPUT_DIR``: ``miou[arm][seed]``, per-class IoU
    by half and gradient ratios by the arm's kind (``student_ab_kd``: that of ``student_ab``)."""
    from radkd_d2.engine.setup import load_config

    at = cmd.index("--config-file")
    cfg = load_config(cmd[at + 1], [a for a in cmd[at + 2 :] if not a.startswith("--")], validate=False)
    run = Path(cfg.OUTPUT_DIR)
    arm = run.name if run.name in miou else run.parent.name
    kind = next(a for a in sorted(HALF_IOU, key=len, reverse=True) if arm == a or arm.startswith(a + "_"))
    k = cfg.SEED - SEED0
    strong, weak = HALF_IOU[kind]
    per_class = {f"IoU-{c}": (90.0 if i == 0 else strong if i <= 3 else weak) for i, c in enumerate(CLASSES)}
    seg = {"mIoU": miou[arm][k], "pACC": 90.0, "fwIoU": 80.0, "mACC": 70.0, **per_class}
    ratios = [{t: v * (j + 1) for t, v in RATIO[kind].items()} for j in range(3)] if kind in RATIO else None
    fake_run(run, yaml.safe_load(cfg.dump()), seed=cfg.SEED, seg=seg, ratios=ratios, iters=cfg.SOLVER.MAX_ITER, replace=True)
    if kind == "student_ab":  # each teacher's own KD term against the student, logged every period
        with open(run / "metrics.json", "a") as f:
            for j, it in enumerate((19, 39, 59)):
                f.write(json.dumps({"iteration": it, "distill/kd_teacher/a": 1.0 + j, "distill/kd_teacher/b": 3.0}) + "\n")
    return 0


def test_multi_report_pairs_seeds_against_the_better_single_teacher(tmp_path, monkeypatch):
    demo = _tool("demo")
    monkeypatch.setattr("radkd_d2.analysis.launch.run_training", _fake_training)
    monkeypatch.setitem(demo.MULTI_CHOICE, "better_single", "student_a")
    out = tmp_path / "demo"
    demo.main(["--task", "multi", "--output", str(out), "--seeds", "3", "--iters", "60", "--teacher-iters", "60", "--start-iters", "20"])
    text = (out / "report.md").read_text()
    # every arm's mean ± std, its seeds, and Δ vs no KD seed by seed
    assert "| run | mIoU | per seed | Δ vs no KD (paired) |" in text
    assert "(student_ab) | 46.33 ± 1.53 (3) | 45.00 / 46.00 / 48.00 | +5.33 ± 0.33 (n 3) * |" in text
    assert "(teacher_a) | 50.00 (1) | 50.00 |  |" in text
    # the question decided in advance: both vs the better single teacher on val (A), paired
    diffs = [3.0, 2.0, 5.0]
    se = statistics.stdev(diffs) / 3**0.5
    assert (
        f"regime {demo.MULTI_CHOICE['regime']}), paired Δ ± SE of test mIoU: **+3.33 ± {se:.2f} (n 3) ***: "
        "two teachers beat the better single teacher (Δ > 2·SE)." in text
    )
    se_b = statistics.stdev([4.0, 4.5, 5.5]) / 3**0.5
    assert f"- both vs teacher B alone: +4.67 ± {se_b:.2f} (n 3) *" in text
    # per-class IoU: each class marked with the teacher trained on it, each half averaged
    assert "| run | background | disk (A) | square (A) | triangle (A) | ring (B) | cross (B) | A's half | B's half |" in text
    assert "| teacher_a | 90.0 | 80.0 | 80.0 | 80.0 | 0.0 | 0.0 | 80.0 | 0.0 |" in text
    assert "| student_ab | 90.0 | 40.0 | 40.0 | 40.0 | 38.0 | 38.0 | 40.0 | 38.0 |" in text
    # the gradient balance names each teacher's own terms; medians over periods and seeds
    header = next(line for line in text.splitlines() if line.startswith("| arm | seeds | "))
    assert header == "| arm | seeds | loss_distill_kd_logits | loss_distill_lad_res5_a | loss_distill_lad_res5_b | KD vs a | KD vs b |"
    assert "| student_ab | 3 | 4 | 1 | 8 | 2 | 3 |" in text
    assert "| student_a | 3 | 3 | – | – | – | – |" in text
    # the generic tables read the method from the teachers' own TAPS (KD alone here, not the
    # unused MODEL.DISTILL.TAPS default)
    seg = {r["run"]: r for r in _csv(out / "report" / "segmentation.csv")}
    assert seg["student_ab"]["method"] == "KD" and "a: PSPNet-R18/2 + b: PSPNet-R18/2" == seg["student_ab"]["teacher"]


def test_multi_report_on_val_applies_the_rule_fixed_in_advance(tmp_path, monkeypatch):
    """--split val --regime all: every regime's arms, and the choice by the rule: the regime
    whose both-teachers arm is best on val, then the better single arm under it."""
    demo = _tool("demo")
    regimes = list(demo.MULTI_REGIMES)
    best = regimes[-1]  # its both-teachers arm is the best; under it, B beats A
    miou = {arm: v[:2] for arm, v in MIOU.items() if not arm.startswith(("student_a", "student_b"))}
    for g in regimes:
        up = 1.0 if g == best else 0.0
        miou.update({f"student_a_{g}": [42.0, 43.0], f"student_b_{g}": [41.0 + 3 * up, 42.0 + 3 * up],
                     f"student_ab_{g}": [45.0 + up, 46.0 + up]})  # fmt: skip
    monkeypatch.setattr("radkd_d2.analysis.launch.run_training", functools.partial(_fake_training, miou=miou))
    out = tmp_path / "val"
    demo.main(["--task", "multi", "--output", str(out), "--split", "val", "--regime", "all", "--seeds", "2",
               "--iters", "20", "--teacher-iters", "20", "--start-iters", "20"])  # fmt: skip
    text = (out / "report.md").read_text()
    for g in regimes:
        assert f"### Regime {g}: {demo.MULTI_REGIMES[g].text}" in text
    assert f"Chosen: regime **{best}**, better single teacher **student_b**" in text
    assert "The question decided before the test split was run" not in text


@pytest.mark.slow
def test_multi_demo_trains_two_teachers_and_distils_from_both_for_real(tmp_path, data_root):
    """A few iterations of every run on a handful of scenes: the teachers train on their
    partial labels, the both-teachers arm builds both and logs a KD term against each, and the
    report has its tables."""
    demo = _tool("demo")
    out = tmp_path / "demo_multi"
    tiny = [
        "DATASETS.ROOT", data_root, "DATASETS.SYNTHETIC.NUM_TRAIN", 8, "DATASETS.SYNTHETIC.NUM_VAL", 4,
        "DATASETS.SYNTHETIC.NUM_TEST", 4, "SOLVER.IMS_PER_BATCH", 2, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1,
    ]  # fmt: skip
    demo.main(["--task", "multi", "--output", str(out), "--teacher-iters", "2", "--start-iters", "2",
               "--iters", "3", "--seeds", "1", *map(str, tiny)])  # fmt: skip
    text = (out / "report.md").read_text()
    for arm in ("teacher_a", "teacher_b", "student_start", "student_nokd", "student_a", "student_b", "student_ab"):
        assert "copypaste: mIoU,fwIoU,mACC,pACC" in (out / arm / "log.txt").read_text(), arm
        assert any(line.startswith("| ") and f"({arm}) | " in line for line in text.splitlines()), arm
    assert "| run | mIoU | per seed | Δ vs no KD (paired) |" in text
    assert "The question decided before the test split was run" in text
    assert "| run | background | disk (A) | square (A) | triangle (A) | ring (B) | cross (B) | A's half | B's half |" in text
    # the both-teachers run really had two teachers: two entries, a KD term logged against each
    cfg = yaml.safe_load((out / "student_ab" / "config.yaml").read_text())
    assert [e["NAME"] for e in cfg["MODEL"]["DISTILL"]["TEACHERS"]] == ["a", "b"]
    keys = set().union(*(json.loads(line) for line in (out / "student_ab" / "metrics.json").read_text().splitlines()))
    assert {"loss_distill_kd_logits", "distill/kd_teacher/a", "distill/kd_teacher/b", "grad_ratio/loss_distill_kd_logits"} <= keys
    for t in ("a", "b"):  # each teacher's own feature terms, when the regime has any
        for tap in demo.MULTI_REGIMES[demo.MULTI_CHOICE["regime"]].taps:
            assert f"loss_distill_{tap[2]}_{tap[0]}_{t}" in keys and f"grad_ratio/loss_distill_{tap[2]}_{tap[0]}_{t}" in keys
    single = set().union(*(json.loads(line) for line in (out / "student_a" / "metrics.json").read_text().splitlines()))
    assert not any(k.startswith("distill/kd_teacher/") for k in single)  # one teacher: no mix
