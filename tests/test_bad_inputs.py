"""Start-up errors of tools/train_net.py: one clear message, nothing written to OUTPUT_DIR."""
import re

import pytest
import torch

from conftest import REPO, load_cfg, run_train_net
from radkd_d2.engine import ConfigError

SEG = REPO / "configs/synthetic/pspnet_r18_tiny.yaml"


def _fails(tmp_path, *args, match):
    out = tmp_path / "out"
    proc = run_train_net(*args, "OUTPUT_DIR", out, check=False, timeout=1800)
    assert proc.returncode != 0
    assert match in proc.stderr, proc.stderr[-3000:]
    assert not out.exists(), "nothing may be written for a bad input"
    return proc


@pytest.mark.slow
def test_config_file_missing(tmp_path):
    _fails(tmp_path, "--config-file", tmp_path / "nope.yaml", match="does not exist")


@pytest.mark.slow
def test_unknown_dataset(tmp_path):
    _fails(tmp_path, "--config-file", SEG, "DATASETS.TRAIN", "('nope_train',)",
           match="unknown data set 'nope_train'")


@pytest.mark.slow
def test_dataset_folder_missing(tmp_path):
    _fails(tmp_path, "--config-file", REPO / "configs/camvid/pspnet_r18_camvid.yaml",
           "DATASETS.ROOT", tmp_path / "empty", match="is missing or empty")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("SOLVER.LR_SCHEDULER_NAME", "Poly", "SOLVER.LR_SCHEDULER_NAME = 'Poly' is not allowed"),
        ("MODEL.DRN.DEPTH", "19", "MODEL.DRN.DEPTH = 19 is not allowed"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", "has 6 classes"),
        ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "11", "uses ignore label 255"),
        ("INPUT.SEM_SEG.CROP_SIZE", "(0, 64)", "INPUT.SEM_SEG.CROP_SIZE"),
        ("MODEL.DISTILL.KD_TEMPERATURE", "0.0", "MODEL.DISTILL.KD_TEMPERATURE"),
        ("MODEL.DISTILL.KD_REDUCTION", "mean", "MODEL.DISTILL.KD_REDUCTION = 'mean' is not allowed; choose one of ['element', 'pixel']"),
        ("MODEL.DISTILL.CWD.TAU", "0.0", "MODEL.DISTILL.CWD.TAU = 0.0 is out of range"),
        ("MODEL.DISTILL.KD_WEIGHT", "-1.0", "MODEL.DISTILL.KD_WEIGHT"),
        ("TEST.BEST_CHECKPOINT_MODE", "up", "TEST.BEST_CHECKPOINT_MODE = 'up' is not allowed"),
        ("TEST.BEST_CHECKPOINT_METRIC", "sem_seg/mIoU", "needs periodic evaluation, but TEST.EVAL_PERIOD = 0"),
        ("MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM", "-1", "MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM = -1 is out of range"),
        ("MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", "-0.4", "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT = -0.4 is out of range"),
        ("MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
         "MODEL.PIXEL_STD = [57.375, 57.12, 58.395] is ImageNet's in BGR order but INPUT.FORMAT is 'RGB'"),
    ],
)
def test_bad_config_values(tmp_path, key, value, match):
    # in-process: setup_cfg runs exactly these checks before default_setup writes anything
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_cfg(SEG, key, value, "TEST.EVAL_PERIOD", 0, data_root=tmp_path)


@pytest.mark.slow
def test_teacher_pixel_convention_checked_at_start_up(tmp_path):
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(f'_BASE_: "{REPO}/configs/synthetic/pspnet_r101_tiny.yaml"\n'
                       "INPUT:\n  FORMAT: BGR\n")  # mean/std stay in RGB order
    with pytest.raises(ConfigError, match=r"MODEL.PIXEL_MEAN of the teacher .* is ImageNet's in RGB order but INPUT.FORMAT is 'BGR'"):
        load_cfg("configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml",
                 "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher, data_root=tmp_path)


def test_unknown_config_key(tmp_path):
    _fails(tmp_path, "--config-file", SEG, "MODEL.DISTILL.TAPZ", "[]", match="MODEL.DISTILL.TAPZ")


def _no_results(out):
    """Nothing half-written: no checkpoint, no training metrics (Detectron2's writers may
    leave an empty metrics.json when a run stops before its first iteration)."""
    metrics = out / "metrics.json"
    return not list(out.rglob("*.pth")) and (not metrics.exists() or not metrics.read_text().strip())


def test_output_dir_not_writable(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="OUTPUT_DIR = .* is not writable: .*a_file is a file"):
        load_cfg(SEG, "OUTPUT_DIR", tmp_path / "a_file" / "run", data_root=tmp_path)


@pytest.mark.slow
def test_corrupt_image_file_names_it(tmp_path):
    from detectron2.data import DatasetCatalog

    small = ["DATASETS.SYNTHETIC.NUM_TRAIN", 4, "DATASETS.SYNTHETIC.NUM_VAL", 2, "DATASETS.SYNTHETIC.SIZE", 64,
             "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2]
    root = tmp_path / "data"
    load_cfg(SEG, *small, data_root=root)
    dicts = DatasetCatalog.get("synthetic_sem_seg_train")  # generates the files
    for d in dicts:
        open(d["file_name"], "wb").write(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    proc = run_train_net("--config-file", SEG, "MODEL.DEVICE", "cpu", "DATASETS.ROOT", root, *small,
                         "OUTPUT_DIR", out, check=False, timeout=1800)
    assert proc.returncode != 0
    # the cause on the last line (Detectron2 logged the traceback of where it happened above)
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"train_net: error: cannot read \S+/images/\d+\.png", last), proc.stderr[-2000:]
    assert _no_results(out)


def _coco_folder(root, images, annotations, name="mini"):
    import json

    (root / name / "annotations").mkdir(parents=True)
    (root / name / "train2017").mkdir()
    (root / name / "train2017" / "a.jpg").write_bytes(b"x")
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / name / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))


def test_coco_box_outside_image(tmp_path):
    from detectron2.data import DatasetCatalog

    from radkd_d2.data import register_coco_folder

    _coco_folder(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
                 [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [30, 5, 20, 10], "area": 200, "iscrowd": 0}])
    register_coco_folder("mini", str(tmp_path), splits=("train2017",))
    with pytest.raises(ValueError, match=r"annotation 7 of image 1 has bbox \[30, 5, 20, 10\] .* outside the 40x30 image"):
        DatasetCatalog.get("mini_train2017")


@pytest.mark.slow
def test_empty_dataset(tmp_path):
    _coco_folder(tmp_path / "data", [], [], name="tiny_coco")  # a COCO folder with no image
    out = tmp_path / "out"
    proc = run_train_net(
        "--config-file", REPO / "configs/synthetic/retinanet_r18_tiny.yaml", "MODEL.DEVICE", "cpu",
        "DATASETS.ROOT", tmp_path / "data", "DATASETS.TRAIN", "('tiny_coco_train2017',)",
        "DATASETS.TEST", "()", "OUTPUT_DIR", out, check=False, timeout=1800,
    )
    assert proc.returncode != 0 and "Dataset 'tiny_coco_train2017' is empty!" in proc.stderr
    assert _no_results(out)


def test_connector_choices_come_from_the_registry():
    """A connector registered by a user is a valid MODEL.DISTILL.CONNECTOR at start-up; an
    unknown one is refused with the registered names."""
    from detectron2.config import get_cfg

    from radkd_d2.config import add_radkd_config
    from radkd_d2.engine.checks import ConfigError, check_choice
    from radkd_d2.modeling.connectors import CONNECTOR_REGISTRY, build_connector, connector_choices

    assert {"conv_bn_relu", "conv", "none"} <= set(connector_choices())
    name = "test_identity_connector"
    if name not in CONNECTOR_REGISTRY:
        CONNECTOR_REGISTRY._do_register(name, lambda c_in, c_out: torch.nn.Identity())
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.MODEL.DISTILL.CONNECTOR = name
    check_choice(cfg, "MODEL.DISTILL.CONNECTOR", connector_choices())
    assert isinstance(build_connector(name, 4, 4), torch.nn.Identity)
    cfg.MODEL.DISTILL.CONNECTOR = "nope"
    with pytest.raises(ConfigError, match="MODEL.DISTILL.CONNECTOR.*test_identity_connector"):
        check_choice(cfg, "MODEL.DISTILL.CONNECTOR", connector_choices())
