"""Deployable students: TorchScript and ONNX artefacts of a segmentation, RetinaNet or R-CNN student.

What an exported model takes and returns (also written into its ``.json`` sidecar):

- **Segmentation** (``SemanticSegmentor`` students: PSPNet, DeepLabV3, UPerNet on any project
  backbone): one input ``images``, a B x 3 x H x W float32 batch of **raw** pixel values (0-255,
  the channel order of the config's ``INPUT.FORMAT``, as Detectron2's mappers give ``image``);
  normalisation and the padding to the backbone's size divisibility happen inside. One output
  ``logits``, B x K x H x W class logits at the input size (labels: their argmax over K).
  The batch size is always dynamic; H and W are dynamic in TorchScript and, unless the export
  asks for a fixed size (``dynamic_size=False``, recorded in the sidecar), in ONNX: the pyramid
  pooling of PSPNet/UPerNet exports through
  :func:`radkd_d2.modeling.heads.pooling.adaptive_avg_pool2d` at any size.
- **Detection** (``RetinaNet`` students), through Detectron2's ``TracingAdapter``: ``batch``
  inputs ``image0..`` (3 x H x W raw pixels each, sizes dynamic), and per image the outputs
  ``pred_boxes`` (N x 4, XYXY at the input image's size), ``pred_classes``, ``scores`` and
  ``image_size``, after RetinaNet's own score threshold, top-k and NMS (NMS exports to ONNX's
  ``NonMaxSuppression``). Rescaling to the original image size is
  :func:`detectron2.modeling.postprocessing.detector_postprocess`, as in Detectron2's
  inference; :class:`radkd_d2.export.runtime.ExportedModel` applies it.
- **Faster / Mask R-CNN** (``GeneralizedRCNN`` students), the same way but traced before their
  postprocessing: boxes in the network's input frame and, for Mask R-CNN, ``pred_masks`` as
  N x 1 x M x M per-box probabilities (outputs :data:`DET_MASK_OUTPUTS`); the runtime's
  ``detector_postprocess`` rescales the boxes and pastes the masks into the image.

Both go through tracing (``torch.jit.trace``, and the TorchScript-based ``torch.onnx`` exporter
on the traced graph). Scripting is not offered: Detectron2's ``Conv2d`` with a function-valued
activation, used by the heads, does not script, and a scripted RetinaNet returns a scripted
``Instances`` that a second runtime path would have to decode.
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN, RetinaNet, SemanticSegmentor
from torch import nn

from radkd_d2.errors import ExportError

from .runtime import DET_MASK_OUTPUTS, DET_OUTPUTS, Backend, ExportInfo
from .student import atomic_write, load_student, output_folder

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "SegmentationExport",
    "DetectionExport",
    "deployable",
    "export_deployable",
    "export_model",
    "export_module",
]

FORMATS = ("d2", "torchscript", "onnx")
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
ONNX_OPSET = 17
# max |exported - PyTorch| accepted at export time: CHECK_ATOL + CHECK_RTOL * max |PyTorch output|
# (float32 reordering gives ~1e-5 on unit-scale logits; randomly initialised deep models reach 1e5)
CHECK_ATOL, CHECK_RTOL = 1e-3, 1e-5


class SegmentationExport(nn.Module):
    """A ``SemanticSegmentor``'s inference as one tensor function: raw B x 3 x H x W pixels in,
    B x K x H x W logits out (see the module docstring). Padding is with zeros after
    normalisation, as ``ImageList.from_tensors`` pads, so logits equal the eager model's."""

    def __init__(self, model: SemanticSegmentor):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), False)
        self.size_divisibility = int(model.backbone.size_divisibility)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        d = self.size_divisibility
        if d > 1:
            x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        logits, _ = self.sem_seg_head(self.backbone(x), None)
        return logits[..., :h, :w]


class DetectionExport(TracingAdapter):
    """Detectron2's ``TracingAdapter`` around a RetinaNet or an R-CNN for ``batch`` images:
    flattened per-image inputs and outputs (:data:`DET_OUTPUTS` for each image, and
    :data:`DET_MASK_OUTPUTS` for a Mask R-CNN). An R-CNN is traced before its postprocessing
    (``inference(..., do_postprocess=False)``, as Detectron2's own export recipe does): boxes
    in the network's input frame and masks as per-box probabilities, pasted and rescaled by
    ``detector_postprocess`` at run time."""

    def __init__(self, model: nn.Module, images: Sequence[torch.Tensor]):
        rcnn = isinstance(model, GeneralizedRCNN)
        inference = (lambda m, inputs: m.inference(inputs, do_postprocess=False)) if rcnn else None
        super().__init__(model, [{"image": im} for im in images], inference_func=inference)
        with torch.no_grad():
            self(*self.flattened_inputs)  # fills outputs_schema
        per_image = self.outputs_schema.schemas[0]
        keys = tuple(per_image.keys if rcnn else per_image.schemas[0].keys)
        expected = DET_MASK_OUTPUTS if rcnn and model.roi_heads.mask_on else DET_OUTPUTS
        if keys + ("image_size",) != expected:
            raise ExportError(f"{type(model).__name__} outputs {list(keys)}, expected {list(expected[:-1])}")
        self.per_image_outputs = expected


def deployable(model: nn.Module, example: Sequence[torch.Tensor]) -> Tuple[nn.Module, tuple, str]:
    """The traceable wrapper of a built student, its example inputs and its task."""
    if isinstance(model, SemanticSegmentor):
        return SegmentationExport(model).eval(), (torch.stack(list(example)),), "sem_seg"
    if isinstance(model, (RetinaNet, GeneralizedRCNN)):
        adapter = DetectionExport(model, example).eval()
        return adapter, tuple(adapter.flattened_inputs), "detection"
    raise ExportError(
        f"exporting a {type(model).__name__} is not supported: TorchScript/ONNX export handles "
        "SemanticSegmentor, RetinaNet and GeneralizedRCNN (Faster/Mask R-CNN) students "
        "(MODEL.META_ARCHITECTURE or MODEL.DISTILL.STUDENT_META_ARCHITECTURE)"
    )


@contextlib.contextmanager
def _module_trail(model: nn.Module):
    """Yield the stack of modules being run: after a failure inside a forward, its last entry
    is the innermost module that failed (forward hooks do not pop on an exception)."""
    names = {m: n for n, m in model.named_modules()}
    stack: List[str] = []

    def enter(mod, _):
        stack.append(names.get(mod, "?"))

    def leave(mod, _, __):  # returns None: the module's output is kept
        if stack:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _op_module(wrapper: nn.Module, inputs: tuple, op: str) -> Optional[str]:
    """The module path of the first traced node of kind ``op`` (e.g. "aten::cummax")."""
    try:
        with torch.no_grad(), warnings_quiet():
            graph = torch.jit.trace(wrapper, inputs, check_trace=False).inlined_graph
    except Exception:  # the module did not even trace: no better place to name
        return None
    for node in graph.nodes():
        if node.kind() == op:
            scope = node.scopeName().split("/")[-1]  # "__module.body.1"
            return scope.split("__module.", 1)[-1] if scope else None
    return None


def _failure(fmt: str, wrapper: nn.Module, inputs: tuple, err: Exception, module: Optional[str]) -> ExportError:
    text = str(err)
    op = re.search(r"operator '?([\w:.]+)'?", text)
    if module is None and op:  # the ONNX conversion fails after tracing: find the op's module
        module = _op_module(wrapper, inputs, op.group(1) if "::" in op.group(1) else f"aten::{op.group(1)}")
    mods = dict(wrapper.named_modules())
    where = f"module {module!r} ({type(mods[module]).__name__})" if module in mods else "the model"
    what = f"operator {op.group(1)}" if op else type(err).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ExportError(f"{fmt} export failed in {where}: {what}: {first}")


def _dynamic_axes(task: str, input_names: List[str], output_names: List[str], dynamic_size: bool) -> Dict[str, Dict[int, str]]:
    if task == "sem_seg":
        spatial = {2: "height", 3: "width"} if dynamic_size else {}
        return {"images": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}}
    axes: Dict[str, Dict[int, str]] = {}
    for i, name in enumerate(input_names):
        if dynamic_size:
            axes[name] = {1: f"height{i}", 2: f"width{i}"}
    for name in output_names:
        if not name.startswith("image_size"):
            axes[name] = {0: f"detections_{name}"}
    return axes


def _names(task: str, batch: int, wrapper: Optional[nn.Module] = None) -> Tuple[List[str], List[str]]:
    if task == "sem_seg":
        return ["images"], ["logits"]
    fields = getattr(wrapper, "per_image_outputs", DET_OUTPUTS)
    return [f"image{i}" for i in range(batch)], [f"{k}{i}" for i in range(batch) for k in fields]


def _num_classes(scfg: CfgNode, task: str) -> int:
    if task == "sem_seg":
        return scfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if scfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        return scfg.MODEL.ROI_HEADS.NUM_CLASSES
    return scfg.MODEL.RETINANET.NUM_CLASSES


def _max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ExportError(
            f"exported model's outputs {[tuple(x.shape) for x in a]} differ in shape from the "
            f"PyTorch model's {[tuple(y.shape) for y in b]} on the example input"
        )
    return max([float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if x.numel()] or [0.0])


def _as_list(out) -> List[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def export_module(
    wrapper: nn.Module, inputs: tuple, task: str, fmt: str, path: Path, *, dynamic_size: bool = True
) -> float:
    """Trace ``wrapper`` on ``inputs`` into ``path`` (TorchScript or ONNX), load the file back
    and compare it with ``wrapper`` on the same inputs; returns the max abs difference. The
    file appears only when the check passes."""
    with torch.no_grad():
        reference = _as_list(wrapper(*inputs))
    input_names, output_names = _names(task, len(inputs), wrapper)
    diff = 0.0

    def write(tmp: Path) -> None:
        nonlocal diff
        with _module_trail(wrapper) as stack, warnings_quiet():
            try:
                if fmt == "torchscript":
                    with torch.no_grad():
                        torch.jit.trace(wrapper, inputs, check_trace=False).save(str(tmp))
                else:
                    _onnx_export(wrapper, inputs, tmp, task, input_names, output_names, dynamic_size)
            except Exception as e:
                raise _failure(fmt, wrapper, inputs, e, stack[-1] if stack else None) from e
        diff = _max_diff(Backend(fmt, str(tmp), input_names)(list(inputs)), reference)
        scale = max([float(r.abs().max()) for r in reference if r.numel() and r.is_floating_point()] or [0.0])
        if diff > CHECK_ATOL + CHECK_RTOL * scale:
            raise ExportError(
                f"{fmt} export differs from the PyTorch model by {diff:.3g} on the example input "
                f"(outputs up to {scale:.3g}; accepted {CHECK_ATOL:g} + {CHECK_RTOL:g} x that)"
            )

    atomic_write(path, write)
    return diff


def _onnx_export(wrapper, inputs, path, task, input_names, output_names, dynamic_size) -> None:
    torch.onnx.export(
        wrapper, inputs, str(path), dynamo=False, opset_version=ONNX_OPSET,
        input_names=input_names, output_names=output_names,
        dynamic_axes=_dynamic_axes(task, input_names, output_names, dynamic_size),
    )


@contextlib.contextmanager
def warnings_quiet():
    """Tracing warns about every Python branch on a shape in Detectron2's code; they are
    expected here (the export check compares outputs instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_deployable(
    cfg: CfgNode,
    weights: str,
    output_dir: str,
    fmt: str,
    example: Sequence[torch.Tensor],
    *,
    dynamic_size: bool = True,
) -> Tuple[Path, ExportInfo]:
    """Export the student of ``cfg`` with the checkpoint ``weights`` (loaded strictly, the
    distillation-only parts dropped) through :func:`export_model`."""
    if fmt not in SUFFIX:
        raise ExportError(f"--format {fmt!r}: allowed {list(FORMATS)} (d2 is export_student)")
    out = output_folder(output_dir)
    model, scfg, _, dropped = load_student(cfg, weights)
    return export_model(model, scfg, out, fmt, example, dropped=dropped, dynamic_size=dynamic_size)


def export_model(
    model: nn.Module,
    scfg: CfgNode,
    output_dir: str | Path,
    fmt: str,
    example: Sequence[torch.Tensor],
    *,
    dropped: Sequence[str] = (),
    dynamic_size: bool = True,
) -> Tuple[Path, ExportInfo]:
    """Export a built student (config ``scfg``) as ``model_student.ts`` or
    ``model_student.onnx`` in ``output_dir``, with ``model_student.<fmt>.json`` (an
    :class:`ExportInfo`) and ``config_student.yaml``.

    Args:
        example: the images traced (3 x H x W raw pixels each, in ``INPUT.FORMAT`` order); for
            segmentation they form one batch and must share a size, for detection their number
            is the exported model's images per call.
        dropped: the checkpoint parts left out, recorded in the sidecar.
        dynamic_size: keep H and W dynamic in ONNX (TorchScript traces are size-generic).
    """
    if fmt not in SUFFIX:
        raise ExportError(f"--format {fmt!r}: allowed {list(FORMATS)} (d2 is export_student)")
    out = output_folder(str(output_dir))
    wrapper, inputs, task = deployable(model.eval(), example)
    path = out / f"model_student{SUFFIX[fmt]}"
    diff = export_module(wrapper, inputs, task, fmt, path, dynamic_size=dynamic_size)
    input_names, output_names = _names(task, len(inputs), wrapper)
    info = ExportInfo(
        format=fmt,
        task=task,
        input_format=scfg.INPUT.FORMAT,
        num_classes=int(_num_classes(scfg, task)),
        size_divisibility=int(model.backbone.size_divisibility),
        fixed_size=None if dynamic_size or fmt == "torchscript" else [int(s) for s in inputs[0].shape[-2:]],
        batch=len(inputs) if task == "detection" else None,
        input_names=input_names,
        output_names=output_names,
        config="config_student.yaml",
        pixel_mean=[float(v) for v in scfg.MODEL.PIXEL_MEAN],
        dropped=list(dropped),
        check_max_abs_diff=diff,
        opset=ONNX_OPSET if fmt == "onnx" else None,
    )
    atomic_write(out / "config_student.yaml", lambda p: p.write_text(scfg.dump()))
    info.save(path.with_name(path.name + ".json"))
    logger.info("Exported the student as %s to %s (max |diff| %.2g on the example; dropped %s)", fmt, path, diff, list(dropped))
    return path, info
