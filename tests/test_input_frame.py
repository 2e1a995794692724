"""One input frame for a segmentation pair: a teacher and a student whose backbones pad their
inputs differently (the stride-16 Cityscapes DeepLab, the stride-8 PSPNet-MV2) are refused, or
with MODEL.DISTILL.SHARED_PADDING both pad every training batch to the least common multiple, so
their feature maps cover the same image area."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from radkd_d2.engine.checks import ConfigError

from conftest import load_cfg

LAD = "configs/camvid/lad_res5_dlcs_pspmv2_camvid.yaml"
TINY = ["MODEL.WEIGHTS", "", "MODEL.DISTILL.TEACHER.WEIGHTS", ""]


def test_unequal_padding_is_refused_naming_the_fix():
    cfg = load_cfg(LAD, *TINY, "MODEL.DISTILL.SHARED_PADDING", False, validate=False)
    with pytest.raises(ConfigError, match=r"pad their inputs differently \(size divisibility, constraints: "
                       r"\(8, \{\}\) vs \(16, \{\}\)\).*SHARED_PADDING True.*\(16\)"):
        build_model(cfg)


def test_shared_padding_gives_both_one_frame():
    cfg = load_cfg(LAD, *TINY, validate=False)
    assert cfg.MODEL.DISTILL.SHARED_PADDING
    model = build_model(cfg)
    assert model.frame == 16 and model.student_pad and model.backbone.size_divisibility == 8
    batch = [
        {"image": torch.randint(0, 255, (3, 40, 56)).float(), "sem_seg": torch.randint(0, 11, (40, 56)), "height": 40, "width": 56}
        for _ in range(2)
    ]
    seen = {}
    model.backbone.register_forward_hook(lambda m, i, o: seen.update(student=i[0].shape[-2:]) if "student" not in seen else None)
    model.train()
    with EventStorage(0):
        feats = model.teacher_features(batch)
        losses = model(batch)
    # 40 x 56 -> 48 x 64 for both: student res5 6 x 8, teacher head 3 x 4 over the same area
    assert tuple(seen["student"]) == (48, 64)
    assert tuple(feats["head"].shape[-2:]) == (3, 4)
    assert all(torch.isfinite(v) for v in losses.values())
    # inference pads as the stock student
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 40, "width": 56}])[0]["sem_seg"]
    assert out.shape == (11, 40, 56)
