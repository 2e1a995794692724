"""RetinaNet on MobileNetV2-FPN (the detection demo's student): levels, channels and strides as
Detectron2's ResNet-FPN gives them, a dilated MobileNetV2 refused with a message that names the
key, and a forward/backward through RetinaNet's losses."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

from conftest import load_cfg

STUDENT = "configs/synthetic/demo_det/student_retinanet_mv2_synthetic.yaml"


def test_mv2_fpn_gives_p3_to_p7_at_retinanet_strides():
    model = build_model(load_cfg(STUDENT))
    shapes = model.backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert {s.channels for s in shapes.values()} == {64}
    # P6 comes from res5 (160 channels at width 0.5), as in Detectron2's RetinaNet ResNet-FPN
    assert model.backbone.top_block.p6.in_channels == model.backbone.bottom_up.output_shape()["res5"].channels == 160
    feats = model.backbone(torch.zeros(2, 3, 96, 96))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)]


def test_mv2_fpn_retinanet_trains_one_step():
    model = build_model(load_cfg(STUDENT)).train()
    img = torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8).float()
    from detectron2.structures import Boxes, Instances

    inst = Instances((96, 96), gt_boxes=Boxes(torch.tensor([[10.0, 12.0, 40.0, 44.0]])), gt_classes=torch.tensor([2]))
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model([{"image": img, "instances": inst, "height": 96, "width": 96}])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.bottom_up.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_dilated_mv2_under_an_fpn_is_refused_by_key():
    from radkd_d2.errors import ConfigError

    with pytest.raises(ConfigError, match=r"MODEL.MOBILENETV2.OUTPUT_STRIDE = 8 .*choose one of \[32\]"):
        build_model(load_cfg(STUDENT, "MODEL.MOBILENETV2.OUTPUT_STRIDE", 8))


def test_report_names_the_student():
    import yaml

    from radkd_d2.evaluation.naming import model_name

    assert model_name(yaml.safe_load(load_cfg(STUDENT).dump())) == "RetinaNet-MV2/2"
