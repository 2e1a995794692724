"""Registry, config and numerical robustness of every registered distillation loss."""

import pytest
import torch
from detectron2.config import get_cfg
from loss_test_utils import NUM_CLASSES, build_small, make_context, registered_names
from torch import nn

from radkd_d2.losses import (
    DISTILL_LOSS_REGISTRY,
    add_distill_loss_config,
    build_distill_loss,
    default_distill_loss_config,
)

EXPECTED_NAMES = {
    "lad",
    "cad",
    "pad",
    "naive",
    "magnitude",
    "md",
    "fitnet",
    "kd",
    "cwd",
    "mgd",
    "skd",
    "ifvd",
    "cirkd_minibatch",
    "cirkd_memory",
    "fgd",
    "pkd",
    "fkd",
}
LEARNABLE = {"mgd", "fgd", "cirkd_memory"}


def _full_cfg():
    cfg = get_cfg()
    try:
        from radkd_d2.config import add_radkd_config

        add_radkd_config(cfg)
    except ImportError:  # pragma: no cover - only the losses package present
        add_distill_loss_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    return cfg


def _features(batch=2, channels=8, size=(8, 10), scale=1.0, dtype=torch.float32):
    s = torch.randn(batch, channels, *size) * scale
    t = torch.randn(batch, channels, *size) * scale
    return s.to(dtype), t.to(dtype)


def test_registered_names():
    assert set(registered_names()) == EXPECTED_NAMES
    assert DISTILL_LOSS_REGISTRY.__doc__ and "distillation" in DISTILL_LOSS_REGISTRY.__doc__.lower()


def test_report_labels_come_from_the_registry():
    """The names the report's tables show are declared where each loss registers."""
    from radkd_d2.evaluation.naming import classify_method
    from radkd_d2.losses import loss_label

    labels = {name: loss_label(name) for name in EXPECTED_NAMES}
    assert labels["naive"] == "Naive" and labels["md"] == labels["magnitude"] == "MD"
    assert labels["cirkd_memory"] == labels["cirkd_minibatch"] == "CIRKD"
    assert labels["lad"] == "LAD" and labels["fitnet"] == "FitNet"
    assert all(label == DISTILL_LOSS_REGISTRY.get(n).LABEL for n, label in labels.items())
    assert loss_label("LAD") == "LAD" and loss_label("not_registered") == "NOT_REGISTERED"
    taps = [["res5", "res5", "md", 1.0], ["res4", "res4", "cirkd_memory", 1.0]]
    assert classify_method("DistillSemanticSegmentor", taps)[0] == "MD+CIRKD"


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_build_every_name_with_and_without_config(name):
    default = build_small(name, weight=0.5)
    from_cfg = build_small(name, weight=0.5, distill=_full_cfg().MODEL.DISTILL)
    upper = build_small(name.upper(), weight=0.5)
    assert type(default) is type(from_cfg) is type(upper)
    assert default.weight == 0.5
    # the config defaults and the constructor defaults are the same published values
    assert default.extra_repr() == from_cfg.extra_repr() == upper.extra_repr()


def test_constructor_defaults_match_config_defaults():
    for name in sorted(EXPECTED_NAMES - {"cirkd_memory"}):
        cls = DISTILL_LOSS_REGISTRY.get(name)
        kwargs = {"teacher_channels": 8} if name in LEARNABLE else {}
        assert cls(**kwargs).extra_repr() == build_small(name).extra_repr(), name


def test_a_new_loss_is_one_file_with_its_config_keys(monkeypatch):
    """A loss registered with its LossConfig gets its keys into add_radkd_config, is built from
    them, and its declared checks run at start-up; nothing else is edited."""
    from radkd_d2.engine.checks import ConfigError, validate_config
    from radkd_d2.losses import DistillLoss, LossConfig, Option, register_distill_loss
    from radkd_d2.losses.build import LOSS_CONFIGS

    monkeypatch.setattr(DISTILL_LOSS_REGISTRY, "_obj_map", dict(DISTILL_LOSS_REGISTRY._obj_map))
    monkeypatch.setitem(LOSS_CONFIGS, "SCALED_L1", None)  # teardown removes the key again
    del LOSS_CONFIGS["SCALED_L1"]
    config = LossConfig(
        "SCALED_L1",
        Option("SCALE", "scale", 2.0, "multiplier of the L1 distance", positive=True),
        Option("MODE", "mode", "mean", "reduction", choices=("mean", "sum")),
    )

    @register_distill_loss("scaled_l1", label="ScaledL1", config=config)
    class ScaledL1(DistillLoss):
        def __init__(self, *, weight=1.0, scale=config.scale, mode=config.mode, num_classes=None):
            super().__init__(weight=weight)
            self.scale, self.mode, self.num_classes = scale, mode, num_classes

    cfg = _full_cfg()
    assert cfg.MODEL.DISTILL.SCALED_L1.SCALE == 2.0 and cfg.MODEL.DISTILL.SCALED_L1.MODE == "mean"
    cfg.MODEL.DISTILL.SCALED_L1.SCALE = 3.0
    built = build_distill_loss("scaled_l1", distill=cfg.MODEL.DISTILL, num_classes=7)
    assert (built.scale, built.mode, built.num_classes) == (3.0, "mean", 7)
    assert build_distill_loss("scaled_l1").scale == 2.0
    with pytest.raises(ValueError, match="declared twice"):
        LossConfig("SCALED_L1")
    cfg.MODEL.DISTILL.SCALED_L1.MODE = "max"
    with pytest.raises(ConfigError, match=r"MODEL.DISTILL.SCALED_L1.MODE = 'max' is not allowed"):
        validate_config(cfg)


def test_unknown_name_lists_registered():
    with pytest.raises(KeyError) as e:
        build_distill_loss("nope")
    for n in EXPECTED_NAMES:
        assert n in str(e.value)
    with pytest.raises(ValueError):  # also a ValueError
        build_distill_loss("also_nope")


def test_negative_weight_and_bad_override():
    with pytest.raises(ValueError, match="weight"):
        build_distill_loss("lad", weight=-1.0)
    with pytest.raises(ValueError, match="weight"):
        build_distill_loss("cwd", weight=float("nan"))
    with pytest.raises(ValueError, match="tau"):
        build_distill_loss("cwd", tau=0.0)
    with pytest.raises(ValueError, match="temperature"):
        build_distill_loss("fgd", teacher_channels=4, temperature=-1.0)
    with pytest.raises(ValueError, match="not_an_argument"):
        build_distill_loss("lad", not_an_argument=1)
    assert build_distill_loss("lad", weight=0.0).weight == 0.0


def test_config_nodes_and_overrides():
    cfg = _full_cfg()
    d = cfg.MODEL.DISTILL
    assert d.CWD.TAU == 4.0 and d.MGD.ALPHA == 2e-5 and d.MGD.MASK_RATIO == 0.75
    assert (d.FGD.TEMPERATURE, d.FGD.ALPHA, d.FGD.BETA, d.FGD.GAMMA, d.FGD.LAMBDA) == (
        0.5,
        1e-3,
        5e-4,
        5e-4,
        5e-6,
    )
    d.CWD.TAU = 2.0
    d.MGD.MASK_RATIO = 0.65
    assert build_distill_loss("cwd", distill=cfg.MODEL.DISTILL).tau == 2.0
    assert build_distill_loss("mgd", distill=cfg.MODEL.DISTILL, teacher_channels=4).mask_ratio == 0.65
    assert build_distill_loss("cwd", distill=cfg.MODEL.DISTILL, tau=3.0).tau == 3.0  # explicit override wins
    # yacs rejects unknown keys: every key exists once, under its loss node
    with pytest.raises((KeyError, AssertionError), match="TAUU"):
        cfg.merge_from_list(["MODEL.DISTILL.CWD.TAUU", 1.0])
    assert "CWD" in default_distill_loss_config().MODEL.DISTILL


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_weighted_forward_ignores_unknown_context_and_feeds_every_parameter(name):
    torch.manual_seed(0)
    s, t = _features()
    s.requires_grad_(True)
    ctx = make_context()
    mask = torch.ones(2, 1, 8, 10)
    extra = {"mask": mask} if name == "mgd" else {}
    loss1 = build_small(name, weight=1.0)
    loss3 = build_small(name, weight=3.0)
    loss3.load_state_dict(loss1.state_dict())
    if name == "cirkd_memory":  # same banks and sampling for both calls
        loss3.pixel_bank.copy_(loss1.pixel_bank)
        loss3.region_bank.copy_(loss1.region_bank)
        torch.manual_seed(1)
    out1 = loss1(s, t, **ctx, **extra)
    if name == "cirkd_memory":
        torch.manual_seed(1)
    out3 = loss3(s, t, **ctx, **extra)
    assert out1.dim() == 0 and torch.isfinite(out1)
    assert out3.item() == pytest.approx(3.0 * out1.item(), rel=1e-5, abs=1e-8)
    out3.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # DDP without find_unused_parameters: every learnable part must receive a gradient
    for pname, p in loss3.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} is unused"
    assert (len(list(loss3.parameters())) > 0) == (name in LEARNABLE)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_shape_mismatch_names_both_shapes(name):
    loss = build_small(name)
    s, t = torch.randn(2, 8, 8, 10), torch.randn(2, 8, 6, 10)
    with pytest.raises(ValueError) as e:
        loss(s, t, **make_context())
    assert "(2, 8, 8, 10)" in str(e.value) and "(2, 8, 6, 10)" in str(e.value)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("case", ["both_zero", "student_zero"])
def test_zero_features_give_finite_loss_and_gradients(name, case):
    loss = build_small(name)
    s = torch.zeros(2, 8, 8, 10, requires_grad=True)
    t = torch.zeros(2, 8, 8, 10) if case == "both_zero" else torch.randn(2, 8, 8, 10)
    out = loss(s, t, **make_context())
    out.backward()
    assert torch.isfinite(out), f"{name}: loss {out}"
    assert torch.isfinite(s.grad).all(), f"{name}: non-finite gradient"
    for p in loss.parameters():
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_bf16_autocast_finite_gradients(name):
    conv = nn.Conv2d(4, 8, 3, padding=1)
    loss = build_small(name)
    x = torch.randn(2, 4, 8, 10)
    t = torch.randn(2, 8, 8, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = conv(x)
        assert s.dtype == torch.bfloat16
        out = loss(s, t.bfloat16(), **make_context())
    assert out.dtype in (torch.float32, torch.float64), f"{name}: loss in {out.dtype}"
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_fp16_large_values_do_not_overflow(name):
    loss = build_small(name)
    s, t = _features(scale=1e4, dtype=torch.float16)
    assert torch.isfinite(s.float()).all() and s.abs().max() > 1e4
    out = loss(s, t, **make_context())
    assert torch.isfinite(out), f"{name}: {out}"


def test_fp16_angular_values_match_float32():
    s, t = _features(scale=1e4)
    for name in ("lad", "cad", "pad"):
        loss = build_small(name)
        assert loss(s.half(), t.half()).item() == pytest.approx(loss(s, t).item(), rel=1e-2)
