"""Data set registration (synthetic, CamVid layout, COCO folders) and the seg mapper."""

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import SHARED_DATA, load_cfg
from radkd_d2.analysis.fabricate import coco_layout
from radkd_d2.data import SemSegDatasetMapper, register_camvid, register_coco_folder

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared real data not found at {SHARED_DATA}"
)


def _fake_camvid(root, label_value=3, n=2, splits=("train", "val")):
    for split in splits:
        (root / "camvid" / split).mkdir(parents=True)
        (root / "camvid" / f"{split}annot").mkdir(parents=True)
        for i in range(n):
            img = np.full((24, 32, 3), 100 + i, np.uint8)
            lab = np.full((24, 32), label_value, np.uint8)
            cv2.imwrite(str(root / "camvid" / split / f"f{i}.png"), img)
            cv2.imwrite(str(root / "camvid" / f"{split}annot" / f"f{i}.png"), lab)


def test_camvid_test_split_registered_only_with_images_and_labels(tmp_path):
    _fake_camvid(tmp_path)
    (tmp_path / "camvid" / "test").mkdir()  # images without labels: not a usable split
    if "camvid_test" in DatasetCatalog.list():
        DatasetCatalog.remove("camvid_test")
    register_camvid(str(tmp_path))
    assert "camvid_test" not in DatasetCatalog.list()
    (tmp_path / "camvid" / "test").rmdir()
    _fake_camvid(tmp_path, n=3, splits=("test",))
    register_camvid(str(tmp_path))
    assert [d["image_id"] for d in DatasetCatalog.get("camvid_test")] == ["f0", "f1", "f2"]
    assert MetadataCatalog.get("camvid_test").evaluator_type == "sem_seg"
    DatasetCatalog.remove("camvid_test")


def test_synthetic_registered_both_ways(tmp_path):
    cfg = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "DATASETS.SYNTHETIC.NUM_TRAIN", 3,
                   "DATASETS.SYNTHETIC.NUM_VAL", 2, data_root=tmp_path)
    seg = DatasetCatalog.get("synthetic_sem_seg_train")
    assert len(seg) == 3 and all(d["sem_seg_file_name"].endswith(".png") for d in seg)
    meta = MetadataCatalog.get("synthetic_sem_seg_train")
    assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255 and len(meta.stuff_classes) == 6
    det = DatasetCatalog.get("synthetic_det_val")
    assert len(det) == 2 and any(d["annotations"] for d in det)
    assert MetadataCatalog.get("synthetic_det_val").evaluator_type == "coco"
    assert cfg.DATASETS.ROOT == str(tmp_path)


@needs_shared
def test_camvid_from_shared_data():
    register_camvid(str(SHARED_DATA))
    train, val = DatasetCatalog.get("camvid_train"), DatasetCatalog.get("camvid_val")
    assert len(train) == 367 and len(val) == 101
    label = cv2.imread(train[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert label.shape == (360, 480) and label.max() <= 11
    meta = MetadataCatalog.get("camvid_val")
    assert meta.ignore_label == 11 and len(meta.stuff_classes) == 11


@needs_shared
def test_tiny_coco_from_shared_data():
    register_coco_folder("tiny_coco", str(SHARED_DATA))
    train = DatasetCatalog.get("tiny_coco_train2017")
    assert len(train) == 50
    meta = MetadataCatalog.get("tiny_coco_train2017")
    assert len(meta.thing_classes) == 80 and meta.evaluator_type == "coco"
    assert sum(len(d["annotations"]) for d in train) > 400


def test_camvid_missing_folder_is_clear(tmp_path):
    register_camvid(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="camvid/train.*does not exist"):
        DatasetCatalog.get("camvid_train")
    (tmp_path / "camvid" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="is empty"):
        DatasetCatalog.get("camvid_train")


def test_camvid_label_out_of_range_names_file(tmp_path):
    _fake_camvid(tmp_path, label_value=12)
    cfg = load_cfg("configs/camvid/pspnet_r18_camvid.yaml", data_root=tmp_path, validate=False)
    dicts = DatasetCatalog.get("camvid_train")
    mapper = SemSegDatasetMapper(cfg, False)
    with pytest.raises(ValueError, match=r"f0\.png has values \[12\]"):
        mapper(dict(dicts[0]))


def test_camvid_valid_labels_pass_mapper(tmp_path):
    _fake_camvid(tmp_path, label_value=11)
    cfg = load_cfg("configs/camvid/pspnet_r18_camvid.yaml", "INPUT.SEM_SEG.CROP_SIZE", "(16, 16)",
                   data_root=tmp_path)
    out = SemSegDatasetMapper(cfg, True)(dict(DatasetCatalog.get("camvid_train")[0]))
    assert out["image"].shape[-2:] == (16, 16) and out["sem_seg"].shape == (16, 16)
    assert set(out["sem_seg"].unique().tolist()) <= {11}


def test_coco_json_that_does_not_parse(tmp_path):
    (tmp_path / "mini" / "annotations").mkdir(parents=True)
    (tmp_path / "mini" / "train2017").mkdir()
    (tmp_path / "mini" / "train2017" / "a.jpg").write_bytes(b"x")
    (tmp_path / "mini" / "annotations" / "instances_train2017.json").write_text('{"images": [')
    register_coco_folder("mini", str(tmp_path), splits=("train2017",))
    with pytest.raises(ValueError, match="instances_train2017.json is not valid JSON"):
        DatasetCatalog.get("mini_train2017")


def test_coco_folder_missing(tmp_path):
    register_coco_folder("absent", str(tmp_path), splits=("val2017",))
    with pytest.raises(FileNotFoundError, match="absent/val2017"):
        DatasetCatalog.get("absent_val2017")


def test_sem_seg_test_resize_follows_min_size_test(tmp_path):
    """INPUT.MIN_SIZE_TEST > 0 resizes a test image's shortest edge (the model resizes its
    prediction back to height x width, the scored resolution); 0 keeps the original size."""
    _fake_camvid(tmp_path, label_value=3)
    cfg = load_cfg("configs/camvid/pspnet_r18_camvid.yaml", data_root=tmp_path, validate=False)
    d = dict(DatasetCatalog.get("camvid_val")[0])
    assert SemSegDatasetMapper(cfg, False)(dict(d))["image"].shape[-2:] == (24, 32)
    cfg = load_cfg("configs/camvid/pspnet_r18_camvid.yaml", "INPUT.MIN_SIZE_TEST", 12,
                   "INPUT.MAX_SIZE_TEST", 1000, data_root=tmp_path, validate=False)
    out = SemSegDatasetMapper(cfg, False)(dict(d))
    assert out["image"].shape[-2:] == (12, 16) and (out["height"], out["width"]) == (24, 32)


@needs_shared
def test_coco_2017_is_found_under_datasets_root(tmp_path):
    """The documented COCO command (docs/detection.md) passes DATASETS.ROOT: Detectron2's coco_2017_* names are found
    there, in COCO's layout, with Detectron2's metadata, before any model is built."""
    from radkd_d2.engine.checks import validate_config

    coco = coco_layout(tmp_path, SHARED_DATA / "tiny_coco")
    cfg = load_cfg("configs/coco/distill/lad_fpn_retx101_retr50_2x_coco.yaml", data_root=tmp_path, validate=False)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    validate_config(cfg)  # registers under the root and checks the required paths
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.json_file == str(coco / "annotations" / "instances_val2017.json")
    assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 80
    val = DatasetCatalog.get("coco_2017_val")
    assert val and all(d["file_name"].startswith(str(coco / "val2017")) for d in val)


def test_coco_2017_missing_is_named_before_any_model(tmp_path, monkeypatch):
    from detectron2.modeling import build_model  # noqa: F401  (must not be reached)

    from radkd_d2.engine.checks import validate_config

    built = []
    monkeypatch.setattr("detectron2.modeling.build_model", lambda *a: built.append(a))
    cfg = load_cfg("configs/coco/distill/lad_fpn_retx101_retr50_2x_coco.yaml", data_root=tmp_path, validate=False)
    with pytest.raises(FileNotFoundError, match=r"coco_2017_train.*coco/annotations/instances_train2017.json is missing.*DATASETS.ROOT"):
        validate_config(cfg)
    assert not built


def test_a_model_on_the_other_tasks_data_set_is_refused(tmp_path):
    """A Faster R-CNN scored on a segmentation set was told to set NUM_CLASSES (then failed with
    KeyError 'sem_seg'); the task mismatch itself is named, both ways."""
    from radkd_d2.engine.checks import ConfigError, validate_config

    _fake_camvid(tmp_path)
    det = load_cfg("configs/synthetic/faster_rcnn_r18_tiny.yaml", "DATASETS.TEST", "('camvid_val',)",
                   data_root=tmp_path, validate=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"DATASETS.TEST names 'camvid_val', a semantic-segmentation set, but MODEL.META_ARCHITECTURE = 'GeneralizedRCNN' is a detector"):
        validate_config(det)
    seg = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "DATASETS.TEST", "('tiny_coco_val2017',)",
                   data_root=SHARED_DATA, validate=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"'tiny_coco_val2017', an object-detection set, but .*'SemanticSegmentor' is a semantic segmentor"):
        validate_config(seg)
