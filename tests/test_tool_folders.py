"""An output folder of the demo, the CamVid study and the λ sweep belongs to one kind of result
(the demo's task, the study's scale, the sweep's config and tap): another kind is refused before
anything is written, naming what the folder holds, so no report is overwritten without a copy."""
import pytest

from radkd_d2.analysis.launch import FOLDER_OWNER, FolderOfAnotherKind, claim_folder

from test_reports import _tool


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_claim_marks_a_folder_and_refuses_another_kind(tmp_path):
    out = tmp_path / "out"
    claim_folder(out, "tools/demo.py", "--task seg")
    assert (out / FOLDER_OWNER).is_file()
    claim_folder(out, "tools/demo.py", "--task seg")  # the same kind again: fine (--resume)
    with pytest.raises(FolderOfAnotherKind, match=r"holds the results of tools/demo.py \(--task seg\), not of tools/demo.py \(--task det\)"):
        claim_folder(out, "tools/demo.py", "--task det")
    with pytest.raises(FolderOfAnotherKind, match="tools/sweep.py"):
        claim_folder(out, "tools/sweep.py", "x.yaml, tap res5")


def test_demo_refuses_a_finished_demo_of_another_task(tmp_path):
    """A segmentation demo folder made before folder claims (its report names the task):
    --task det --resume into it stops at once and leaves every file as it was."""
    out = tmp_path / "demo"
    (out / "report").mkdir(parents=True)
    (out / "report.md").write_text("# radkd-d2 demo (seg): synthetic scenes (test split), ...\n")
    (out / "report" / "segmentation.csv").write_text("run,mIoU\nstudent_lad,53.95\n")
    (out / "teacher").mkdir()
    (out / "teacher" / "demo_stdout.log").write_text("seg teacher log\n")
    before = _snapshot(out)
    demo = _tool("demo")
    with pytest.raises(SystemExit, match=r"holds the results of tools/demo.py \(--task seg\), not of tools/demo.py \(--task det\)"):
        demo.main(["--task", "det", "--resume", "--output", str(out)])
    assert _snapshot(out) == before and not (out / FOLDER_OWNER).exists()


def test_study_refuses_a_folder_of_another_scale(tmp_path):
    out = tmp_path / "study"
    claim_folder(out, "tools/camvid_study.py", "--scale pretrained")
    study = _tool("camvid_study")
    with pytest.raises(SystemExit, match=r"camvid_study.py \(--scale pretrained\), not of tools/camvid_study.py \(--scale cityscapes\)"):
        study.main(["--data-root", str(tmp_path), "--out", str(out), "--scale", "cityscapes"])
    # a study folder without a claim is recognised by its report's title
    legacy = tmp_path / "legacy"
    (legacy / "report").mkdir(parents=True)
    (legacy / "report" / "report.md").write_text("# CamVid study (cpu scale, students start 600 + 300 iterations, ...)\n")
    assert study.study_scale_of(legacy) == "--scale cpu"


def test_sweep_refuses_another_configs_folder(tmp_path):
    out = tmp_path / "sweep"
    claim_folder(out, "tools/sweep.py", "other.yaml, tap res5")
    sweep = _tool("sweep")
    cfg = "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml"
    with pytest.raises(SystemExit, match=r"other.yaml, tap res5\), not of tools/sweep.py \(lad_res5_pspr101_pspr18_tiny_synthetic.yaml, tap res5\)"):
        sweep.main(["--config", cfg, "--out", str(out), "--weights", "1"])


def test_read_only_output_is_one_line_before_any_run(tmp_path, monkeypatch):
    import os

    from radkd_d2.engine.inputs import ToolInputError

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    demo = _tool("demo")
    with pytest.raises(ToolInputError, match=f"--output {ro}/demo: {ro} is not writable"):
        demo.main(["--output", str(ro / "demo")])
    study = _tool("camvid_study")
    with pytest.raises(ToolInputError, match=f"--out {ro}/study: {ro} is not writable"):
        study.main(["--data-root", str(tmp_path), "--out", str(ro / "study")])
    assert list(ro.iterdir()) == []
