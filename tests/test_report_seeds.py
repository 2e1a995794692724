"""Seeds in the report and the tools: runs equal but for SEED/OUTPUT_DIR make one row (mean,
sample std, number of seeds, Δ ± its standard error, significance), the loss-balance section
(median gradient ratios), and the --seeds plans of tools/demo.py, sweep.py and camvid_study.py
(planned, never trained). Fabricated run folders only."""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from radkd_d2.analysis.sweep import collect_sweep, format_sweep, sweep_curves
from radkd_d2.evaluation.report import build_report, collect_runs, write_report

from conftest import REPO
from test_reports import LAD_CFG, _csv, _tool, det_config, seg_config

SEED0 = 42  # the SEED of the synthetic, CamVid and demo configs


def fake_run(
    path: Path,
    cfg: dict,
    *,
    seed: int,
    seg: dict | None = None,
    det: dict | None = None,
    ratios: list | None = None,
    finished: bool = True,
    iters: int = 100,
    replace: bool = False,
):
    """A run folder as train_net leaves it: config.yaml with SEED and OUTPUT_DIR, metrics.json
    with a training row every 20 iterations (``ratios[j]`` = the ``grad_ratio/*`` scalars of
    training row j, plus grad_norm keys the report must ignore) and, when finished, the final
    ``sem_seg/*`` (``seg``) or ``bbox/*`` (``det``) evaluation row. ``replace``: the folder may
    exist already (train_net's log in it)."""
    path.mkdir(parents=True, exist_ok=replace)
    cfg = copy.deepcopy(cfg)
    cfg["SEED"], cfg["OUTPUT_DIR"] = seed, str(path)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    last = iters if finished else iters // 2
    for j, it in enumerate(range(19, last, 20)):
        row = {"iteration": it, "time": 0.5, "total_loss": 1.0}
        if ratios and j < len(ratios):
            row.update({f"grad_ratio/{k}": v for k, v in ratios[j].items()})
            row.update({f"grad_norm/{k}/res5": 3.0 for k in ratios[j]})
        rows.append(row)
    if finished and seg:
        rows.append({"iteration": iters, **{f"sem_seg/{k}": v for k, v in seg.items()}})
    if finished and det:
        rows.append({"iteration": iters, **{f"bbox/{k}": v for k, v in det.items()}})
    (path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def seeded_arm(arm_dir: Path, cfg: dict, mious, paccs=None, **kw):
    """Seeds ``seed<k>`` of one arm with SEED 42 + k and the given mIoU (and pACC) per seed."""
    paccs = paccs or [90.0] * len(mious)
    return [
        fake_run(
            arm_dir / f"seed{k}",
            cfg,
            seed=SEED0 + k,
            seg={"mIoU": v, "pACC": p, "fwIoU": 80.0, "mACC": 70.0},
            **kw,
        )
        for k, (v, p) in enumerate(zip(mious, paccs))
    ]


def expected_se(a, b) -> float:
    """Standard error of mean(a) − mean(b), written out with numpy (ddof=1)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


# values: baseline and both students have a sample std of exactly 1, so the SE of each Δ is
# sqrt(1/3 + 1/3) = 0.816 and 2·SE = 1.633; LAD's Δ 1.70 is above it, CAD's Δ 1.60 below
BASE = [60.0, 61.0, 62.0]
LAD = [61.7, 62.7, 63.7]
CAD = [61.6, 62.6, 63.6]
LAD_PACC = [88.0, 89.0, 93.0]
NAIVE = 65.0  # one seed: Δ +4 but no SE, so never significant
CITY_BASE, CITY_LAD = 50.0, [52.0, 54.0, 56.0]  # baseline with one seed: no SE either
CITY = "cityscapes_fine_sem_seg_val"


@pytest.fixture
def seeded(tmp_path):
    root = tmp_path / "runs"
    lad_taps = [["res5", "res5", "lad", 10.0]]
    r = {
        "teacher": [
            fake_run(
                root / "pspnet_r101",
                seg_config(101, 0.5),
                seed=SEED0,
                seg={"mIoU": 70.0, "pACC": 95.0, "fwIoU": 85.0, "mACC": 80.0},
            )
        ]
    }
    r["nokd"] = seeded_arm(root / "pspnet_r18", seg_config(), BASE)
    r["lad"] = seeded_arm(root / "lad_res5", seg_config(taps=lad_taps), LAD, LAD_PACC)
    # a fourth LAD seed that stopped early: listed, but in no mean
    r["lad"].append(
        fake_run(root / "lad_res5" / "seed3", seg_config(taps=lad_taps), seed=45, finished=False)
    )
    # CAD's seeds in folders of their own: grouped by config, not by folder name
    r["cad"] = [
        fake_run(
            root / f"cad_s{k}",
            seg_config(taps=[["res5", "res5", "cad", 10.0]]),
            seed=SEED0 + k,
            seg={"mIoU": v, "pACC": 90.0, "fwIoU": 80.0, "mACC": 70.0},
        )
        for k, v in enumerate(CAD)
    ]
    r["naive"] = seeded_arm(
        root / "naive_res5", seg_config(taps=[["res5", "res5", "naive", 10.0]]), [NAIVE]
    )
    # LAD again but with another learning rate: another setting, not a fourth seed
    other = seg_config(taps=lad_taps)
    other["SOLVER"]["BASE_LR"] = 0.02
    r["lad_lr"] = seeded_arm(root / "lad_slow_lr", other, [60.5])
    r["city_nokd"] = seeded_arm(root / "city_r18", seg_config(dataset=CITY), [CITY_BASE])
    r["city_lad"] = seeded_arm(root / "city_lad", seg_config(taps=lad_taps, dataset=CITY), CITY_LAD)
    return root, r


def _write(tmp_path, root, r):
    out = tmp_path / "report"
    arms = ["nokd", "lad", "naive", "lad_lr", "city_nokd", "city_lad"]
    # arm folders stand for their seed<k> folders; CAD's runs are given one by one
    args = [
        str(root / n)
        for n in (
            "pspnet_r101",
            "pspnet_r18",
            "lad_res5",
            "naive_res5",
            "lad_slow_lr",
            "city_r18",
            "city_lad",
        )
    ]
    args += [str(p) for p in r["cad"]] + [str(r["lad"][0])]  # a LAD seed again: read once
    assert _tool("report").main([*args, "--out", str(out)]) == 0
    n_runs = sum(len(r[k]) for k in ["teacher", "cad", *arms])
    return out, n_runs


def test_seeds_make_one_row_with_mean_std_and_delta_se(seeded, tmp_path, capsys):
    root, r = seeded
    out, n_runs = _write(tmp_path, root, r)
    capsys.readouterr()
    seg = {row["run"]: row for row in _csv(out / "segmentation.csv")}
    assert set(seg) == {
        "pspnet_r101",
        "pspnet_r18",
        "lad_res5",
        "cad_s0,cad_s1,cad_s2",
        "naive_res5",
        "lad_slow_lr",
        "city_r18",
        "city_lad",
    }
    lad, base, cad = seg["lad_res5"], seg["pspnet_r18"], seg["cad_s0,cad_s1,cad_s2"]
    # mean, sample std and number of seeds; the unfinished fourth seed is in none of them
    assert (lad["seeds"], base["seeds"], cad["seeds"]) == ("3", "3", "3")
    assert float(lad["mIoU"]) == pytest.approx(statistics.fmean(LAD), abs=1e-4)
    assert float(lad["mIoU_std"]) == pytest.approx(statistics.stdev(LAD), abs=1e-4)
    assert float(lad["pACC"]) == pytest.approx(statistics.fmean(LAD_PACC), abs=1e-4)
    assert float(lad["pACC_std"]) == pytest.approx(statistics.stdev(LAD_PACC), abs=1e-4)
    assert float(base["mIoU_std"]) == pytest.approx(statistics.stdev(BASE), abs=1e-4)
    assert lad["seed_values"] == "42;43;44" and lad["baseline_run"] == "pspnet_r18"
    assert lad["path"].split(";") == [str(p) for p in r["lad"][:3]]
    # Δ of the means and its standard error, against the formula written out independently
    for row, vals in ((lad, LAD), (cad, CAD)):
        delta = statistics.fmean(vals) - statistics.fmean(BASE)
        assert float(row["delta_mIoU"]) == pytest.approx(delta, abs=1e-4)
        assert float(row["delta_se"]) == pytest.approx(expected_se(vals, BASE), abs=1e-4)
        assert row["baseline_seeds"] == "3"
    # one seed: no std, no SE, whichever side has it
    naive = seg["naive_res5"]
    assert (naive["seeds"], naive["mIoU_std"], naive["delta_se"]) == ("1", "", "")
    assert float(naive["delta_mIoU"]) == pytest.approx(NAIVE - statistics.fmean(BASE), abs=1e-4)
    city = seg["city_lad"]
    assert float(city["mIoU_std"]) == pytest.approx(2.0, abs=1e-4) and city["delta_se"] == ""
    assert float(city["delta_mIoU"]) == pytest.approx(statistics.fmean(CITY_LAD) - CITY_BASE)
    assert base["delta_mIoU"] == "" and base["delta_se"] == ""
    # another learning rate is another setting, even with the same method, tap and λ
    assert seg["lad_slow_lr"]["seeds"] == "1" and float(seg["lad_slow_lr"]["mIoU"]) == 60.5
    # every run folder is still one line of runs.csv, with its SEED
    lines = _csv(out / "runs.csv")
    runs = {row["run"]: row for row in lines}
    assert len(lines) == len(runs) == n_runs  # the LAD seed given twice is one line
    assert [runs[f"lad_res5/seed{k}"]["seed"] for k in range(4)] == ["42", "43", "44", "45"]
    assert runs["lad_res5/seed3"]["status"] == "unfinished"


def test_markdown_marks_significance_exactly_when_delta_exceeds_2se(seeded, tmp_path, capsys):
    root, r = seeded
    out, _ = _write(tmp_path, root, r)
    capsys.readouterr()
    md = (out / "report.md").read_text()
    se = expected_se(LAD, BASE)
    assert statistics.fmean(LAD) - statistics.fmean(BASE) > 2 * se  # the cases are as meant:
    assert statistics.fmean(CAD) - statistics.fmean(BASE) < 2 * se  # one on each side
    assert "| S: PSPNet-R18/4 |  |  |  | 61.00 ± 1.00 (3) | 50.00 (1) |" in md
    # naive (one seed, Δ +4) is the best CamVid mean, LAD second, CAD unmarked; on Cityscapes
    # the baseline has one seed, so LAD's Δ +4 has no ± and no mark
    assert (
        "| + LAD | res5 | 10 | 10 | <u>62.70</u> ± 1.00 (3), Δ +1.70 ± 0.82* "
        "| **54.00** ± 2.00 (3), Δ +4.00 |" in md
    )
    assert "| + CAD | res5 | 10 | 10 | 62.60 ± 1.00 (3), Δ +1.60 ± 0.82 | – |" in md
    assert "| + Naive | res5 | 10 | 10 | **65.00** (1), Δ +4.00 | – |" in md
    assert "| + LAD (lad_slow_lr) | res5 | 10 | 10 | 60.50 (1), Δ -0.50 | – |" in md
    assert "`*`: Δ > 2·SE of the difference" in md
    tables = md.split("## Runs not in the tables")[0]
    assert len(re.findall(r"\d\* \|", tables)) == 1  # LAD on CamVid is the only significant Δ
    left = md.split("## Runs not in the tables")[1].split("## Runs read")[0]
    assert "| lad_res5/seed3 | unfinished |" in left
    assert "| lad_res5/seed1 | finished | student | CamVid |" in md  # runs read: per folder


def test_detection_seeds_ap_std_and_delta_se(tmp_path):
    def det(ap):  # every AP column moves with AP
        return {
            "AP": ap,
            "AP50": ap + 20,
            "AP75": ap + 3,
            "APs": ap - 17,
            "APm": ap + 3,
            "APl": ap + 12,
        }

    base_ap, lad_ap = [37.0, 37.4, 37.8], [40.0, 41.0, 42.0]
    root = tmp_path / "det"
    teacher = fake_run(root / "ret_x101", det_config(101, 32), seed=SEED0, det=det(41.0))
    base = [
        fake_run(root / "ret_r50" / f"seed{k}", det_config(50), seed=SEED0 + k, det=det(v))
        for k, v in enumerate(base_ap)
    ]
    lad_cfg = det_config(50, taps=[["p3", "p3", "lad", 2.0]])
    lad = [
        fake_run(root / "ret_lad" / f"seed{k}", lad_cfg, seed=SEED0 + k, det=det(v))
        for k, v in enumerate(lad_ap)
    ]
    report = build_report(collect_runs([*base, *lad], teachers=[teacher]))
    paths = write_report(report, tmp_path / "report")
    rows = {row["run"]: row for row in _csv(paths["detection"])}
    row, se = rows["ret_lad"], expected_se(lad_ap, base_ap)
    assert row["seeds"] == "3" and float(row["AP_std"]) == pytest.approx(1.0, abs=1e-4)
    assert float(row["AP"]) == pytest.approx(41.0, abs=1e-4)
    for m in ("AP", "APs", "APl"):
        assert float(row[f"delta_{m}"]) == pytest.approx(41.0 - 37.4, abs=1e-4)
        assert float(row[f"delta_{m}_se"]) == pytest.approx(se, abs=1e-4)
    assert rows["ret_x101"]["seeds"] == "1" and rows["ret_x101"]["AP_std"] == ""
    md = paths["markdown"].read_text()
    assert (
        "| RetinaNet-X101 | RetinaNet-R50 | LAD | p3 | 2 | **41.0** ± 1.0 (3), Δ +3.6 ± 0.6* |"
        in md
    )
    assert "|  | RetinaNet-R50 | w/o KD |  |  | 37.4 ± 0.4 (3) |" in md


def test_no_delta_against_an_undefined_baseline(tmp_path):
    """COCOEvaluator gives NaN AP to a model without detections: no Δ is printed against it."""
    nan = {k: float("nan") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    base = fake_run(tmp_path / "nokd", det_config(18), seed=SEED0, det=nan)
    lad = fake_run(tmp_path / "lad", det_config(18, taps=[["p3", "p3", "lad", 10.0]]), seed=SEED0,
                   det={k: 0.5 for k in nan})  # fmt: skip
    paths = write_report(build_report(collect_runs([base, lad])), tmp_path / "report")
    md = paths["markdown"].read_text()
    row = next(line for line in md.splitlines() if "| LAD | p3 | 10 |" in line)  # the AP table
    assert "Δ" not in row and "+nan" not in row and "| **0.5** (1) |" in row


def test_loss_balance_median_over_periods_and_seeds(tmp_path):
    lad_key, kd_key = "loss_distill_lad_res5", "loss_distill_kd_logits"
    ratios = [  # per seed, per logged period
        [{lad_key: 0.5, kd_key: 4.0}, {lad_key: 2.0, kd_key: 8.0}, {lad_key: 1.0, kd_key: 6.0}],
        [{lad_key: 3.0, kd_key: 5.0}, {lad_key: 0.25, kd_key: float("nan")}],
        [{lad_key: 1.5, kd_key: 7.0}, {lad_key: 0.75, kd_key: 9.0}, {lad_key: 10.0}],
    ]
    root = tmp_path / "runs"
    taps = [["res5", "res5", "lad", 10.0]]
    runs = [
        fake_run(
            root / "lad_res5" / f"seed{k}",
            seg_config(taps=taps),
            seed=SEED0 + k,
            seg={"mIoU": 60.0 + k},
            ratios=rk,
        )
        for k, rk in enumerate(ratios)
    ]
    # seed 1 resumed from a checkpoint: iteration 39 logged again, the later value counts
    with open(runs[1] / "metrics.json", "a") as f:
        f.write(json.dumps({"iteration": 39, f"grad_ratio/{lad_key}": 5.0}) + "\n")
    cad = fake_run(
        root / "cad_res5",
        seg_config(taps=[["res5", "res5", "cad", 10.0]]),
        seed=SEED0,
        seg={"mIoU": 61.0},
        ratios=[{"loss_distill_cad_res5": 0.02}],
    )
    nokd = fake_run(root / "nokd", seg_config(), seed=SEED0, seg={"mIoU": 59.0})
    report = build_report(collect_runs([root / "lad_res5", cad, nokd]))
    lad_vals = [0.5, 2.0, 1.0, 3.0, 5.0, 1.5, 0.75, 10.0]  # 0.25 replaced by the resumed 5.0
    kd_vals = [4.0, 8.0, 6.0, 5.0, 7.0, 9.0]  # NaN dropped
    assert report.balance_terms == ["loss_distill_cad_res5", kd_key, lad_key]
    rows = {r["run"]: r for r in report.balance_rows}
    assert set(rows) == {"lad_res5", "cad_res5"}  # the no-KD run logs no ratio
    assert rows["lad_res5"][f"grad_ratio/{lad_key}"] == statistics.median(lad_vals)
    assert rows["lad_res5"][f"grad_ratio/{kd_key}"] == statistics.median(kd_vals)
    assert rows["lad_res5"]["seeds"] == 3 and rows["cad_res5"][f"grad_ratio/{lad_key}"] is None
    paths = write_report(report, tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "## Loss balance (median gradient ratio to the task loss, per distilled position)" in md
    # one column per position (res5, then the logits), each term in its position's column
    assert "| run | data set | model | method | λ | λ_kd | seeds | res5 | logits |" in md
    assert (
        f"| lad_res5 | CamVid | PSPNet-R18/4 | LAD | 10 | 10 | 3 "
        f"| {statistics.median(lad_vals):.3g} | {statistics.median(kd_vals):.3g} |" in md
    )
    cad_line = "| cad_res5 | CamVid | PSPNet-R18/4 | CAD | 10 | 10 | 1 | 0.02 | – |"
    assert cad_line in md
    csv_rows = {r["run"]: r for r in _csv(paths["loss_balance"])}
    assert float(csv_rows["lad_res5"][f"grad_ratio/{lad_key}"]) == pytest.approx(
        statistics.median(lad_vals), rel=1e-6
    )
    assert csv_rows["cad_res5"][f"grad_ratio/{kd_key}"] == ""
    # no ratios anywhere: no section, no CSV
    plain = build_report(collect_runs([nokd]))
    assert (
        not plain.balance_rows
        and "Loss balance" not in write_report(plain, tmp_path / "plain")["markdown"].read_text()
    )


# --- the tools' --seeds plans ------------------------------------------------------------------
def _opts(opts) -> dict:
    """KEY VALUE overrides as a dict (the last value of a key wins, as in Detectron2)."""
    opts = [str(x) for x in opts]
    assert len(opts) % 2 == 0
    return dict(zip(opts[0::2], opts[1::2]))


def test_demo_plans_seeds_per_student_arm_and_one_teacher(tmp_path):
    from radkd_d2.engine.setup import load_config

    demo = _tool("demo")
    defaults = demo.parse_args([])  # the documented regime
    assert (defaults.seeds, defaults.teacher_iters, defaults.start_iters, defaults.iters) == (3, 800, 150, 300)
    assert defaults.lanes == 2 and defaults.split == "test" and defaults.task == "seg"
    assert defaults.output == "output/demo"
    planned = demo.plan_runs(
        demo.parse_args(["--output", str(tmp_path), "--seeds", "3", "--iters", "7", "--teacher-iters", "9"])
    )
    plan = [r for r, _ in planned]
    assert [n for _, n in planned] == [9, 150] + [7] * 9
    assert [r.arm for r in plan] == ["teacher", "student_start"] + ["student_nokd", "student_lad", "student_kd"] * 3
    teacher = _opts(plan[0].opts)
    assert "SEED" not in teacher and teacher["OUTPUT_DIR"] == str(tmp_path / "teacher")
    start = str(tmp_path / "student_start" / "model_final.pth")
    for arm in ("student_nokd", "student_lad", "student_kd"):
        runs = [_opts(r.opts) for r in plan if r.arm == arm]
        assert [o["SEED"] for o in runs] == ["42", "43", "44"]
        assert [o["OUTPUT_DIR"] for o in runs] == [
            str(tmp_path / arm / f"seed{k}") for k in range(3)
        ]
        assert all(o["SOLVER.MAX_ITER"] == "7" for o in runs)
        assert all(o["MODEL.WEIGHTS"] == start for o in runs)  # every arm continues one start
    for arm in ("student_lad", "student_kd"):
        distilled = [_opts(r.opts) for r in plan if r.arm == arm]
        assert {o["MODEL.DISTILL.TEACHER.WEIGHTS"] for o in distilled} == {
            str(tmp_path / "teacher" / "model_final.pth")
        }
    # the control arm is the LAD arm without its feature term: same KD, same warm-up
    lad_cfg, kd_cfg = (
        load_config(str(next(r for r in plan if r.arm == arm).config), [], validate=False)
        for arm in ("student_lad", "student_kd")
    )
    assert [list(t) for t in lad_cfg.MODEL.DISTILL.TAPS] == [["res5", "res5", "lad", 10.0]]
    assert list(kd_cfg.MODEL.DISTILL.TAPS) == []
    for key in ("KD_WEIGHT", "KD_REDUCTION", "WARMUP_ITERS", "TEACHER"):
        assert getattr(kd_cfg.MODEL.DISTILL, key) == getattr(lad_cfg.MODEL.DISTILL, key), key
    # the overrides are real config keys, and seed 0 keeps the config's own SEED
    first, second = (r for r in plan if r.arm == "student_lad" and r.index < 2)
    assert load_config(str(first.config), [], validate=False).SEED == 42
    cfg = load_config(str(second.config), [str(x) for x in second.opts], validate=False)
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (43, str(tmp_path / "student_lad" / "seed1"))
    # scored on the held-out test split
    assert tuple(cfg.DATASETS.TEST) == ("synthetic_sem_seg_test",) and cfg.DATASETS.SYNTHETIC.NUM_TEST > 0
    # one seed: the folders and SEED of before seeds existed
    single = [r for r, _ in demo.plan_runs(demo.parse_args(["--output", str(tmp_path), "--seeds", "1"]))]
    assert [_opts(r.opts)["OUTPUT_DIR"] for r in single] == [
        str(tmp_path / a) for a in ("teacher", "student_start", "student_nokd", "student_lad", "student_kd")
    ]
    assert all("SEED" not in _opts(r.opts) for r in single)


def test_demo_main_reports_its_seeds(tmp_path, monkeypatch, capsys):
    """The whole demo with train_net replaced by a fake that writes the run folder the real one
    would (config.yaml from the planned config + overrides, metrics.json with an mIoU that
    depends on the arm and the seed): the report has one row per arm, over its seeds."""
    from radkd_d2.engine.setup import load_config

    demo = _tool("demo")
    miou = {"teacher": 70.0, "student_start": 50.0, "student_nokd": 60.0, "student_lad": 64.0, "student_kd": 61.0}
    commands = []

    def fake_training(cmd, log, **kwargs):
        commands.append(cmd)
        at = cmd.index("--config-file")
        cfg = load_config(cmd[at + 1], [a for a in cmd[at + 2 :] if not a.startswith("--")], validate=False)
        run = Path(cfg.OUTPUT_DIR)
        arm = run.name if run.name in ("teacher", "student_start") else run.parent.name
        fake_run(
            run,
            yaml.safe_load(cfg.dump()),
            seed=cfg.SEED,
            seg={"mIoU": miou[arm] + (cfg.SEED - SEED0), "pACC": 90.0, "fwIoU": 80.0, "mACC": 70.0},
            iters=cfg.SOLVER.MAX_ITER,
            replace=True,
        )
        return 0

    monkeypatch.setattr("radkd_d2.analysis.launch.run_training", fake_training)
    demo.main(["--output", str(tmp_path / "demo"), "--seeds", "2", "--iters", "20"])
    assert len(commands) == 8  # the teacher and the start once, three student arms twice
    seg = {r["run"]: r for r in _csv(tmp_path / "demo" / "report" / "segmentation.csv")}
    assert set(seg) == {"teacher", "student_nokd", "student_lad", "student_kd"}
    assert (seg["student_lad"]["seeds"], seg["student_lad"]["seed_values"]) == ("2", "42;43")
    assert float(seg["student_lad"]["mIoU"]) == pytest.approx(64.5)
    assert float(seg["student_lad"]["delta_mIoU"]) == pytest.approx(4.0)
    assert float(seg["student_lad"]["delta_se"]) == pytest.approx(
        expected_se([64, 65], [60, 61]), abs=1e-4
    )
    text = (tmp_path / "demo" / "report.md").read_text()
    assert "**64.50** ± 0.71 (2), Δ +4.00 ± 0.71*" in text and "60.50 ± 0.71 (2)" in text
    assert "(student_lad/seed1) | 65.00 | 90.00 |" in text  # mIoU, pixel accuracy, time per run
    assert "(student_start) | 50.00 | 90.00 |" in text
    # what each term adds: KD alone vs no KD, LAD + KD vs KD alone (61, 62 vs 60, 61; 64, 65)
    se = expected_se([64, 65], [61, 62])
    assert f"- LAD + KD vs logit KD alone (the angular term): +3.00 ± {se:.2f} *" in text
    assert f"- logit KD alone vs no KD: +1.00 ± {expected_se([61, 62], [60, 61]):.2f}\n" in text
    # --resume reuses the finished runs: nothing is trained again, the report is the same
    commands.clear()
    demo.main(["--output", str(tmp_path / "demo"), "--seeds", "2", "--iters", "20", "--resume"])
    assert commands == []
    assert "**64.50** ± 0.71 (2), Δ +4.00 ± 0.71*" in (tmp_path / "demo" / "report.md").read_text()
    # a run with other iterations is not reused
    demo.main(["--output", str(tmp_path / "demo"), "--seeds", "2", "--iters", "30", "--resume"])
    assert len(commands) == 6 and all("30" in c for c in commands)


def test_eval_period_does_not_split_a_setting():
    """A seed evaluated on the way (TEST.EVAL_PERIOD, for a val curve) is still a seed of the
    same setting; any other key makes another setting."""
    from radkd_d2.evaluation.runs import setting_key

    a = {"SEED": 1, "OUTPUT_DIR": "a", "TEST": {"EVAL_PERIOD": 0, "AUG": {"ENABLED": False}}}
    b = {"SEED": 2, "OUTPUT_DIR": "b", "TEST": {"EVAL_PERIOD": 100, "AUG": {"ENABLED": False}}}
    assert setting_key(a) == setting_key(b)
    c = copy.deepcopy(b)
    c["TEST"]["AUG"]["ENABLED"] = True
    assert setting_key(c) != setting_key(a)
    assert a["TEST"]["EVAL_PERIOD"] == 0  # the config itself is left as it was


def test_camvid_study_plan_paper_shape(tmp_path):
    """The CamVid study: one teacher and one shared start (both with val curves), 3 seeds of the
    no-KD and every feature arm continued from the start, 2 seeds per sweep point, the first
    no-KD seed evaluated on the way; every override a real config key."""
    from radkd_d2.engine.setup import load_config

    study = _tool("camvid_study")
    args = study.build_parser().parse_args(
        ["--data-root", "DATA", "--out", str(tmp_path), "--eval-period", "50"]
    )
    plan = study.plan_runs(args)
    assert (plan.iters, plan.start_iters, plan.teacher_iters) == (300, 600, 2400)
    start = str(tmp_path / "student_start" / "model_final.pth")
    main = plan.main_runs()
    assert sorted({r.arm for r in main}) == [
        "cad_res5", "kd_logits", "lad_res5", "lad_res5_nokd", "naive_res5", "student_nokd"]
    assert all(len(plan.arm_dirs(a)) == 3 for a in {r.arm for r in main})
    # the two control arms: logit KD alone, and the LAD term alone (same teacher, same start)
    from radkd_d2.evaluation.naming import classify_method

    def method(arm):
        r = next(r for r in main if r.arm == arm)
        c = load_config(str(r.config), [str(x) for x in r.opts], validate=False)
        return classify_method(c.MODEL.META_ARCHITECTURE, c.MODEL.DISTILL.TAPS, c.MODEL.DISTILL.KD_WEIGHT)

    assert method("kd_logits") == ("KD", "", None, 10.0)
    assert method("lad_res5_nokd") == ("LAD", "res5", 10.0, 0.0)
    assert method("lad_res5") == ("LAD", "res5", 10.0, 10.0)
    assert all(_opts(r.opts)["MODEL.WEIGHTS"] == start for r in plan.students)
    sweep = [r for r in plan.students if r not in main]
    assert len(sweep) == 2 * 3 * 2  # naive/LAD x λ {1, 100, 1000} x 2 seeds
    assert {_opts(r.opts)["SEED"] for r in sweep} == {"42", "43"}
    curves = [r for r in [plan.teacher, plan.start, *plan.students] if _opts(r.opts)["TEST.EVAL_PERIOD"] == "50"]
    assert [r.name for r in curves] == ["teacher", "student_start", "student_nokd/seed0"]
    assert _opts(plan.teacher.opts)["SOLVER.MAX_ITER"] == "2400"
    # the students learn from the teacher's best val evaluation, which it keeps as model_best.pth
    assert _opts(plan.teacher.opts)["TEST.BEST_CHECKPOINT_METRIC"] == "sem_seg/mIoU"
    cfg = load_config(str(sweep[-1].config), [str(x) for x in sweep[-1].opts], validate=False)
    assert cfg.MODEL.DISTILL.TAPS == [["res5", "res5", "lad", 1000.0]] and cfg.SOLVER.MAX_ITER == 300
    assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS == str(tmp_path / "teacher" / "model_best.pth")
    # from scratch on request: no start, no weights
    scratch = study.plan_runs(study.build_parser().parse_args(
        ["--data-root", "DATA", "--out", str(tmp_path), "--start-iters", "0"]))
    assert scratch.start is None and all("MODEL.WEIGHTS" not in _opts(r.opts) for r in scratch.students)
    # the schedule check: gain over the last quarter of a curve
    assert study.last_quarter_gain([(99, 10.0), (199, 20.0), (299, 25.0), (399, 26.0)]) == 1.0


def test_camvid_schedule_section_reports_curves_and_the_teachers_lead(tmp_path):
    """The study's "Schedule" section: each curve as (iterations done: mIoU), its gain over the
    last quarter, and whether the teacher leads the plain student (seed mean) by 8 points."""
    study = _tool("camvid_study")
    plan = study.plan_runs(study.build_parser().parse_args(
        ["--data-root", "D", "--out", str(tmp_path), "--methods", "lad", "--sweep-weights", "1"]))

    def run(path, curve, final, max_iter):
        fake_run(path, seg_config(max_iter=max_iter), seed=42, seg={"mIoU": final, "pACC": 90.0}, iters=max_iter)
        lines = (path / "metrics.json").read_text().splitlines(True)  # the final row last
        rows = [json.dumps({"iteration": it - 1, "sem_seg/mIoU": v}) + "\n" for it, v in curve]
        (path / "metrics.json").write_text("".join(lines[:-1] + rows + lines[-1:]))

    run(plan.teacher.out_dir, [(200, 20.0), (400, 28.0), (600, 29.0)], 29.5, 800)
    run(plan.start.out_dir, [(200, 10.0)], 15.0, 400)
    for k, d in enumerate(plan.arm_dirs("student_nokd")):
        run(d, [(100, 18.0)] if k == 0 else [], 20.0 + k, 300)
    assert "lead" not in study.schedule_section(plan)  # the teacher's model_best.pth not scored yet
    # the students' teacher: model_best.pth, scored on its own (here above the last evaluation)
    fake_run(study.teacher_best_dir(plan), seg_config(max_iter=800), seed=42, seg={"mIoU": 30.0}, iters=800)
    text = study.schedule_section(plan)
    assert "| teacher | 200: 20.0, 400: 28.0, 600: 29.0, 800: 29.5 | +0.5 |" in text
    assert "| no KD, seed 0 (from the start) | 100: 18.0, 300: 20.0 | +2.0 |" in text
    assert "(model_best.pth, its best val evaluation) 30.0" in text
    assert "lead +9.0 points, at least the 8" in text  # 30.0 vs mean(20, 21, 22) = 21
    assert "| shared start | 200: 10.0, 400: 15.0 | +5.0 |" in text


def test_split_term_takes_the_longest_registered_loss_name():
    from radkd_d2.evaluation.report import split_term

    assert split_term("loss_distill_lad_p3") == ("lad", "p3")
    assert split_term("loss_distill_cirkd_memory_res5") == ("cirkd_memory", "res5")
    assert split_term("loss_distill_kd_logits") == ("kd", "logits")
    assert split_term("loss_distill_lad_res4_to_res5") == ("lad", "res4_to_res5")
    assert split_term("loss_other") == ("", "loss_other")
    assert split_term("loss_distill_unknownloss_p3") == ("", "loss_distill_unknownloss_p3")


def test_nan_scores_count_as_absent():
    """COCOEvaluator's NaN (no object of a size range in the set) is no score: it neither
    crashes the spread nor turns a contrast into NaN."""
    from radkd_d2.evaluation.summary import contrast_text

    assert contrast_text([1.0, float("nan"), 3.0], [1.0, 1.0]) == contrast_text([1.0, 3.0], [1.0, 1.0])
    assert contrast_text([float("nan")], [1.0]) == ""
    assert contrast_text([2.0, 4.0], [1.0, 2.0]) == f"+1.50 ± {expected_se([2, 4], [1, 2]):.2f}"


def test_mask_ap_is_read_and_tabled_beside_box_ap(tmp_path):
    """A Mask R-CNN run's segm/* results become mask_AP... (box AP keeps its keys), and the
    report adds a mask AP table with the same seeds and Δ ± SE."""
    from radkd_d2.evaluation.runs import read_run

    def mask_run(path, cfg, seed, box, mask):
        fake_run(path, cfg, seed=seed, det={"AP": box, "AP50": 2 * box, "AP75": box / 2, "APs": 1.0, "APm": 2.0, "APl": float("nan")})
        with open(path / "metrics.json", "a") as f:
            f.write(json.dumps({"iteration": 100, **{f"segm/{k}": v for k, v in {"AP": mask, "AP50": 2 * mask, "AP75": 1.0, "APs": 0.5, "APm": 1.5, "APl": float("nan")}.items()}}) + "\n")
        return path

    plain = det_config(depth=18)
    plain["MODEL"]["META_ARCHITECTURE"] = "GeneralizedRCNN"
    plain["MODEL"]["MASK_ON"] = True
    lad = copy.deepcopy(plain)
    lad["MODEL"]["META_ARCHITECTURE"] = "DistillGeneralizedRCNN"
    lad["MODEL"]["DISTILL"] = {"STUDENT_META_ARCHITECTURE": "GeneralizedRCNN", "TAPS": [["p2", "p2", "lad", 10.0]], "KD_WEIGHT": 0.0,
                               "TEACHER": {"CONFIG_FILE": "configs/synthetic/mask_rcnn_x50_tiny.yaml"}}  # fmt: skip
    base = [mask_run(tmp_path / "nokd" / f"seed{k}", plain, SEED0 + k, 10.0 + k, 8.0 + k) for k in range(2)]
    dist = [mask_run(tmp_path / "lad" / f"seed{k}", lad, SEED0 + k, 12.0 + k, 11.0 + k) for k in range(2)]
    got = read_run(base[0]).metrics
    assert got["AP"] == 10.0 and got["mask_AP"] == 8.0 and got["mask_AP50"] == 16.0
    report = build_report(collect_runs(dist, baselines=base))
    row = next(r for r in report.det_rows if r["role"] == "student")
    assert row["mask_AP"] == pytest.approx(11.5) and row["delta_mask_AP"] == pytest.approx(3.0)
    assert row["delta_AP"] == pytest.approx(2.0)
    md = write_report(report, tmp_path / "report")["markdown"].read_text()
    assert ": box AP (%)" in md and ": mask AP (%)" in md
    assert "| MaskRCNN-X50 | MaskRCNN-R18 | LAD | p2 | 10 | **11.5** ± 0.7 (2), Δ +3.0 ± 0.7*" in md  # mask table
