"""The key-rename engine of the converters: patterns, rules, plans and the strict run.

A converter is a *plan* per source (registered in :data:`PLANS` by its module): rules that rename
source keys into the target model's keys, the target's scope, keys ignored by design (with a
reason) and target keys filled with a documented default. :func:`convert` runs a plan against a
source state dict and the target's, checking names and shapes; :func:`to_source_naming` runs it
backwards.

Patterns: ``{name}``, ``{name+1}``, ``{name*2+1}`` stand for an integer, ``{*}`` for any dotted
sub-path carried verbatim.
"""

import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .report import ConversionReport, WeightConversionError

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
Target = Union[nn.Module, Mapping[str, torch.Tensor], None]

# ---------------------------------------------------------------------------------------------
# Key patterns and rules
# ---------------------------------------------------------------------------------------------

# "{name}", "{name+1}", "{name*2+1}": an integer; "{*}": any dotted sub-path, carried verbatim.
_PLACEHOLDER = re.compile(r"\{(\*|[A-Za-z_]\w*)(?:\*(\d+))?([+-]\d+)?\}")


class _Pattern:
    """A module path with integer placeholders that can be matched and formatted.

    ``"layer{i}.{j}.bn{k}"`` matches ``layer1.0.bn2`` giving ``{i: 1, j: 0, k: 2}``; the same
    variable written ``{i+1}`` or ``{i*3+1}`` on the other side of a :class:`Rule` is an affine
    function of it, so one pattern pair converts in both directions.
    """

    def __init__(self, text: str):
        self.text = text
        self.terms: List[Tuple[str, int, int]] = []
        regex, pos = "", 0
        for m in _PLACEHOLDER.finditer(text):
            regex += re.escape(text[pos : m.start()])
            name = m.group(1)
            regex += "(.+)" if name == "*" else r"(\d+)"
            self.terms.append((name, int(m.group(2) or 1), int(m.group(3) or 0)))
            pos = m.end()
        self.regex = re.compile(regex + re.escape(text[pos:]))

    def match(self, path: str) -> Optional[Dict[str, Union[int, str]]]:
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        values: Dict[str, Union[int, str]] = {}
        for (name, mul, add), text in zip(self.terms, m.groups()):
            if name == "*":
                value: Union[int, str] = text
            else:
                if len(text) > 1 and text[0] == "0":
                    return None
                value, rest = divmod(int(text) - add, mul)
                if rest or value < 0:
                    return None
            if values.setdefault(name, value) != value:
                return None
        return values

    def format(self, values: Mapping[str, Union[int, str]]) -> str:
        def term(m: "re.Match") -> str:
            name = m.group(1)
            if name == "*":
                return str(values["*"])
            return str(int(values[name]) * int(m.group(2) or 1) + int(m.group(3) or 0))

        return _PLACEHOLDER.sub(term, self.text)


Transform = Callable[[torch.Tensor], torch.Tensor]


class Rule:
    """Rename the module path ``src`` to ``dst`` (the parameter name after the last dot is kept).

    Args:
        src, dst: module-path patterns (see :class:`_Pattern`), e.g. ``"layer{i}.{j}.bn{k}"`` and
            ``"res{i+1}.{j}.conv{k}.norm"``.
        fn, inv: optional tensor transform applied when converting src -> dst, and its inverse.
    """

    def __init__(
        self, src: str, dst: str, fn: Optional[Transform] = None, inv: Optional[Transform] = None
    ):
        self.src, self.dst = _Pattern(src), _Pattern(dst)
        self.fn, self.inv = fn, inv

    def forward(self, path: str) -> Optional[str]:
        values = self.src.match(path)
        return None if values is None else self.dst.format(values)

    def backward(self, path: str) -> Optional[str]:
        values = self.dst.match(path)
        return None if values is None else self.src.format(values)

    def __repr__(self) -> str:
        return f"Rule({self.src.text!r} -> {self.dst.text!r})"


@dataclass
class _Plan:
    """Everything a converter decides from the source keys, the target keys and its options."""

    rules: List[Rule]
    scope: Tuple[str, ...]
    ignore: List[Tuple["re.Pattern", str]] = field(default_factory=list)
    defaults: List[Tuple["re.Pattern", Callable[[torch.Size], torch.Tensor], str]] = field(
        default_factory=list
    )
    notes: List[str] = field(default_factory=list)


def _ignore(pattern: str, reason: str) -> Tuple["re.Pattern", str]:
    return re.compile(pattern), reason


_NBT = "num_batches_tracked"


def _split(key: str) -> Tuple[str, str]:
    path, _, leaf = key.rpartition(".")
    return path, leaf


def _map_key(rules: Sequence[Rule], key: str) -> Optional[Tuple[str, Rule]]:
    path, leaf = _split(key)
    for rule in rules:
        dst = rule.forward(path)
        if dst is not None:
            return f"{dst}.{leaf}", rule
    return None


# ---------------------------------------------------------------------------------------------
# The conversion engine
# ---------------------------------------------------------------------------------------------


def _target_state(target: Target) -> Optional[Mapping[str, torch.Tensor]]:
    if target is None:
        return None
    if isinstance(target, nn.Module):
        return target.state_dict()
    return target


def _in_scope(key: str, scope: Sequence[str]) -> bool:
    return any(key.startswith(prefix) for prefix in scope)


def _run(
    source: str,
    state_dict: Mapping[str, torch.Tensor],
    target: Optional[Mapping[str, torch.Tensor]],
    plan: _Plan,
    allow_partial: bool,
) -> Tuple[StateDict, ConversionReport]:
    report = ConversionReport(
        source=source, scope=plan.scope, target_checked=target is not None, notes=list(plan.notes)
    )
    out: StateDict = {}
    origin: Dict[str, str] = {}
    for key, value in state_dict.items():
        reason = next((why for regex, why in plan.ignore if regex.search(key)), None)
        if reason is not None:
            report.ignored[key] = reason
            continue
        found = _map_key(plan.rules, key)
        if found is None:
            report.unused.append((key, None))
            continue
        dst, rule = found
        if target is not None and dst not in target:
            if dst.endswith("." + _NBT) and dst[: -len(_NBT)] + "running_mean" in target:
                report.ignored[key] = f"the target's frozen norm keeps no {_NBT}"
            else:
                report.unused.append((key, dst))
            continue
        if dst in out:
            raise WeightConversionError(
                f"{source}: source keys {origin[dst]!r} and {key!r} both map to {dst!r}", report
            )
        value = torch.as_tensor(value)
        if rule.fn is not None:
            value = rule.fn(value)
        if target is not None:
            ref = target[dst]
            if tuple(value.shape) != tuple(ref.shape):
                report.mismatched.append((key, dst, tuple(value.shape), tuple(ref.shape)))
                continue
            if value.is_floating_point() and ref.is_floating_point() and value.dtype != ref.dtype:
                value = value.to(ref.dtype)
        out[dst] = value
        origin[dst] = key
        report.mapped.append((key, dst))

    if target is not None:
        mismatched_dst = {dst for _, dst, _, _ in report.mismatched}
        for key, ref in target.items():
            if key in out:
                continue
            if not _in_scope(key, plan.scope):
                report.out_of_scope.append(key)
                continue
            if key in mismatched_dst:
                continue  # listed as a mismatch, not twice
            if key.endswith("." + _NBT):
                out[key] = torch.zeros_like(ref)
                report.defaulted[key] = "no BatchNorm step counter in the source: 0"
                continue
            default = next(
                ((fn, why) for regex, fn, why in plan.defaults if regex.search(key)), None
            )
            if default is not None:
                out[key] = default[0](ref.shape).to(ref.dtype)
                report.defaulted[key] = default[1]
                continue
            report.missing.append(key)

    if not report.ok and not allow_partial:
        raise WeightConversionError(
            f"Weight conversion {source!r} is incomplete; fix the source/config, or pass "
            f"allow_partial=True (--allow-partial) to keep only the matching keys.\n"
            f"{report.format()}",
            report,
        )
    if not report.ok:
        logger.warning("Partial weight conversion:\n%s", report.format())
    return out, report


def _find_prefix(keys: Sequence[str], suffix: str, what: str, prefix: Optional[str]) -> str:
    """The unique ``p`` with ``p + suffix`` among ``keys`` (``prefix`` overrides the search)."""
    if prefix is not None:
        return prefix
    found = sorted(
        {
            k[: -len(suffix)]
            for k in keys
            if k.endswith(suffix) and (k == suffix or k[-len(suffix) - 1] == ".")
        }
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightConversionError(
            f"The target model has no {what} (no key ending in {suffix!r}); check --config-file"
        )
    raise WeightConversionError(
        f"The target model has several {what}s (prefixes {found}); pass prefix=... (--prefix)"
    )


_CLASSIFIER = "ImageNet classifier (no counterpart in a backbone)"


def _timm_prefix(target_keys, prefix, suffix: str, what: str) -> str:
    if target_keys is None:
        return prefix if prefix is not None else "backbone.body."
    return _find_prefix(target_keys, suffix, what, prefix)


# ---------------------------------------------------------------------------------------------
# Registry of plans (filled by the source modules), runs forwards and backwards
# ---------------------------------------------------------------------------------------------

PLANS: Dict[str, Callable[..., "_Plan"]] = {}
"""Plan builders by source name: ``plan(source_keys, target_keys, prefix, **options)``; each source
module (``resnet``, ``openmmlab``, ``mobilenetv2``, ``swin``) registers its own."""


def convert(source, state_dict, target, *, prefix=None, allow_partial=False, **options):
    target_sd = _target_state(target)
    state_dict = _unwrap(state_dict)
    plan = PLANS[source](
        list(state_dict), None if target_sd is None else list(target_sd), prefix, **options
    )
    return _run(source, state_dict, target_sd, plan, allow_partial)


def to_source_naming(
    source: str, state_dict: Mapping[str, torch.Tensor], *, prefix=None, **options
) -> Tuple[StateDict, List[str]]:
    """Apply a converter's rules backwards: our model's ``state_dict`` in ``source``'s naming.

    Returns:
        (state dict with the source's keys, target keys no rule can express). Options as for the
        converter (e.g. ``full=True, stem="sequential"`` for ``cirkd_resnet``).
    """
    plan = PLANS[source](None, list(state_dict), prefix, **options)
    out: StateDict = {}
    unexpressed = []
    for key, value in state_dict.items():
        if not _in_scope(key, plan.scope) or any(r.search(key) for r, _, _ in plan.defaults):
            continue
        path, leaf = _split(key)
        for rule in plan.rules:
            src = rule.backward(path)
            if src is not None:
                out[f"{src}.{leaf}"] = rule.inv(value) if rule.inv is not None else value.clone()
                break
        else:
            unexpressed.append(key)
    return out, unexpressed


def _unwrap(obj) -> StateDict:
    """The state dict inside a checkpoint dict (``state_dict``/``model`` entries, ``module.``)."""
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightConversionError(f"not a state dict: {type(obj).__name__}")
    sd = {k: torch.as_tensor(v) for k, v in obj.items() if hasattr(v, "shape")}
    if not sd:
        raise WeightConversionError(
            f"no tensors at the top level of the checkpoint (keys: {sorted(obj)[:20]})"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd
