"""Find the operators that force a host-device synchronisation, with the PyTorch profiler.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``,
``.tolist()``) or producing a tensor whose shape depends on its data (``nonzero``, boolean
indexing, ``unique``, ``masked_select``) makes the CPU wait for every queued kernel. These
operators show up under the same names when the code runs on the CPU, so counting them with the
profiler finds the synchronisations of a code path on any machine. Host reads that need no
operator on a CPU tensor (``.tolist()``, ``.numpy()``, ``.cpu()``) are caught at the Python
level with a ``TorchFunctionMode``.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, Tuple

import torch
from detectron2.utils.events import EventStorage
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

# Operator -> why it synchronises. ``aten::_local_scalar_dense`` is what item()/float()/bool()/int()
# call (and tolist() on a GPU tensor); the others return tensors whose size is only known after
# the kernel ran.
SYNC_OPS = {
    "aten::_local_scalar_dense": "value read on the host (item/float/bool/int/tolist)",
    "aten::nonzero": "data-dependent output size (nonzero, boolean-mask indexing)",
    "aten::masked_select": "data-dependent output size",
    "aten::_unique": "data-dependent output size",
    "aten::_unique2": "data-dependent output size",
    "aten::unique_dim": "data-dependent output size",
    "aten::unique_consecutive": "data-dependent output size",
    "aten::repeat_interleave": "data-dependent output size (without output_size)",
}

# Tensor methods that copy values to the host (on a GPU tensor each one waits for the device).
HOST_READ_METHODS = ("tolist", "numpy", "cpu", "item", "__bool__", "__float__", "__int__", "__index__")


class _HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READ_METHODS:
            self.counts[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


def count_sync_ops(fn: Callable[[], object], repeats: int = 1) -> Dict[str, int]:
    """Run ``fn`` ``repeats`` times under the profiler; return ``{name: calls per run}`` for the
    operators of :data:`SYNC_OPS` and the Python-level reads of :data:`HOST_READ_METHODS`
    (``Tensor.<method>``) that were called. Empty: the code path never waits for a GPU.

    Reads of shape-derived CPU tensors count too (e.g. Detectron2's ``ImageList`` padding);
    run the path of interest alone to keep them out.
    """
    reads = _HostReads()
    with profile(activities=[ProfilerActivity.CPU]) as prof, reads:
        for _ in range(repeats):
            fn()
    counts = Counter(reads.counts)
    for evt in prof.key_averages():
        if evt.key in SYNC_OPS:
            counts[evt.key] += evt.count
    return {k: v // repeats if v % repeats == 0 else v / repeats for k, v in sorted(counts.items())}


def capture_distiller_inputs(model, batched_inputs) -> Tuple[dict, dict, dict]:
    """Run one training forward of a distillation meta-architecture and return what its
    ``distiller`` received: ``(student_features, teacher_features, context)``, the student
    features detached (and requiring grad), so the loss path can be run on its own."""
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs

    handle = model.distiller.register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    try:
        model.train()
        with EventStorage(0), torch.no_grad():
            model(batched_inputs)
    finally:
        handle.remove()
        model.train(was_training)
    student, teacher = captured["args"]
    student = {k: v.detach().requires_grad_(True) for k, v in student.items()}
    return student, teacher, captured["kwargs"]


def distiller_step(distiller, student: dict, teacher: dict, context: dict, iteration: int = 1) -> None:
    """Forward and backward of the distillation losses alone (connectors, resizes, losses) at
    event-storage iteration ``iteration`` (diagnostics run when it is a multiple of their
    period)."""
    with EventStorage(iteration):
        losses = distiller(student, teacher, **context)
    sum(losses.values()).backward()
