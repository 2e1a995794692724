"""Weight import: convert checkpoints of other code bases into this project's models.

One converter per source, registered by name in :data:`CONVERTERS`::

    state_dict, report = CONVERTERS["mmseg_pspnet"](source_state_dict, model.state_dict())

Every converter renames keys by explicit rules (no suffix-matching heuristics), checks names and
shapes against the target model's state dict, and returns the converted state dict with a
:class:`~radkd_d2.checkpoint.report.ConversionReport`. It raises
:class:`~radkd_d2.checkpoint.report.WeightConversionError` (with every key listed) when a source key
is unused, a target key in scope is missing or a shape differs, unless ``allow_partial=True``: then
only the matching keys are returned and the report still lists the rest. Keys without counterpart
by design (ImageNet classifiers, recomputed buffers) are *ignored* and listed with a reason; target
parameters the source architecture lacks are filled only with a fixed, documented default
(LayerNorm weight 1 / bias 0, ``num_batches_tracked`` 0).

The *scope* of a conversion is the part of the target model the source must fill: the backbone
for ImageNet checkpoints (the rest keeps the model's initialisation, as with Detectron2's
``R-50.pkl``), the whole model for full segmentation / detection checkpoints. Prefixes in the
target (``backbone.``, ``backbone.bottom_up.``) are found from the target's keys.

Sources (see each ``convert_*`` docstring for its key mapping and what it leaves):

- ``torchvision_resnet``: ImageNet ResNet-18/34/50/101 -> Detectron2's stock ResNet (7x7 stem), or
  -> :class:`~radkd_d2.modeling.backbone.DilatedResNet` without its deep stem (allow_partial).
- ``torchvision_mobilenetv2`` / ``timm_mobilenetv2`` -> :class:`MobileNetV2` (timm under ``body.``).
- ``torchvision_swin`` / ``timm_swin`` -> :class:`SwinBackbone` (timm under ``body.``).
- ``cirkd_resnet``: CIRKD deep-stem ResNetV1b backbones and full PSPNet / DeepLabV3 checkpoints.
- ``mmseg_pspnet`` / ``mmseg_deeplabv3``: mmsegmentation ResNetV1c + PSPHead / ASPPHead + FCN aux.
- ``tf_deeplab_edgetpu``: the TensorFlow model zoo's mobile DeepLab on MobileNet-EdgeTPU
  (dequantised, timm names) -> :class:`MobileNetEdgeTPU` + the "lite" DeepLabV3 head, whole model.
- ``mmdet_retinanet``: mmdetection RetinaNet (ResNet/ResNeXt, FPN, RetinaHead) -> Detectron2
  RetinaNet, anchors reordered.
- ``d2_pkl``: Detectron2 / Caffe2 model-zoo files through Detectron2's own loader.

The rule engine is :mod:`radkd_d2.checkpoint.rules`; each source family's rules live in a module
of their own (:mod:`~radkd_d2.checkpoint.resnet`, :mod:`~radkd_d2.checkpoint.openmmlab`,
:mod:`~radkd_d2.checkpoint.mobilenetv2`, :mod:`~radkd_d2.checkpoint.swin`); this module holds the
registry, the Detectron2-file path and the file I/O.

:func:`to_source_naming` applies a converter's rules backwards (our model -> the source's names);
the tests use it to round-trip the sources whose libraries are not installed here.
"""

import logging
from pathlib import Path
from typing import Callable, Dict, Mapping, Tuple

import torch
from torch import nn

from .edgetpu import convert_tf_deeplab_edgetpu
from .mobilenetv2 import convert_timm_mobilenetv2, convert_torchvision_mobilenetv2
from .openmmlab import (
    convert_mmdet_retinanet,
    convert_mmseg_deeplabv3,
    convert_mmseg_pspnet,
    mmdet_anchor_permutation,
)
from .report import (
    ConversionReport,
    ReportingCheckpointer,
    WeightConversionError,
    format_incompatible_keys,
)
from .resnet import convert_cirkd_resnet, convert_torchvision_resnet
from .rules import _NBT, Rule, StateDict, Target, _unwrap, to_source_naming
from .swin import convert_timm_swin, convert_torchvision_swin

__all__ = [
    "CONVERTERS",
    "Rule",
    "convert_checkpoint",
    "convert_cirkd_resnet",
    "convert_d2_pkl",
    "convert_mmdet_retinanet",
    "convert_mmseg_deeplabv3",
    "convert_mmseg_pspnet",
    "convert_tf_deeplab_edgetpu",
    "convert_timm_mobilenetv2",
    "convert_timm_swin",
    "convert_torchvision_mobilenetv2",
    "convert_torchvision_resnet",
    "convert_torchvision_swin",
    "load_source_state_dict",
    "mmdet_anchor_permutation",
    "save_d2_checkpoint",
    "to_source_naming",
    "verify_loadable",
]

logger = logging.getLogger(__name__)


def convert_d2_pkl(path: str, target: nn.Module, *, prefix=None, allow_partial=False):
    """A Detectron2 checkpoint (model-zoo ``.pkl``, Caffe2 ``.pkl`` or ``.pth``) -> the same
    weights re-saved under the target model's exact names, after a strict check.

    Loading goes through :class:`detectron2.checkpoint.DetectionCheckpointer` (its ``.pkl``
    reader and, where the file asks for it, its name-matching heuristics) into ``target`` (a model
    built from the config); the report lists its missing / unexpected / shape-mismatched keys.
    ``prefix`` is not used. The returned state dict holds only the keys actually loaded.
    """
    if not isinstance(target, nn.Module):
        raise TypeError("d2_pkl needs the target model (nn.Module), built from --config-file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    checkpointer = ReportingCheckpointer(target)
    checkpointer.load(str(path), checkpointables=[])
    incompatible = checkpointer.incompatible
    missing = list(incompatible.missing_keys) if incompatible else []
    unexpected = list(incompatible.unexpected_keys) if incompatible else []
    shapes = list(incompatible.incorrect_shapes) if incompatible else []
    report = ConversionReport(source="d2_pkl", scope=("",))
    bad = set(missing) | {k for k, _, _ in shapes}
    out: StateDict = {}
    for key, value in target.state_dict().items():
        if key in bad:
            continue
        out[key] = value.detach().clone()
        report.mapped.append((key, key))
    for key in missing:
        if key.endswith("." + _NBT):
            out[key] = torch.zeros((), dtype=torch.long)
            report.defaulted[key] = "no BatchNorm step counter in the source: 0"
        else:
            report.missing.append(key)
    for key in unexpected:
        if key.endswith("." + _NBT):
            report.ignored[key] = f"the target's frozen norm keeps no {_NBT}"
        else:
            report.unused.append((key, None))
    report.mismatched = [(k, k, tuple(a), tuple(b)) for k, a, b in shapes]
    report.notes.append("names matched by Detectron2's DetectionCheckpointer (heuristics for .pkl)")
    if not report.ok and not allow_partial:
        raise WeightConversionError(
            f"Weight conversion 'd2_pkl' of {path!r} is incomplete; pass allow_partial=True "
            f"(--allow-partial) to keep only the matching keys.\n{report.format()}",
            report,
        )
    return out, report


CONVERTERS: Dict[str, Callable] = {
    "torchvision_resnet": convert_torchvision_resnet,
    "torchvision_mobilenetv2": convert_torchvision_mobilenetv2,
    "timm_mobilenetv2": convert_timm_mobilenetv2,
    "torchvision_swin": convert_torchvision_swin,
    "timm_swin": convert_timm_swin,
    "cirkd_resnet": convert_cirkd_resnet,
    "mmseg_pspnet": convert_mmseg_pspnet,
    "mmseg_deeplabv3": convert_mmseg_deeplabv3,
    "mmdet_retinanet": convert_mmdet_retinanet,
    "tf_deeplab_edgetpu": convert_tf_deeplab_edgetpu,
    "d2_pkl": convert_d2_pkl,
}
"""Converter functions by source name: ``fn(state_dict_or_path, target, *, prefix=None,
allow_partial=False, **options) -> (state_dict, ConversionReport)``. ``d2_pkl`` takes a file path
and the target model; the others a state dict and the target model or its state dict."""


def load_source_state_dict(path: str, *, trust_pickle: bool = False) -> StateDict:
    """Read a source checkpoint (``.pth``/``.pt``/``.bin`` via ``torch.load``, ``.safetensors``)
    and return its state dict (unwrapping ``state_dict``/``model`` entries and ``module.``).

    ``torch.load`` runs with ``weights_only=True``; checkpoints that pickle other objects (mmcv
    ``meta`` of old mmseg/mmdet files) need ``trust_pickle=True``, which unpickles arbitrary
    objects: only for files from a trusted source.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"))
    import zipfile

    with open(path, "rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":
        raise WeightConversionError(
            f"{path!r} is not a PyTorch checkpoint: neither torch.save's zip archive nor a pickle "
            "(truncated, or another kind of file); --trust-pickle would not help"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors differ by the object that cannot be loaded
        if isinstance(e, (EOFError, RuntimeError)) and "zip" in str(e).lower() or isinstance(e, EOFError):
            raise WeightConversionError(f"{path!r} cannot be read (truncated or damaged): {e}") from e
        if not trust_pickle:
            raise WeightConversionError(
                f"{path!r} holds objects beyond tensors ({type(e).__name__}: {e}); if the file "
                "comes from a trusted source, retry with trust_pickle=True (--trust-pickle)"
            ) from e
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise WeightConversionError(f"{path!r} cannot be unpickled: {type(e2).__name__}: {e2}") from e2
    return _unwrap(obj)


def convert_checkpoint(
    source: str,
    path: str,
    target: Target = None,
    *,
    prefix=None,
    allow_partial: bool = False,
    trust_pickle: bool = False,
    **options,
) -> Tuple[StateDict, ConversionReport]:
    """Read the file at ``path`` and convert it with ``CONVERTERS[source]``."""
    if source not in CONVERTERS:
        raise KeyError(f"unknown source {source!r}; known: {sorted(CONVERTERS)}")
    if source == "d2_pkl":
        return convert_d2_pkl(path, target, prefix=prefix, allow_partial=allow_partial)
    state_dict = load_source_state_dict(path, trust_pickle=trust_pickle)
    return CONVERTERS[source](
        state_dict, target, prefix=prefix, allow_partial=allow_partial, **options
    )


def save_d2_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str, *, author: str) -> None:
    """Write ``{"model": state_dict, "__author__": author, "matching_heuristics": False}``, the
    form ``MODEL.WEIGHTS`` / ``MODEL.DISTILL.TEACHER.WEIGHTS`` load by exact names."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save({"model": model, "__author__": author, "matching_heuristics": False}, str(path))


def verify_loadable(model: nn.Module, path: str, report: ConversionReport) -> None:
    """Load ``path`` into ``model`` through Detectron2's checkpointer (as ``MODEL.WEIGHTS`` does)
    and check that exactly the converted keys load: no unexpected or mis-shaped key, and the only
    missing keys are the report's missing / mismatched / out-of-scope ones."""
    saved = torch.load(str(path), map_location="cpu", weights_only=True)["model"]
    checkpointer = ReportingCheckpointer(model)
    checkpointer.load(str(path), checkpointables=[])
    inc = checkpointer.incompatible
    expected_missing = (
        set(report.missing) | {dst for _, dst, _, _ in report.mismatched} | set(report.out_of_scope)
    )
    missing = set(inc.missing_keys) if inc else set()
    problems = []
    if inc and (inc.unexpected_keys or inc.incorrect_shapes):
        problems.append(format_incompatible_keys([], inc.unexpected_keys, inc.incorrect_shapes))
    if missing - expected_missing:
        problems.append(format_incompatible_keys(sorted(missing - expected_missing), [], []))
    loaded = model.state_dict()
    differ = [k for k, v in saved.items() if k in loaded and not torch.equal(loaded[k].cpu(), v)]
    if differ:
        problems.append("values differ after loading: " + ", ".join(differ[:20]))
    if problems:
        raise WeightConversionError(
            f"{path} does not load as converted:\n" + "\n".join(problems), report
        )
