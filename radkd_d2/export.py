"""Export the student of a Distill* run as a plain Detectron2 checkpoint + config."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from radkd_d2.config import add_radkd_config
from radkd_d2.modeling.pair import TeacherMixin
from radkd_d2.modeling.teacher import load_weights_strictly

logger = logging.getLogger(__name__)


def student_config(cfg: CfgNode) -> CfgNode:
    """The distillation config turned into the stand-alone student's config: the student
    meta-architecture, and MODEL.DISTILL back to its defaults."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    defaults = get_cfg()
    add_radkd_config(defaults)
    out.MODEL.DISTILL = defaults.MODEL.DISTILL.clone()
    out.MODEL.WEIGHTS = ""
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def export_student(cfg: CfgNode, weights: str, output_dir: str) -> tuple[Path, Path]:
    """Write ``model_student.pth`` (student weights only: no teacher, connectors or loss modules)
    and ``config_student.yaml`` to ``output_dir``, after checking that the weights load into
    the stand-alone student with no missing or unexpected key.

    Returns:
        (checkpoint path, config path)
    """
    if not Path(weights).is_file():
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist")
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model_state = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model_state, dict):
        raise ValueError(f"checkpoint {weights!r} holds no model state dict")
    student = {k: v for k, v in model_state.items() if not k.startswith(TeacherMixin.DISTILL_PREFIXES)}
    dropped = sorted({k.split(".")[0] for k in model_state if k not in student})
    scfg = student_config(cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, cfg_path = out / "model_student.pth", out / "config_student.yaml"
    tmp_ckpt = out / ".model_student.check.pth"
    torch.save({"model": student}, tmp_ckpt)
    try:  # verify before publishing anything
        scfg_cpu = scfg.clone()
        scfg_cpu.MODEL.DEVICE = "cpu"
        load_weights_strictly(build_model(scfg_cpu), str(tmp_ckpt), strict=True, what="student")
        os.replace(tmp_ckpt, ckpt_path)
    finally:
        tmp_ckpt.unlink(missing_ok=True)
    _atomic_write(cfg_path, lambda p: p.write_text(scfg.dump()))
    logger.info("Exported student (%d tensors; dropped %s) to %s", len(student), dropped, ckpt_path)
    return ckpt_path, cfg_path
