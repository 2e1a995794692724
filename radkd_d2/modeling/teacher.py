"""The frozen teacher: built from its own config file, loaded strictly, never trained.

Shared by every Distill* meta-architecture (segmentation and detection).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence
from urllib.parse import urlparse

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import Detectron2Handler, PathManager
from iopath.common.file_io import get_cache_dir
from torch import nn

from radkd_d2.checkpoint.report import ReportingCheckpointer, format_incompatible_keys
from radkd_d2.config import add_radkd_config
from radkd_d2.errors import ConfigError, TeacherLoadError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


def load_teacher_cfg(config_file: str, device: str, opts=()):
    """The teacher's own config (model, pixel mean/std, input format) with radkd-d2 keys."""
    if not config_file:
        raise FileNotFoundError(
            "MODEL.DISTILL.TEACHER.CONFIG_FILE is empty: set it to the teacher's config file"
        )
    if not Path(config_file).is_file():
        raise FileNotFoundError(
            f"MODEL.DISTILL.TEACHER.CONFIG_FILE: teacher config {config_file!r} does not exist"
        )
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([str(x) for x in opts])
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def url_cache_path(url: str) -> Path:
    """Where Detectron2's PathManager keeps the download of ``url`` (iopath's HTTP cache:
    ``$FVCORE_CACHE`` or ``~/.torch/iopath_cache``, then the URL's path; ``detectron2://`` is
    its model zoo's https prefix). A file placed there by hand is used without the network."""
    if url.startswith(Detectron2Handler.PREFIX):
        url = Detectron2Handler.S3_DETECTRON2_PREFIX + url[len(Detectron2Handler.PREFIX):]
    parsed = urlparse(url)
    return Path(get_cache_dir()) / os.path.dirname(parsed.path.lstrip("/")) / url.split("/")[-1]


def local_weights(
    weights: str, what: str = "teacher", key: str = "MODEL.DISTILL.TEACHER.WEIGHTS", error=TeacherLoadError
) -> Path:
    """The local file of ``weights``: a path, or a URL that Detectron2 resolves as it does for
    MODEL.WEIGHTS (``detectron2://`` for its model zoo's releases, ``https://``), downloaded once
    into its cache. One clear ``error`` when the file is missing or cannot be fetched, naming
    the URL and where to put the file by hand."""
    if "://" in weights:
        try:
            return Path(PathManager.get_local_path(weights))
        except Exception as e:  # network, HTTP and handler errors differ by cause
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise error(
                f"could not fetch {what} weights {key} = {weights!r} ({reason}): with no network, "
                f"download it elsewhere and put it at {url_cache_path(weights)} (Detectron2's "
                f"download cache, used as it is), or set {key} to a local path"
            ) from e
    path = Path(weights)
    if path.is_dir():
        raise error(f"{what} weights {key} = {weights!r} is a folder: name the .pth file in it (model_final.pth)")
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights {weights!r} do not exist")
    return path


def load_weights_strictly(
    model: nn.Module, weights: str, *, strict: bool = True, what="teacher", shown: str = "", hint: str = ""
):
    """Load ``weights`` (.pth or Detectron2/Caffe2 .pkl; a path or a URL as
    :func:`local_weights` takes) into ``model`` through Detectron2's checkpointer. Every missing,
    unexpected or shape-mismatched key is listed: as an error when ``strict``, as a warning
    otherwise; nothing is loaded silently in part. ``shown``: the name of the file in messages
    (the user's, when ``weights`` is a temporary copy); ``hint``: what to do on a mismatch
    (default: the teacher config and MODEL.DISTILL.TEACHER.STRICT)."""
    shown = shown or weights
    path = local_weights(weights, what)
    if path.stat().st_size == 0:
        raise TeacherLoadError(f"could not read {what} checkpoint {weights!r}: the file is empty (0 bytes)")
    ckpt = ReportingCheckpointer(model)
    try:
        ckpt.load(str(path), checkpointables=[])
    except Exception as e:  # torch.load / pickle errors differ by the kind of corruption
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise TeacherLoadError(f"could not read {what} checkpoint {weights!r}: {reason} (truncated, damaged or not a checkpoint)") from e
    # Detectron2's loader (name heuristics for .pkl, "module." prefixes) skips mismatched shapes
    # and reports every incompatible key; on error the caller discards the model.
    incompatible = ckpt.incompatible
    report = incompatible and format_incompatible_keys(
        incompatible.missing_keys, incompatible.unexpected_keys, incompatible.incorrect_shapes
    )
    if report and strict:
        raise TeacherLoadError(
            f"{what} checkpoint {shown!r} does not match the {what} model:\n{report}\n("
            + (hint or f"check the {what} config, or set MODEL.DISTILL.TEACHER.STRICT False to load "
               "the matching part anyway")
            + ")"
        )
    if report:
        logger.warning("Loaded %s checkpoint %s non-strictly:\n%s", what, weights, report)
    logger.info("Loaded %s weights from %s", what, weights)


def check_finite(model: nn.Module, weights: str, what: str = "teacher") -> None:
    """Fail when a floating-point parameter or buffer of ``model`` holds NaN or Inf, naming
    each such tensor and the checkpoint (otherwise the first sign would be a NaN loss)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    flags = {k: torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point()}
    if not flags:
        return
    ok = torch.stack(list(flags.values())).tolist()  # one host read for all tensors
    bad = [k for k, good in zip(flags, ok) if not good]
    if bad:
        counts = [int((~torch.isfinite(tensors[k])).sum()) for k in bad]
        raise TeacherLoadError(
            f"{what} checkpoint {weights!r} holds NaN or Inf values in {len(bad)} tensor(s):\n"
            + "\n".join(f"  {k}: {n} of {tensors[k].numel()} values" for k, n in zip(bad, counts))
            + f"\nthe {what} would make every distillation loss NaN; re-export or retrain it"
        )


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (BatchNorm statistics and dropout fixed)."""
    model.requires_grad_(False)
    model.eval()
    return model


def build_teacher(config_file: str, weights: str, *, device: str, strict: bool = True, opts=()):
    """Build the frozen teacher from its own config and weights.

    ``weights=""`` gives a randomly initialised teacher (logged as a warning; useful only for
    tests and benchmarks).

    Returns:
        (teacher model in eval mode with requires_grad False, its frozen config)
    """
    cfg = load_teacher_cfg(config_file, device, opts)
    model = build_model(cfg)
    if weights:
        load_weights_strictly(model, weights, strict=strict)
        check_finite(model, weights)
    else:
        logger.warning("MODEL.DISTILL.TEACHER.WEIGHTS is empty: the teacher is randomly initialised")
    return freeze(model), cfg


def teacher_input_tensors(batched_inputs, student_format: str, teacher_format: str, device):
    """The raw images of a batch as the teacher expects them (channel order of its format)."""
    images = [x["image"].to(device, non_blocking=True) for x in batched_inputs]
    if {student_format, teacher_format} == {"RGB", "BGR"}:
        images = [x.flip(0) for x in images]
    return images


__all__ = [
    "TeacherLoadError",
    "TeacherSpec",
    "teacher_specs",
    "build_teacher",
    "check_finite",
    "freeze",
    "format_incompatible_keys",
    "load_teacher_cfg",
    "load_weights_strictly",
    "local_weights",
    "teacher_input_tensors",
]


# the keys of one MODEL.DISTILL.TEACHERS entry, and what each holds
TEACHER_ENTRY_KEYS = {
    "NAME": "short name in loss and diagnostic keys ([A-Za-z0-9_]+, unique)",
    "CONFIG_FILE": "the teacher's own config file",
    "WEIGHTS": "its checkpoint (path or URL); loaded strictly",
    "OPTS": "KEY VALUE overrides of its config",
    "STRICT": "False loads partially, every key still listed",
    "DTYPE": "compute dtype on GPU: float32, float16 or bfloat16",
    "INPUT_SCALE": "resize factor of the batch the teacher sees (1.0: the student's)",
    "TAPS": "[student position, teacher position, loss, weight] entries",
    "KD_MIX": "its weight in the mean of the teachers' probabilities (the KD target)",
}
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class TeacherSpec:
    """One frozen teacher of a distillation model and what is distilled from it."""

    name: str  # "" for MODEL.DISTILL.TEACHER (the single-teacher case: loss names unchanged)
    config_file: str
    weights: str = ""
    opts: Sequence = ()
    strict: bool = True
    dtype: str = "float32"
    input_scale: float = 1.0
    taps: Sequence = ()
    kd_mix: float = 1.0
    key: str = "MODEL.DISTILL.TEACHER"  # config key of this teacher, for messages
    taps_key: str = "MODEL.DISTILL.TAPS"  # config key of its taps


def teacher_specs(cfg) -> List[TeacherSpec]:
    """The teachers of a distillation config: the entries of ``MODEL.DISTILL.TEACHERS``, or, when
    that list is empty, the one ``MODEL.DISTILL.TEACHER`` with ``MODEL.DISTILL.TAPS``. Every entry
    is checked here (unknown keys, names, scales, weights), before anything is built."""
    d = cfg.MODEL.DISTILL
    entries = list(d.TEACHERS)
    if not entries:
        t = d.TEACHER
        spec = TeacherSpec("", t.CONFIG_FILE, t.WEIGHTS, tuple(t.OPTS), t.STRICT, t.DTYPE,
                           float(t.INPUT_SCALE), tuple(map(tuple, d.TAPS)), 1.0)
        _check_scale(spec.input_scale, "MODEL.DISTILL.TEACHER.INPUT_SCALE")
        return [spec]
    if d.TEACHER.CONFIG_FILE:
        raise ConfigError(
            "MODEL.DISTILL.TEACHERS and MODEL.DISTILL.TEACHER.CONFIG_FILE are both set: give one "
            "teacher in MODEL.DISTILL.TEACHER, or every teacher as an entry of MODEL.DISTILL.TEACHERS"
        )
    default_taps = [["res5", "res5", "lad", 10.0]]
    if [list(t) for t in d.TAPS] != default_taps:
        raise ConfigError(
            f"MODEL.DISTILL.TAPS = {[list(t) for t in d.TAPS]} is set with MODEL.DISTILL.TEACHERS: "
            "with several teachers each entry carries its own TAPS; move these taps there"
        )
    specs, names = [], set()
    for i, entry in enumerate(entries):
        key = f"MODEL.DISTILL.TEACHERS[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key} = {entry!r} must be a mapping with keys {sorted(TEACHER_ENTRY_KEYS)}")
        unknown = sorted(set(entry) - set(TEACHER_ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(TEACHER_ENTRY_KEYS)}")
        for required in ("NAME", "CONFIG_FILE"):
            if not entry.get(required):
                raise ConfigError(f"{key}.{required} is missing: every teacher needs a NAME and a CONFIG_FILE")
        name = str(entry["NAME"])
        if not _NAME.match(name) or name in names:
            raise ConfigError(f"{key}.NAME = {name!r} must be unique and made of letters, digits and '_'")
        names.add(name)
        dtype = entry.get("DTYPE", "float32")
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"{key}.DTYPE = {dtype!r}; allowed: ['float32', 'float16', 'bfloat16']")
        scale = float(entry.get("INPUT_SCALE", 1.0))
        _check_scale(scale, f"{key}.INPUT_SCALE")
        mix = float(entry.get("KD_MIX", 1.0))
        if mix < 0:
            raise ConfigError(f"{key}.KD_MIX = {mix} must be >= 0")
        specs.append(TeacherSpec(
            name, str(entry["CONFIG_FILE"]), str(entry.get("WEIGHTS", "")), tuple(entry.get("OPTS", ())),
            bool(entry.get("STRICT", True)), dtype, scale, tuple(map(tuple, entry.get("TAPS", ()))), mix,
            key=key, taps_key=f"{key}.TAPS",
        ))
    if d.KD_WEIGHT > 0 and sum(s.kd_mix for s in specs) <= 0:
        raise ConfigError("MODEL.DISTILL.KD_WEIGHT > 0 but every MODEL.DISTILL.TEACHERS[*].KD_MIX is 0")
    return specs


def _check_scale(scale: float, key: str) -> None:
    if not 0 < scale <= 8:
        raise ConfigError(f"{key} = {scale} must be in (0, 8]")
