"""MobileNetV2 and Swin backbones (timm wrappers), the UPerNet head, and the segmentors on every
backbone x head pair."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import FrozenBatchNormAct2d
from timm.models.swin_transformer import SwinTransformer

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage
from seg_test_utils import IGNORE, NUM_CLASSES, STAGES, TINY_SWIN, make_cfg, synthetic_batch

from conftest import REPO
from radkd_d2.config import add_radkd_config
from radkd_d2.modeling.backbone import MobileNetV2, SwinBackbone
from radkd_d2.modeling.heads import UPerNetHead
from radkd_d2.modeling.capture import alias_shapes as seg_tap_shapes

def _check_shapes(backbone, size, names=STAGES):
    features = backbone(torch.randn(2, 3, *size))
    shapes = backbone.output_shape()
    assert list(features) == list(shapes) == list(names)
    for name, feature in features.items():
        spec = shapes[name]
        height, width = (math.ceil(side / spec.stride) for side in size)
        expected = (2, spec.channels, height, width)
        assert feature.shape == expected, name
        assert torch.isfinite(feature).all()
    return shapes


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_mobilenetv2_shapes(size):
    backbone = MobileNetV2(width_mult=0.35, output_stride=8, out_features=STAGES)
    shapes = _check_shapes(backbone, size)
    assert [shapes[n].stride for n in STAGES] == [4, 8, 8, 8]
    assert [shapes[n].channels for n in STAGES] == [8, 16, 32, 112]  # timm's rounding of 0.35
    assert backbone.size_divisibility == 8


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_swin_shapes(size):
    backbone = SwinBackbone(**TINY_SWIN, out_features=STAGES)
    shapes = _check_shapes(backbone, size)
    assert [shapes[n] for n in STAGES] == [
        ShapeSpec(channels=24 * 2**i, stride=4 * 2**i) for i in range(4)
    ]
    assert backbone.size_divisibility == 32


def test_swin_input_not_multiple_of_32():
    backbone = SwinBackbone(**TINY_SWIN, out_features=STAGES).eval()
    _check_shapes(backbone, (70, 50))
    # A subset of stages: later stages are pruned, padding follows the deepest returned stride.
    partial = SwinBackbone(**TINY_SWIN, out_features=["res3", "res2"])
    assert len(partial.body.layers) == 2 and partial.size_divisibility == 8
    _check_shapes(partial, (37, 21), names=["res2", "res3"])


def test_mobilenetv2_dilation_and_output_strides():
    dilated = MobileNetV2(width_mult=1.0, output_stride=8, out_features=STAGES)
    assert [dilated.output_shape()[n].channels for n in STAGES] == [24, 32, 96, 320]
    blocks = dilated.body.blocks
    # Strides end at blocks.2 (stride 8); later strides become dilation 2, then 4.
    assert blocks[2][0].conv_dw.stride == (2, 2)
    assert blocks[3][0].conv_dw.stride == (1, 1) and blocks[3][0].conv_dw.dilation == (1, 1)
    assert blocks[3][1].conv_dw.dilation == (2, 2) and blocks[4][2].conv_dw.dilation == (2, 2)
    assert blocks[5][0].conv_dw.dilation == (2, 2) and blocks[5][1].conv_dw.dilation == (4, 4)
    assert blocks[6][0].conv_dw.dilation == (4, 4) and blocks[6][0].conv_dw.stride == (1, 1)
    for output_stride, strides in [(16, [4, 8, 16, 16]), (32, [4, 8, 16, 32])]:
        model = MobileNetV2(width_mult=0.35, output_stride=output_stride, out_features=STAGES)
        assert [model.output_shape()[n].stride for n in STAGES] == strides
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2(width_mult=0.3)
    with pytest.raises(ValueError, match="out_features"):
        MobileNetV2(out_features=["res1"])


def test_mobilenetv2_norm_options():
    frozen = MobileNetV2(width_mult=0.35, norm="FrozenBN", out_features=["res5"])
    norms = [m for m in frozen.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNormAct2d) for m in norms)
    assert all(p.requires_grad for p in frozen.parameters())  # convs stay trainable
    assert frozen(torch.randn(1, 3, 32, 32))["res5"].shape == (1, 112, 4, 4)
    with pytest.raises(ValueError, match="norm"):
        MobileNetV2(norm="GN")


def test_mobilenetv2_matches_bare_timm_model():
    torch.manual_seed(0)
    wrapped = MobileNetV2(width_mult=0.35, output_stride=8, out_features=STAGES).eval()
    bare = timm.create_model("mobilenetv2_035", pretrained=False, output_stride=8).eval()
    missing, unexpected = bare.load_state_dict(wrapped.body.state_dict(), strict=False)
    assert not unexpected
    assert {k.split(".")[0] for k in missing} == {"conv_head", "bn2", "classifier"}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = bare.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        actual = wrapped(x)
    for name, ref in zip(STAGES, expected):
        torch.testing.assert_close(actual[name], ref)


def test_swin_matches_bare_timm_model():
    torch.manual_seed(0)
    wrapped = SwinBackbone(**TINY_SWIN, drop_path_rate=0.0, out_features=STAGES).eval()
    for norm in wrapped.norms.values():  # non-trivial LayerNorm parameters
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    bare = SwinTransformer(
        **TINY_SWIN, num_classes=0, always_partition=True, strict_img_size=False
    ).eval()
    missing, unexpected = bare.load_state_dict(wrapped.body.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"norm.weight", "norm.bias"}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        stages = bare.forward_intermediates(x, intermediates_only=True)
        actual = wrapped(x)
    for name, ref in zip(STAGES, stages):
        norm = wrapped.norms[name]
        ref = F.layer_norm(ref.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias)
        torch.testing.assert_close(actual[name], ref.permute(0, 3, 1, 2))


@pytest.mark.parametrize(
    "timm_name, config",
    [
        ("swin_tiny_patch4_window7_224", "configs/models/upernet_swin_t.yaml"),
        ("swin_base_patch4_window7_224", "configs/models/upernet_swin_b.yaml"),
    ],
)
def test_swin_configs_take_timm_imagenet_checkpoints(timm_name, config):
    """The Swin-T/B configs build timm's Swin-T/B: same parameter names and shapes (meta device)."""
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.merge_from_file(str(REPO / config))
    with torch.device("meta"):
        ours = build_backbone(cfg).body.state_dict()
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    reference = {k: v for k, v in reference.items() if not k.startswith(("head.", "norm."))}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def _upernet_input_shape():
    return {n: ShapeSpec(channels=8 * 2**i, stride=4 * 2**i) for i, n in enumerate(STAGES)}


@pytest.mark.parametrize("aux_weight", [0.0, 0.4])
def test_upernet_layers_losses(aux_weight):
    torch.manual_seed(0)
    head = UPerNetHead(
        _upernet_input_shape(),
        in_features=STAGES,
        num_classes=NUM_CLASSES,
        conv_dims=16,
        common_stride=4,
        loss_weight=2.0,
        ignore_value=IGNORE,
        aux_in_feature="res4",
        aux_loss_weight=aux_weight,
    )
    assert head.output_shape() == {
        "decoder": ShapeSpec(channels=16, stride=4),
        "logits": ShapeSpec(channels=NUM_CLASSES, stride=4),
    }

    def features_for(sizes):
        return {n: torch.randn(2, 8 * 2**i, *s) for i, (n, s) in enumerate(zip(STAGES, sizes))}

    # Odd sizes (ceil of an unpadded 70 x 50 input) exercise the top-down resizing.
    outputs = head.layers(features_for([(18, 13), (9, 7), (5, 4), (3, 2)]))
    assert set(outputs) == {"decoder", "logits"} | ({"aux_logits"} if aux_weight else set())
    assert outputs["decoder"].shape == (2, 16, 18, 13)
    assert outputs["logits"].shape == (2, NUM_CLASSES, 18, 13)

    # Losses take targets of the padded input size (96 x 64: a multiple of every stride).
    features = features_for([(24, 16), (12, 8), (6, 4), (3, 2)])
    targets = torch.randint(NUM_CLASSES, (2, 96, 64))
    targets[:, :5] = IGNORE
    outputs = head.layers(features)
    losses = head.losses(outputs, targets)
    upsampled = F.interpolate(
        outputs["logits"], size=(96, 64), mode="bilinear", align_corners=False
    )
    expected = 2.0 * F.cross_entropy(upsampled, targets, ignore_index=IGNORE)
    torch.testing.assert_close(losses["loss_sem_seg"], expected)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())

    head.eval()
    logits, empty = head(features)
    assert logits.shape == (2, NUM_CLASSES, 96, 64) and empty == {}


def test_upernet_rejects_bad_inputs():
    shapes = _upernet_input_shape()
    kwargs = dict(num_classes=3, conv_dims=8, common_stride=4)
    with pytest.raises(ValueError, match="fine to coarse"):
        UPerNetHead(shapes, in_features=["res2", "res4", "res3"], **kwargs)
    with pytest.raises(ValueError, match="among backbone outputs"):
        UPerNetHead(shapes, in_features=["res2", "p6"], **kwargs)
    with pytest.raises(ValueError, match="COMMON_STRIDE"):
        UPerNetHead(shapes, in_features=["res3", "res4"], **kwargs)


@pytest.mark.parametrize(
    "backbone, head",
    [
        ("drn", "PSPHead"),
        ("drn", "DeepLabV3Head"),
        ("swin", "UPerNetHead"),
        ("drn32", "UPerNetHead"),
        ("mv2", "PSPHead"),
        ("mv2", "DeepLabV3Head"),
    ],
)
def test_semantic_segmentor_end_to_end(backbone, head):
    """Every backbone x head pair: losses (with the aux head) reach the first backbone layer,
    tap shapes, and inference at sizes that are no multiple of the stride (padded, resized)."""
    torch.manual_seed(0)
    model = build_model(make_cfg(backbone, head, aux=0.4))
    shapes = seg_tap_shapes(model)
    stride = 4 if head == "UPerNetHead" else 8
    assert shapes["decoder"] == ShapeSpec(channels=32, stride=stride)
    assert set(STAGES) <= set(shapes)

    batch = synthetic_batch()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.sem_seg_head.predictor.weight.grad is not None
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and torch.isfinite(first.grad).all()

    model.eval()
    # Sizes that are no multiple of the backbone's divisibility are padded, outputs resized.
    inputs = [
        {"image": batch[0]["image"][:, :62, :58], "height": 93, "width": 87},
        {"image": batch[1]["image"], "height": 40, "width": 50},
    ]
    with torch.no_grad():
        results = model(inputs)
    assert [r["sem_seg"].shape for r in results] == [(NUM_CLASSES, 93, 87), (NUM_CLASSES, 40, 50)]
