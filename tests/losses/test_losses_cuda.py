"""CUDA checks of every registered loss (skipped without a GPU): CPU parity and autocast."""

import pytest
import torch
from loss_test_utils import build_small, make_context, registered_names
from torch import nn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 8, 16, 20, generator=g)
    t = torch.randn(2, 8, 16, 20, generator=g) * 3
    mask = (torch.rand(2, 1, 16, 20, generator=g) > 0.5).float()
    return s, t, mask


def _to(ctx, device):
    out = dict(ctx)
    out["labels"] = ctx["labels"].to(device)
    out["boxes"] = [b.to(device) for b in ctx["boxes"]]
    return out


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", registered_names())
def test_cuda_matches_cpu(name):
    loss = build_small(name)
    s, t, mask = _inputs()
    ctx = make_context(image_size=(64, 80))
    results = {}
    for device in ("cpu", "cuda"):
        loss = loss.to(device)
        x = s.clone().to(device).requires_grad_(True)
        out = loss(x, t.to(device), mask=mask.to(device), **_to(ctx, device))
        out.backward()
        assert out.device.type == device and torch.isfinite(out)
        results[device] = (out.item(), x.grad.cpu())
    if name == "cirkd_memory":
        return  # random memory sampling differs between devices
    (v_cpu, g_cpu), (v_gpu, g_gpu) = results["cpu"], results["cuda"]
    assert v_gpu == pytest.approx(v_cpu, rel=1e-4, abs=1e-7)
    assert torch.allclose(g_gpu, g_cpu, rtol=1e-3, atol=1e-4 * g_cpu.abs().max().item() + 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", registered_names())
def test_cuda_autocast_finite(name, dtype):
    loss = build_small(name).cuda()
    s, t, mask = _inputs()
    conv = nn.Conv2d(8, 8, 1).cuda()
    with torch.no_grad():  # identity map: the features reach the loss at the scale we chose
        conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        conv.bias.zero_()
    scale = 1e4 if dtype == torch.float16 else 1.0
    with torch.autocast("cuda", dtype=dtype):
        y = conv(s.cuda() * scale)
        assert y.dtype == dtype
        teacher = (t.cuda() * scale / 3).to(dtype)  # |t| < 4 * 3: stays below fp16's 65504
        out = loss(y, teacher, mask=mask.cuda(), **_to(make_context(), "cuda"))
    assert out.dtype in (torch.float32, torch.float64) and torch.isfinite(out)
    if dtype == torch.bfloat16:  # fp16 gradients of 1e4-sized features may overflow by design
        out.backward()
        assert torch.isfinite(conv.weight.grad).all()
