"""The names the report's tables show: paper names of the losses (from the loss registry) and methods, model names from a
run's config (``PSPNet-R18 x1/4``), data set names, and the teacher of a distilled run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from radkd_d2.losses import loss_label
from radkd_d2.modeling.backbone import BACKBONE_INFO

from .runs import cfg_get

# row order inside a student block: the paper's (prior methods first, ours last)
METHOD_ORDER = [
    "none",
    "KD",
    "Naive",
    "MD",
    "FitNet",
    "SKD",
    "IFVD",
    "CWD",
    "MGD",
    "CIRKD",
    "FKD",
    "FGD",
    "PKD",
    "PAD",
    "CAD",
    "LAD",
]
HEAD_NAMES = {"PSPHead": "PSPNet", "DeepLabV3Head": "DeepLabV3", "UPerNetHead": "UPerNet"}
META_NAMES = {"GeneralizedRCNN": "FasterRCNN"}
# data set name prefix -> display name (longest prefix wins)
DATASET_NAMES = {
    "cityscapes": "Cityscapes",
    "voc": "VOC",
    "pascal_voc": "VOC",
    "ade20k": "ADE20K",
    "ade": "ADE20K",
    "camvid": "CamVid",
    "coco": "COCO",
    "tiny_coco": "tiny-COCO",
    "synthetic_sem_seg": "Synthetic",
    "synthetic_det": "Synthetic-det",
}
# CSV columns: what identifies a setting, its metrics over seeds (and deltas), where it came
# from. A metric column is the mean over seeds, <metric>_std their sample std, seeds their count.


def backbone_name(cfg: dict) -> str:
    """Short backbone name: "R18/4" (dilated ResNet-18, 1/4 width), "X101", "MV2", "SwinT":
    the project's backbones name themselves (:data:`~radkd_d2.modeling.backbone.BACKBONE_INFO`),
    Detectron2's ResNets (``MODEL.RESNETS``) are named here."""
    name = str(cfg_get(cfg, "MODEL.BACKBONE.NAME", "") or "")
    if name in BACKBONE_INFO:
        return BACKBONE_INFO[name].label(cfg)
    if "resnet" in name.lower():
        prefix = "X" if (cfg_get(cfg, "MODEL.RESNETS.NUM_GROUPS", 1) or 1) > 1 else "R"
        return f"{prefix}{cfg_get(cfg, 'MODEL.RESNETS.DEPTH', '?')}"
    return name.removeprefix("build_").removesuffix("_backbone") or "?"


def model_name(cfg: dict) -> str:
    """Display name of the model a config trains (the student of a Distill* config):
    "PSPNet-R18/4", "DeepLabV3-R101", "RetinaNet-X101"."""
    meta = str(cfg_get(cfg, "MODEL.META_ARCHITECTURE", "") or "")
    if meta.startswith("Distill"):
        meta = cfg_get(cfg, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE") or meta[len("Distill") :]
    if not meta:
        return "?"
    if meta == "SemanticSegmentor":
        head = str(cfg_get(cfg, "MODEL.SEM_SEG_HEAD.NAME", "") or "")
        arch = HEAD_NAMES.get(head, head.removesuffix("Head") or "SemSeg")
    elif meta == "GeneralizedRCNN" and cfg_get(cfg, "MODEL.MASK_ON", False):
        arch = "MaskRCNN"
    else:
        arch = META_NAMES.get(meta, meta)
    return f"{arch}-{backbone_name(cfg)}"


def dataset_name(name: str) -> str:
    """Display name of a registered data set: "cityscapes_fine_sem_seg_val" -> "Cityscapes"."""
    low = (name or "?").lower()
    for prefix in sorted(DATASET_NAMES, key=len, reverse=True):
        if low.startswith(prefix):
            return DATASET_NAMES[prefix] + (" (test)" if "_test" in low else "")
    return name or "?"


def classify_method(meta_arch: str, taps: Sequence, kd_weight: float = 0.0):
    """``(method, tap, weight, kd_weight)`` of a run from its MODEL.DISTILL keys.

    ``taps`` are ``[student_pos, teacher_pos, loss, weight]`` entries; a ``kd`` entry on the
    logits counts as logit KD. A meta-architecture that is not ``Distill*`` gives "none".
    """
    if not str(meta_arch or "").startswith("Distill"):
        return "none", "", None, 0.0
    names, positions, weights = [], [], []
    kd = float(kd_weight or 0.0)
    for entry in taps or []:
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            continue
        s, t, loss, w = entry
        if str(loss).lower() == "kd":
            kd += float(w)
            continue
        label = loss_label(loss)
        if label not in names:
            names.append(label)
        pos = s if s == t else f"{s}_to_{t}"
        if pos not in positions:
            positions.append(pos)
        weights.append(float(w))
    if not names:
        return ("KD" if kd > 0 else "none"), "", None, kd
    weight = weights[0] if len(set(weights)) == 1 else None
    return "+".join(names), ",".join(positions), weight, kd


def distill_taps(cfg: dict) -> list:
    """A run's feature taps: ``MODEL.DISTILL.TAPS``, or with several teachers every
    ``MODEL.DISTILL.TEACHERS`` entry's ``TAPS`` (``MODEL.DISTILL.TAPS`` is then unused, left at
    its default)."""
    entries = cfg_get(cfg, "MODEL.DISTILL.TEACHERS", []) or []
    if entries:
        return [t for e in entries if isinstance(e, dict) for t in (e.get("TAPS") or [])]
    return cfg_get(cfg, "MODEL.DISTILL.TAPS", []) or []


def _find_file(name: str, run_dir: Path) -> Optional[Path]:
    p = Path(name)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, run_dir / p]):
        if cand.is_file():
            return cand
    return None


def _set_key(cfg: dict, key: str, value) -> None:
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def teacher_name(cfg: dict, run_dir: Path) -> str:
    """Model name of a Distill* run's teacher, from MODEL.DISTILL.TEACHER.CONFIG_FILE (+ OPTS);
    the file's stem when it cannot be read. Several teachers (MODEL.DISTILL.TEACHERS): their
    NAMEs and model names joined with " + "."""
    entries = cfg_get(cfg, "MODEL.DISTILL.TEACHERS", []) or []
    if entries:
        return " + ".join(
            f"{e.get('NAME', '?')}: " + _model_of(str(e.get("CONFIG_FILE", "")), list(e.get("OPTS", []) or []), run_dir)
            for e in entries
        )
    cfg_file = str(cfg_get(cfg, "MODEL.DISTILL.TEACHER.CONFIG_FILE", "") or "")
    if not cfg_file:
        return "?"
    return _model_of(cfg_file, list(cfg_get(cfg, "MODEL.DISTILL.TEACHER.OPTS", []) or []), run_dir)


def _model_of(cfg_file: str, opts: list, run_dir: Path) -> str:
    """Model name of a teacher config file with KEY VALUE ``opts``; its stem when unreadable."""
    found = _find_file(cfg_file, run_dir)
    if found is None:
        return Path(cfg_file).stem
    try:
        import yaml
        from fvcore.common.config import CfgNode

        tcfg = CfgNode.load_yaml_with_base(str(found), allow_unsafe=False)
        for key, value in zip(opts[0::2], opts[1::2]):
            _set_key(tcfg, str(key), yaml.safe_load(str(value)))
        return model_name(tcfg)
    except Exception:  # a broken teacher config must not break the report: name it by file
        return Path(cfg_file).stem
