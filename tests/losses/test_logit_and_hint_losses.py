"""Pixel-wise logit KD and the FitNets hint loss."""

import math

import pytest
import torch

from radkd_d2.losses import build_distill_loss, fitnet_hint_loss, logits_kd_loss


def ref_kd(s, t, T, ignore=None):
    B, K, H, W = s.shape
    total, count = 0.0, 0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if ignore is not None and bool(ignore[b, h, w]):
                    continue
                zs = [float(s[b, k, h, w]) / T for k in range(K)]
                zt = [float(t[b, k, h, w]) / T for k in range(K)]
                ls = math.log(sum(math.exp(z) for z in zs))
                lt = math.log(sum(math.exp(z) for z in zt))
                kl = sum(math.exp(zt[k] - lt) * ((zt[k] - lt) - (zs[k] - ls)) for k in range(K))
                total += kl
                count += 1
    return total / max(count, 1) * T * T


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_reference(T):
    s, t = torch.randn(2, 5, 3, 4, dtype=torch.float64), torch.randn(
        2, 5, 3, 4, dtype=torch.float64
    )
    assert logits_kd_loss(s, t, T).item() == pytest.approx(ref_kd(s, t, T), rel=1e-9)
    ignore = torch.rand(2, 3, 4) < 0.4
    assert logits_kd_loss(s, t, T, ignore).item() == pytest.approx(
        ref_kd(s, t, T, ignore), rel=1e-9
    )


def test_kd_known_values():
    s = torch.randn(1, 3, 2, 2)
    assert logits_kd_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert logits_kd_loss(s, s + 7.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-free
    # two classes, teacher p = (3/4, 1/4), student uniform, T = 1
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert logits_kd_loss(torch.zeros(1, 2, 1, 1), t, 1.0).item() == pytest.approx(
        expected, rel=1e-6
    )
    # all pixels ignored -> 0, still differentiable
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    out = logits_kd_loss(x, s, 1.0, torch.ones(1, 2, 2, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_kd_temperature_must_be_positive(T):
    with pytest.raises(ValueError, match="temperature"):
        logits_kd_loss(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2), T)
    with pytest.raises(ValueError, match="temperature"):
        build_distill_loss("kd", temperature=T)


def test_kd_module_ignores_labels_at_input_resolution():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :8] = 255  # top half ignored -> top two logit rows ignored after nearest resize
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    for reduction in ("element", "pixel"):
        kd = build_distill_loss("kd", weight=3.0, temperature=2.0, reduction=reduction)
        out = kd(s, t, labels=labels, ignore_value=255, boxes=None)
        expected = 3.0 * logits_kd_loss(s, t, 2.0, mask, reduction=reduction)
        assert out.item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_gradcheck():
    s = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    ignore = torch.tensor([[[True, False, False], [False, False, True]]] * 2)
    for reduction in ("pixel", "element"):
        assert torch.autograd.gradcheck(
            lambda a, b: logits_kd_loss(a, b, 2.0, ignore, reduction=reduction), (s, t)
        )


def test_fitnet_hint_value_and_no_parameters():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = (
        0.5 * sum((float(a) - float(b)) ** 2 for a, b in zip(s.flatten(), t.flatten())) / s.numel()
    )
    assert fitnet_hint_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert fitnet_hint_loss(t, t).item() == 0.0

    mod = build_distill_loss("fitnet", weight=2.0, student_channels=3, teacher_channels=3)
    assert len(list(mod.parameters())) == 0  # FitNets' regressor is the tap's connector
    assert mod(s, t).item() == pytest.approx(2.0 * fitnet_hint_loss(s, t).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["fitnet", "mgd", "fgd"])
def test_feature_losses_refuse_two_widths_and_name_the_connector(name):
    with pytest.raises(ValueError, match="MODEL.DISTILL.CONNECTOR"):
        build_distill_loss(name, student_channels=5, teacher_channels=3)


def test_fitnet_gradcheck():
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fitnet_hint_loss, (s, t))
