"""Exporting a distilled student: the plain Detectron2 checkpoint + config (``d2``), and the
deployable TorchScript / ONNX artefacts with the runtime that evaluates them."""
from .deploy import FORMATS, ONNX_OPSET, DetectionExport, SegmentationExport, deployable, export_deployable, export_model, export_module
from .runtime import Backend, ExportedModel, ExportInfo, predict_labels
from .student import export_student, load_student, student_config, student_state

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "Backend",
    "DetectionExport",
    "ExportInfo",
    "ExportedModel",
    "SegmentationExport",
    "deployable",
    "export_deployable",
    "export_model",
    "export_module",
    "export_student",
    "load_student",
    "predict_labels",
    "student_config",
    "student_state",
]
