"""The project's error types, in one module every layer may import (it imports nothing of the
project). Each message names what is wrong and how to fix it."""
from __future__ import annotations

from typing import Any, Optional


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


class UnknownDistillLossError(KeyError, ValueError):
    """Raised for a loss name that is not registered (both a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class TeacherLoadError(RuntimeError):
    """The teacher checkpoint is missing, unreadable or does not match the teacher model."""


class WeightConversionError(RuntimeError):
    """A conversion left keys unused, missing or shape-mismatched (``report``, a
    :class:`radkd_d2.checkpoint.report.ConversionReport`, lists them all)."""

    def __init__(self, message: str, report: Optional[Any] = None):
        super().__init__(message)
        self.report = report


class CorruptCheckpointError(RuntimeError):
    """No checkpoint of a run folder can be read back (every one is truncated or damaged), so
    ``--resume`` has nothing to continue from."""


class ExportError(RuntimeError):
    """A student could not be exported (TorchScript/ONNX) or an exported model does not match
    its PyTorch original; the message names the module and operator where it is known."""


class WeightsLoadError(RuntimeError):
    """MODEL.WEIGHTS (or a checkpoint to resume from) is missing, unreadable, or does not fill
    the model; the message lists every missing, unexpected and shape-mismatched key."""


class RunFolderError(RuntimeError):
    """OUTPUT_DIR belongs to another run: held by a running process, or holding a run whose
    config differs from this one."""


class DiskFullError(OSError):
    """A file of the run (a checkpoint) could not be written: no space left on the device, a
    quota, or a read-only file system. The message names the folder, the space free and the
    space needed, and says that the last checkpoint is intact for ``--resume``."""


class DataError(ValueError):
    """A training or test file cannot be used (it cannot be decoded, or its labels are out of
    range); the message names the file."""


class TeacherFault(RuntimeError):
    """The frozen teacher misbehaved during training (its weights changed)."""


class LabelRangeError(DataError):
    """A semantic-segmentation label map holds values that are neither a class index
    (0..num_classes-1) nor the data set's ignore label. The message names the file, the values,
    how many pixels hold them and the allowed range; ``file_name``, ``values``, ``pixels``,
    ``num_classes`` and ``ignore_label`` hold the same (``file_name`` is None while the label map's
    file is not known yet: :meth:`naming` adds it). A ValueError, like the other bad-data errors
    of the data layer."""

    def __init__(self, message: str, *, file_name: Optional[str] = None, values=(), pixels: int = 0,
                 num_classes: Optional[int] = None, ignore_label: Optional[int] = None):  # fmt: skip
        # one positional argument: the error survives a DataLoader worker's re-raise
        super().__init__(message)
        self.file_name, self.values, self.pixels = file_name, list(values), pixels
        self.num_classes, self.ignore_label = num_classes, ignore_label

    @classmethod
    def of(cls, file_name: Optional[str], values, pixels: int, num_classes: int,
           ignore_label: int) -> "LabelRangeError":  # fmt: skip
        values = [int(v) for v in values]
        shown = str(values) if len(values) <= 10 else f"[{', '.join(map(str, values[:10]))}, ...]"
        what = f"label file {file_name}" if file_name is not None else "a label map"
        return cls(
            f"{what} has values {shown} ({pixels} pixel{'s' if pixels != 1 else ''}) outside the "
            f"allowed range: class indices 0..{num_classes - 1} ({num_classes} classes) or the "
            f"ignore label {ignore_label}. Fix the file (or the data set's stuff_classes / "
            f"ignore_label if those are wrong)",
            file_name=file_name, values=values, pixels=pixels, num_classes=num_classes,
            ignore_label=ignore_label,
        )  # fmt: skip

    def naming(self, file_name: str) -> "LabelRangeError":
        """The same error, naming ``file_name``."""
        return self.of(file_name, self.values, self.pixels, self.num_classes, self.ignore_label)
