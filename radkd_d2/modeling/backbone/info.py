"""What the rest of the package needs to know about a backbone besides building it: its short
name in reports ("R18/4", "MV2", "SwinT") and the overrides that shrink it to CPU-test size.

Each backbone file registers its own :class:`BackboneInfo` next to its builder, so adding a
backbone is that one file plus its config keys (``radkd_d2/config.py``); the report
(:func:`radkd_d2.evaluation.naming.backbone_name`) and the config tests
(:func:`radkd_d2.configs_index.reduced_size_opts`) read it from :data:`BACKBONE_INFO`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from radkd_d2.config import cfg_get

__all__ = ["BACKBONE_INFO", "BackboneInfo", "cfg_get", "register_backbone_info", "width_suffix"]


def width_suffix(mult) -> str:
    """"/4" for a width multiplier of 0.25, "×0.35" for 0.35, "" for 1."""
    if mult is None or float(mult) == 1.0:
        return ""
    inv = 1.0 / float(mult)
    return f"/{inv:g}" if abs(inv - round(inv)) < 1e-6 else f"×{float(mult):g}"


@dataclass(frozen=True)
class BackboneInfo:
    """``label(cfg)``: the short name of the backbone a config (a dict) builds.
    ``reduced_opts(cfg)``: KEY VALUE overrides (strings) shrinking it for CPU tests, or None."""

    label: Callable[[Any], str]
    reduced_opts: Optional[Callable[[Any], List[str]]] = None


BACKBONE_INFO: Dict[str, BackboneInfo] = {}


def register_backbone_info(builder: str, info: BackboneInfo) -> BackboneInfo:
    """Register ``info`` for the backbone whose ``MODEL.BACKBONE.NAME`` is ``builder``."""
    if builder in BACKBONE_INFO:
        raise ValueError(f"backbone info for {builder!r} is registered twice")
    BACKBONE_INFO[builder] = info
    return info
