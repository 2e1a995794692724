"""Run an exported student (TorchScript with ``torch.jit.load``, ONNX with onnxruntime) as a
Detectron2 model: :class:`ExportedModel` takes the list of dicts a test loader gives and returns
``{"sem_seg": K x H x W}`` or ``{"instances": Instances}`` per image, at each image's
``height`` x ``width``, so ``inference_on_dataset`` scores it with the evaluator
``train_net --eval-only`` uses."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from radkd_d2.errors import ExportError

from .student import atomic_write

__all__ = ["DET_MASK_OUTPUTS", "DET_OUTPUTS", "ExportInfo", "Backend", "ExportedModel", "predict_labels"]

DET_OUTPUTS = ("pred_boxes", "pred_classes", "scores", "image_size")  # per image, in this order
# a Mask R-CNN's per-image outputs: pred_masks are its N x 1 x M x M mask probabilities in the
# box frame, pasted into the image by detector_postprocess (as Detectron2's inference does)
DET_MASK_OUTPUTS = ("pred_boxes", "pred_classes", "pred_masks", "scores", "image_size")


@dataclass
class ExportInfo:
    """The sidecar ``<model>.json``: what the artefact is and how to feed it."""

    format: str  # "torchscript" or "onnx"
    task: str  # "sem_seg" or "detection"
    input_format: str  # channel order of the raw pixels (INPUT.FORMAT)
    num_classes: int
    size_divisibility: int
    fixed_size: Optional[List[int]]  # [H, W] the model only accepts, or None (dynamic)
    batch: Optional[int]  # images per call (detection), None: dynamic (segmentation)
    input_names: List[str]
    output_names: List[str]
    config: str  # the student's config, beside the model
    pixel_mean: List[float] = field(default_factory=list)  # raw value whose normalisation is 0
    dropped: List[str] = field(default_factory=list)  # checkpoint parts not exported
    check_max_abs_diff: float = 0.0  # exported vs PyTorch on the example, at export time
    opset: Optional[int] = None

    def save(self, path: Path) -> None:
        atomic_write(path, lambda p: p.write_text(json.dumps(asdict(self), indent=1) + "\n"))

    @classmethod
    def load(cls, path: Path) -> "ExportInfo":
        if not path.is_file():
            raise FileNotFoundError(
                f"exported model sidecar {str(path)!r} does not exist (the export writes it beside the model)"
            )
        return cls(**json.loads(path.read_text()))


class Backend:
    """One exported file, called with a list of tensors, returning a list of CPU tensors.

    ONNX Runtime runs on the CPU with as many threads as torch uses (``torch.get_num_threads``),
    so PyTorch and ONNX Runtime timings compare like with like."""

    def __init__(self, fmt: str, path: str, input_names: Sequence[str], device: str = "cpu"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"exported model {path!r} does not exist")
        self.fmt, self.input_names, self.device = fmt, list(input_names), device
        if fmt == "torchscript":
            self.module = torch.jit.load(path, map_location=device).eval()
        elif fmt == "onnx":
            import onnxruntime as ort  # optional at import time: only this backend needs it

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        else:
            raise ExportError(f"exported model format {fmt!r}: allowed ['torchscript', 'onnx']")

    def __call__(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise ExportError(f"exported model takes {len(self.input_names)} inputs, got {len(inputs)}")
        if self.fmt == "torchscript":
            with torch.no_grad():
                out = self.module(*[x.to(self.device) for x in inputs])
            return [o.cpu() for o in ([out] if isinstance(out, torch.Tensor) else out)]
        feeds = {n: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32) for n, x in zip(self.input_names, inputs)}
        return [torch.from_numpy(o) for o in self.session.run(None, feeds)]


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel labels from an exported segmentation model's B x K x H x W logits."""
    return logits.argmax(dim=1)


class ExportedModel(nn.Module):
    """An exported student behind Detectron2's model interface (inference only).

    Args:
        path: ``model_student.ts`` or ``model_student.onnx``; its ``.json`` sidecar lies beside it.
    """

    def __init__(self, path: str, device: str = "cpu"):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"exported model {self.path} does not exist")
        self.info = ExportInfo.load(self.path.with_name(self.path.name + ".json"))
        try:
            self.backend = Backend(self.info.format, str(self.path), self.info.input_names, device)
        except Exception as e:  # onnxruntime / torch.jit errors differ by the kind of damage
            raise ExportError(
                f"exported model {self.path} cannot be loaded as {self.info.format} (damaged, or "
                f"not the file its .json describes): {type(e).__name__}: {str(e)[:300]}"
            ) from e

    @property
    def config_path(self) -> Path:
        return self.path.with_name(self.info.config)

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        if self.training:
            raise ExportError("an exported model runs inference only (call .eval())")
        if self.info.task == "sem_seg":
            return self._segment(batched_inputs)
        return self._detect(batched_inputs)

    def _sizes(self, images: List[torch.Tensor]) -> List[tuple]:
        sizes = [tuple(im.shape[-2:]) for im in images]
        fixed = self.info.fixed_size
        if fixed and any(h > fixed[0] or w > fixed[1] for h, w in sizes):
            raise ExportError(
                f"{self.path.name} was exported at the fixed size {fixed[0]}x{fixed[1]}; an input "
                f"is {max(sizes)[0]}x{max(sizes)[1]} (export again at the test size with --size H W)"
            )
        return sizes

    def _segment(self, batched_inputs: List[dict]) -> List[dict]:
        images = [x["image"].float() for x in batched_inputs]
        sizes = self._sizes(images)
        th, tw = self.info.fixed_size or (max(s[0] for s in sizes), max(s[1] for s in sizes))
        # padded with the pixel mean, which is zero after normalisation, as Detectron2 pads
        batch = torch.tensor(self.info.pixel_mean).view(1, -1, 1, 1).repeat(len(images), 1, th, tw)
        for canvas, im in zip(batch, images):
            canvas[:, : im.shape[-2], : im.shape[-1]] = im
        logits = self.backend([batch])[0]
        return [
            {"sem_seg": sem_seg_postprocess(logits[i], size, x.get("height", size[0]), x.get("width", size[1]))}
            for i, (x, size) in enumerate(zip(batched_inputs, sizes))
        ]

    def _detect(self, batched_inputs: List[dict]) -> List[dict]:
        n = self.info.batch or 1
        images = [x["image"].float() for x in batched_inputs]
        sizes = self._sizes(images)
        if self.info.fixed_size and any(list(s) != self.info.fixed_size for s in sizes):
            raise ExportError(f"{self.path.name} takes only {self.info.fixed_size} images, got {sizes}")
        results = []
        for start in range(0, len(images), n):
            chunk = images[start : start + n]
            outs = self.backend(chunk + [chunk[-1]] * (n - len(chunk)))  # a short last call repeats an image
            k = len(outs) // n  # outputs per image: DET_OUTPUTS or DET_MASK_OUTPUTS
            fields = DET_MASK_OUTPUTS if k == len(DET_MASK_OUTPUTS) else DET_OUTPUTS
            for i, x in enumerate(batched_inputs[start : start + len(chunk)]):
                got = dict(zip(fields, outs[k * i : k * (i + 1)]))
                size = sizes[start + i]
                inst = Instances(
                    size, pred_boxes=Boxes(got["pred_boxes"]), scores=got["scores"], pred_classes=got["pred_classes"].long()
                )
                if "pred_masks" in got:
                    inst.pred_masks = got["pred_masks"]
                results.append({"instances": detector_postprocess(inst, x.get("height", size[0]), x.get("width", size[1]))})
        return results
