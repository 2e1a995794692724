"""tools/rehearsal.py (``make rehearsal``): one config per family of the index, its fabricated
data, generated teacher weights, the documented train command and the floor -- here at CPU-test
size (``--reduced``), so that a family whose configs no longer build, load, train or evaluate
fails the suite. Timings are not asserted (a loaded machine), only that they were measured."""
from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA
from test_reports import _tool

from radkd_d2.analysis.rehearsal import FAMILIES, default_row, family_of, row_of_config

TINY_COCO = SHARED_DATA / "tiny_coco"
EXPECTED = {
    "cityscapes": "configs/cityscapes/lad_res5_pspr101_pspr18_80k_cityscapes.yaml",
    "voc": "configs/voc/lad_res5_dlv3r101_dlv3r18_40k_voc.yaml",
    "ade20k": "configs/ade20k/lad_res5_dlv3r101_dlv3r18_40k_ade20k.yaml",
    "retinanet": "configs/coco/distill/lad_fpn_retx101_retr50_2x_coco.yaml",
    "faster_rcnn": "configs/coco/distill/lad_fpn_frcnnr101_frcnnr50_2x_coco.yaml",
    "mask_rcnn": "configs/coco/distill/lad_fpn_mrcnnr101_mrcnnr50_2x_coco.yaml",
}


def test_one_config_per_family_from_the_index():
    assert list(FAMILIES) == list(EXPECTED)
    for family, path in EXPECTED.items():
        row = default_row(family)
        assert row.run.path == path and family_of(row) == family
        assert row_of_config(path).run.path == path
    with pytest.raises(ValueError, match="not a distillation config"):
        row_of_config("configs/voc/student_deeplabv3_r18_40k_voc.yaml")
    with pytest.raises(ValueError, match="not a config of the index"):
        row_of_config("configs/synthetic/pspnet_r18_tiny.yaml")


def test_every_iteration_records_its_step_time(monkeypatch):
    """Detectron2's ``time`` starts at the 4th iteration; a 2-iteration rehearsal reads each
    iteration's ``step_time`` (the trainer's StepTimer) from metrics.json."""
    from types import SimpleNamespace

    from detectron2.engine import hooks
    from detectron2.utils.events import EventStorage

    from radkd_d2.engine.hooks import StepTimer
    from test_reliability import _hooks_built

    kinds, _ = _hooks_built(monkeypatch)
    assert StepTimer in kinds and hooks.IterationTimer not in kinds
    timer = StepTimer()
    with EventStorage(0) as storage:
        timer.trainer = SimpleNamespace(storage=storage, start_iter=0)
        timer.before_train()
        timer.before_step()
        timer.after_step()
        latest = storage.latest()
    assert latest["step_time"][0] >= 0 and "time" not in latest


def _rehearse(tmp_path, *args):
    tool = _tool("rehearsal")
    out = tmp_path / "rehearsal"
    rc = tool.main(["--reduced", "--out", str(out), "--tiny-coco", str(TINY_COCO), "--floor-rounds", "1",
                    "--timeout", "900", *args])  # a hang guard only
    rows = json.loads((out / "rehearsal.json").read_text())
    return rc, rows, (out / "rehearsal.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("family", list(EXPECTED))
def test_reduced_rehearsal_of_each_family(tmp_path, family):
    if FAMILIES[family].dataset == "coco" and not (TINY_COCO / "annotations").is_dir():
        pytest.skip(f"tiny_coco not found at {TINY_COCO}")
    rc, rows, md = _rehearse(tmp_path, "--families", family)
    (row,) = rows
    assert row["status"] == "ok", row["status"]
    assert rc == 0
    assert row["config"] == EXPECTED[family] and row["batch"] == 2
    for key in ("build_s", "step_s", "peak_rss_gib", "eval_s", "floor_s", "teacher_s", "student_s", "ratio",
                "same_batch_step_s", "same_batch_ratio"):
        assert row[key] is not None and row[key] > 0, (key, row[key])
    assert row["eval_images"] >= 1
    assert row["command"].startswith(f"python tools/train_net.py --config-file {EXPECTED[family]} --num-gpus 1 ")
    assert "MODEL.DISTILL.TEACHER.WEIGHTS" in row["command"]
    assert ("MODEL.WEIGHTS" in row["command"].replace("TEACHER.WEIGHTS", "")) == (FAMILIES[family].dataset == "coco")
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {family} |"))
    assert f"`{EXPECTED[family].rsplit('/', 1)[1]}`" in line and line.rstrip().endswith("| ok |")


@pytest.mark.slow
def test_a_config_over_the_memory_limit_is_a_row_not_a_crash(tmp_path):
    rc, rows, md = _rehearse(tmp_path, "--families", "cityscapes", "voc", "--memory-limit-gib", "0.05")
    assert rc == 0  # does not fit: said in the rows, the rehearsal goes on
    assert [r["family"] for r in rows] == ["cityscapes", "voc"]
    for row in rows:
        assert row["status"].startswith("does not fit:") and "memory limit of 0.05 GiB" in row["status"]
    assert md.count("does not fit") >= 2
