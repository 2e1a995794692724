"""Adaptive average pooling that also exports to ONNX at any input size.

``torch.onnx`` turns ``adaptive_avg_pool2d`` into a fixed ``AveragePool`` and fails unless the
input size is known and a multiple of the output size (PSPNet's 2/3/6 bins on a 45 x 60
CamVid feature are not). During an ONNX export this module computes the same average as two
matrix products, ``P_h @ x @ P_w^T``, whose rows average the input window
``[floor(i n / b), ceil((i + 1) n / b))`` of the adaptive pool; the matrices are built from the
traced size, so the exported graph keeps H and W dynamic. Outside an export it is
``F.adaptive_avg_pool2d``.
"""
import torch
import torch.nn.functional as F

__all__ = ["adaptive_avg_pool2d", "pool_matrix"]


def pool_matrix(n, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``bins x n`` matrix whose row i averages adaptive-pool window i of a length-n axis."""
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    idx = torch.arange(n, device=like.device).unsqueeze(0)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    window = ((idx >= start) & (idx < end)).to(like.dtype)
    return window / window.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` (B x C x bins x bins), export-safe (see module doc)."""
    if bins == 1 or not torch.onnx.is_in_onnx_export():
        return F.adaptive_avg_pool2d(x, bins)
    h, w = x.shape[-2:]
    return pool_matrix(h, bins, x) @ x @ pool_matrix(w, bins, x).transpose(0, 1)
