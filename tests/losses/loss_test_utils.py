"""Helpers shared by the distillation-loss tests (CPU, small tensors)."""

import torch

from radkd_d2.losses import DISTILL_LOSS_REGISTRY, build_distill_loss

NUM_CLASSES = 4
# Small memory banks so CIRKD's memory loss builds and runs in milliseconds.
SMALL_CIRKD = dict(
    pixel_memory_size=40,
    region_memory_size=8,
    pixel_contrast_size=16,
    region_contrast_size=8,
)


def registered_names():
    return sorted(name for name, _ in DISTILL_LOSS_REGISTRY)


def build_small(name, channels=8, weight=1.0, distill=None, **overrides):
    """Build a registered loss sized for tests (extra arguments only where a loss needs them)."""
    if name.lower() == "cirkd_memory":
        overrides = {**SMALL_CIRKD, **overrides}
    return build_distill_loss(
        name,
        weight=weight,
        distill=distill,
        num_classes=NUM_CLASSES,
        student_channels=channels,
        teacher_channels=channels,
        **overrides
    )


def make_context(batch=2, image_size=(32, 40), seed=0):
    """Context the meta-architectures pass: labels with ignore pixels, boxes (one image empty)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (batch,) + tuple(image_size), generator=g)
    labels[:, :3, :5] = 255
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 18.0], [10.0, 12.0, 36.0, 30.0]])]
    boxes += [torch.zeros((0, 4)) for _ in range(batch - 1)]
    return {
        "labels": labels,
        "ignore_value": 255,
        "boxes": boxes,
        "image_size": tuple(image_size),
        "unused_key": "ignored",
    }
