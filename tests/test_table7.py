"""tools/table7.py: Table 7's method list for a detection config family, with seeds, printed in
Table 7's layout; its plan on every family, and its report with train_net replaced by a fake
that writes the run folders the real one would."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO
from test_report_seeds import _opts, fake_run
from test_reports import _tool

AP = {"AP": 30.0, "AP50": 50.0, "AP75": 31.0, "APs": 10.0, "APm": 33.0, "APl": 40.0}


@pytest.mark.parametrize("family", ["synthetic", "tiny_coco", "coco"])
def test_every_family_plans_table7s_rows(family, tmp_path):
    from radkd_d2.engine.setup import load_config

    tool = _tool("table7")
    argv = ["--family", family, "--out", str(tmp_path), "--seeds", "2"]
    if family == "coco":
        argv += ["--teacher-weights", str(tmp_path / "x101.pth")]
    teacher, weights, students = tool.plan(tool.build_parser().parse_args(argv))
    assert (teacher is None) == (family == "coco")
    assert [r.arm for r in students] == [m for m in tool.METHODS for _ in range(2)]
    for r in students:
        cfg = load_config(str(r.config), [str(x) for x in r.opts], validate=False)
        assert cfg.SEED in (42, 43) or cfg.SEED >= 0
        if r.arm == "nokd":
            assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
            continue
        assert cfg.MODEL.META_ARCHITECTURE == "DistillRetinaNet"
        assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS == str(weights)
        taps = cfg.MODEL.DISTILL.TAPS
        assert [t[0] for t in taps] == ["p3", "p4", "p5", "p6", "p7"] and {t[2] for t in taps} == {r.arm}


def test_coco_needs_teacher_weights_and_dry_run_prints_commands(tmp_path, capsys):
    tool = _tool("table7")
    with pytest.raises(SystemExit):
        tool.main(["--family", "coco", "--out", str(tmp_path)])
    assert "--family coco needs --teacher-weights" in capsys.readouterr().err
    w = tmp_path / "x101.pth"
    w.write_bytes(b"x")
    assert tool.main(["--family", "coco", "--out", str(tmp_path / "o"), "--teacher-weights", str(w),
                      "--num-gpus", "8", "--dry-run"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all("--num-gpus 8" in line and "--resume" in line for line in lines)
    assert "mgd_fpn_retx101_retr50_2x_coco.yaml" in lines[4]


def test_table7_layout_from_the_runs(tmp_path, monkeypatch, capsys):
    tool = _tool("table7")
    score = {"teacher": 40.0, "nokd": 30.0, "fkd": 31.0, "cwd": 31.5, "fgd": 32.0, "mgd": 32.5, "lad": 33.0}
    trained = []

    def fake_training(cmd, log, **kwargs):
        at = cmd.index("--config-file")
        opts = [a for a in cmd[at + 2 :] if not a.startswith("--")]
        o = _opts(opts)
        out = Path(o["OUTPUT_DIR"])
        arm = out.name if out.name == "teacher" else out.parent.name
        trained.append(arm)
        cfg = yaml.safe_load(Path(cmd[at + 1]).read_text())  # the family's file: enough for its kind
        from radkd_d2.engine.setup import load_config

        full = yaml.safe_load(load_config(cmd[at + 1], opts, validate=False).dump())
        seed = int(o.get("SEED", 42))
        det = {k: v + score[arm] - 30.0 + (seed - 42) for k, v in AP.items()}
        fake_run(out, full, seed=seed, det=det, iters=full["SOLVER"]["MAX_ITER"], replace=True)
        assert cfg is not None
        return 0

    monkeypatch.setattr(tool, "run_training", fake_training)
    argv = ["--family", "synthetic", "--out", str(tmp_path), "--seeds", "2", "--iters", "20", "--teacher-iters", "40"]
    assert tool.main(argv) == 0
    assert trained == ["teacher"] + [m for m in tool.METHODS for _ in range(2)]
    text = capsys.readouterr().out
    assert "Table 7 layout" in text and "not the paper's numbers" in text
    assert "| Teacher | Student | Method | tap | λ | AP | AP50 | AP75 | APs | APm | APl |" in text
    # LAD: +3 AP over no KD in every column (seeds 42/43 each), the teacher's row, the baseline's
    (row,) = [line for line in text.splitlines() if line.startswith("| RetinaNet-X50 | RetinaNet-R18 | LAD |")]
    assert row.count("Δ +3.0 ± 0.7*") == 6 and "**33.5** ± 0.7 (2)" in row
    assert "| RetinaNet-X50 |  | (teacher) |" in text and "| w/o KD |  |  | 30.5 ± 0.7 (2) |" in text
    # a rerun trains nothing
    trained.clear()
    assert tool.main(argv) == 0 and trained == []
    # another --iters: every run is stale; trained again (the old ones kept), never tabled
    capsys.readouterr()
    assert tool.main([*argv[:-4], "--iters", "30", "--teacher-iters", "40"]) == 0
    out = capsys.readouterr().out
    assert trained == [m for m in tool.METHODS for _ in range(2)]  # the students, not the teacher
    assert "nokd/seed0: finished earlier with another config (" in out and "SOLVER.MAX_ITER" in out and ": trained again" in out
    # a teacher trained again makes every student stale
    trained.clear()
    assert tool.main([*argv[:-4], "--iters", "30", "--teacher-iters", "50"]) == 0
    assert trained == ["teacher"] + [m for m in tool.METHODS for _ in range(2)]
    assert "under a teacher trained again since: trained again" in capsys.readouterr().out
    # --report-only with the old --iters: the runs of another config are left out of the table
    assert tool.main([*argv[:-4], "--iters", "20", "--teacher-iters", "50", "--report-only"]) == 0
    assert "finished with another config than this command's: left out of the table" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--iters", "--teacher-iters"])
def test_zero_iterations_are_refused(tmp_path, capsys, flag):
    tool = _tool("table7")
    with pytest.raises(SystemExit):
        tool.main(["--family", "synthetic", "--out", str(tmp_path), flag, "0"])
    assert f"{flag} 0: give a positive count" in capsys.readouterr().err
