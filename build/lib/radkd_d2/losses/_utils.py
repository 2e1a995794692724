"""Helpers shared by the distillation losses: float32 math, shape checks, safe normalisation."""

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_EPS",
    "autocast_off",
    "float32_math",
    "to_float32",
    "check_same_shape",
    "check_4d",
    "safe_l2_normalize",
    "safe_rsqrt",
    "safe_sqrt",
    "downsample_labels",
    "check_weight",
    "check_positive",
]

# Added to squared L2 norms before the inverse square root: a zero vector normalises to zero
# with a finite gradient (1/sqrt(eps) = 1e6 at most), while any real feature vector (squared
# norm >> 1e-12) is normalised to relative precision ~1e-12.
DEFAULT_EPS = 1e-12

_HALF_TYPES = (torch.float16, torch.bfloat16)


def to_float32(x: Any) -> Any:
    """Upcast fp16/bf16 tensors to float32; leave float32/float64 and non-float tensors alone."""
    if torch.is_tensor(x) and x.dtype in _HALF_TYPES:
        return x.float()
    return x


@contextlib.contextmanager
def autocast_off(device_type: str) -> Iterator[None]:
    """Context manager disabling autocast for ``device_type`` (no-op where unsupported)."""
    # autocast only knows a few device types; for others there is nothing to switch off.
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def _first_tensor(values: Sequence[Any]) -> Optional[torch.Tensor]:
    for v in values:
        if torch.is_tensor(v):
            return v
    return None


def float32_math(fn: Callable) -> Callable:
    """Decorator: run ``fn`` with autocast disabled and its half-precision tensor args upcast.

    Squares and exponentials of fp16 features (values ~1e4) overflow, and bf16 sums lose most
    of their digits, so every loss does its arithmetic in float32 (float64 inputs, as used by
    gradcheck, stay float64). Positional and keyword tensor arguments are converted.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ref = _first_tensor(list(args) + list(kwargs.values()))
        device_type = ref.device.type if ref is not None else "cpu"
        with autocast_off(device_type):
            args = tuple(to_float32(a) for a in args)
            kwargs = {k: to_float32(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper


def check_4d(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a B x C x H x W tensor."""
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a B x C x H x W tensor, got shape {shape}")


def check_same_shape(
    student: torch.Tensor,
    teacher: torch.Tensor,
    loss_name: str,
    *,
    match_channels: bool = True,
) -> None:
    """Raise ValueError naming both shapes when student and teacher features differ.

    Args:
        match_channels: False for relational losses (student-student vs teacher-teacher
            similarities) that only need equal batch and spatial sizes.
    """
    check_4d(student, f"{loss_name}: student")
    check_4d(teacher, f"{loss_name}: teacher")
    s, t = tuple(student.shape), tuple(teacher.shape)
    if match_channels:
        ok = s == t
        what = "the same shape"
    else:
        ok = s[0] == t[0] and s[2:] == t[2:]
        what = "the same batch size and spatial size"
    if not ok:
        raise ValueError(
            f"{loss_name}: student and teacher features must have {what}; "
            f"got student {s} and teacher {t}"
        )


def safe_rsqrt(sq: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """1 / sqrt(sq + eps): finite value and gradient at sq == 0."""
    return torch.rsqrt(sq + eps)


def safe_sqrt(sq: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """sqrt(sq + eps): finite gradient at sq == 0 (plain sqrt has an infinite one)."""
    return torch.sqrt(sq + eps)


def safe_l2_normalize(x: torch.Tensor, dim, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """x / sqrt(sum(x^2, dim) + eps): a zero vector maps to zero with a finite gradient."""
    return x * safe_rsqrt(x.pow(2).sum(dim=dim, keepdim=True), eps)


def downsample_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of B x H x W integer labels to ``size`` (h, w)."""
    if labels.dim() != 3:
        raise ValueError(f"labels must be B x H x W, got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    # float64 holds every int32 label exactly; "nearest" matches F.interpolate's usual indexing.
    out = F.interpolate(labels[:, None].double(), size=tuple(size), mode="nearest")
    return out[:, 0].long()


def check_weight(weight: float, owner: str = "loss") -> float:
    """Return ``weight`` as float; raise ValueError naming it when negative or not finite."""
    w = float(weight)
    if not w >= 0.0 or w == float("inf"):
        raise ValueError(f"{owner}: weight must be a finite number >= 0, got weight={weight!r}")
    return w


def check_positive(value: float, name: str, owner: str = "loss") -> float:
    """Return ``value`` as float; raise ValueError naming it unless it is > 0."""
    v = float(value)
    if not v > 0.0:
        raise ValueError(f"{owner}: {name} must be > 0, got {name}={value!r}")
    return v


def check_same_channels(student_channels, teacher_channels, owner: str) -> None:
    """Feature losses compare features of equal width: the tap's connector
    (``MODEL.DISTILL.CONNECTOR``) maps the student's channels to the teacher's before the loss,
    so a loss built for two different widths is a wiring mistake, not something to adapt."""
    if student_channels and teacher_channels and student_channels != teacher_channels:
        raise ValueError(
            f"{owner}: student_channels={student_channels} != teacher_channels={teacher_channels}; "
            "the tap's connector (MODEL.DISTILL.CONNECTOR) maps the student feature to the "
            "teacher's channels before the loss: build the loss with the connector's output width"
        )
