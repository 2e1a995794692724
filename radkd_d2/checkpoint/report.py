"""What a weight conversion did: :class:`ConversionReport` and :class:`WeightConversionError`."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer

from radkd_d2.errors import WeightConversionError  # noqa: F401  (re-exported)

__all__ = ["ConversionReport", "WeightConversionError"]


@dataclass
class ConversionReport:
    """Key-level account of one conversion from a source checkpoint to a target model.

    A conversion is complete (:attr:`ok`) when every source key is used or ignored by design,
    every target key in scope is filled (from the source or with a documented default) and no
    shape differs.

    Attributes:
        source: converter name (e.g. "mmseg_pspnet").
        mapped: (source key, target key) pairs that were converted.
        unused: (source key, target key or None) for source keys that were not converted: no rule
            knows them (None), or the key they map to is absent from the target model.
        missing: target keys in scope that nothing in the source fills.
        mismatched: (source key, target key, source shape, target shape) of keys whose shapes
            differ; they are not written.
        ignored: source key -> reason, for keys without counterpart by design (an ImageNet
            classifier, buffers the target recomputes, ``num_batches_tracked`` of a frozen norm).
        defaulted: target key -> reason, for keys filled with a fixed default (LayerNorm 1/0,
            ``num_batches_tracked`` 0) because the source architecture has no such parameter.
        out_of_scope: target keys the source is not meant to fill (e.g. the head of a model that
            receives an ImageNet backbone); they keep the model's initialisation.
        scope: target key prefixes the source must fill ("" means the whole model).
        target_checked: False when no target model was given (names only; no missing or shape
            check possible).
        notes: remarks on what the conversion cannot preserve (architecture differences).
    """

    source: str
    mapped: List[Tuple[str, str]] = field(default_factory=list)
    unused: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, str, tuple, tuple]] = field(default_factory=list)
    ignored: Dict[str, str] = field(default_factory=dict)
    defaulted: Dict[str, str] = field(default_factory=dict)
    out_of_scope: List[str] = field(default_factory=list)
    scope: Tuple[str, ...] = ("",)
    target_checked: bool = True
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is unused, missing or shape-mismatched."""
        return not (self.unused or self.missing or self.mismatched)

    def summary(self) -> str:
        """One line of counts."""
        scope = ", ".join(repr(p) for p in self.scope)
        return (
            f"{self.source}: {len(self.mapped)} mapped, {len(self.unused)} unused source keys, "
            f"{len(self.missing)} missing target keys, {len(self.mismatched)} shape mismatches, "
            f"{len(self.ignored)} ignored by design, {len(self.defaulted)} defaulted, "
            f"{len(self.out_of_scope)} target keys out of scope (scope {scope})"
        )

    def format(self, *, show_mapped: bool = False, show_out_of_scope: bool = False) -> str:
        """Multi-line report: the summary, then every key of each non-empty list."""
        lines = [self.summary()]
        if not self.target_checked:
            lines.append(
                "no target model given: names converted, completeness and shapes NOT checked"
            )
        if self.unused:
            lines.append(f"{len(self.unused)} unused source keys:")
            for src, dst in self.unused:
                lines.append(f"  {src}" if dst is None else f"  {src} -> {dst} (not in the target)")
        if self.missing:
            lines.append(
                f"{len(self.missing)} missing target keys (nothing in the source fills them):"
            )
            lines += [f"  {k}" for k in self.missing]
        if self.mismatched:
            lines.append(
                f"{len(self.mismatched)} shape mismatches (source -> target: source vs target):"
            )
            lines += [
                f"  {src} -> {dst}: {tuple(a)} vs {tuple(b)}" for src, dst, a, b in self.mismatched
            ]
        for title, keys in (
            ("source keys ignored by design", self.ignored),
            ("target keys set to a fixed default", self.defaulted),
        ):
            if keys:
                lines.append(f"{len(keys)} {title}:")
                for why, group in _group_by_reason(keys).items():
                    lines.append(f"  {why} ({len(group)}):")
                    lines += [f"    {k}" for k in group]
        if show_out_of_scope and self.out_of_scope:
            lines.append(f"{len(self.out_of_scope)} target keys out of scope (model init):")
            lines += [f"  {k}" for k in self.out_of_scope]
        if show_mapped and self.mapped:
            lines.append(f"{len(self.mapped)} mapped keys:")
            lines += [f"  {src} -> {dst}" for src, dst in self.mapped]
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _group_by_reason(keys: Dict[str, str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for key, why in keys.items():
        groups.setdefault(why, []).append(key)
    return groups


def format_incompatible_keys(missing, unexpected, shapes) -> str:
    """Every missing / unexpected / shape-mismatched key, one per line."""
    lines = []
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            lines.append(f"{len(keys)} {title} keys:")
            lines += [f"  {k}" for k in sorted(keys)]
    if shapes:
        lines.append(f"{len(shapes)} keys with a different shape (checkpoint vs model):")
        lines += [f"  {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in shapes]
    return "\n".join(lines)


class ReportingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the incompatible keys (``.incompatible``) instead of only
    logging them, so the caller can list every one of them (teacher loading, the converters)."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible) -> None:
        self.incompatible = incompatible
