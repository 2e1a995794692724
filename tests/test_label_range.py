"""Label values outside a data set's classes (issue 35, item 3): the whole label map is checked
when it is read, by the mapper (before any crop) and by the evaluator (every ground-truth file
it scores), and refused with one error naming the file, the values and the allowed range; the
ignore label passes."""
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from conftest import load_cfg
from radkd_d2.data import SemSegDatasetMapper
from radkd_d2.errors import LabelRangeError
from radkd_d2.evaluation import build_evaluator

CAMVID = "configs/camvid/pspnet_r18_camvid.yaml"  # 11 classes (0..10), ignore label 11
H, W = 24, 32


def _camvid(root, label):
    """CamVid layout (camvid/{train,val}[annot]/f0.png) whose label maps are all ``label``."""
    for split in ("train", "val"):
        (root / "camvid" / split).mkdir(parents=True)
        (root / "camvid" / f"{split}annot").mkdir(parents=True)
        cv2.imwrite(str(root / "camvid" / split / "f0.png"), np.full((H, W, 3), 100, np.uint8))
        cv2.imwrite(str(root / "camvid" / f"{split}annot" / "f0.png"), label)
    return load_cfg(CAMVID, data_root=root, validate=False)


def _label(value=3, patch=None, at=(slice(0, 4), slice(0, 4))):
    lab = np.full((H, W), value, np.uint8)
    if patch is not None:
        lab[at] = patch
    return lab


def _evaluate(cfg, tmp_path, cls=3):
    """Score a prediction of class ``cls`` everywhere against camvid_val's label file."""
    d = DatasetCatalog.get("camvid_val")[0]
    evaluator = build_evaluator(cfg, "camvid_val", str(tmp_path / "inference"))
    evaluator.reset()
    logits = torch.zeros(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, H, W)
    logits[cls] = 1.0
    evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": logits}])
    return evaluator.evaluate()["sem_seg"], d["sem_seg_file_name"]


def _range_error(path, values, pixels=r"\d+ pixels"):
    """The message: file, values, pixel count, allowed range (classes 0..10, ignore label 11)."""
    return re.escape(f"label file {path} has values {values} (") + pixels + r"\).*0\.\.10.*ignore label 11"


@pytest.mark.parametrize("bad", [12, 50])
def test_eval_scores_clean_labels_and_refuses_out_of_range(tmp_path, bad):
    """Clean labels (class 10, a patch of the ignore label) score normally; the same file with a
    patch of 12 used to be scored silently (as another class), one of 50 crashed in np.reshape
    ("cannot reshape array of size 171 into shape (12,12)") without naming the file."""
    cfg = _camvid(tmp_path, _label(10, patch=11))
    res, _ = _evaluate(cfg, tmp_path, cls=10)
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
    assert np.isnan(res["IoU-Sky"])  # a class absent from labels and prediction

    cfg = _camvid(tmp_path / "bad", _label(10, patch=bad))
    path = DatasetCatalog.get("camvid_val")[0]["sem_seg_file_name"]
    with pytest.raises(LabelRangeError, match=_range_error(path, [bad])):
        _evaluate(cfg, tmp_path, cls=10)


def _train_mapper(cfg, window):
    """The training mapper with a deterministic crop ``window`` (x0, y0, w, h) in place of the
    random scale / crop / flip."""
    return SemSegDatasetMapper(
        True, augmentations=[T.CropTransform(*window)], image_format=cfg.INPUT.FORMAT,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )  # fmt: skip


def test_train_mapper_refuses_out_of_range_patch_outside_the_crop(tmp_path):
    window = (16, 8, 16, 16)  # the patch is the top-left 4x4 corner, outside this window
    cfg = _camvid(tmp_path, _label(3, patch=5))
    out = _train_mapper(cfg, window)(dict(DatasetCatalog.get("camvid_train")[0]))
    assert out["sem_seg"].shape == (16, 16) and set(out["sem_seg"].unique().tolist()) == {3}

    cfg = _camvid(tmp_path / "bad", _label(3, patch=12))
    d = DatasetCatalog.get("camvid_train")[0]
    with pytest.raises(LabelRangeError, match=_range_error(d["sem_seg_file_name"], [12])):
        _train_mapper(cfg, window)(dict(d))
    with pytest.raises(LabelRangeError, match=_range_error(d["sem_seg_file_name"], [12])):
        SemSegDatasetMapper(cfg, True)(dict(d))  # the config's own random scale / crop / flip


def test_ignore_label_passes_and_the_next_value_does_not(tmp_path):
    """10 (the last class) and 11 (the ignore label) are read, scored and trained on; 12 is not."""
    lab = _label(10, patch=11, at=(slice(None), slice(0, W // 2)))
    cfg = _camvid(tmp_path, lab)
    d = DatasetCatalog.get("camvid_train")[0]
    out = _train_mapper(cfg, (0, 0, W, H))(dict(d))
    assert np.array_equal(out["sem_seg"].numpy(), lab)
    res, _ = _evaluate(cfg, tmp_path, cls=10)
    assert res["mIoU"] == pytest.approx(100.0)

    lab[0, -1] = 12  # one pixel, in the half that is not ignored
    cfg = _camvid(tmp_path / "bad", lab)
    path = DatasetCatalog.get("camvid_val")[0]["sem_seg_file_name"]
    with pytest.raises(LabelRangeError, match=_range_error(path, [12], pixels="1 pixel")):
        _evaluate(cfg, tmp_path, cls=10)
