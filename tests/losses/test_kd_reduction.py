"""MODEL.DISTILL.KD_REDUCTION of the logit KD: "element" (mean over B*K*h*w) and "pixel"
(classes summed, mean over pixels), against torch.nn.KLDivLoss, with ignore masks and configs."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from radkd_d2.config import add_radkd_config
from radkd_d2.losses import LogitsKDLoss, build_distill_loss, logits_kd_loss


def _logits(seed, shape=(2, 5, 3, 4)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    return s, t


def _targets(s, t, T):
    return F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_element_is_kldivloss_mean(T):
    s, t = _logits(0)
    log_ps, pt = _targets(s, t, T)
    expected = torch.nn.KLDivLoss(reduction="mean")(log_ps, pt) * T**2  # / (B*K*h*w)
    got = logits_kd_loss(s, t, T, reduction="element")
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_pixel_is_batchmean_over_flattened_pixels(T):
    s, t = _logits(1)
    k = s.shape[1]
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(-1, k)  # (B*h*w) x K, as CIRKD
    log_ps, pt = _targets(flat(s), flat(t), T)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(log_ps, pt) * T**2
    got = logits_kd_loss(s, t, T, reduction="pixel")
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    assert logits_kd_loss(s, t, T).item() == got.item()  # the function's default
    # the two differ by exactly K: a real difference of scale, not of rounding
    element = logits_kd_loss(s, t, T, reduction="element")
    assert got.item() == pytest.approx(k * element.item(), rel=1e-12)


def test_ignore_mask_element_is_pixel_over_k_and_ignored_pixels_do_not_count():
    s, t = _logits(2)
    k = s.shape[1]
    ignore = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(3)) < 0.4
    assert 0 < int(ignore.sum()) < ignore.numel()
    pixel = logits_kd_loss(s, t, 2.0, ignore, reduction="pixel")
    element = logits_kd_loss(s, t, 2.0, ignore, reduction="element")
    assert element.item() == pytest.approx(pixel.item() / k, rel=1e-12)
    # element with a mask = KLDivLoss "sum" over the valid pixels / (K * number of valid pixels)
    valid = ~ignore
    log_ps, pt = _targets(s, t, 2.0)
    pointwise = torch.nn.KLDivLoss(reduction="none")(log_ps, pt)  # B x K x h x w
    expected = pointwise.sum(dim=1)[valid].sum() / (k * valid.sum()) * 4.0
    assert element.item() == pytest.approx(expected.item(), rel=1e-12)
    # arbitrary logits at ignored pixels change nothing
    s2, t2 = s.clone(), t.clone()
    s2.permute(0, 2, 3, 1)[ignore] = 50.0 * torch.randn(int(ignore.sum()), k, dtype=s.dtype)
    t2.permute(0, 2, 3, 1)[ignore] = -30.0
    for reduction, ref in (("pixel", pixel), ("element", element)):
        again = logits_kd_loss(s2, t2, 2.0, ignore, reduction=reduction)
        assert again.item() == pytest.approx(ref.item(), rel=1e-12)


def test_module_reduction_and_gradient_scale():
    s, t = _logits(4)
    labels = torch.randint(0, 5, (2, 6, 8), generator=torch.Generator().manual_seed(5))
    labels[:, :2] = 255
    grads = {}
    for reduction in ("pixel", "element"):
        x = s.clone().requires_grad_(True)
        kd = build_distill_loss("kd", weight=2.0, temperature=1.5, reduction=reduction)
        kd(x, t, labels=labels, ignore_value=255).backward()
        grads[reduction] = x.grad
        assert f"reduction='{reduction}'" in kd.extra_repr()
    # lambda_kd acts per pixel with "pixel" and per element (lambda_kd / K per pixel) otherwise
    assert torch.allclose(grads["pixel"], s.shape[1] * grads["element"], rtol=1e-10)


@pytest.mark.parametrize("bad", ["mean", "batchmean", "Element", "", None])
def test_unknown_reduction_raises_naming_the_choices(bad):
    s, t = _logits(6)
    with pytest.raises(ValueError, match="'element', 'pixel'"):
        logits_kd_loss(s, t, 1.0, reduction=bad)
    with pytest.raises(ValueError, match="'element', 'pixel'"):
        LogitsKDLoss(reduction=bad)
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.MODEL.DISTILL.KD_REDUCTION = bad
    with pytest.raises(ValueError, match="'element', 'pixel'"):
        build_distill_loss("kd", distill=cfg.MODEL.DISTILL)


@pytest.mark.parametrize("reduction", ["pixel", "element"])
def test_config_key_selects_the_reduction(reduction):
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.merge_from_list(
        ["MODEL.DISTILL.KD_REDUCTION", reduction, "MODEL.DISTILL.KD_TEMPERATURE", 2.0]
    )
    kd = build_distill_loss("kd", weight=3.0, distill=cfg.MODEL.DISTILL)
    assert kd.reduction == reduction and kd.temperature == 2.0
    s, t = _logits(7)
    expected = 3.0 * logits_kd_loss(s, t, 2.0, reduction=reduction)
    assert kd(s, t).item() == pytest.approx(expected.item(), rel=1e-12)
    # an explicit argument wins over the config
    other = {"pixel": "element", "element": "pixel"}[reduction]
    assert build_distill_loss("kd", distill=cfg.MODEL.DISTILL, reduction=other).reduction == other


def test_config_default_is_element_for_module_and_built_loss():
    cfg = get_cfg()
    add_radkd_config(cfg)
    assert cfg.MODEL.DISTILL.KD_REDUCTION == "element"
    assert build_distill_loss("kd", distill=cfg.MODEL.DISTILL).reduction == "element"
    assert build_distill_loss("kd").reduction == "element"  # cfg None: the config defaults
    assert LogitsKDLoss().reduction == "element"
