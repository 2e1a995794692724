"""Every yaml under configs/ loads (with radkd-d2 keys) and builds its model on CPU."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO, load_cfg

# The paper's config matrix (cityscapes/, voc/, ade20k/) is generated from radkd_d2/configs_index/
# and every file of it is loaded and built at reduced size by tests/test_config_matrix.py.
MATRIX_DIRS = ("cityscapes", "voc", "ade20k")
ALL_CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))
CONFIGS = [c for c in ALL_CONFIGS if c.parts[1] not in MATRIX_DIRS]


def _shrink(cfg):
    """Paper-size models are built at reduced width: the test is about config validity."""
    cfg.defrost()
    teacher_opts = []
    if cfg.MODEL.DRN.WIDTH_MULT > 0.25:
        cfg.MODEL.DRN.WIDTH_MULT = 0.125
        teacher_opts += ["MODEL.DRN.WIDTH_MULT", "0.125"]
    if cfg.MODEL.SWIN.EMBED_DIM > 24:
        # 24 is divisible by the first-stage heads of Swin-T (3) and Swin-B (4).
        cfg.MODEL.SWIN.EMBED_DIM = 24
        teacher_opts += ["MODEL.SWIN.EMBED_DIM", "24"]
    if teacher_opts:
        cfg.MODEL.DISTILL.TEACHER.OPTS = teacher_opts
    return cfg


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_config_loads_and_builds(config, tmp_path):
    cfg = load_cfg(config, "MODEL.DISTILL.TEACHER.WEIGHTS", "", data_root=tmp_path, validate=False)
    _shrink(cfg)
    if cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE:
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE)
    # several teachers: each built from its own file, without the weights a demo trains first
    cfg.MODEL.DISTILL.TEACHERS = [
        dict(e, CONFIG_FILE=str(REPO / e["CONFIG_FILE"]), WEIGHTS="") for e in cfg.MODEL.DISTILL.TEACHERS
    ]
    model = build_model(cfg)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_trainable > 0
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_configs_found():
    names = {str(c) for c in CONFIGS}
    assert "configs/Base-SemSeg.yaml" in names and "configs/Base-RetinaNet.yaml" in names
    assert len(CONFIGS) >= 10


def test_base_paths_stay_inside_configs():
    for config in ALL_CONFIGS:
        for line in (REPO / config).read_text().splitlines():
            if line.startswith("_BASE_"):
                base = (REPO / config).parent / line.split(":", 1)[1].strip().strip("\"'")
                assert base.resolve().is_relative_to(REPO / "configs"), (config, base)
                assert base.is_file(), (config, base)
