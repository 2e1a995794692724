"""The matrix's segmentation models have the size of the reference definitions the paper's
numbers come from (SKD/IFVD/CWD networks/pspnet.py, CIRKD models/), counted as CIRKD counts them:
every parameter of the model built on CPU, the auxiliary head included. The reference counts are
derived layer by layer in radkd_d2/configs_index/reference.py; the literals below pin both."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from conftest import REPO, load_cfg
from radkd_d2.configs_index import MODELS, REFERENCE_PARAMS, reference_counts
from radkd_d2.configs_index.reference import deep_stem_resnet, mobilenetv2
from radkd_d2.modeling.backbone import DilatedResNet, MobileNetV2
from radkd_d2.modeling.heads import PSPHead

K = 19  # Cityscapes, the class count CIRKD reports its sizes at

# model -> (radkd-d2, reference the config follows, other reference): parameters at K = 19
PINNED = {
    "pspnet_r101": (70_436_838, 70_437_350, 68_072_166),  # SKD/IFVD; CIRKD (aux 256)
    "pspnet_r18": (13_068_134, 13_068_262, 12_919_334),  # SKD/IFVD 13.07M; CIRKD's 12.9M
    "pspnet_mv2": (2_654_739, 2_654_739, None),
    "deeplabv3_r101": (61_118_950, 61_118_950, None),
    "deeplabv3_r18": (13_607_974, 13_607_974, None),
    "deeplabv3_mv2": (3_233_171, 3_233_171, None),
}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=None)
def built_count(model_key: str, num_classes: int = K) -> int:
    cfg = load_cfg(f"configs/models/{model_key}.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
                   num_classes, validate=False)  # fmt: skip
    torch.manual_seed(0)
    return _n(build_model(cfg))


def test_every_reference_model_is_pinned():
    assert set(PINNED) == set(REFERENCE_PARAMS) <= set(MODELS)
    assert not reference_counts("upernet_swin_t", K)  # mmseg's recipe: no reference here


def test_backbones_match_the_reference_arithmetic():
    """The deep-stem dilated ResNets and MobileNetV2 (to its 320-channel stage) of the reference
    code have exactly the parameters of ours."""
    assert _n(DilatedResNet(depth=18)) == deep_stem_resnet(18) == 11_324_992
    assert _n(DilatedResNet(depth=101)) == deep_stem_resnet(101) == 42_623_936
    assert _n(MobileNetV2(out_features=("res5",))) == mobilenetv2() == 1_811_712


@pytest.mark.parametrize("model_key", sorted(PINNED))
def test_parameter_counts_equal_the_reference_definitions(model_key):
    ours, followed, other = PINNED[model_key]
    assert built_count(model_key) == ours
    refs = reference_counts(model_key, K)
    assert [count for _, count in refs] == [c for c in (followed, other) if c is not None]
    for ref, count in refs:  # ours = the reference + the difference it documents
        assert ours - count == ref.differs_by(K), ref.source
        assert (ref.differs_by(K) == 0) == (not ref.why), ref.source
    # the followed reference differs at most by the redundant bias of SKD's dsn conv
    assert abs(ours - followed) <= 512


def test_pspnet_r18_is_about_cirkds_12_9m_and_skds_13_1m():
    """The issue's numbers: CIRKD's PSPNet-R18 with its auxiliary head is 12.9M at 19 classes;
    SKD's, whose auxiliary conv is twice as wide (128), 13.1M -- the one the config follows."""
    (_, skd), (_, cirkd) = reference_counts("pspnet_r18", K)
    assert round(cirkd / 1e6, 1) == 12.9 and round(skd / 1e6, 1) == 13.1
    assert round(built_count("pspnet_r18") / 1e6, 1) == 13.1


def test_counts_follow_the_class_count():
    """Only the two classifiers depend on K: C + 1 parameters per class for a C-channel input."""
    grow = built_count("pspnet_r18", 21) - built_count("pspnet_r18", 19)
    assert grow == 2 * 2 * (128 + 1)  # 2 classes more; decoder and auxiliary conv 128 wide
    (ref, _), _ = reference_counts("pspnet_r18", 21)
    assert built_count("pspnet_r18", 21) - ref.count(21) == ref.differs_by(21)


def test_list_configs_prints_the_counts(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "list_configs", REPO / "tools" / "list_configs.py"
    )
    listing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listing)
    monkeypatch.setattr(listing, "count_parameters", built_count)
    assert listing.main(["--params", "--dataset", "cityscapes"]) == 0
    out = capsys.readouterr().out
    assert "PSPNet-R18: ours 13,068,134 (13.07M)" in out
    assert "reference 12,919,334 (12.92M), ours +148,800 (by design:" in out
    assert "no longer matches" not in out
    monkeypatch.setattr(listing, "count_parameters", lambda key, k: built_count(key, k) + 1)
    assert listing.main(["--params"]) == 0
    assert "no longer matches its reference" in capsys.readouterr().out  # a drift shows
    assert listing.main(["--params", "--dataset", "coco"]) == 1


# ------------------------------------------------------------------------- the auxiliary head


def _psp(**kwargs):
    shapes = {"res4": ShapeSpec(channels=256, stride=8), "res5": ShapeSpec(channels=512, stride=8)}
    return PSPHead(shapes, in_feature="res5", num_classes=K, conv_dims=128, common_stride=8,
                   aux_in_feature="res4", aux_loss_weight=0.4, **kwargs)  # fmt: skip


def test_aux_head_width_is_configurable():
    assert _psp().aux_head.conv.out_channels == 64  # default: a quarter of res4 (CIRKD, mmseg)
    assert _psp(aux_channels=128).aux_head.conv.out_channels == 128  # SKD's dsn
    cfg = load_cfg("configs/models/pspnet_r18.yaml", validate=False)
    head = build_model(cfg).sem_seg_head
    assert head.aux_head.conv.out_channels == 128 and head.aux_loss_weight == 0.4
    assert head.align_corners and head.pool_align_corners


def test_negative_aux_width_fails_naming_the_key():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM = -1"):
        _psp(aux_channels=-1)


@pytest.mark.parametrize("align_corners", [False, True])
def test_logits_upsampling_follows_align_corners(align_corners):
    torch.manual_seed(0)
    head = _psp(align_corners=align_corners).eval()
    features = {"res4": torch.randn(1, 256, 4, 6), "res5": torch.randn(1, 512, 4, 6)}
    with torch.no_grad():
        logits, _ = head(features)
        small = head.layers(features)["logits"]
    assert logits.shape == (1, K, 32, 48)
    for flag in (False, True):
        expected = F.interpolate(small, scale_factor=8, mode="bilinear", align_corners=flag)
        assert torch.allclose(logits, expected, atol=1e-6) == (flag == align_corners)
    targets = torch.randint(0, K, (1, 32, 48))
    head.train()
    with torch.no_grad():
        loss = head.losses({"logits": small, "aux_logits": small}, targets)["loss_sem_seg"]
    up = F.interpolate(small, scale_factor=8, mode="bilinear", align_corners=align_corners)
    assert loss.item() == pytest.approx(F.cross_entropy(up, targets).item(), rel=1e-6)
