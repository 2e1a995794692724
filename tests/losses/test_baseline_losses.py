"""Baselines (CWD, MGD, SKD, IFVD, CIRKD, FGD, PKD, FKD): references, hand cases, gradcheck."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radkd_d2.losses import (
    CIRKDMemoryLoss,
    GcContext,
    SKDHolisticDiscriminator,
    build_distill_loss,
    cirkd_minibatch_loss,
    cirkd_pixel_loss,
    cirkd_region_loss,
    cwd_loss,
    fgd_loss,
    fgd_masks,
    fkd_loss,
    ifv_map,
    ifvd_loss,
    mgd_loss,
    mgd_random_mask,
    pkd_loss,
    skd_holistic_loss,
    skd_loss,
)

D64 = torch.float64


def _softmax(vals):
    mx = max(vals)
    e = [math.exp(v - mx) for v in vals]
    z = sum(e)
    return [x / z for x in e]


# ----------------------------------------------------------------------------------------- CWD
def ref_cwd(s, t, tau):
    B, C = s.shape[:2]
    total = 0.0
    for b in range(B):
        for c in range(C):
            ps = _softmax([float(v) / tau for v in s[b, c].flatten()])
            pt = _softmax([float(v) / tau for v in t[b, c].flatten()])
            total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return total / (B * C) * tau**2


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_reference(tau):
    s, t = torch.randn(2, 3, 3, 4, dtype=D64), torch.randn(2, 3, 3, 4, dtype=D64) * 3
    assert cwd_loss(s, t, tau).item() == pytest.approx(ref_cwd(s, t, tau), rel=1e-9)


def test_cwd_hand_case():
    # one 2x2 channel, tau = 1: teacher p = (1, 1, 1, 5) / 8, student uniform
    t = torch.log(torch.tensor([[1.0, 1.0], [1.0, 5.0]])).view(1, 1, 2, 2)
    expected = 3 * (1 / 8) * math.log(0.5) + (5 / 8) * math.log(2.5)
    assert cwd_loss(torch.zeros(1, 1, 2, 2), t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert cwd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="tau"):
        cwd_loss(t, t, 0.0)


# ----------------------------------------------------------------------------------------- MGD
def test_mgd_hand_case_and_mask():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ones = torch.ones(2, 1, 4, 4)
    expected = ((s - t) ** 2).sum().item() / 2
    assert mgd_loss(s, t, nn.Identity(), ones).item() == pytest.approx(expected, rel=1e-6)
    zeros = torch.zeros(2, 1, 4, 4)
    assert mgd_loss(s, t, nn.Identity(), zeros).item() == pytest.approx(
        (t**2).sum().item() / 2, rel=1e-6
    )

    g = torch.Generator().manual_seed(3)
    mask = mgd_random_mask(torch.zeros(4, 8, 64, 64), 0.75, generator=g)
    assert mask.shape == (4, 1, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (1 - mask.mean()).item() == pytest.approx(0.75, abs=0.02)  # fraction masked
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(mask, mgd_random_mask(torch.zeros(4, 8, 64, 64), 0.75, generator=g2))


def test_mgd_module_alpha_and_grads():
    mod = build_distill_loss("mgd", weight=2.0, student_channels=3, teacher_channels=3)
    assert mod.alpha == 2e-5 and mod.mask_ratio == 0.75
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = (torch.rand(2, 1, 4, 4) > 0.5).float()
    out = mod(s, t, mask=mask)
    ref = 2.0 * 2e-5 * mgd_loss(s, t, mod.generation, mask)
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    out.backward()
    assert all(p.grad is not None for p in mod.parameters())


def test_mgd_gradcheck():
    gen = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1)
    ).double()
    mask = (torch.rand(2, 1, 3, 3) > 0.4).double()
    s = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mgd_loss(a, b, gen, mask), (s, t))


# ----------------------------------------------------------------------------------------- SKD
def ref_skd(s, t, kh, kw):
    B = s.shape[0]

    def nodes(x):
        C, H, W = x.shape
        out = []
        for i in range(0, H, kh):
            for j in range(0, W, kw):
                v = [
                    max(
                        float(x[c, a, b])
                        for a in range(i, min(i + kh, H))
                        for b in range(j, min(j + kw, W))
                    )
                    for c in range(C)
                ]
                n = math.sqrt(sum(q * q for q in v))
                out.append([q / n for q in v])
        return out

    total = 0.0
    for b in range(B):
        ns, nt = nodes(s[b]), nodes(t[b])
        k = len(ns)
        acc = 0.0
        for i in range(k):
            for j in range(k):
                a_s = sum(x * y for x, y in zip(ns[i], ns[j]))
                a_t = sum(x * y for x, y in zip(nt[i], nt[j]))
                acc += (a_s - a_t) ** 2
        total += acc / (k * k)
    return total / B


def test_skd_reference_and_channel_mismatch():
    s, t = torch.randn(2, 3, 4, 6, dtype=D64), torch.randn(2, 5, 4, 6, dtype=D64)
    assert skd_loss(s, t, 0.5).item() == pytest.approx(ref_skd(s, t, 2, 3), rel=1e-9)
    # 0.25 of 4 x 6 -> 1 x 1 windows: every pixel is a node
    assert skd_loss(s, t, 0.25).item() == pytest.approx(ref_skd(s, t, 1, 1), rel=1e-9)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 6\).*\(2, 5, 4, 7\)"):
        skd_loss(s, torch.randn(2, 5, 4, 7))


def test_skd_hand_case():
    # 2 x 2 map, 1 x 1 nodes: student pixels all (1, 0) -> all similarities 1; teacher pixels
    # alternate (1, 0), (0, 1) -> half of the 16 pairs have similarity 0.
    s = torch.zeros(1, 2, 2, 2)
    s[:, 0] = 1.0
    t = torch.zeros(1, 2, 2, 2)
    t[0, 0, 0, 0] = t[0, 0, 1, 0] = 1.0
    t[0, 1, 0, 1] = t[0, 1, 1, 1] = 1.0
    assert skd_loss(s, t, 0.5).item() == pytest.approx(0.5, rel=1e-6)
    assert skd_loss(t, 3 * t, 0.5).item() == pytest.approx(0.0, abs=1e-7)


def test_skd_gradcheck():
    s = torch.randn(2, 3, 4, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 2, 4, 4, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: skd_loss(a, b, 0.5), (s, t))


def test_skd_holistic_split_gradients():
    # no spectral norm: its power iteration moves at every forward, so a recomputation differs
    disc = SKDHolisticDiscriminator(num_classes=3, image_channels=3, width=8, depth=2, spectral_norm=False)
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, 8)
    image = torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    student_term, critic_term = skd_holistic_loss(disc, s, t, image, generator=g)
    assert torch.isfinite(student_term) and torch.isfinite(critic_term)
    student_term.backward(retain_graph=True)
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # critic frozen in the student term
    s.grad = None
    critic_term.backward()
    assert s.grad is None  # student detached in the critic term
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    # without a gradient penalty the critic term is the plain Wasserstein estimate
    _, c0 = skd_holistic_loss(disc, s, t, image, gp_weight=0.0)
    ref = disc(F.softmax(s, 1), image).mean() - disc(F.softmax(t, 1), image).mean()
    assert c0.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------------------------------- IFVD
def ref_ifv(x, lab, ignore):
    B, C, H, W = x.shape
    out = torch.zeros(B, H, W, dtype=D64)
    for b in range(B):
        protos = {}
        for k in set(lab[b].flatten().tolist()) - {ignore}:
            pix = [x[b, :, i, j] for i in range(H) for j in range(W) if lab[b, i, j] == k]
            protos[k] = sum(pix) / (len(pix) + 1e-6)
        for i in range(H):
            for j in range(W):
                k = int(lab[b, i, j])
                v = x[b, :, i, j]
                c = protos.get(k, v) if k != ignore else v
                out[b, i, j] = float((v * c).sum() / (v.norm() * c.norm()))
    return out


def test_ifvd_reference():
    s, t = torch.randn(2, 3, 4, 5, dtype=D64), torch.randn(2, 6, 4, 5, dtype=D64)
    labels = torch.randint(0, 3, (2, 8, 10))
    labels[0, :2] = 255
    lab_small = labels[:, ::2, ::2]  # nearest downsample by 2 picks the even pixels
    ref = ((ref_ifv(s, lab_small, 255) - ref_ifv(t, lab_small, 255)) ** 2).mean()
    assert ifvd_loss(s, t, labels, ignore_value=255).item() == pytest.approx(ref.item(), rel=1e-8)


def test_ifvd_hand_case():
    # two pixels of one class: student (1,0),(0,1) -> prototype (1/2,1/2) -> cos 1/sqrt2 each;
    # teacher (1,0),(1,0) -> cos 1. A third, ignored pixel contributes 0 but counts in the mean.
    s = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)
    t = torch.tensor([[1.0, 1.0, -2.0], [0.0, 0.0, 5.0]]).view(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 255]]])
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert ifvd_loss(s, t, labels).item() == pytest.approx(expected, rel=1e-5)
    assert ifv_map(s, labels)[0, 0, 2].item() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        build_distill_loss("ifvd")(s, t)


def test_ifvd_gradcheck():
    s = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    labels = torch.randint(0, 2, (2, 3, 3))
    labels[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda a, b: ifvd_loss(a, b, labels), (s, t))


# --------------------------------------------------------------------------------------- CIRKD
def ref_cirkd_minibatch(s, t, T, pool):
    if pool > 1:
        s, t = F.avg_pool2d(s, pool, ceil_mode=True), F.avg_pool2d(t, pool, ceil_mode=True)
    B = s.shape[0]
    s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    total = 0.0
    for i in range(B):
        for j in range(B):
            ms = s[i].flatten(1).t() @ s[j].flatten(1)
            mt = t[i].flatten(1).t() @ t[j].flatten(1)
            total += F.kl_div(F.log_softmax(ms / T, 1), F.softmax(mt / T, 1), reduction="batchmean")
    return total / (B * B)


@pytest.mark.parametrize("pool", [1, 2])
def test_cirkd_minibatch_reference(pool):
    s, t = torch.randn(3, 4, 4, 6, dtype=D64), torch.randn(3, 7, 4, 6, dtype=D64)
    ref = ref_cirkd_minibatch(s, t, 0.1, pool)
    assert cirkd_minibatch_loss(s, t, 0.1, pool).item() == pytest.approx(ref.item(), rel=1e-8)
    assert cirkd_minibatch_loss(s, 2 * s, 0.1, pool).item() == pytest.approx(0.0, abs=1e-9)


def test_cirkd_contrast_reference():
    s = F.normalize(torch.randn(10, 6, dtype=D64), dim=1)
    t = F.normalize(torch.randn(10, 6, dtype=D64), dim=1)
    bank = F.normalize(torch.randn(15, 6, dtype=D64), dim=1)
    for fn in (cirkd_pixel_loss, cirkd_region_loss):
        ref = (
            F.kl_div(
                F.log_softmax(s @ bank.t() / 0.1 / 2.0, 1),
                F.softmax(t @ bank.t() / 0.1 / 2.0, 1),
                reduction="batchmean",
            )
            * 4.0
        )
        assert fn(s, t, bank, 0.1, 2.0).item() == pytest.approx(ref.item(), rel=1e-9)
        assert fn(s, s, bank).item() == pytest.approx(0.0, abs=1e-12)


def test_cirkd_gradcheck():
    s = torch.randn(2, 3, 4, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cirkd_minibatch_loss(a, b, 0.5, 2), (s, t))
    e_s = torch.randn(5, 4, dtype=D64, requires_grad=True)
    e_t = torch.randn(5, 4, dtype=D64, requires_grad=True)
    bank = F.normalize(torch.randn(7, 4, dtype=D64), dim=1)
    assert torch.autograd.gradcheck(lambda a, b: cirkd_pixel_loss(a, b, bank, 0.5, 2.0), (e_s, e_t))


def test_cirkd_memory_module():
    torch.manual_seed(0)
    mod = CIRKDMemoryLoss(
        weight=1.0,
        num_classes=3,
        teacher_channels=4,
        student_channels=4,
        pixel_memory_size=20,
        region_memory_size=4,
        pixel_contrast_size=9,
        region_contrast_size=6,
        pixel_update_freq=5,
    )
    assert mod.pixel_per_class == 4 and mod.region_per_class == 3  # size // K + 1
    s, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 4:] = 1
    labels[1, :, :2] = 255
    out = mod(s, t, labels=labels, ignore_value=255)
    out.backward()
    assert torch.isfinite(out) and out.item() > 0
    assert all(p.grad is not None for p in mod.parameters())
    # enqueue: class 0 and 1 present in both images -> 2 regions each, 5 pixels per image
    assert mod.region_ptr.tolist() == [2, 2, 0] and mod.pixel_ptr.tolist() == [10, 10, 0]
    t_emb = F.normalize(t, dim=1)
    region0 = F.normalize(t_emb[0, :, :2].flatten(1).mean(1), dim=0)  # label rows 0-3 -> rows 0-1
    assert torch.allclose(mod.region_bank[0, 0], region0, atol=1e-6)
    assert torch.allclose(mod.region_bank.norm(dim=2), torch.ones(3, 4), atol=1e-5)
    # nothing valid: zero loss that still reaches the projection head
    mod.zero_grad()
    out = mod(s, t, labels=torch.full((2, 8, 8), 255))
    out.backward()
    assert out.item() == 0.0 and all(p.grad is not None for p in mod.parameters())
    with pytest.raises(ValueError, match="num_classes"):
        build_distill_loss("cirkd_memory", student_channels=4, teacher_channels=4)


def _rows_sorted(x):
    return x[torch.argsort(x[:, 0])]


def test_cirkd_memory_enqueue_matches_the_per_class_recipe():
    """The vectorised enqueue writes what the published per-image, per-class loop writes: each
    present class's region mean at its pointer, and its pixels at the pixel pointer (the last
    slots, pointer back to 0, when they would run past the end); absent classes untouched."""
    torch.manual_seed(0)
    mod = CIRKDMemoryLoss(weight=1.0, num_classes=4, teacher_channels=3, pixel_memory_size=6,
                          region_memory_size=3, pixel_contrast_size=4, region_contrast_size=4,
                          pixel_update_freq=10)
    before = mod.pixel_bank.clone()
    t = F.normalize(torch.randn(2, 3, 2, 3), dim=1)
    labels = torch.tensor([[[0, 0, 1], [1, 1, 255]], [[0, 2, 2], [0, 0, 0]]])
    valid = labels != 255
    mod._enqueue(t, labels.clamp_max(3), valid)
    feats = t.flatten(2)
    # class 0: 2 pixels of image 0 at slots 0-1, then 4 of image 1 would end at 6 >= 6: slots 2-5
    assert mod.pixel_ptr.tolist() == [0, 3, 2, 0] and mod.region_ptr.tolist() == [2, 1, 1, 0]
    img1_c0 = feats[1][:, labels[1].flatten() == 0].t()
    assert torch.allclose(_rows_sorted(mod.pixel_bank[0, 2:6]), _rows_sorted(img1_c0), atol=1e-6)
    img0_c0 = feats[0][:, labels[0].flatten() == 0].t()
    assert torch.allclose(_rows_sorted(mod.pixel_bank[0, :2]), _rows_sorted(img0_c0), atol=1e-6)
    img0_c1 = feats[0][:, labels[0].flatten() == 1].t()
    assert torch.allclose(_rows_sorted(mod.pixel_bank[1, :3]), _rows_sorted(img0_c1), atol=1e-6)
    assert torch.equal(mod.pixel_bank[1, 3:], before[1, 3:]) and torch.equal(mod.pixel_bank[3], before[3])
    region_img1_c2 = F.normalize(feats[1][:, labels[1].flatten() == 2].mean(dim=1), dim=0)
    assert torch.allclose(mod.region_bank[2, 0], region_img1_c2, atol=1e-6)
    # a second batch, class 1 only: its 6 pixels from pointer 3 would end at 9 >= 6, so they
    # fill the last 6 slots (the whole bank) and the pointer goes back to 0
    mod._enqueue(t[:1], torch.ones(1, 2, 3, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool))
    assert mod.pixel_ptr.tolist() == [0, 0, 2, 0] and mod.region_ptr.tolist() == [2, 2, 1, 0]
    assert torch.allclose(_rows_sorted(mod.pixel_bank[1]), _rows_sorted(feats[0].t()), atol=1e-6)


def test_cirkd_memory_weighted_anchors_equal_selected_anchors():
    g = torch.Generator().manual_seed(1)
    e_s = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    e_t = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    bank = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    w = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    for fn in (cirkd_pixel_loss, cirkd_region_loss):
        assert fn(e_s, e_t, bank, 0.1, 1.0, weights=w).item() == pytest.approx(
            fn(e_s[w], e_t[w], bank, 0.1, 1.0).item(), rel=1e-6)


# ----------------------------------------------------------------------------------------- FGD
def ref_fgd_masks(boxes, image_size, h, w):
    fg = torch.zeros(len(boxes), h, w, dtype=D64)
    for i, bx in enumerate(boxes):
        for x1, y1, x2, y2 in bx.tolist():
            c0, c1 = math.floor(x1 / image_size[1] * w), math.ceil(x2 / image_size[1] * w)
            r0, r1 = math.floor(y1 / image_size[0] * h), math.ceil(y2 / image_size[0] * h)
            area = 1.0 / ((r1 + 1 - r0) * (c1 + 1 - c0))
            for r in range(max(r0, 0), min(r1, h - 1) + 1):
                for c in range(max(c0, 0), min(c1, w - 1) + 1):
                    fg[i, r, c] = max(fg[i, r, c].item(), area)
    bg = (fg == 0).double()
    for i in range(len(boxes)):
        if bg[i].sum() > 0:
            bg[i] /= bg[i].sum()
    return fg, bg


def test_fgd_masks_hand_layout():
    # 8 x 8 image, 4 x 4 map (stride 2). Box A [0,0,4,4] -> cells 0..2 (3x3, 1/9);
    # box B [2,2,4,4] -> cells 1..2 (2x2, 1/4) wins where they overlap. Image 2 has no boxes.
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]]), torch.zeros(0, 4)]
    fg, bg = fgd_masks(boxes, (8, 8), (4, 4))
    expected_fg = torch.tensor(
        [[1 / 9, 1 / 9, 1 / 9, 0], [1 / 9, 1 / 4, 1 / 4, 0], [1 / 9, 1 / 4, 1 / 4, 0], [0, 0, 0, 0]]
    )
    assert torch.allclose(fg[0], expected_fg)
    assert torch.allclose(bg[0], (expected_fg == 0).float() / 7)
    assert torch.count_nonzero(fg[1]) == 0 and torch.allclose(bg[1], torch.full((4, 4), 1 / 16))
    # a box running off the map is clipped; its area still counts the outside cell (official)
    fg2, _ = fgd_masks([torch.tensor([[5.0, 5.0, 8.0, 8.0]])], (8, 8), (4, 4))
    assert fg2[0, 3, 3].item() == pytest.approx(1 / 9) and fg2[0, 1, 1].item() == 0.0
    # non-square image: x scaled by width, y by height
    boxes3 = [torch.tensor([[3.0, 1.0, 17.0, 6.0]])]
    fg3, bg3 = fgd_masks(boxes3, (12, 20), (6, 10))
    ref_fg, ref_bg = ref_fgd_masks(boxes3, (12, 20), 6, 10)
    assert torch.allclose(fg3.double(), ref_fg) and torch.allclose(bg3.double(), ref_bg)


def ref_fgd(s, t, boxes, image_size, T, a, b_, g, gs, gt, lam):
    B, C, H, W = s.shape
    fg, bg = ref_fgd_masks(boxes, image_size, H, W)

    def attention(x):
        sp = torch.zeros(B, H, W, dtype=D64)
        ch = torch.zeros(B, C, dtype=D64)
        for b in range(B):
            sp_vals = _softmax(
                [float(x[b, :, i, j].abs().mean()) / T for i in range(H) for j in range(W)]
            )
            sp[b] = torch.tensor(sp_vals, dtype=D64).view(H, W) * H * W
            ch[b] = (
                torch.tensor(
                    _softmax([float(x[b, c].abs().mean()) / T for c in range(C)]), dtype=D64
                )
                * C
            )
        return sp, ch

    s_sp, s_ch = attention(s)
    t_sp, t_ch = attention(t)
    w_t = torch.sqrt(t_sp)[:, None] * torch.sqrt(t_ch)[:, :, None, None]  # official sqrt form
    fs, ft = s * w_t, t * w_t
    l_fg = ((fs * fg.sqrt()[:, None] - ft * fg.sqrt()[:, None]) ** 2).sum() / B
    l_bg = ((fs * bg.sqrt()[:, None] - ft * bg.sqrt()[:, None]) ** 2).sum() / B
    l_at = (s_ch - t_ch).abs().sum() / B + (s_sp - t_sp).abs().sum() / B
    l_gl = ((gs(s) - gt(t)) ** 2).sum() / B
    return a * l_fg + b_ * l_bg + g * l_at + lam * l_gl


def _perturbed_gc(ch, seed):
    gc = GcContext(ch).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gc.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=D64) * 0.3)  # leave the zero init
    return gc


def test_fgd_reference_and_identity():
    s, t = torch.randn(2, 4, 4, 5, dtype=D64), torch.randn(2, 4, 4, 5, dtype=D64)
    boxes = [torch.tensor([[1.0, 2.0, 9.0, 7.0]]), torch.zeros(0, 4)]
    gs, gt = _perturbed_gc(4, 1), _perturbed_gc(4, 2)
    kw = dict(temperature=0.5, alpha=1e-3, beta=5e-4, gamma=5e-4, lambda_=5e-6)
    out = fgd_loss(s, t, boxes, (16, 20), global_student=gs, global_teacher=gt, **kw)
    ref = ref_fgd(s, t, boxes, (16, 20), 0.5, 1e-3, 5e-4, 5e-4, gs, gt, 5e-6)
    assert out.item() == pytest.approx(ref.item(), rel=1e-8)
    # identical features and fresh (zero-initialised) GcBlocks -> every term is 0
    mod = build_distill_loss("fgd", student_channels=4, teacher_channels=4).double()
    assert mod(t, t, boxes=boxes, image_size=(16, 20)).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="boxes"):
        mod(s, t)


def test_fgd_module_defaults_and_grads():
    mod = build_distill_loss("fgd", weight=1.0, student_channels=4, teacher_channels=4)
    assert (mod.temperature, mod.alpha, mod.beta, mod.gamma, mod.lambda_) == (
        0.5,
        1e-3,
        5e-4,
        5e-4,
        5e-6,
    )
    s, t = torch.randn(2, 4, 4, 5), torch.randn(2, 4, 4, 5)
    out = mod(
        s, t, boxes=[torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)], image_size=(16, 20)
    )
    out.backward()
    assert all(p.grad is not None for p in mod.parameters())


def test_fgd_gradcheck():
    s = torch.randn(2, 3, 3, 4, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, dtype=D64, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.zeros(0, 4)]
    gs, gt = _perturbed_gc(3, 3), _perturbed_gc(3, 4)
    fn = lambda a, b: fgd_loss(
        a,
        b,
        boxes,
        (12, 16),
        alpha=1.0,
        beta=1.0,
        gamma=1.0,
        lambda_=1.0,  # noqa: E731
        global_student=gs,
        global_teacher=gt,
    )
    assert torch.autograd.gradcheck(fn, (s, t))


# ----------------------------------------------------------------------------------------- PKD
def ref_pkd(s, t, batch_stats):
    def norm(x):
        B, C, H, W = x.shape
        out = torch.empty_like(x)
        for c in range(C):
            groups = [list(range(B))] if batch_stats else [[b] for b in range(B)]
            for grp in groups:
                vals = [float(v) for b in grp for v in x[b, c].flatten()]
                mu = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
                for b in grp:
                    out[b, c] = (x[b, c] - mu) / (sd + 1e-6)
        return out

    return ((norm(s) - norm(t)) ** 2).mean() / 2


@pytest.mark.parametrize("batch_stats", [False, True])
def test_pkd_reference(batch_stats):
    s, t = torch.randn(2, 3, 3, 4, dtype=D64), torch.randn(2, 3, 3, 4, dtype=D64) * 4 + 1
    ref = ref_pkd(s, t, batch_stats)
    assert pkd_loss(s, t, batch_stats).item() == pytest.approx(ref.item(), rel=1e-9)


def test_pkd_hand_case():
    t = torch.randn(2, 3, 4, 4)
    # invariant to a positive per-channel affine change of each sample
    scale = torch.rand(2, 3, 1, 1) + 0.5
    shift = torch.randn(2, 3, 1, 1)
    assert pkd_loss(t * scale + shift, t).item() == pytest.approx(0.0, abs=1e-6)
    # perfectly anti-correlated channels: standardised values v and -v, mean of (2v)^2/2 with
    # unbiased std: sum v^2 = n - 1 -> 2 (n - 1) / n
    n = 16
    assert pkd_loss(-t, t).item() == pytest.approx(2 * (n - 1) / n, rel=1e-4)


def test_pkd_gradcheck():
    s = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pkd_loss(a, b, False), (s, t))
    assert torch.autograd.gradcheck(lambda a, b: pkd_loss(a, b, True), (s, t))


# ----------------------------------------------------------------------------------------- FKD
def ref_fkd(s, t, T, wf, wa):
    B, C, H, W = s.shape

    def att(x, b):
        sp = (
            torch.tensor(
                _softmax(
                    [float(x[b, :, i, j].abs().mean()) / T for i in range(H) for j in range(W)]
                ),
                dtype=D64,
            )
            * H
            * W
        )
        ch = (
            torch.tensor(_softmax([float(x[b, c].abs().mean()) / T for c in range(C)]), dtype=D64)
            * C
        )
        return sp.view(H, W), ch

    feat, trans = 0.0, 0.0
    for b in range(B):
        s_sp, s_ch = att(s, b)
        t_sp, t_ch = att(t, b)
        m_sp, m_ch = (s_sp + t_sp) / 2, (s_ch + t_ch) / 2
        acc = 0.0
        for c in range(C):
            acc += float(((t[b, c] - s[b, c]) ** 2 * m_sp).sum()) * float(m_ch[c])
        feat += math.sqrt(acc)
        trans += float((t_sp - s_sp).norm()) + float((t_ch - s_ch).norm())
    return (wf * feat + wa * trans) / B


def test_fkd_reference_and_identity():
    s, t = torch.randn(2, 3, 3, 4, dtype=D64), torch.randn(2, 3, 3, 4, dtype=D64)
    assert fkd_loss(s, t, 0.5, 4e-4, 2e-2).item() == pytest.approx(
        ref_fkd(s, t, 0.5, 4e-4, 2e-2), rel=1e-6
    )
    _, terms = fkd_loss(t, t, return_terms=True)
    assert terms["feature"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["attention"].item() == pytest.approx(0.0, abs=1e-5)


def test_fkd_gradcheck():
    s = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, dtype=D64, requires_grad=True)
    fn = lambda a, b: fkd_loss(a, b, 0.5, 1.0, 1.0, detach_masks=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s, t))
