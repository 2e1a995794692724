"""Dilated ResNet backbone, PSP / DeepLabV3 heads and the stock SemanticSegmentor built on them."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from seg_test_utils import IGNORE, NUM_CLASSES, make_cfg, synthetic_batch

from radkd_d2.modeling.backbone import DilatedResNet
from radkd_d2.modeling.heads import DeepLabV3Head, PSPHead

@pytest.mark.parametrize(
    "depth, width_mult, output_stride, channels",
    [
        (18, 0.25, 8, (16, 32, 64, 128)),
        (18, 0.25, 16, (16, 32, 64, 128)),
        (18, 0.25, 32, (16, 32, 64, 128)),
        (101, 0.125, 8, (32, 64, 128, 256)),
    ],
)
def test_backbone_shapes(depth, width_mult, output_stride, channels):
    torch.manual_seed(0)
    names = ["res2", "res3", "res4", "res5"]
    model = DilatedResNet(
        depth=depth, width_mult=width_mult, output_stride=output_stride, out_features=names
    )
    features = model(torch.randn(2, 3, 64, 64))
    shapes = model.output_shape()
    strides = {8: (4, 8, 8, 8), 16: (4, 8, 16, 16), 32: (4, 8, 16, 32)}[output_stride]
    assert list(features) == names
    for name, c, s in zip(names, channels, strides):
        assert shapes[name] == ShapeSpec(channels=c, stride=s)
        assert features[name].shape == (2, c, 64 // s, 64 // s)
    assert model.size_divisibility == output_stride


def test_deep_stem_and_dilations():
    r18 = DilatedResNet(depth=18, width_mult=0.25, output_stride=8)
    assert [getattr(r18.stem, f"conv{i}").out_channels for i in (1, 2, 3)] == [16, 16, 32]
    v1c = DilatedResNet(depth=18, width_mult=1.0, output_stride=8, stem_out_channels=64)
    assert [getattr(v1c.stem, f"conv{i}").out_channels for i in (1, 2, 3)] == [32, 32, 64]
    assert [getattr(r18.stem, f"conv{i}").stride for i in (1, 2, 3)] == [(2, 2), (1, 1), (1, 1)]
    # First 3x3 conv of a dilated stage's first block uses half the stage dilation.
    assert r18.res4[0].conv1.dilation == (1, 1) and r18.res4[0].conv2.dilation == (2, 2)
    assert r18.res4[1].conv1.dilation == (2, 2)
    assert r18.res5[0].conv1.dilation == (2, 2) and r18.res5[0].conv2.dilation == (4, 4)
    assert r18.res5[1].conv1.dilation == (4, 4)
    r101 = DilatedResNet(depth=101, width_mult=0.125, output_stride=8)
    assert [len(getattr(r101, f"res{i}")) for i in (2, 3, 4, 5)] == [3, 4, 23, 3]
    assert r101.res5[0].conv2.dilation == (2, 2) and r101.res5[2].conv2.dilation == (4, 4)
    assert r101.res3[0].conv2.stride == (2, 2) and r101.res3[0].conv1.stride == (1, 1)
    # Detectron2 ResNet naming, which the checkpoint converters rely on.
    names = {n for n, _ in r101.named_parameters()}
    assert {"stem.conv1.weight", "stem.conv3.norm.weight", "res2.0.shortcut.norm.bias"} <= names
    assert "res5.2.conv3.weight" in names


def test_freeze_at():
    torch.manual_seed(0)
    model = DilatedResNet(depth=18, width_mult=0.25, out_features=["res5"], freeze_at=2)
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith(("stem.", "res2."))), name
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.res2[1].conv2.norm, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].conv1.norm, torch.nn.BatchNorm2d)
    model(torch.randn(2, 3, 32, 32))["res5"].sum().backward()
    assert model.res3[0].conv1.weight.grad is not None
    assert model.res2[0].conv1.weight.grad is None

    cfg = make_cfg()
    cfg.MODEL.DRN.FREEZE_AT = 1
    backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert all(p.requires_grad for p in backbone.res2.parameters())


def _head_input_shape(res5_channels=64):
    return {
        "res4": ShapeSpec(channels=48, stride=8),
        "res5": ShapeSpec(channels=res5_channels, stride=8),
    }


@pytest.mark.parametrize("head_cls", [PSPHead, DeepLabV3Head])
@pytest.mark.parametrize("aux_weight", [0.0, 0.4])
def test_head_layers_losses(head_cls, aux_weight):
    torch.manual_seed(0)
    extra = {"bins": (1, 2, 3, 6)} if head_cls is PSPHead else {"dilations": (1, 2, 3)}
    head = head_cls(
        _head_input_shape(),
        in_feature="res5",
        num_classes=NUM_CLASSES,
        conv_dims=24,
        common_stride=8,
        loss_weight=2.0,
        ignore_value=IGNORE,
        aux_in_feature="res4",
        aux_loss_weight=aux_weight,
        **extra,
    )
    assert (head.aux_head is not None) == (aux_weight > 0)
    assert head.output_shape() == {
        "decoder": ShapeSpec(channels=24, stride=8),
        "logits": ShapeSpec(channels=NUM_CLASSES, stride=8),
    }
    features = {"res4": torch.randn(2, 48, 6, 7), "res5": torch.randn(2, 64, 6, 7)}
    targets = torch.randint(NUM_CLASSES, (2, 48, 56))
    targets[:, :5] = IGNORE

    outputs = head.layers(features)
    expected_keys = {"decoder", "logits"} | ({"aux_logits"} if aux_weight else set())
    assert set(outputs) == expected_keys
    assert outputs["decoder"].shape == (2, 24, 6, 7)
    assert outputs["logits"].shape == (2, NUM_CLASSES, 6, 7)

    losses = head.losses(outputs, targets)
    upsampled = F.interpolate(
        outputs["logits"], size=(48, 56), mode="bilinear", align_corners=False
    )
    expected = 2.0 * F.cross_entropy(upsampled, targets, ignore_index=IGNORE)
    torch.testing.assert_close(losses["loss_sem_seg"], expected)
    assert set(losses) == {"loss_sem_seg"} | ({"loss_sem_seg_aux"} if aux_weight else set())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in head.parameters())

    head.eval()
    assert set(head.layers(features)) == {"decoder", "logits"}
    logits, empty = head(features)
    assert logits.shape == (2, NUM_CLASSES, 48, 56) and empty == {}


def test_head_rejects_wrong_common_stride():
    with pytest.raises(ValueError, match="COMMON_STRIDE"):
        PSPHead(_head_input_shape(), in_feature="res5", num_classes=3, conv_dims=8, common_stride=4)


def test_semantic_segmentor_overfits_one_batch():
    torch.manual_seed(0)
    cfg = make_cfg("drn", "PSPHead")
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.0
    model = build_model(cfg)
    batch = synthetic_batch(size=(64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(8):
            loss = model(batch)["loss_sem_seg"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history


def test_psp_pool_align_corners_comes_from_its_config_key():
    """MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS reaches the head and changes the pooled maps'
    upsampling (CIRKD's converted PSP teachers need True)."""
    from detectron2.modeling import build_sem_seg_head

    outputs = []
    for flag in (False, True):
        cfg = make_cfg()
        cfg.MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS = flag
        torch.manual_seed(0)
        head = build_sem_seg_head(cfg, _head_input_shape()).eval()
        assert head.pool_align_corners is flag
        torch.manual_seed(1)
        x = {"res5": torch.randn(1, 64, 12, 12), "res4": torch.randn(1, 48, 12, 12)}
        outputs.append(head.decode(x["res5"]))
    assert outputs[0].shape == outputs[1].shape
    assert not torch.allclose(outputs[0], outputs[1])
