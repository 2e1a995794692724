"""Several teachers (MODEL.DISTILL.TEACHERS), the mixed KD target, per-teacher diagnostics, and
features that differ in size (a teacher's own resize, MODEL.DISTILL.SPATIAL_ALIGN)."""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from radkd_d2.engine import ConfigError
from radkd_d2.losses import mix_teacher_logits
from test_distill_seg import TEACHER_CFG, batch, distill_cfg

R50 = ["MODEL.DRN.WIDTH_MULT", 0.125, "MODEL.DRN.DEPTH", 50]
R18 = ["MODEL.DRN.WIDTH_MULT", 0.125, "MODEL.DRN.DEPTH", 18]


def entry(name, opts, taps, mix=1.0, **extra):
    return {"NAME": name, "CONFIG_FILE": TEACHER_CFG, "WEIGHTS": "", "OPTS": [str(x) for x in opts],
            "TAPS": taps, "KD_MIX": mix, **extra}  # fmt: skip


def two_teachers(tmp_path, *opts, kd=1.0, mix=(0.5, 0.5)):
    teachers = [entry("a", R50, [["res5", "res5", "lad", 10.0]], mix[0]),
                entry("b", R18, [["res4", "res4", "cad", 1.0]], mix[1])]  # fmt: skip
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.KD_WEIGHT", kd, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1, *opts)
    cfg.defrost()
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = ""
    cfg.MODEL.DISTILL.TEACHERS = teachers
    return cfg


def state(module):
    return {k: v.clone() for k, v in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items()}


def step(model, seed=0):
    model.train()
    with EventStorage(0) as storage:
        losses = model(batch(seed=seed))
        sum(losses.values()).backward()
        logged = {k: v for k, (v, _) in storage.latest().items()}
    return losses, logged


def test_mixed_target_is_the_weighted_mean_of_probabilities():
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 4, 4) * 3, torch.randn(2, 5, 4, 4)
    for t in (1.0, 4.0):
        mixed = mix_teacher_logits([a, b], [3.0, 1.0], t)
        expect = 0.75 * F.softmax(a / t, 1) + 0.25 * F.softmax(b / t, 1)
        torch.testing.assert_close(F.softmax(mixed / t, 1), expect, rtol=0, atol=1e-6)
    torch.testing.assert_close((mix_teacher_logits([a], [1.0], 2.0) / 2).softmax(1), (a / 2).softmax(1), atol=1e-6, rtol=0)
    small = mix_teacher_logits([a, b[..., :2, :2]], [1.0, 1.0], 1.0)  # another size: resized to the first's
    assert small.shape == a.shape


def test_two_teachers_each_with_its_terms_one_kd_and_their_diagnostics(tmp_path):
    model = build_model(two_teachers(tmp_path))
    assert list(model.teachers) == ["a", "b"] and model.teacher is model.teachers["a"]
    before = {n: state(t) for n, t in model.teachers.items()}
    losses, logged = step(model)
    distill = sorted(k for k in losses if k.startswith("loss_distill_"))
    assert distill == ["loss_distill_cad_res4_b", "loss_distill_kd_logits", "loss_distill_lad_res5_a"]
    assert all(torch.isfinite(losses[k]) for k in distill)
    for key in distill:  # the balance of every teacher's term is measured on its own
        assert f"grad_ratio/{key}" in logged, key
    assert {"distill/res5_a/cos_theta", "distill/res4_b/cos_theta", "distill/kd_teacher/a", "distill/kd_teacher/b"} <= set(logged)
    for name, teacher in model.teachers.items():
        assert all(not m.training for m in teacher.modules()) and not any(p.requires_grad for p in teacher.parameters())
        after = state(teacher)
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
    assert not any(k.startswith("teachers.") for k in model.state_dict())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_kd_term_distils_the_mixed_probabilities(tmp_path):
    """loss_distill_kd_logits equals the KD loss computed here against the KD_MIX-weighted mean
    of the two teachers' probabilities (each teacher's logits read from its own forward)."""
    model = build_model(two_teachers(tmp_path, mix=(0.8, 0.2))).train()
    data = batch(seed=3)
    feats = model.teacher_features(data)
    mean = 0.8 * F.softmax(feats["a/logits"], 1) + 0.2 * F.softmax(feats["b/logits"], 1)  # T = 1
    torch.testing.assert_close(F.softmax(feats["logits"], 1), mean, atol=1e-6, rtol=0)
    seen = {}
    real = model.distiller.forward
    model.distiller.forward = lambda s, t, **kw: seen.update(s=s, t=t) or real(s, t, **kw)
    with EventStorage(0):
        losses = model(data)
    kd = model.distiller.losses["logits__kd"]
    context = {"labels": torch.stack([x["sem_seg"] for x in data]), "ignore_value": 255}
    torch.testing.assert_close(losses["loss_distill_kd_logits"], kd(seen["s"]["logits"], feats["logits"], **context))


def test_one_entry_of_teachers_is_the_single_teacher_case(tmp_path):
    results = []
    for listed in (False, True):
        torch.manual_seed(0)
        cfg = distill_cfg(tmp_path)
        if listed:
            cfg.defrost()
            t = cfg.MODEL.DISTILL.TEACHER
            cfg.MODEL.DISTILL.TEACHERS = [entry("only", t.OPTS, [list(x) for x in cfg.MODEL.DISTILL.TAPS])]
            cfg.MODEL.DISTILL.TAPS = [["res5", "res5", "lad", 10.0]]
            t.CONFIG_FILE = ""
        model = build_model(cfg)
        losses, _ = step(model)
        results.append({k: v.item() for k, v in losses.items()})
    assert results[0] == results[1]


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.MODEL.DISTILL.TEACHER, "CONFIG_FILE", TEACHER_CFG), "TEACHERS and MODEL.DISTILL.TEACHER.CONFIG_FILE are both set"),
    (lambda c: c.MODEL.DISTILL.TEACHERS[1].update(NAME="a"), r"TEACHERS\[1\].NAME = 'a' must be unique"),
    (lambda c: c.MODEL.DISTILL.TEACHERS[0].update(WIEGHTS="x"), r"TEACHERS\[0\]: unknown key\(s\) \['WIEGHTS'\]; allowed: \['CONFIG_FILE', 'DTYPE'"),
    (lambda c: c.MODEL.DISTILL.TEACHERS[0].update(DTYPE="fp8"), r"TEACHERS\[0\].DTYPE = 'fp8'; allowed"),
    (lambda c: c.MODEL.DISTILL.TEACHERS[0].update(INPUT_SCALE=0), r"TEACHERS\[0\].INPUT_SCALE = 0.0 must be in \(0, 8\]"),
    (lambda c: setattr(c.MODEL.DISTILL, "TAPS", [["res4", "res4", "lad", 1.0]]), "move these taps there"),
    (lambda c: c.MODEL.DISTILL.TEACHERS[1].update(TAPS=[["res4", "res9", "cad", 1.0]]), r"TEACHERS\[1\].TAPS: teacher 'b' position 'res9' names no module"),
])  # fmt: skip
def test_bad_teacher_lists_fail_at_build_naming_the_key(tmp_path, change, message):
    cfg = two_teachers(tmp_path)
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        build_model(cfg)


def test_a_teacher_on_its_own_resize_with_each_spatial_alignment(tmp_path):
    """A teacher that sees the batch at half size gives maps half as large: "strided_conv"
    learns a stride-2 conv for them, "area" pools, "bilinear" resizes; a ratio that is not an
    integer is refused for "strided_conv" naming the key."""
    taps = "[['res5', 'res5', 'lad', 10.0]]"
    for mode, module in (("strided_conv", True), ("area", False), ("bilinear", False)):
        cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", taps, "MODEL.DISTILL.KD_WEIGHT", 0.0,
                          "MODEL.DISTILL.TEACHER.INPUT_SCALE", 0.5, "MODEL.DISTILL.SPATIAL_ALIGN", mode)  # fmt: skip
        model = build_model(cfg)
        assert ("res5" in model.distiller.spatial) is module, mode
        if module:
            conv = model.distiller.spatial["res5"]
            assert conv.stride == (2, 2) and conv.kernel_size == (2, 2)
        feats = model.teacher_features(batch())
        assert feats["res5"].shape[-2:] == (4, 4)  # 64 px / 2 / stride 8
        losses, _ = step(model)
        assert torch.isfinite(losses["loss_distill_lad_res5"])
        if module:
            assert model.distiller.spatial["res5"].weight.grad is not None
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", taps, "MODEL.DISTILL.KD_WEIGHT", 0.0,
                      "MODEL.DISTILL.TEACHER.INPUT_SCALE", 0.75, "MODEL.DISTILL.SPATIAL_ALIGN", "strided_conv")  # fmt: skip
    with pytest.raises(ConfigError, match=r"SPATIAL_ALIGN = 'strided_conv' needs the student map \(32x32\) to be an integer multiple of the teacher's \(24x24\)"):
        build_model(cfg)
    with pytest.raises(ConfigError, match=r"MODEL.DISTILL.SPATIAL_ALIGN = 'nearest'.*allowed: \['bilinear', 'area', 'strided_conv'\]"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.SPATIAL_ALIGN", "nearest"))


def test_a_teacher_sees_its_own_resize_and_channel_order(tmp_path):
    """INPUT_SCALE resizes what the teacher sees; an RGB teacher under a BGR student gets the
    channels flipped, and its own normalisation."""
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TEACHER.INPUT_SCALE", 0.5)
    model = build_model(cfg)
    seen = {}
    model.teacher.backbone.register_forward_pre_hook(lambda m, i: seen.update(x=i[0].clone()))
    data = batch()
    model.teacher_features(data)
    teacher = model.teacher
    image = data[0]["image"]
    if {model.input_format, model.teacher_formats["teacher"]} == {"RGB", "BGR"}:
        image = image.flip(0)
    expect = F.interpolate(image[None], scale_factor=0.5, mode="bilinear", align_corners=False)[0]
    expect = (expect - teacher.pixel_mean) / teacher.pixel_std
    torch.testing.assert_close(seen["x"][0, :, :32, :32], expect)
