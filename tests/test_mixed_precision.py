"""Mixed precision measured right: the loss-balance diagnostics differentiate the scaled loss
(as the step's GradScaler does) and divide by the scale; a float32 teacher leaves the student's
autocast; float16 AMP on the CPU (no loss scaling there) is refused with bfloat16 offered."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.utils.events import EventStorage

from radkd_d2.engine.checks import ConfigError, validate_config
from radkd_d2.losses.angular import lad_loss
from radkd_d2.modeling.distill import LossBalanceMonitor, Tap

from conftest import load_cfg


class _Student(nn.Module):
    """conv -> feature (the tap) -> classifier: a task loss and a feature loss at one position."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.cls = nn.Conv2d(16, 5, 1)

    def losses(self, x, labels, teacher, task_scale=1.0):
        feat = self.conv(x)
        task = F.cross_entropy(self.cls(feat).float(), labels) * task_scale
        return {"loss_sem_seg": task, "loss_distill_lad_res5": 10.0 * lad_loss(feat.float(), teacher)}, {"res5": feat}


def _ratio(monitor, model, batch, autocast=None, task_scale=1.0):
    x, labels, teacher = batch
    with EventStorage(0):
        if autocast is None:
            losses, feats = model.losses(x, labels, teacher, task_scale)
        else:
            with torch.autocast("cpu", dtype=autocast):
                losses, feats = model.losses(x, labels, teacher, task_scale)
        values = monitor.measure(losses, feats, 0)
    return values["grad_ratio/loss_distill_lad_res5"], values


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = _Student()
    batch = (torch.randn(4, 3, 24, 24), torch.randint(0, 5, (4, 24, 24)), torch.randn(4, 16, 24, 24))
    return model, batch, [Tap("res5", "res5", [("lad", 10.0)])]


def test_bf16_autocast_ratio_matches_fp32(setup):
    model, batch, taps = setup
    fp32, _ = _ratio(LossBalanceMonitor(taps), model, batch)
    bf16, _ = _ratio(LossBalanceMonitor(taps), model, batch, torch.bfloat16)
    assert bf16 == pytest.approx(fp32, rel=0.05)  # bf16's 8-bit mantissa; measured ~1 %


def test_a_mocked_loss_scale_is_divided_out(setup):
    model, batch, taps = setup
    plain, values = _ratio(LossBalanceMonitor(taps), model, batch)
    scaled, scaled_values = _ratio(LossBalanceMonitor(taps, scale_fn=lambda: 65536.0), model, batch)
    assert scaled == pytest.approx(plain, rel=1e-5)
    for key, value in values.items():  # the norms themselves are unscaled
        assert scaled_values[key] == pytest.approx(value, rel=1e-5), key


def test_fp16_task_gradients_underflow_without_the_scale(setup):
    """The defect the scale fixes: a small task loss in float16 (as a task loss late in training,
    here scaled down) has gradients below fp16's smallest subnormal; unscaled they read 0 and the
    ratio explodes, scaled as the GradScaler scales them they match fp32."""
    model, batch, taps = setup
    fp32, _ = _ratio(LossBalanceMonitor(taps), model, batch, task_scale=1e-6)
    try:
        unscaled, _ = _ratio(LossBalanceMonitor(taps), model, batch, torch.float16, task_scale=1e-6)
    except RuntimeError as e:  # a CPU build without float16 autocast kernels
        pytest.skip(f"float16 autocast on this CPU build: {e}")
    scaled, _ = _ratio(LossBalanceMonitor(taps, scale_fn=lambda: 65536.0), model, batch, torch.float16, task_scale=1e-6)
    assert unscaled > 5 * fp32  # inflated (or infinite) without the scale
    assert scaled == pytest.approx(fp32, rel=0.1)


def test_float32_teacher_leaves_the_students_autocast(tmp_path):
    from detectron2.modeling import build_model

    cfg = load_cfg(
        "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml",
        "MODEL.DISTILL.TEACHER.WEIGHTS", "", "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        "configs/synthetic/pspnet_r18_tiny.yaml", "MODEL.DRN.WIDTH_MULT", 0.125,
        "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.DRN.WIDTH_MULT', 0.125]", validate=False,
    )  # fmt: skip
    model = build_model(cfg)
    assert model.teacher_dtypes == {"teacher": torch.float32}
    batch = [{"image": torch.randint(0, 255, (3, 32, 32)).float(), "height": 32, "width": 32}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.teacher_features(batch)
        student = model.backbone(torch.randn(1, 3, 32, 32))
    assert all(f.dtype == torch.float32 for f in feats.values())
    assert student["res5"].dtype == torch.bfloat16  # the student's step stays mixed


def test_cpu_float16_amp_is_refused_with_bfloat16_offered():
    cfg = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "SOLVER.AMP.ENABLED", True, validate=False)
    assert cfg.SOLVER.AMP.PRECISION == "float16"  # the default
    with pytest.raises(ConfigError, match="SOLVER.AMP.PRECISION = 'float16'.*'bfloat16'"):
        validate_config(cfg)
    ok = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "SOLVER.AMP.ENABLED", True,
                  "SOLVER.AMP.PRECISION", "bfloat16", validate=False)  # fmt: skip
    validate_config(ok)
