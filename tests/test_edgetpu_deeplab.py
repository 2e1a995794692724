"""MobileNet-EdgeTPU + the ASPP-lite DeepLab head, the ``tf_deeplab_edgetpu`` converter, and a
classifier through a class map (fine-tuning init and zero-shot scoring).

The parity test runs the shared Cityscapes DeepLab against the quantised interpreter's logits of
``../shared/data/pretrained`` and is skipped when the files are absent (they are data).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from radkd_d2.checkpoint import CONVERTERS, WeightConversionError, to_source_naming
from radkd_d2.engine.checks import ConfigError, validate_config
from radkd_d2.engine.train_loop import AtomicCheckpointer
from radkd_d2.modeling.backbone import MobileNetEdgeTPU
from radkd_d2.modeling.class_map import (
    check_class_map,
    map_checkpoint_classifiers,
    map_log_probs,
    merge_classifier,
)

from conftest import SHARED_DATA, load_cfg

PRETRAINED = SHARED_DATA / "pretrained"
CITYSCAPES = PRETRAINED / "deeplab_mobilenet_edgetpu075_cityscapes.pth"
REFERENCE = PRETRAINED / "deeplab_mobilenet_edgetpu075_cityscapes_reference.npz"
CS_CFG = "configs/cityscapes/deeplab_edgetpu_cityscapes.yaml"
CAMVID_CFG = "configs/camvid/deeplab_edgetpu_cityscapes_camvid.yaml"
ZERO_SHOT_CFG = "configs/camvid/deeplab_edgetpu_cityscapes_zeroshot_camvid.yaml"
# CamVid <- Cityscapes train ids, as in CAMVID_CFG
CAMVID_MAP = [[10], [2, 3], [5], [0], [1], [8, 9], [6, 7], [4], [13, 14, 15, 16], [11], [12, 17, 18]]


def _need(path):
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared pretrained weights; see shared/data/README.md)")
    return path


def _cityscapes_model():
    cfg = load_cfg(CS_CFG, "MODEL.WEIGHTS", "", validate=False)
    return build_model(cfg).eval()


# --- the backbone -------------------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_shapes_match_what_it_declares(output_stride):
    net = MobileNetEdgeTPU(
        width_mult=0.75, output_stride=output_stride, out_features=["res2", "res3", "res4", "res5", "head"]
    ).eval()
    shapes = net.output_shape()
    assert {k: v.channels for k, v in shapes.items()} == {"res2": 24, "res3": 40, "res4": 72, "res5": 144, "head": 1280}
    assert shapes["res2"].stride == 4 and shapes["res3"].stride == 8
    assert shapes["res4"].stride == min(16, output_stride)
    assert shapes["res5"].stride == shapes["head"].stride == output_stride
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
    for name, t in out.items():
        s = shapes[name]
        assert t.shape == (1, s.channels, math.ceil(64 / s.stride), math.ceil(96 / s.stride)), name


def test_backbone_is_the_reference_network_not_timms():
    net = MobileNetEdgeTPU(output_stride=16)
    first = net.body.blocks[0][0]
    assert isinstance(first.bn1.act, nn.Identity)  # linear first block (timm has a ReLU here)
    assert not net.body.blocks[4][0].has_skip  # no residual around blocks.4.0
    # output stride 16: blocks.5.0 keeps rate 1 and stride 1, the later depthwise convs rate 2
    assert net.body.blocks[5][0].conv_dw.stride == (1, 1) and net.body.blocks[5][0].conv_dw.dilation == (1, 1)
    assert all(net.body.blocks[5][i].conv_dw.dilation == (2, 2) for i in (1, 2, 3))
    assert net.body.blocks[6][0].conv_dw.dilation == (2, 2)
    assert net.body.blocks[5][0].conv_dw.kernel_size == (5, 5)


def test_backbone_without_head_builds_no_head_conv():
    net = MobileNetEdgeTPU(out_features=["res4"])
    assert not hasattr(net.body, "conv_head") and len(net.body.blocks) == 5
    assert set(net(torch.randn(1, 3, 32, 32))) == {"res4"}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(width_mult=0.5), "width_mult"),
        (dict(output_stride=4), "output_stride"),
        (dict(out_features=["res6"]), "out_features"),
        (dict(pad_type="valid"), "pad_type"),
        (dict(norm="GN"), "norm"),
    ],
)
def test_backbone_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MobileNetEdgeTPU(**kwargs)


def test_bad_config_values_fail_at_start_up_naming_the_key():
    for key, value, allowed in (
        ("MODEL.EDGETPU.WIDTH_MULT", "0.5", "0.75"),
        ("MODEL.EDGETPU.PAD_TYPE", "valid", "same"),
        ("MODEL.SEM_SEG_HEAD.ASPP_VARIANT", "tiny", "lite"),
        ("MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE", "soft", "zero_shot"),
    ):
        cfg = load_cfg(CAMVID_CFG, key, value, validate=False)
        with pytest.raises(ConfigError, match=f"{key}.*{allowed}"):
            validate_config(cfg)


# --- the ASPP-lite head and the converter ------------------------------------------------


def test_aspp_lite_head_puts_the_pooling_branch_first_and_has_no_bottleneck():
    model = _cityscapes_model()
    head = model.sem_seg_head
    assert head.variant == "lite" and isinstance(head.bottleneck, nn.Identity)
    assert len(head.aspp.convs) == 1 and head.aspp.project.in_channels == 256
    names = {k for k in model.state_dict() if k.startswith("sem_seg_head.")}
    assert not any(".bottleneck." in k or "aspp.convs.1" in k for k in names)
    x = torch.randn(2, 1280, 3, 4)
    with torch.no_grad():
        pooled = head.aspp.pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, 3, 4)
        direct = head.aspp.project(torch.cat([pooled, head.aspp.convs[0](x)], 1))
        assert torch.allclose(head.aspp(x), direct)


def test_converter_round_trip_checks_every_key():
    model = _cityscapes_model()
    source, unexpressed = to_source_naming("tf_deeplab_edgetpu", model.state_dict())
    assert not unexpressed
    assert "head.aspp_pool.bn.running_var" in source and "blocks.0.0.conv.weight" in source
    converted, report = CONVERTERS["tf_deeplab_edgetpu"](source, model)
    assert report.ok and len(report.mapped) == len(model.state_dict())
    # one key too many, one missing, one of the wrong shape: each refused, each named
    extra = dict(source, **{"head.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightConversionError, match="head.extra.weight"):
        CONVERTERS["tf_deeplab_edgetpu"](extra, model)
    missing = {k: v for k, v in source.items() if k != "head.project.bn.weight"}
    with pytest.raises(WeightConversionError, match="aspp.project.norm.weight"):
        CONVERTERS["tf_deeplab_edgetpu"](missing, model)
    wrong = dict(source, **{"head.classifier.weight": torch.zeros(11, 128, 1, 1)})
    with pytest.raises(WeightConversionError, match="predictor.weight"):
        CONVERTERS["tf_deeplab_edgetpu"](wrong, model)


def test_shared_cityscapes_model_matches_the_interpreter():
    state = torch.load(_need(CITYSCAPES), map_location="cpu", weights_only=True)
    ref = np.load(_need(REFERENCE))
    model = _cityscapes_model()
    converted, report = CONVERTERS["tf_deeplab_edgetpu"](state, model)
    assert report.ok and not report.missing and not report.unused and not report.mismatched
    model.load_state_dict(converted, strict=True)
    images = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2).float()  # 8 x 3 x 513 x 513 RGB
    with torch.no_grad():
        logits = model.sem_seg_head.layers(model.backbone((images - model.pixel_mean) / model.pixel_std))["logits"]
    expected = torch.from_numpy(ref["interpreter_logits"]).permute(0, 3, 1, 2)
    assert logits.shape == expected.shape == (8, 19, 33, 33)
    agreement = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement >= 0.95, agreement  # 0.954 measured; 8-bit noise over 58 convs


# --- the class map ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "class_map, source, words",
    [
        ([[0], [1]], 19, "2 entries but MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3"),
        ([[0], [], [2]], 19, "empty"),
        ([[0], [1], [19]], 19, "0..18"),
        ([[0], [1], [1]], 19, "source class 1 is mapped to target classes 1 and 2"),
        ([[0], [1], [2]], 0, "CLASS_MAP_SOURCE_CLASSES"),
    ],
)
def test_bad_class_maps_are_refused(class_map, source, words):
    with pytest.raises(ConfigError, match=words):
        check_class_map(class_map, source, 3, "init")


def test_zero_shot_probabilities_are_the_sums_of_the_mapped_ones():
    logits = torch.randn(2, 19, 3, 5)
    mapped = map_log_probs(logits, CAMVID_MAP)
    p = logits.softmax(1)
    assert mapped.shape == (2, 11, 3, 5)
    assert torch.allclose(mapped.exp()[:, 8], p[:, [13, 14, 15, 16]].sum(1), atol=1e-6)
    assert torch.allclose(mapped.exp().sum(1), torch.ones(2, 3, 5), atol=1e-5)  # every class mapped


def test_merged_rows_give_the_merged_logit_when_source_logits_are_equal():
    w, b = torch.randn(19, 8), torch.randn(19)
    mw, mb = merge_classifier(w, b, CAMVID_MAP)
    assert mw.shape == (11, 8) and torch.allclose(mw[1], (w[2] + w[3]) / 2)
    assert math.isclose(mb[8].item(), b[[13, 14, 15, 16]].mean().item() + math.log(4), rel_tol=1e-6)
    # a source row that is alone keeps its weights and bias
    assert torch.equal(mw[0], w[10]) and math.isclose(mb[0].item(), b[10].item(), rel_tol=1e-6)


def test_zero_shot_model_scores_through_the_map(tmp_path):
    cs = _cityscapes_model()
    cfg = load_cfg(ZERO_SHOT_CFG, "MODEL.WEIGHTS", "", validate=False)
    zs = build_model(cfg).eval()
    assert zs.sem_seg_head.predictor.out_channels == 19 and zs.sem_seg_head.num_classes == 11
    zs.load_state_dict(cs.state_dict(), strict=True)  # the Cityscapes weights as they are
    image = torch.randint(0, 255, (3, 64, 96)).float()
    with torch.no_grad():
        out = zs([{"image": image, "height": 64, "width": 96}])[0]["sem_seg"]
        raw = cs([{"image": image, "height": 64, "width": 96}])[0]["sem_seg"]
    assert out.shape == (11, 64, 96)
    # the road class (CamVid 3 <- Cityscapes 0) wins where the source model's road does
    # (mapping before and after the upsampling differ by interpolation only)
    road_src = raw.argmax(0) == 0
    if road_src.any():
        assert (out.argmax(0)[road_src] == 3).float().mean() > 0.9


def test_class_map_init_merges_a_source_classifier_as_it_loads(tmp_path):
    cs = _cityscapes_model()
    path = tmp_path / "cityscapes.pth"
    torch.save({"model": cs.state_dict()}, path)
    cfg = load_cfg(CAMVID_CFG, "MODEL.WEIGHTS", str(path), validate=False)
    model = build_model(cfg)
    assert model.sem_seg_head.predictor.out_channels == 11
    ckpt = AtomicCheckpointer(model)
    ckpt.class_map = (cfg.MODEL.SEM_SEG_HEAD.CLASS_MAP, 19)
    ckpt.load(str(path), checkpointables=[])
    w, b = cs.sem_seg_head.predictor.weight, cs.sem_seg_head.predictor.bias
    mw, mb = merge_classifier(w, b, CAMVID_MAP)
    assert torch.allclose(model.sem_seg_head.predictor.weight, mw)
    assert torch.allclose(model.sem_seg_head.predictor.bias, mb)
    assert torch.equal(model.backbone.body.conv_head.weight, cs.backbone.body.conv_head.weight)
    # without the map the same file is refused, the classifier's shapes named
    plain = AtomicCheckpointer(build_model(cfg))
    with pytest.raises(Exception, match="predictor.weight"):
        plain.load(str(path), checkpointables=[])


def test_class_map_leaves_a_target_sized_classifier_alone():
    state = {"sem_seg_head.predictor.weight": torch.randn(11, 4, 1, 1), "sem_seg_head.predictor.bias": torch.randn(11)}
    model_state = {k: torch.zeros_like(v) for k, v in state.items()}
    before = {k: v.clone() for k, v in state.items()}
    assert map_checkpoint_classifiers(state, model_state, CAMVID_MAP, 19) == []
    assert all(torch.equal(state[k], before[k]) for k in state)  # a resumed run's own checkpoint
