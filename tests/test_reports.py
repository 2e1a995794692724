"""Reports, plots, sweeps and heatmaps (tools/report.py, plot_magnitudes.py, sweep.py,
heatmaps.py) on fabricated run folders, plus one tiny real sweep and a random tiny model."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from radkd_d2.evaluation.runs import read_run

from conftest import REPO, load_cfg

LAD_CFG = "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml"
TEACHER_CFG = "configs/camvid/pspnet_r101_camvid.yaml"  # a real file: the report reads its model
TINY_DATA = [
    "DATASETS.SYNTHETIC.NUM_TRAIN",
    "4",
    "DATASETS.SYNTHETIC.NUM_VAL",
    "2",
    "DATASETS.SYNTHETIC.SIZE",
    "64",
]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    # registered first, as importlib's recipe does: dataclasses look their module up there
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _png_size(path: Path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


# --- fabricated runs ---------------------------------------------------------------------------
def seg_config(depth=18, width=0.25, taps=None, kd=10.0, dataset="camvid_val", max_iter=100):
    """The config.yaml keys the report reads; ``taps=None`` is a plain (non-distilled) model."""
    meta = "SemanticSegmentor" if taps is None else "DistillSemanticSegmentor"
    return {
        "MODEL": {
            "META_ARCHITECTURE": meta,
            "BACKBONE": {"NAME": "build_dilated_resnet_backbone"},
            "DRN": {"DEPTH": depth, "WIDTH_MULT": width},
            "SEM_SEG_HEAD": {"NAME": "PSPHead"},
            "DISTILL": {
                "STUDENT_META_ARCHITECTURE": "SemanticSegmentor",
                "TAPS": taps or [],
                "KD_WEIGHT": kd,
                "TEACHER": {"CONFIG_FILE": TEACHER_CFG, "OPTS": []},
            },
        },
        "DATASETS": {"TEST": [dataset]},
        "SOLVER": {"MAX_ITER": max_iter},
    }


def det_config(depth=50, groups=1, taps=None, teacher_cfg="configs/coco/retinanet_x101.yaml"):
    cfg = {
        "MODEL": {
            "META_ARCHITECTURE": "DistillRetinaNet" if taps else "RetinaNet",
            "BACKBONE": {"NAME": "build_retinanet_resnet_fpn_backbone"},
            "RESNETS": {"DEPTH": depth, "NUM_GROUPS": groups},
        },
        "DATASETS": {"TEST": ["coco_2017_val"]},
        "SOLVER": {"MAX_ITER": 100},
    }
    if taps:
        cfg["MODEL"]["DISTILL"] = {
            "STUDENT_META_ARCHITECTURE": "RetinaNet",
            "TAPS": taps,
            "KD_WEIGHT": 0.0,
            "TEACHER": {"CONFIG_FILE": teacher_cfg},
        }
    return cfg


def make_run(
    path: Path, cfg: dict, *, miou=None, det=None, iters=100, diagnostics=False, taps=("res5",)
):
    """A run folder as train_net leaves it: config.yaml and metrics.json (training rows every
    20 iterations, distill/<tap>/* diagnostics when asked, the final evaluation row)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for it in range(19, iters, 20):
        row = {"iteration": it, "time": 0.5, "total_loss": 1.0 / (it + 1)}
        if diagnostics:
            for k, tap in enumerate(taps):
                m, n = 50.0 * (k + 1), 2000.0 / (it + 1) + 40.0
                row.update(
                    {
                        f"distill/{tap}/m": m,
                        f"distill/{tap}/n": n,
                        f"distill/{tap}/mn_over_N": m * n / 2**20,
                        f"distill/{tap}/cos_theta": 0.5,
                    }
                )
        rows.append(row)
    if miou is not None:
        rows.append(
            {
                "iteration": iters,
                "sem_seg/mIoU": miou,
                "sem_seg/pACC": 90.0,
                "sem_seg/fwIoU": 80.0,
                "sem_seg/mACC": 70.0,
                "sem_seg/IoU-road": 95.0,
            }
        )
    if det is not None:
        rows.append(
            {"iteration": iters, **{f"bbox/{k}": v for k, v in det.items()}, "bbox/AP-car": 50.0}
        )
    (path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _det(ap, ap50, ap75, aps, apm, apl):
    return dict(AP=ap, AP50=ap50, AP75=ap75, APs=aps, APm=apm, APl=apl)


@pytest.fixture
def fabricated(tmp_path):
    root = tmp_path / "runs"
    r = {}
    r["teacher"] = make_run(root / "pspnet_r101", seg_config(depth=101, width=0.5), miou=70.0)
    r["nokd"] = make_run(root / "pspnet_r18", seg_config(), miou=60.0)
    for method, value in (("lad", 64.5), ("cad", 63.25), ("pad", 61.0), ("naive", 62.0)):
        r[method] = make_run(
            root / f"{method}_res5",
            seg_config(taps=[["res5", "res5", method, 10.0]]),
            miou=value,
            diagnostics=True,
            taps=("res5", "logits"),
        )
    r["naive_dec"] = make_run(
        root / "naive_decoder", seg_config(taps=[["decoder", "decoder", "naive", 10.0]]), miou=59.0
    )
    r["kd"] = make_run(root / "kd_only", seg_config(taps=[], kd=10.0), miou=61.5)
    r["unfinished"] = make_run(
        root / "cwd_res5", seg_config(taps=[["res5", "res5", "cwd", 3.0]]), iters=60
    )
    r["missing"] = root / "mgd_res5"  # never started
    r["det_teacher"] = make_run(
        root / "ret_x101", det_config(101, 32), det=_det(41.0, 60.8, 44.0, 24.1, 45.3, 55.0)
    )
    r["det_nokd"] = make_run(
        root / "ret_r50", det_config(50), det=_det(37.4, 56.7, 40.3, 20.6, 40.7, 49.7)
    )
    r["det_lad"] = make_run(
        root / "ret_r50_lad",
        det_config(50, taps=[["p3", "p3", "lad", 2.0], ["p4", "p4", "lad", 2.0]]),
        det=_det(41.0, 60.3, 44.1, 23.3, 45.2, 55.1),
    )
    return r


def _csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_tables_deltas_and_left_out_runs(fabricated, tmp_path, capsys):
    r = fabricated
    out = tmp_path / "report"
    runs = [
        r[k]
        for k in (
            "teacher",
            "nokd",
            "lad",
            "cad",
            "pad",
            "naive",
            "naive_dec",
            "kd",
            "unfinished",
            "missing",
            "det_nokd",
            "det_lad",
        )
    ]
    rc = _tool("report").main(
        [*map(str, runs), "--teacher", str(r["det_teacher"]), "--out", str(out)]
    )
    assert rc == 0
    md = (out / "report.md").read_text()
    assert (
        capsys.readouterr().out == md + f"written: {out / 'report.md'}, {out / 'runs.csv'}, "
        f"{out / 'segmentation.csv'}, {out / 'detection.csv'}\n"
    )
    # Table 1 layout: teacher, no-KD, methods; best bold, second underlined, Δ vs no-KD; one
    # seed each: no std, no standard error, never significant
    assert "### Teacher PSPNet-R101/2: mIoU (%) (validation split unless a column says test)" in md
    assert "| T: PSPNet-R101/2 |  |  |  | 70.00 (1) |" in md
    assert "| S: PSPNet-R18/4 |  |  |  | 60.00 (1) |" in md
    assert "| + LAD | res5 | 10 | 10 | **64.50** (1), Δ +4.50 |" in md
    assert "| + CAD | res5 | 10 | 10 | <u>63.25</u> (1), Δ +3.25 |" in md
    assert "| + KD |  |  | 10 | 61.50 (1), Δ +1.50 |" in md
    assert "| + Naive | decoder | 10 | 10 | 59.00 (1), Δ -1.00 |" in md
    # Table 5 order: backbone taps before the decoder
    assert md.index("| + LAD | res5") < md.index("| + Naive | decoder")
    seg = {row["run"]: row for row in _csv(out / "segmentation.csv")}
    assert set(seg) == {
        "pspnet_r101",
        "pspnet_r18",
        "lad_res5",
        "cad_res5",
        "pad_res5",
        "naive_res5",
        "naive_decoder",
        "kd_only",
    }
    assert seg["pspnet_r101"]["role"] == "teacher" and seg["pspnet_r18"]["role"] == "baseline"
    assert float(seg["lad_res5"]["delta_mIoU"]) == pytest.approx(4.5)
    assert float(seg["pad_res5"]["delta_mIoU"]) == pytest.approx(1.0)
    assert float(seg["naive_decoder"]["delta_mIoU"]) == pytest.approx(-1.0)
    assert seg["pspnet_r18"]["delta_mIoU"] == ""
    assert (seg["lad_res5"]["method"], seg["lad_res5"]["tap"], seg["lad_res5"]["teacher"]) == (
        "LAD",
        "res5",
        "PSPNet-R101/2",
    )
    assert seg["lad_res5"]["baseline_run"] == "pspnet_r18"
    # Table 7: detection, Δ on every AP column
    det = {row["run"]: row for row in _csv(out / "detection.csv")}
    assert det["ret_x101"]["role"] == "teacher" and det["ret_x101"]["model"] == "RetinaNet-X101"
    lad = det["ret_r50_lad"]
    assert (lad["method"], lad["tap"], lad["weight"], lad["teacher"]) == (
        "LAD",
        "p3,p4",
        "2",
        "RetinaNet-X101",
    )
    assert float(lad["delta_AP"]) == pytest.approx(3.6) and float(
        lad["delta_APs"]
    ) == pytest.approx(2.7)
    assert float(lad["delta_APl"]) == pytest.approx(5.4)
    assert "| RetinaNet-X101 | RetinaNet-R50 | LAD | p3,p4 | 2 | **41.0** (1), Δ +3.6 |" in md
    assert (
        "|  | RetinaNet-R50 | w/o KD |  |  | 37.4 (1) | 56.7 (1) | 40.3 (1) | 20.6 (1) "
        "| 40.7 (1) | 49.7 (1) |" in md
    )
    assert lad["seeds"] == "1" and lad["AP_std"] == "" and lad["delta_AP_se"] == ""
    # missing and unfinished: not in the tables, listed with the reason, and in runs.csv
    left = md.split("## Runs not in the tables")[1].split("## Runs read")[0]
    assert (
        "| cwd_res5 | unfinished | stopped at iteration 60/100, never evaluated | 60/100 |" in left
    )
    assert "| mgd_res5 | missing | no such folder |" in left
    status = {row["run"]: row["status"] for row in _csv(out / "runs.csv")}
    assert (
        len(status) == 13 and status["cwd_res5"] == "unfinished" and status["mgd_res5"] == "missing"
    )
    assert "cwd_res5" not in seg and "mgd_res5" not in seg
    assert (
        _tool("report").main([str(r["lad"]), str(r["missing"]), "--out", str(out), "--strict"]) == 1
    )


def test_read_run_eval_only_crashed_and_empty(tmp_path):
    eval_only = tmp_path / "eval_only"
    eval_only.mkdir()
    (eval_only / "config.yaml").write_text(yaml.safe_dump(seg_config()))
    (eval_only / "log.txt").write_text(
        "[d2.engine.defaults]: Evaluation results for camvid_val in csv format:\n"
        "[d2.evaluation.testing]: copypaste: Task: sem_seg\n"
        "[d2.evaluation.testing]: copypaste: mIoU,fwIoU,mACC,pACC\n"
        "[d2.evaluation.testing]: copypaste: 55.5000,80.0000,66.0000,91.0000\n"
    )
    res = read_run(eval_only)
    assert (res.status, res.metrics["mIoU"], res.task) == ("finished", 55.5, "sem_seg")
    crashed = make_run(
        tmp_path / "crashed", seg_config(taps=[["res5", "res5", "lad", 1.0]]), iters=40
    )
    (crashed / "log.txt").write_text(
        "ERROR [d2.engine.train_loop]: Exception during training:\nRuntimeError: boom\n"
    )
    res = read_run(crashed)
    assert res.status == "unfinished" and res.note.startswith("crashed") and "boom" in res.note
    (tmp_path / "empty").mkdir()
    assert read_run(tmp_path / "empty").status == "missing"


def test_a_segmentation_run_without_config_is_tabled_as_segmentation(tmp_path):
    """report.py on a run folder that lost its config.yaml: its evaluation says what it scored,
    so it is a segmentation row with its mIoU, not a detection row of dashes."""
    from radkd_d2.evaluation.report import build_report, collect_runs, report_markdown

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"iteration": 99, "sem_seg/mIoU": 41.5, "sem_seg/pACC": 88.0}) + "\n")
    (info,) = collect_runs([run])
    assert info.task == "sem_seg"
    text = report_markdown(build_report([info]), "t")
    assert "41.5" in text and "AP50" not in text.split("## Runs read")[0]


def test_plot_magnitudes_png(fabricated, tmp_path, capsys):
    out = tmp_path / "fig2.png"
    tool = _tool("plot_magnitudes")
    rc = tool.main(
        [
            str(fabricated["naive"]),
            str(fabricated["lad"]),
            "--out",
            str(out),
            "--size",
            "640",
            "480",
            "--taps",
            "res5",
        ]
    )
    assert rc == 0 and _png_size(out) == (640, 480)
    assert (
        tool.main([str(fabricated["nokd"]), "--out", str(tmp_path / "none.png")]) == 1
    )  # no diagnostics
    assert "DIAGNOSTICS_PERIOD" in capsys.readouterr().err


def _fabricate_sweep(out: Path):
    values = {
        "naive": {1: 61.0, 10: 63.0, 100: 66.0, 1000: 64.5},
        "lad": {1: 65.5, 10: 66.0, 100: 65.75, 1000: 65.5},
    }
    for method, by_w in values.items():
        for w, v in by_w.items():
            make_run(
                out / f"{method}_w{w:g}",
                seg_config(taps=[["res5", "res5", method, float(w)]]),
                miou=v,
            )
    make_run(
        out / "cad_w10", seg_config(taps=[["res5", "res5", "cad", 10.0]]), iters=40
    )  # unfinished


def test_sweep_collect_prints_spreads_and_plots(tmp_path, fabricated, capsys):
    out = tmp_path / "sweep"
    _fabricate_sweep(out)
    plot = tmp_path / "fig5.png"
    rc = _tool("sweep").main(
        [
            "--collect",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--size",
            "800",
            "500",
            "--baseline",
            str(fabricated["nokd"]),
            "--teacher",
            str(fabricated["teacher"]),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and _png_size(plot) == (800, 500)
    assert "Naive: spread 5.00 (min 61.00, max 66.00 at λ=100, 4 runs)" in text
    assert "LAD: spread 0.50 (min 65.50, max 66.00 at λ=10, 4 runs)" in text
    assert "CAD: no finished run" in text and "cad_w10: unfinished" in text


def test_sweep_launches_tiny_runs_end_to_end(tmp_path, data_root, capsys):
    out = tmp_path / "sweep"
    opts = [
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        "",
        "MODEL.DISTILL.TEACHER.OPTS",
        "['MODEL.DRN.DEPTH', '18']",
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.ROOT",
        str(data_root),
        *TINY_DATA,
        "INPUT.SEM_SEG.CROP_SIZE",
        "(64, 64)",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "MODEL.DISTILL.DIAGNOSTICS_PERIOD",
        "1",
    ]
    rc = _tool("sweep").main(
        [
            "--config",
            str(REPO / LAD_CFG),
            "--methods",
            "naive",
            "--weights",
            "1",
            "10",
            "--max-iter",
            "2",
            "--out",
            str(out),
            "--opts",
            *opts,
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    for w in (1.0, 10.0):
        run = read_run(out / f"naive_w{w:g}")
        assert run.status == "finished" and 0 <= run.metrics["mIoU"] <= 100
        assert run.config["MODEL"]["DISTILL"]["TAPS"] == [["res5", "res5", "naive", w]]
    assert "Naive: spread" in text and _png_size(out / "sweep.png") == (900, 600)
    # the real runs' diagnostics feed the magnitude plot
    fig = tmp_path / "fig2.png"
    assert (
        _tool("plot_magnitudes").main(
            [str(out / "naive_w1"), str(out / "naive_w10"), "--out", str(fig)]
        )
        == 0
    )
    assert _png_size(fig) == (1000, 800)


def test_heatmaps_random_tiny_model(tmp_path, data_root):
    import torch

    from radkd_d2.analysis.heatmaps import build_distill_model, tap_maps

    opts = [
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        "",
        "MODEL.DISTILL.TEACHER.OPTS",
        "['MODEL.DRN.DEPTH', '18']",
        *TINY_DATA,
    ]
    cfg = load_cfg(LAD_CFG, *opts, data_root=data_root, validate=False)
    model = build_distill_model(cfg)
    img = np.random.default_rng(0).integers(
        0, 255, (50, 70, 3), dtype=np.uint8
    )  # not a multiple of 8
    for tap in ("res5", "decoder", "res4:res5"):
        maps = tap_maps(model, img, tap)
        for m in (maps.teacher, maps.student):
            assert m.shape == (50, 70) and m.min() == 0.0 and m.max() == pytest.approx(1.0)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict()}, ckpt)  # student + connector, no teacher
    image_file = tmp_path / "scene.png"
    Image.fromarray(img).save(image_file)
    out = tmp_path / "heat.png"
    rc = _tool("heatmaps").main(
        [
            "--config",
            str(REPO / LAD_CFG),
            "--weights",
            str(ckpt),
            "--images",
            str(image_file),
            str(image_file),
            "--tap",
            "res5",
            "--out",
            str(out),
            "--width",
            "600",
            "--row-height",
            "200",
            "--opts",
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.ROOT",
            str(data_root),
            *opts,
        ]
    )
    assert rc == 0 and _png_size(out) == (600, 400)
    out2 = tmp_path / "heat_testset.png"  # images from the config's test set
    rc = _tool("heatmaps").main(
        [
            "--config",
            str(REPO / LAD_CFG),
            "--num-images",
            "1",
            "--out",
            str(out2),
            "--opts",
            "MODEL.DEVICE",
            "cpu",
            "DATASETS.ROOT",
            str(data_root),
            *opts,
        ]
    )
    assert rc == 0 and _png_size(out2) == (1200, 360)


def test_a_backbone_names_itself_through_its_registered_info(monkeypatch):
    """A new backbone registers a BackboneInfo next to its builder; reports and the config
    tests use it with no table edited elsewhere."""
    from radkd_d2.configs_index import reduced_size_opts
    from radkd_d2.evaluation.naming import model_name
    from radkd_d2.modeling.backbone import BACKBONE_INFO, BackboneInfo

    info = BackboneInfo(label=lambda cfg: f"Toy{cfg['MODEL']['TOY']['SIZE']}",
                        reduced_opts=lambda cfg: ["MODEL.TOY.SIZE", "1"])
    monkeypatch.setitem(BACKBONE_INFO, "build_toy_backbone", info)
    cfg = {"MODEL": {"META_ARCHITECTURE": "SemanticSegmentor", "BACKBONE": {"NAME": "build_toy_backbone"},
                     "SEM_SEG_HEAD": {"NAME": "PSPHead"}, "TOY": {"SIZE": 7}}}
    assert model_name(cfg) == "PSPNet-Toy7"
    from detectron2.config import CfgNode
    assert reduced_size_opts(CfgNode(cfg))[:2] == ["MODEL.TOY.SIZE", "1"]
    assert model_name({**cfg, "MODEL": {**cfg["MODEL"], "BACKBONE": {"NAME": "build_resnet_backbone"},
                                         "RESNETS": {"DEPTH": 50}}}) == "PSPNet-R50"


def test_plot_adversarial_png(tmp_path, capsys):
    import importlib.util

    rows = {"plain": [], "holistic": []}
    for it in range(19, 100, 20):
        rows["plain"].append({"iteration": it, "total_loss": 2.0 / (it + 1), "loss_sem_seg": 1.0 / (it + 1)})
        rows["holistic"].append({**rows["plain"][-1], "loss_distill_holistic": 0.01 * it, "holistic/critic_loss": 1.0,
                                 "holistic/wasserstein": 0.1, "holistic/gp": 0.9})
    for name, lines in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    spec = importlib.util.spec_from_file_location("plot_adversarial", REPO / "tools" / "plot_adversarial.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "fig.png"
    assert tool.main([str(tmp_path / "plain"), str(tmp_path / "holistic"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    from radkd_d2.analysis.plots import plot_adversarial

    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plot_adversarial([tmp_path / "plain", tmp_path / "holistic"], out, labels=["x"])
    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "missing")])
