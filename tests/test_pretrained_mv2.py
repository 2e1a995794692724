"""The real pretrained MobileNetV2 files of ``../shared/data/pretrained`` (ImageNet, and the
backbone of a COCO+VOC DeepLabV3) through the project's torchvision converter, and
MODEL.MOBILENETV2.PAD_TYPE ("same": TensorFlow's padding, which these weights were trained with).

Skipped when the files are absent (they are data, never part of the repository).
"""

import pytest
import torch
import torchvision
from torch import nn

from detectron2.modeling import build_model

from radkd_d2.checkpoint import CONVERTERS
from radkd_d2.engine.checks import ConfigError, validate_config
from radkd_d2.modeling.backbone import MobileNetV2

from conftest import REPO, SHARED_DATA, load_cfg

PRETRAINED = SHARED_DATA / "pretrained"
IMAGENET = PRETRAINED / "mobilenet_v2_imagenet_torchvision.pth"
COCOVOC = PRETRAINED / "mobilenet_v2_cocovoc_seg_backbone_torchvision.pth"
STUDENT_CFG = "configs/camvid/pspnet_mv2_camvid.yaml"
TEACHER_CFG = "configs/camvid/pspnet_mv2_teacher_camvid.yaml"


def _need(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared pretrained weights; see shared/data/README.md)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _tf_same_padding(model: nn.Module) -> nn.Module:
    """A torchvision MobileNetV2 with TensorFlow's "SAME" padding, written independently of timm:
    every stride-2 3x3 conv pads 0 before and 1 after (the sizes here are even); stride-1 convs
    keep PyTorch's symmetric padding, which equals SAME's for odd kernels."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
                child.padding = (0, 0)
                setattr(parent, name, nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), child))
    return model


def _ours(state, pad_type):
    ours = MobileNetV2(output_stride=32, out_features=["res5"], pad_type=pad_type).eval()
    converted, report = CONVERTERS["torchvision_mobilenetv2"](state, ours)
    assert report.ok and not report.missing, report.format()
    ours.load_state_dict(converted, strict=True)
    return ours


@pytest.mark.parametrize(
    "path, config",
    [(IMAGENET, STUDENT_CFG), (COCOVOC, TEACHER_CFG)],
    ids=["imagenet", "cocovoc"],
)
def test_shared_weights_fill_every_backbone_key(path, config):
    state = _need(path)
    cfg = load_cfg(config, "MODEL.WEIGHTS", "", validate=False)
    model = build_model(cfg)
    converted, report = CONVERTERS["torchvision_mobilenetv2"](state, model)
    backbone = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert report.ok, report.format()
    assert not report.missing and not report.unused and not report.mismatched
    assert set(converted) == backbone  # every backbone key, and nothing of the head
    # only the 1280-channel conv and the classifier are left, by design
    assert all(k.startswith(("features.18.", "classifier.")) for k in report.ignored)
    result = model.load_state_dict(converted, strict=False)
    assert not [k for k in result.missing_keys if k.startswith("backbone.")]
    assert not result.unexpected_keys


@pytest.mark.parametrize("pad_type", ["", "same"])
def test_imagenet_backbone_reproduces_torchvision_features(pad_type):
    state = _need(IMAGENET)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(state, strict=True)
    if pad_type == "same":
        reference = _tf_same_padding(reference)
    reference.eval()
    ours = _ours(state, pad_type)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.features[:18](x)
        got = ours(x)["res5"]
        other = _ours(state, "same" if pad_type == "" else "")(x)["res5"]
    assert got.shape == expected.shape == (2, 320, 7, 7)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # the two paddings give different features: the comparison above can fail
    assert (other - expected).abs().max() > 1e-2


def test_same_padding_keeps_names_and_dilation():
    same = MobileNetV2(output_stride=8, pad_type="same", out_features=["res2", "res5"])
    plain = MobileNetV2(output_stride=8, out_features=["res2", "res5"])
    assert list(same.state_dict()) == list(plain.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out = same.eval()(x)
    assert out["res5"].shape == (1, 320, 12, 16) and out["res2"].shape == (1, 24, 24, 32)


def test_pad_type_is_checked_at_start_up():
    cfg = load_cfg(STUDENT_CFG, "MODEL.MOBILENETV2.PAD_TYPE", "valid", validate=False)
    with pytest.raises(ConfigError, match=r"MODEL.MOBILENETV2.PAD_TYPE = 'valid'.*\['', 'same'\]"):
        validate_config(cfg)
    with pytest.raises(ValueError, match="pad_type must be one of"):
        MobileNetV2(pad_type="valid")
    assert (REPO / TEACHER_CFG).is_file()
