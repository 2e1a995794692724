"""Start-up errors of tools/train_net.py: one clear message, nothing written to OUTPUT_DIR."""
import re

import pytest

from conftest import REPO, load_cfg, run_train_net
from radkd_d2.engine import ConfigError

SEG = REPO / "configs/synthetic/pspnet_r18_tiny.yaml"


def _fails(tmp_path, *args, match):
    out = tmp_path / "out"
    proc = run_train_net(*args, "OUTPUT_DIR", out, check=False, timeout=120)
    assert proc.returncode != 0
    assert match in proc.stderr, proc.stderr[-3000:]
    assert not out.exists(), "nothing may be written for a bad input"
    return proc


def test_config_file_missing(tmp_path):
    _fails(tmp_path, "--config-file", tmp_path / "nope.yaml", match="does not exist")


def test_unknown_dataset(tmp_path):
    _fails(tmp_path, "--config-file", SEG, "DATASETS.TRAIN", "('nope_train',)",
           match="unknown data set 'nope_train'")


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
        ("MODEL.DISTILL.KD_WEIGHT", "-1.0", "MODEL.DISTILL.KD_WEIGHT"),
    ],
)
def test_bad_config_values(tmp_path, key, value, match):
    # in-process: setup_cfg runs exactly these checks before default_setup writes anything
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_cfg(SEG, key, value, data_root=tmp_path)


def test_unknown_config_key(tmp_path):
    _fails(tmp_path, "--config-file", SEG, "MODEL.DISTILL.TAPZ", "[]", match="MODEL.DISTILL.TAPZ")
