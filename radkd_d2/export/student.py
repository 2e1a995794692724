"""The student of a Distill* run as a plain Detectron2 model: its config, its weights (teacher,
distiller and other distillation-only keys dropped) and the ``d2`` export (``.pth`` + config)."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, List, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from torch import nn

from radkd_d2.config import add_radkd_config
from radkd_d2.errors import ExportError
from radkd_d2.modeling.pair import TeacherMixin
from radkd_d2.modeling.teacher import load_weights_strictly

logger = logging.getLogger(__name__)

__all__ = ["student_config", "student_state", "load_student", "export_student", "atomic_write", "output_folder"]


def student_config(cfg: CfgNode) -> CfgNode:
    """The distillation config turned into the stand-alone student's config: the student
    meta-architecture, and MODEL.DISTILL back to its defaults. A config that is not a
    distillation config (a teacher's, a plain student's) keeps its meta-architecture."""
    out = cfg.clone()
    out.defrost()
    if cfg.MODEL.META_ARCHITECTURE.startswith("Distill"):
        out.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    defaults = get_cfg()
    add_radkd_config(defaults)
    out.MODEL.DISTILL = defaults.MODEL.DISTILL.clone()
    out.MODEL.WEIGHTS = ""
    return out


def student_state(weights: str) -> Tuple[dict, List[str]]:
    """The student's tensors of a checkpoint and the sorted top-level names of what was dropped
    (``teacher``, ``distiller``, ...: every prefix of ``TeacherMixin.DISTILL_PREFIXES``)."""
    if not Path(weights).is_file():
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model_state = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model_state, dict):
        raise ValueError(f"checkpoint {weights!r} holds no model state dict")
    student = {k: v for k, v in model_state.items() if not k.startswith(TeacherMixin.DISTILL_PREFIXES)}
    dropped = sorted({k.split(".")[0] for k in model_state if k not in student})
    return student, dropped


def output_folder(path: str) -> Path:
    """``path`` as an export destination: created when its parent exists; a missing parent or a
    folder that cannot be written is an error before anything is computed."""
    out = Path(path)
    if not out.exists():
        if not out.parent.is_dir():
            raise ExportError(f"output folder {path!r}: its parent {str(out.parent)!r} does not exist")
        out.mkdir()
    if not out.is_dir():
        raise ExportError(f"output {path!r} is not a folder")
    if not os.access(out, os.W_OK | os.X_OK):
        raise ExportError(f"output folder {path!r} is not writable")
    return out


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it into place: a
    failure leaves no partial file behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_student(cfg: CfgNode, weights: str, device: str = "cpu") -> Tuple[nn.Module, CfgNode, dict, List[str]]:
    """Build the stand-alone student and load a run's checkpoint into it strictly (every missing
    or unexpected key is an error). Returns (model in eval mode, student config, student state,
    dropped top-level names)."""
    state, dropped = student_state(weights)
    scfg = student_config(cfg)
    scfg.MODEL.DEVICE = device
    model = build_model(scfg)
    with tempfile.TemporaryDirectory() as tmp:  # the reporting loader reads files
        path = Path(tmp) / "student.pth"
        torch.save({"model": state}, path)
        load_weights_strictly(
            model, str(path), strict=True, what="student", shown=str(weights),
            hint="check that --weights is a checkpoint of the model --config-file builds",
        )
    if dropped:
        logger.info("Dropped the distillation-only parts %s of %s", dropped, weights)
    return model.eval(), scfg, state, dropped


def export_student(cfg: CfgNode, weights: str, output_dir: str) -> tuple[Path, Path]:
    """Write ``model_student.pth`` (student weights only: no teacher, connectors or loss modules)
    and ``config_student.yaml`` to ``output_dir``, after checking that the weights load into
    the stand-alone student with no missing or unexpected key.

    Returns:
        (checkpoint path, config path)
    """
    _, scfg, state, dropped = load_student(cfg, weights)
    out = output_folder(output_dir)
    scfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    ckpt_path, cfg_path = out / "model_student.pth", out / "config_student.yaml"
    atomic_write(ckpt_path, lambda p: torch.save({"model": state}, p))
    atomic_write(cfg_path, lambda p: p.write_text(scfg.dump()))
    logger.info("Exported student (%d tensors; dropped %s) to %s", len(state), dropped, ckpt_path)
    return ckpt_path, cfg_path
