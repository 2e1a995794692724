"""Weight import (radkd_d2/checkpoint, tools/convert_weights.py).

torchvision / timm sources: the source model is built with random weights (and random norm
statistics), converted, loaded into our model, and their features compared (1e-5). CIRKD,
mmsegmentation, mmdetection and Detectron2 .pkl: a state dict in the source's naming is made from
our model (the converter's rules backwards, plus hand-written key names of the source), converted
back, and must round-trip exactly with identical outputs. Wrong architectures must fail listing
the keys, and --allow-partial must load and still report.
"""

import importlib.util
import pickle

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model, build_resnet_backbone

from radkd_d2.checkpoint import (
    CONVERTERS,
    WeightConversionError,
    mmdet_anchor_permutation,
    save_d2_checkpoint,
    to_source_naming,
    verify_loadable,
)
from radkd_d2.checkpoint.convert import Rule
from radkd_d2.modeling.backbone import DilatedResNet, MobileNetV2, SwinBackbone
from radkd_d2.modeling.teacher import TeacherLoadError, load_weights_strictly

from conftest import REPO, load_cfg

ATOL = 1e-5
PSP_CFG = "configs/synthetic/pspnet_r18_tiny.yaml"
RETINA_CFG = "configs/synthetic/retinanet_r18_tiny.yaml"
AUX = ("MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", "0.4")


def _randomize(model: nn.Module) -> nn.Module:
    """Random norm statistics and affine parameters, so a mixed-up norm mapping shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)) or (
                type(m).__name__.startswith("FrozenBatchNorm")
            ):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
            elif isinstance(m, nn.LayerNorm):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _seg_model(*opts):
    cfg = load_cfg(PSP_CFG, *AUX, *opts, validate=False)
    return _randomize(build_model(cfg)), cfg


def _seg_outputs(model, image):
    with torch.no_grad():
        return model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])[0][
            "sem_seg"
        ]


def _assert_same_state(converted, reference):
    assert set(converted) == set(reference)
    bad = [k for k in reference if not torch.equal(converted[k], reference[k])]
    assert not bad, bad[:10]


def _image():
    return (torch.rand(3, 64, 64) * 255).round()


# ------------------------------------------------------------------------------- rule engine


def test_rule_patterns_convert_both_ways():
    rule = Rule("layer{i}.{j}.bn{k}", "res{i+1}.{j}.conv{k}.norm")
    assert rule.forward("layer3.12.bn2") == "res4.12.conv2.norm"
    assert rule.backward("res4.12.conv2.norm") == "layer3.12.bn2"
    assert rule.forward("layer3.12.conv2") is None
    head = Rule("cls_convs.{i}.conv", "cls_subnet.{i*2}")
    assert head.forward("cls_convs.3.conv") == "cls_subnet.6"
    assert head.backward("cls_subnet.3") is None  # odd index: a ReLU, not a conv
    swin = Rule("features.{s*2+1}.{j}.{*}", "layers.{s}.blocks.{j}.{*}")
    assert swin.forward("features.5.1.attn.qkv") == "layers.2.blocks.1.attn.qkv"
    assert swin.forward("features.4.1.attn.qkv") is None


# ------------------------------------------------------------------------ torchvision / timm


def _d2_resnet(depth, norm):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision strides in the 3x3 conv
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def _tv_stages(tv, x):
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
    return x


@pytest.mark.parametrize("depth,norm", [(18, "FrozenBN"), (101, "BN")])
def test_torchvision_resnet_to_detectron2_resnet_parity(depth, norm):
    tv = _randomize(getattr(torchvision.models, f"resnet{depth}")())
    ours = _d2_resnet(depth, norm)
    state, report = CONVERTERS["torchvision_resnet"](tv.state_dict(), ours)
    assert report.ok and set(report.ignored) >= {"fc.weight", "fc.bias"}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32 if depth > 50 else 64, 64)
    with torch.no_grad():
        expected = _tv_stages(tv, tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))
        torch.testing.assert_close(ours(x)["res5"], expected, atol=ATOL, rtol=0)


def test_torchvision_resnet_into_deep_stem_needs_allow_partial_and_keeps_dilation():
    tv = _randomize(torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]))
    # torchvision layer1 expects a 64-channel stem output: the mmseg-V1c-width deep stem
    ours = DilatedResNet(depth=50, output_stride=8, out_features=["res5"], stem_out_channels=64).eval()
    with pytest.raises(WeightConversionError) as err:
        CONVERTERS["torchvision_resnet"](tv.state_dict(), ours)
    message = str(err.value)
    for key in ("conv1.weight", "bn1.running_var", "stem.conv1.weight", "stem.conv3.norm.bias"):
        assert key in message
    state, report = CONVERTERS["torchvision_resnet"](tv.state_dict(), ours, allow_partial=True)
    assert {k for k, _ in report.unused} == {
        f"bn1.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    } | {"conv1.weight"}
    assert set(report.missing) == {
        k for k in ours.state_dict() if k.startswith("stem.") and "num_batches" not in k
    }
    assert any("deep stem" in n for n in report.notes)
    ours.load_state_dict(state, strict=False)
    x = torch.randn(1, 64, 12, 12)  # stem output: compare res2..res5 with layer1..layer4
    with torch.no_grad():
        got = x
        for name in ("res2", "res3", "res4", "res5"):
            got = getattr(ours, name)(got)
        torch.testing.assert_close(got, _tv_stages(tv, x), atol=ATOL, rtol=0)


def _mv2():
    return MobileNetV2(output_stride=32, out_features=["res3", "res5"]).eval()


def test_torchvision_mobilenetv2_parity():
    tv = _randomize(torchvision.models.mobilenet_v2())
    ours = _mv2()
    state, report = CONVERTERS["torchvision_mobilenetv2"](tv.state_dict(), ours)
    assert (
        report.ok
        and "features.18.0.weight" in report.ignored
        and "classifier.1.weight" in report.ignored
    )
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out["res3"], tv.features[:7](x), atol=ATOL, rtol=0)
        torch.testing.assert_close(out["res5"], tv.features[:18](x), atol=ATOL, rtol=0)


def test_timm_mobilenetv2_parity():
    src = _randomize(timm.create_model("mobilenetv2_100"))
    ours = _mv2()
    state, report = CONVERTERS["timm_mobilenetv2"](src.state_dict(), ours)
    assert report.ok and {"conv_head.weight", "bn2.running_mean", "classifier.bias"} <= set(
        report.ignored
    )
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x)["res5"], src.blocks(src.bn1(src.conv_stem(x))), atol=ATOL, rtol=0
        )


SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2)


def _swin_check(ours, stages_nchw, x):
    with torch.no_grad():
        out = ours(x)
    for name, expected in zip(("res2", "res3", "res4", "res5"), stages_nchw):
        expected = F.layer_norm(expected.permute(0, 2, 3, 1), expected.shape[1:2]).permute(
            0, 3, 1, 2
        )
        torch.testing.assert_close(out[name], expected, atol=ATOL, rtol=0)


def test_torchvision_swin_parity():
    tv = _randomize(
        torchvision.models.swin_transformer.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[2, 2, 2, 2],
            num_heads=[1, 2, 2, 4],
            window_size=[2, 2],
        )
    )
    ours = SwinBackbone(**SWIN).eval()
    state, report = CONVERTERS["torchvision_swin"](tv.state_dict(), ours)
    assert report.ok and set(report.defaulted) == {
        f"norms.res{k}.{p}" for k in range(2, 6) for p in ("weight", "bias")
    }
    assert (
        "features.1.0.attn.relative_position_index" in report.ignored
        and "head.weight" in report.ignored
    )
    ours.load_state_dict(state, strict=True)
    # 128 px: every stage (32..4 px) is larger than the 2x2 window, so both shift every other
    # block (torchvision drops the shift when the window covers the whole map, timm does not).
    x = torch.randn(1, 3, 128, 128)
    stages, h = [], x
    with torch.no_grad():
        for i, module in enumerate(tv.features):
            h = module(h)
            if i % 2:
                stages.append(h.permute(0, 3, 1, 2))
    _swin_check(ours, stages, x)


def test_timm_swin_parity():
    src = _randomize(timm.models.swin_transformer.SwinTransformer(img_size=128, **SWIN))
    ours = SwinBackbone(**SWIN).eval()
    state, report = CONVERTERS["timm_swin"](src.state_dict(), ours)
    assert report.ok and {"norm.weight", "head.fc.weight"} <= set(report.ignored)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        stages = src.forward_intermediates(
            x, norm=False, output_fmt="NCHW", intermediates_only=True
        )
    _swin_check(ours, stages, x)


# ------------------------------------------------------------- round trips: CIRKD, mmseg, mmdet


def _round_trip(source, model, exported, **options):
    """Convert ``exported`` back into a fresh copy of ``model`` (different init); return it."""
    fresh = _randomize(build_model(model._cfg))
    state, report = CONVERTERS[source](exported, fresh, **options)
    assert report.ok, report.format()
    _assert_same_state(state, model.state_dict())
    return state, report, fresh


@pytest.fixture(scope="module")
def psp_model():
    torch.manual_seed(1)
    model, cfg = _seg_model()
    model._cfg = cfg
    return model


@pytest.fixture(scope="module")
def deeplab_model():
    torch.manual_seed(2)
    model, cfg = _seg_model("MODEL.SEM_SEG_HEAD.NAME", "DeepLabV3Head")
    model._cfg = cfg
    return model


def _load_and_compare(model, fresh, state, tmp_path):
    path = tmp_path / "converted.pth"
    save_d2_checkpoint(state, path, author="test")
    load_weights_strictly(fresh, str(path), strict=True)
    image = _image()
    torch.testing.assert_close(
        _seg_outputs(fresh, image), _seg_outputs(model, image), atol=0, rtol=0
    )


@pytest.mark.parametrize("head,stem", [("psp", "flat"), ("deeplab", "sequential")])
def test_cirkd_full_checkpoint_round_trip(head, stem, psp_model, deeplab_model, tmp_path):
    model = psp_model if head == "psp" else deeplab_model
    exported, unexpressed = to_source_naming(
        "cirkd_resnet", model.state_dict(), full=True, stem=stem
    )
    assert not unexpressed
    names = {
        "pretrained.layer1.0.conv1.weight",
        "pretrained.layer4.1.bn2.running_var",
        "pretrained.layer2.0.downsample.1.weight",
        "auxlayer.block.0.weight",
        "auxlayer.block.1.running_mean",
        "auxlayer.block.4.bias",
        "head.block.0.weight",
    }
    names |= (
        {"pretrained.conv1.weight", "pretrained.bn3.weight", "pretrained.conv3.weight"}
        if stem == "flat"
        else {
            "pretrained.conv1.0.weight",
            "pretrained.conv1.4.running_var",
            "pretrained.conv1.6.weight",
            "pretrained.bn1.bias",
        }
    )
    names |= (
        {"head.psp.conv1.0.weight", "head.psp.conv4.1.running_var", "head.classifier.weight"}
        if head == "psp"
        else {
            "head.aspp.b0.0.weight",
            "head.aspp.b3.block.1.bias",
            "head.aspp.b4.gap.1.weight",
            "head.aspp.project.0.weight",
            "head.block.4.weight",
        }
    )
    assert names <= set(exported), sorted(names - set(exported))
    state, report, fresh = _round_trip("cirkd_resnet", model, exported)
    _load_and_compare(model, fresh, state, tmp_path)


def test_cirkd_backbone_checkpoint_ignores_classifier(psp_model):
    exported, _ = to_source_naming("cirkd_resnet", psp_model.state_dict(), full=False)
    assert "conv2.weight" in exported and not any(
        k.startswith(("pretrained.", "head.")) for k in exported
    )
    exported["fc.weight"], exported["fc.bias"] = torch.zeros(10, 128), torch.zeros(10)
    state, report = CONVERTERS["cirkd_resnet"](exported, psp_model)
    assert report.ok and set(report.ignored) == {"fc.weight", "fc.bias"}
    assert report.scope == ("backbone.",) and any(
        k.startswith("sem_seg_head.") for k in report.out_of_scope
    )
    _assert_same_state(
        state, {k: v for k, v in psp_model.state_dict().items() if k.startswith("backbone.")}
    )


def test_cirkd_released_stem_width_is_reported_as_shape_mismatch(psp_model):
    """A stem of another width (CIRKD's 64/64/128 vs a narrowed model) is listed with shapes."""
    exported, _ = to_source_naming("cirkd_resnet", psp_model.state_dict(), full=True)
    exported["pretrained.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(WeightConversionError) as err:
        CONVERTERS["cirkd_resnet"](exported, psp_model)
    assert (
        "pretrained.conv1.weight -> backbone.stem.conv1.weight: (64, 3, 3, 3) vs (16, 3, 3, 3)"
        in str(err.value)
    )
    state, report = CONVERTERS["cirkd_resnet"](exported, psp_model, allow_partial=True)
    assert [m[1] for m in report.mismatched] == ["backbone.stem.conv1.weight"]
    assert "backbone.stem.conv1.weight" not in state and not report.missing


def test_mmseg_pspnet_round_trip(psp_model, tmp_path):
    exported, unexpressed = to_source_naming("mmseg_pspnet", psp_model.state_dict())
    assert not unexpressed
    names = {
        "backbone.stem.0.weight",
        "backbone.stem.4.running_mean",
        "backbone.stem.7.bias",
        "backbone.layer3.1.bn2.weight",
        "backbone.layer2.0.downsample.0.weight",
        "decode_head.psp_modules.0.1.conv.weight",
        "decode_head.psp_modules.3.1.bn.running_var",
        "decode_head.bottleneck.conv.weight",
        "decode_head.bottleneck.bn.bias",
        "decode_head.conv_seg.weight",
        "auxiliary_head.convs.0.conv.weight",
        "auxiliary_head.convs.0.bn.weight",
        "auxiliary_head.conv_seg.bias",
    }
    assert names <= set(exported), sorted(names - set(exported))
    state, _, fresh = _round_trip("mmseg_pspnet", psp_model, exported)
    _load_and_compare(psp_model, fresh, state, tmp_path)


def test_mmseg_deeplabv3_leaves_the_fusion_convs(deeplab_model):
    exported, unexpressed = to_source_naming("mmseg_deeplabv3", deeplab_model.state_dict())
    fusion = {
        k
        for k in deeplab_model.state_dict()
        if k.startswith(("sem_seg_head.aspp.project.", "sem_seg_head.bottleneck."))
    }
    assert set(unexpressed) == fusion
    assert {"decode_head.image_pool.1.conv.weight", "decode_head.aspp_modules.3.bn.bias"} <= set(
        exported
    )
    # mmseg's single 3x3 fusion conv (5C -> C) has no counterpart in DeepLabV3Head.
    exported["decode_head.bottleneck.conv.weight"] = torch.zeros(64, 5 * 64, 3, 3)
    with pytest.raises(WeightConversionError) as err:
        CONVERTERS["mmseg_deeplabv3"](exported, deeplab_model)
    assert "decode_head.bottleneck.conv.weight" in str(err.value)
    assert all(k in str(err.value) for k in fusion if "num_batches" not in k)
    state, report = CONVERTERS["mmseg_deeplabv3"](exported, deeplab_model, allow_partial=True)
    assert set(report.missing) == {k for k in fusion if "num_batches" not in k}
    _assert_same_state(
        state, {k: v for k, v in deeplab_model.state_dict().items() if k not in report.missing}
    )


@pytest.fixture(scope="module")
def retinanet():
    torch.manual_seed(3)
    cfg = load_cfg(
        RETINA_CFG,
        "MODEL.RESNETS.DEPTH",
        101,
        "MODEL.RESNETS.NUM_GROUPS",
        4,
        "MODEL.RESNETS.WIDTH_PER_GROUP",
        4,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        64,
        "MODEL.RESNETS.STEM_OUT_CHANNELS",
        16,
        "MODEL.RESNETS.STRIDE_IN_1X1",
        False,
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        "MODEL.FPN.OUT_CHANNELS",
        32,
        validate=False,
    )
    model = _randomize(build_model(cfg))
    with torch.no_grad():
        for p in model.head.parameters():  # the head's init is N(0, 0.01): make outputs differ
            p.normal_(0, 0.1)
    model._cfg = cfg
    return model


def _retina_outputs(model, x):
    with torch.no_grad():
        features = model.backbone(x)
        logits, deltas = model.head([features[f] for f in model.head_in_features])
    return [features[k] for k in sorted(features)] + logits + deltas


def test_mmdet_retinanet_x101_round_trip(retinanet, tmp_path):
    exported, unexpressed = to_source_naming("mmdet_retinanet", retinanet.state_dict())
    assert not unexpressed
    names = {
        "backbone.conv1.weight",
        "backbone.bn1.running_mean",
        "backbone.layer3.22.conv2.weight",
        "backbone.layer1.0.downsample.1.bias",
        "neck.lateral_convs.0.conv.weight",
        "neck.fpn_convs.2.conv.bias",
        "neck.fpn_convs.3.conv.weight",
        "neck.fpn_convs.4.conv.bias",
        "bbox_head.cls_convs.1.conv.weight",
        "bbox_head.reg_convs.0.conv.bias",
        "bbox_head.retina_cls.weight",
        "bbox_head.retina_reg.bias",
    }
    assert names <= set(exported), sorted(names - set(exported))
    assert not torch.equal(exported["bbox_head.retina_cls.weight"], retinanet.head.cls_score.weight)
    state, report, fresh = _round_trip("mmdet_retinanet", retinanet, exported)
    path = tmp_path / "retinanet.pth"
    save_d2_checkpoint(state, path, author="test")
    load_weights_strictly(fresh, str(path), strict=True)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(_retina_outputs(fresh, x), _retina_outputs(retinanet, x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mmdet_anchor_order_matches_detectron2(retinanet):
    """Detectron2 anchor k receives the weights of the mmdet anchor with the same box."""
    sizes = retinanet._cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]
    ratios = torch.tensor(retinanet._cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])
    stride = 8
    scales = torch.tensor(sizes) / stride  # mmdet: octave_base_scale * 2 ** (i / scales_per_octave)
    h_ratios = ratios.sqrt()
    ws = (stride / h_ratios[:, None] * scales[None, :]).reshape(
        -1
    )  # mmdet AnchorGenerator, ratio-major
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    mmdet = torch.stack([-ws / 2, -hs / 2, ws / 2, hs / 2], dim=1)
    perm = mmdet_anchor_permutation(len(sizes), len(ratios))
    d2 = list(retinanet.anchor_generator.cell_anchors)[0]
    torch.testing.assert_close(d2, mmdet[perm], atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------- Detectron2 .pkl, failures


def _write_pkl(model, path):
    blob = {k: v.numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump(
            {"model": blob, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f
        )


def test_d2_pkl_round_trip_and_wrong_architecture(psp_model, deeplab_model, tmp_path):
    pkl = tmp_path / "model_final.pkl"
    _write_pkl(psp_model, pkl)
    fresh = _randomize(build_model(psp_model._cfg))
    state, report = CONVERTERS["d2_pkl"](str(pkl), fresh)
    assert report.ok
    _assert_same_state(state, psp_model.state_dict())
    _load_and_compare(psp_model, build_model(psp_model._cfg).eval(), state, tmp_path)

    _write_pkl(deeplab_model, pkl)
    with pytest.raises(WeightConversionError) as err:
        CONVERTERS["d2_pkl"](str(pkl), build_model(psp_model._cfg))
    assert "sem_seg_head.aspp.project.weight" in str(err.value)  # unused
    assert "sem_seg_head.ppm.0.weight" in str(err.value)  # missing


@pytest.mark.parametrize(
    "source,make_source,listed",
    [
        (
            "torchvision_resnet",
            lambda: torchvision.models.mobilenet_v2().state_dict(),
            ["features.0.0.weight", "res2.0.conv1.weight"],
        ),
        (
            "timm_swin",
            lambda: torchvision.models.resnet18().state_dict(),
            ["layer1.0.conv1.weight", "patch_embed.proj.weight"],
        ),
        (
            "mmseg_pspnet",
            lambda: to_source_naming("cirkd_resnet", _seg_model()[0].state_dict(), full=True)[0],
            [
                "pretrained.layer1.0.conv1.weight",
                "head.psp.conv1.0.weight",
                "backbone.res2.0.conv1.weight",
            ],
        ),
    ],
)
def test_wrong_architecture_fails_listing_keys(source, make_source, listed):
    targets = {
        "torchvision_resnet": lambda: _d2_resnet(18, "BN"),
        "timm_swin": lambda: SwinBackbone(**SWIN),
        "mmseg_pspnet": lambda: _seg_model()[0],
    }
    with pytest.raises(WeightConversionError) as err:
        CONVERTERS[source](make_source(), targets[source]())
    for key in listed:
        assert key in str(err.value)


# ------------------------------------------------------------------------------------- the tool


def _tool():
    spec = importlib.util.spec_from_file_location(
        "convert_weights", REPO / "tools" / "convert_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_weights_tool_strict_and_partial(psp_model, tmp_path, capsys):
    tool = _tool()
    exported, _ = to_source_naming("cirkd_resnet", psp_model.state_dict(), full=True)
    src, out = tmp_path / "cirkd_psp.pth", tmp_path / "out" / "teacher.pth"
    torch.save(exported, src)
    cfg_args = ["--config-file", str(REPO / PSP_CFG), "--input", str(src), "--output", str(out)]
    assert tool.main(["--source", "cirkd_resnet", *cfg_args, *AUX]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["matching_heuristics"] is False and "cirkd_resnet" in saved["__author__"]
    teacher = build_model(psp_model._cfg).eval()
    load_weights_strictly(teacher, str(out), strict=True)  # as MODEL.DISTILL.TEACHER.WEIGHTS
    image = _image()
    torch.testing.assert_close(
        _seg_outputs(teacher, image), _seg_outputs(psp_model, image), atol=0, rtol=0
    )

    # The wrong converter fails and writes nothing; --allow-partial writes the matching part.
    wrong = tmp_path / "wrong.pth"
    assert tool.main(["--source", "mmseg_pspnet", *cfg_args[:-1], str(wrong), *AUX]) == 1
    assert "pretrained.layer1.0.conv1.weight" in capsys.readouterr().err and not wrong.exists()
    assert (
        tool.main(["--source", "mmseg_pspnet", "--allow-partial", *cfg_args[:-1], str(wrong), *AUX])
        == 0
    )
    assert "PARTIAL checkpoint written" in capsys.readouterr().out
    with pytest.raises(TeacherLoadError, match="sem_seg_head.ppm.0.weight"):
        load_weights_strictly(build_model(psp_model._cfg), str(wrong), strict=True)
    load_weights_strictly(build_model(psp_model._cfg), str(wrong), strict=False)


def test_verify_loadable_catches_a_mismatch(psp_model, tmp_path):
    state, report = CONVERTERS["cirkd_resnet"](
        to_source_naming("cirkd_resnet", psp_model.state_dict(), full=True)[0], psp_model
    )
    state.pop("sem_seg_head.predictor.weight")  # not what the report says was converted
    save_d2_checkpoint(state, tmp_path / "x.pth", author="test")
    with pytest.raises(WeightConversionError, match="sem_seg_head.predictor.weight"):
        verify_loadable(build_model(psp_model._cfg), str(tmp_path / "x.pth"), report)
