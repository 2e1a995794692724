"""LAD / CAD / PAD (Eqs. 5-8), naive (Eq. 1), magnitude (Eq. 4) and Eq. 3 diagnostics."""

import math

import pytest
import torch

from radkd_d2.losses import (
    cad_loss,
    feature_stats,
    lad_loss,
    magnitude_loss,
    naive_feature_loss,
    pad_loss,
)


def _unit(v):
    norm = math.sqrt(sum(float(x) ** 2 for x in v))
    return [float(x) / norm for x in v]


def ref_lad(s, t):
    """Eq. 5 with explicit per-sample loops, float64."""
    total = 0.0
    for b in range(s.shape[0]):
        xs, xt = _unit(s[b].flatten().tolist()), _unit(t[b].flatten().tolist())
        total += sum((a - c) ** 2 for a, c in zip(xs, xt))
    return total / s.shape[0]


def ref_cad(s, t):
    """Eq. 7: loops over samples and channels."""
    B, C = s.shape[:2]
    total = 0.0
    for b in range(B):
        acc = 0.0
        for c in range(C):
            xs, xt = _unit(s[b, c].flatten().tolist()), _unit(t[b, c].flatten().tolist())
            acc += sum((a - d) ** 2 for a, d in zip(xs, xt))
        total += acc / C
    return total / B


def ref_pad(s, t):
    """Eq. 8: loops over samples and pixels."""
    B, _, H, W = s.shape
    total = 0.0
    for b in range(B):
        acc = 0.0
        for h in range(H):
            for w in range(W):
                xs, xt = _unit(s[b, :, h, w].tolist()), _unit(t[b, :, h, w].tolist())
                acc += sum((a - d) ** 2 for a, d in zip(xs, xt))
        total += acc / (H * W)
    return total / B


def ref_naive(s, t):
    vals = [(float(a) - float(b)) ** 2 for a, b in zip(s.flatten(), t.flatten())]
    return sum(vals) / len(vals)


def ref_magnitude(s, t):
    B = s.shape[0]
    out = 0.0
    for b in range(B):
        m = math.sqrt(sum(float(x) ** 2 for x in t[b].flatten()))
        n = math.sqrt(sum(float(x) ** 2 for x in s[b].flatten()))
        out += (m - n) ** 2 / t[b].numel()
    return out / B


def _pair(shape=(2, 3, 4, 5), dtype=torch.float64):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype) * 2.5 + 0.3


@pytest.mark.parametrize(
    "fn,ref",
    [
        (lad_loss, ref_lad),
        (cad_loss, ref_cad),
        (pad_loss, ref_pad),
        (naive_feature_loss, ref_naive),
        (magnitude_loss, ref_magnitude),
    ],
)
def test_matches_loop_reference(fn, ref):
    s, t = _pair()
    assert fn(s, t).item() == pytest.approx(ref(s, t), rel=1e-9, abs=1e-12)
    s32, t32 = s.float(), t.float()
    assert fn(s32, t32).item() == pytest.approx(ref(s, t), rel=1e-5)


def test_eq3_decomposition_and_lad_identity():
    s, t = _pair((3, 4, 5, 6))
    B = s.shape[0]
    n_el = s[0].numel()
    naive = naive_feature_loss(s, t)
    expected, lad_expected = 0.0, 0.0
    for b in range(B):
        m, n = t[b].norm(), s[b].norm()
        cos = (s[b] * t[b]).sum() / (m * n)
        expected += ((m - n) ** 2 + 2 * m * n * (1 - cos)) / n_el
        lad_expected += 2 * (1 - cos)
    assert naive.item() == pytest.approx((expected / B).item(), rel=1e-10)
    assert lad_loss(s, t).item() == pytest.approx((lad_expected / B).item(), rel=1e-10)
    # magnitude loss is exactly Eq. 3's first term
    first = sum(((t[b].norm() - s[b].norm()) ** 2 / n_el).item() for b in range(B)) / B
    assert magnitude_loss(s, t).item() == pytest.approx(first, rel=1e-10)


@pytest.mark.parametrize("fn", [lad_loss, cad_loss, pad_loss])
@pytest.mark.parametrize("scale", [1e3, 1e-3])
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_angular_scale_invariance(fn, scale, which):
    s, t = torch.randn(2, 6, 5, 7), torch.randn(2, 6, 5, 7)
    base = fn(s, t).item()
    scaled = fn(s * scale, t) if which == "student" else fn(s, t * scale)
    assert scaled.item() == pytest.approx(base, rel=1e-4)
    # the naive loss is not invariant: the angular ones are the point of the paper
    assert naive_feature_loss(s * 1e3, t).item() > 100 * naive_feature_loss(s, t).item()


@pytest.mark.parametrize("fn", [lad_loss, cad_loss, pad_loss])
def test_angular_known_values(fn):
    s = torch.randn(2, 3, 4, 4)
    assert fn(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert fn(s, 5 * s).item() == pytest.approx(0.0, abs=1e-6)
    assert fn(s, -s).item() == pytest.approx(4.0, rel=1e-6)  # antiparallel: |2u|^2
    # orthogonal per normalised vector -> 2
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    a[:, 0] = 1.0
    b[:, 1] = 1.0
    # CAD: each channel is all-zero on one side, and a zero map normalises to zero -> 1 per channel
    expected = {lad_loss: 2.0, cad_loss: 1.0, pad_loss: 2.0}[fn]
    assert fn(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_cad_and_pad_differ_from_lad():
    s, t = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    t[:, 0] *= 50  # one dominant channel changes the layer angle, not the channel angles
    values = {f.__name__: f(s, t).item() for f in (lad_loss, cad_loss, pad_loss)}
    assert len({round(v, 4) for v in values.values()}) == 3


def test_feature_stats():
    s, t = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6) * 3
    s.requires_grad_(True)
    stats = feature_stats(s, t)
    m = t.flatten(1).norm(dim=1)
    n = s.detach().flatten(1).norm(dim=1)
    cos = (s.detach().flatten(1) * t.flatten(1)).sum(1) / (m * n)
    assert stats["m"] == pytest.approx(m.mean().item(), rel=1e-5)
    assert stats["n"] == pytest.approx(n.mean().item(), rel=1e-5)
    assert stats["mn_over_N"] == pytest.approx((m * n / 120).mean().item(), rel=1e-5)
    assert stats["cos_theta"] == pytest.approx(cos.mean().item(), rel=1e-5, abs=1e-7)
    assert all(isinstance(v, float) for v in stats.values())
    # bf16 inputs are measured in float32
    half = feature_stats(s.detach().bfloat16(), t.bfloat16())
    assert half["m"] == pytest.approx(stats["m"], rel=1e-2)


@pytest.mark.parametrize("fn", [lad_loss, cad_loss, pad_loss, naive_feature_loss, magnitude_loss])
def test_gradcheck(fn):
    s = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (s, t))


@pytest.mark.parametrize("fn", [lad_loss, cad_loss, pad_loss, naive_feature_loss, magnitude_loss])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError) as e:
        fn(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 6))
    assert "(2, 3, 4, 5)" in str(e.value) and "(2, 3, 4, 6)" in str(e.value)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("chunk_elems", [16, 100, 1 << 18])
def test_chunked_reductions_equal_whole_tensor_ones(dim, chunk_elems):
    """The CPU path's chunk loop (several chunks, a ragged last one, or one chunk) gives the
    norms and dot products of the one-call path."""
    from radkd_d2.losses import angular

    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 37, dtype=torch.float64), torch.randn(3, 5, 37, dtype=torch.float64)
    got = angular._reductions_chunked(s, t, dim, chunk_elems=chunk_elems)
    for a, b in zip(got, angular._reductions_whole(s, t, dim)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["lad", "cad", "pad"])
def test_multi_chunk_losses_and_gradients_match_the_plain_formula(monkeypatch, name):
    """With chunks far smaller than the tensor, the fused losses and their gradients equal
    (normalize(s) - normalize(t))^2 summed over the compared dimensions, written with autograd."""
    from radkd_d2.losses import angular, cad_loss, lad_loss, pad_loss
    from radkd_d2.losses._utils import safe_l2_normalize

    monkeypatch.setattr(angular, "_CHUNK_ELEMS", 64)  # 2 x 6 x (7*9): many chunks of >= 16
    fused = {"lad": lad_loss, "cad": cad_loss, "pad": pad_loss}[name]
    torch.manual_seed(1)
    s = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    if name == "lad":
        a, b, dim = s.reshape(2, 1, -1), t.reshape(2, 1, -1), 2
    else:
        a, b, dim = s.reshape(2, 6, -1), t.reshape(2, 6, -1), 2 if name == "cad" else 1
    plain = (safe_l2_normalize(a, dim) - safe_l2_normalize(b, dim)).pow(2).sum(dim=dim).mean()
    want = torch.autograd.grad(plain, (s, t))
    got_value = fused(s, t)
    got = torch.autograd.grad(got_value, (s, t))
    torch.testing.assert_close(got_value, plain)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
