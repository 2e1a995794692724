"""Features at named module paths of any model, read during its own forward.

A *position* names where a feature is read:

* a module path, as in ``model.named_modules()``: ``backbone.bottom_up.res5``,
  ``sem_seg_head.predictor``; the feature is the module's output;
* ``path:key`` for a module that returns a dict, list or tuple: ``backbone:p3`` (an FPN level),
  ``backbone.bottom_up:res4``;
* ``path@k`` for a module called several times in one forward (a detection head's subnet runs
  once per FPN level): the output of its ``k``-th call, counted from 0;
* an alias (:func:`position_aliases`): the short names radkd-d2 configs use, ``res5``, ``p3``,
  ``decoder``, ``logits``, resolved from the model's structure.

:class:`FeatureCapture` registers forward hooks for a set of positions around one forward and
removes them when it exits, whatever happens: no hook outlives the forward. With
``stop_early`` it ends the forward as soon as every position has been read (the frozen
teacher's forward stops after its last tapped module, so its postprocessing never runs).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from radkd_d2.errors import ConfigError

__all__ = [
    "FeatureCapture",
    "Position",
    "alias_shapes",
    "parse_position",
    "position_aliases",
    "resolve_position",
]

_POSITION = re.compile(r"^(?P<path>[A-Za-z0-9_.]*)(?::(?P<key>[A-Za-z0-9_]+))?(?:@(?P<call>\d+))?$")


@dataclass(frozen=True)
class Position:
    """A resolved position: the module at ``path``, its output's ``key`` (None: the output
    itself) at its ``call``-th call (None: it must be called exactly once)."""

    path: str
    key: Optional[str] = None
    call: Optional[int] = None

    def __str__(self) -> str:
        return self.path + (f":{self.key}" if self.key else "") + (f"@{self.call}" if self.call is not None else "")

    def select(self, output):
        """The captured feature in a module's ``output``."""
        if self.key is None:
            return output
        if isinstance(output, Mapping):
            return output[self.key]
        if isinstance(output, (list, tuple)) and self.key.isdigit():
            return output[int(self.key)]
        raise KeyError(self.key)


def parse_position(text: str) -> Position:
    """``"backbone.bottom_up:res5@0"`` -> Position("backbone.bottom_up", "res5", 0)."""
    m = _POSITION.match(text)
    if not m:
        raise ConfigError(
            f"position {text!r} is not 'module.path', 'module.path:key' or 'module.path@call'"
        )
    call = m.group("call")
    return Position(m.group("path"), m.group("key"), int(call) if call is not None else None)


def _has_outputs(module) -> bool:
    return module is not None and callable(getattr(module, "output_shape", None))


def position_aliases(model: nn.Module) -> Dict[str, str]:
    """The short position names of ``model`` and the paths they stand for: every output of its
    ``backbone`` (``res5`` of a segmentation backbone, ``p3`` of an FPN), the bottom-up stages of
    an FPN (``res2``..``res5``), and, with a radkd-d2 segmentation head, ``decoder`` and
    ``logits``. Existing configs name positions this way; any module path works too."""
    aliases: Dict[str, str] = {}
    backbone = getattr(model, "backbone", None)
    if _has_outputs(backbone):
        for name in backbone.output_shape():
            aliases[name] = f"backbone:{name}"
        bottom_up = getattr(backbone, "bottom_up", None)
        if _has_outputs(bottom_up):
            for name in bottom_up.output_shape():
                aliases.setdefault(name, f"backbone.bottom_up:{name}")
    head = getattr(model, "sem_seg_head", None)
    if head is not None and callable(getattr(head, "layers", None)):
        aliases["decoder"] = "sem_seg_head.decoder"
        aliases["logits"] = "sem_seg_head.logits"
    return aliases


def alias_shapes(model: nn.Module) -> Dict[str, ShapeSpec]:
    """The ShapeSpec of every alias whose module declares it (backbone outputs, FPN bottom-up
    stages, a radkd-d2 head's ``decoder`` and ``logits``)."""
    shapes: Dict[str, ShapeSpec] = {}
    backbone = getattr(model, "backbone", None)
    if _has_outputs(backbone):
        shapes.update(backbone.output_shape())
        bottom_up = getattr(backbone, "bottom_up", None)
        if _has_outputs(bottom_up):
            for name, shape in bottom_up.output_shape().items():
                shapes.setdefault(name, shape)
    head = getattr(model, "sem_seg_head", None)
    if head is not None and callable(getattr(head, "layers", None)) and _has_outputs(head):
        shapes.update(head.output_shape())
    return shapes


def resolve_position(model: nn.Module, text: str, *, what: str = "model", key: str = "MODEL.DISTILL.TAPS",
                     exclude: Iterable[str] = ()) -> Position:
    """The :class:`Position` ``text`` names in ``model``: an alias or a module path. A name that
    is neither gets one error listing the nearest module names and aliases.

    Args:
        what: "student", "teacher 'a'", ... for the message; ``key`` the config key.
        exclude: path prefixes that are not part of the model (a wrapper's teachers).
    """
    aliases = position_aliases(model)
    pos = parse_position(aliases.get(text, text))
    modules = {n for n, _ in model.named_modules() if not any(n == e or n.startswith(e + ".") for e in exclude)}
    if pos.path not in modules:
        names = sorted(modules - {""}) + sorted(aliases)
        near = difflib.get_close_matches(pos.path if pos.path else text, names, n=6, cutoff=0.5)
        if not near:  # the children of the deepest existing parent
            parent = pos.path.rsplit(".", 1)[0] if "." in pos.path else ""
            near = sorted(n for n in modules if n.startswith(parent) and n.count(".") == (parent.count(".") + 1 if parent else 0))[:12]
        raise ConfigError(
            f"{key}: {what} position {text!r} names no module of the {what} "
            f"({type(model).__name__}); nearest: {near}. A position is a module path as in "
            f"named_modules() (optionally ':key' of a dict output, '@k' for the k-th call) or "
            f"one of the aliases {sorted(aliases)}"
        )
    return pos


class _Complete(Exception):
    """Raised by a hook to end a forward once every position has been read."""


class FeatureCapture:
    """Forward hooks on ``model`` for ``positions`` (name -> :class:`Position`), for the span of
    a ``with`` block; ``features`` then maps each name to its tensor.

    Args:
        stop_early: end the forward once every position has been read; the ``with`` block
            swallows that stop (the forward's result is then not available).
        pre_hooks: module paths whose first positional input is also kept, under
            ``"<path>:input"`` (a backbone's input: the normalised, padded batch).
    """

    def __init__(self, model: nn.Module, positions: Mapping[str, Position], *, stop_early: bool = False,
                 pre_hooks: Iterable[str] = ()):
        self.model = model
        self.positions = dict(positions)
        self.stop_early = stop_early
        self.pre_hooks = list(pre_hooks)
        self.features: Dict[str, torch.Tensor] = {}
        self.calls: Dict[str, int] = {}
        self._handles: List = []

    @property
    def complete(self) -> bool:
        return all(name in self.features for name in self.positions)

    def __enter__(self) -> "FeatureCapture":
        modules = dict(self.model.named_modules())
        by_path: Dict[str, List[str]] = {}
        for name, pos in self.positions.items():
            by_path.setdefault(pos.path, []).append(name)
        try:
            for path, names in by_path.items():
                self._handles.append(modules[path].register_forward_hook(self._hook(path, names)))
            for path in self.pre_hooks:
                self._handles.append(modules[path].register_forward_pre_hook(self._pre_hook(path)))
        except BaseException:
            self._remove()
            raise
        return self

    def _hook(self, path: str, names: List[str]):
        def hook(_module, _inputs, output):
            call = self.calls.get(path, 0)
            self.calls[path] = call + 1
            for name in names:
                pos = self.positions[name]
                if pos.call is None and call > 0:
                    raise ConfigError(
                        f"position {name!r}: module {path!r} is called more than once in one forward; "
                        f"name the call, e.g. '{pos}@0' for its first"
                    )
                if pos.call is None or pos.call == call:
                    try:
                        self.features[name] = pos.select(output)
                    except (KeyError, IndexError, TypeError):
                        keys = list(output) if isinstance(output, Mapping) else type(output).__name__
                        raise ConfigError(f"position {name!r}: the output of {path!r} has no {pos.key!r} (it has {keys})") from None
            if self.stop_early and self.complete:
                raise _Complete()

        return hook

    def _pre_hook(self, path: str):
        def hook(_module, inputs):
            if inputs:
                self.features.setdefault(f"{path}:input", inputs[0])

        return hook

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        return exc_type is _Complete

    def missing(self) -> List[str]:
        """The positions not read (their module never ran, or not that many times)."""
        return [name for name in self.positions if name not in self.features]
