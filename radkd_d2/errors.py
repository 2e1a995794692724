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
