"""Sphinx extension: the config reference, generated from the keys radkd-d2 declares.

At build time ``add_radkd_config(get_cfg())`` is compared with Detectron2's ``get_cfg()``: every
key it adds is listed with its default, and with the description written next to its
declaration, so a new key appears in the docs without anyone editing them:

- keys declared by assignment inside an ``add_*config`` / ``_add_*config`` function of the
  package (``cfg.MODEL.DISTILL.KD_WEIGHT = 10.0  # lambda_kd; ...``): the comment on the key's
  line, after the comment lines just above it (if any);
- the distillation losses' keys (``radkd_d2/losses/*.py``, ``LossConfig`` / ``Option``): the
  option's ``help``, its allowed ``choices`` and whether it must be positive.

A key without any description is a build warning (an error under ``-W``), naming the key and
the file to add the comment to.

Markup:

- a Markdown (MyST) block ``{radkd-config-keys}`` with ``:prefix: MODEL.DISTILL`` (keys under
  that node; several prefixes separated by spaces) and/or ``:exclude: MODEL.DISTILL`` renders
  one table per config node;
- the role ``{cfgkey}`MODEL.DISTILL.TAPS``` links to a key's row; a key that does not exist is
  an unresolved reference (an error under ``-W -n``), so prose cannot name a removed key.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LOGGER = logging.getLogger(__name__)
_ASSIGN = re.compile(r"^\s*[A-Za-z_]\w*\.((?:[A-Z][A-Z0-9_]*\.)*[A-Z][A-Z0-9_]*)\s*=(?!=)")
_DECLARING_FUNCTION = re.compile(r"^_?add_\w*config$")


@dataclass
class KeyDoc:
    """One declared key: its default and what the source says about it."""

    key: str
    default: object
    text: str = ""
    source: str = ""  # "radkd_d2/config.py:72"
    notes: List[str] = field(default_factory=list)  # choices, "> 0"


def _flatten(node, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in node.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _comments(text: str) -> Dict[int, str]:
    """Line number -> the text of the comment on that line."""
    found: Dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def _declaring_ranges(tree: ast.AST) -> List[Tuple[int, int]]:
    return [
        (n.lineno, n.end_lineno or n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and _DECLARING_FUNCTION.match(n.name)
    ]


def scan_declarations(package: Path, root: Path) -> Dict[str, Tuple[str, str]]:
    """Key (or node) -> (description, "file:line") for every assignment ``x.KEY.PATH = ...``
    inside a declaring function (``add_*config``) of the package's modules."""
    found: Dict[str, Tuple[str, str]] = {}
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        if "config" not in text:
            continue
        ranges = _declaring_ranges(ast.parse(text))
        if not ranges:
            continue
        comments = _comments(text)
        lines = text.splitlines()
        for lineno, line in enumerate(lines, 1):
            m = _ASSIGN.match(line)
            if not m or not any(a <= lineno <= b for a, b in ranges):
                continue
            above: List[str] = []
            j = lineno - 1
            while j >= 1 and lines[j - 1].strip().startswith("#"):
                above.insert(0, comments.get(j, ""))
                j -= 1
            parts = [p for p in (" ".join(_last_paragraph(above)), comments.get(lineno, "")) if p]
            rel = path.relative_to(root).as_posix()
            found[m.group(1)] = (" ".join(parts), f"{rel}:{lineno}")
    return found


def _last_paragraph(block: List[str]) -> List[str]:
    """The comment lines above a key that belong to it: a block may begin with a note about
    other keys; a line ending a sentence followed by one starting with a capital starts anew."""
    start = 0
    for i in range(1, len(block)):
        if block[i - 1].endswith(".") and block[i][:1].isupper():
            start = i
    return block[start:]


def loss_config_files(root: Path) -> Dict[str, str]:
    """MODEL.DISTILL node of each loss's ``LossConfig`` -> the file declaring it."""
    import importlib
    import pkgutil

    import radkd_d2.losses as losses
    from radkd_d2.losses.build import LossConfig

    files: Dict[str, str] = {}
    for info in pkgutil.iter_modules(losses.__path__):
        module = importlib.import_module(f"radkd_d2.losses.{info.name}")
        for value in vars(module).values():
            if isinstance(value, LossConfig) and value.node not in files:
                path = Path(module.__file__).resolve()
                if path.is_relative_to(root):
                    files[value.node] = path.relative_to(root).as_posix()
    return files


_CACHE: Dict[str, object] = {}


def collect_keys(root: Path) -> List[KeyDoc]:
    """Every key ``add_radkd_config`` adds to Detectron2's defaults, in declaration order."""
    if "keys" in _CACHE:
        return _CACHE["keys"]  # type: ignore[return-value]
    from detectron2.config import get_cfg

    from radkd_d2.config import add_radkd_config
    from radkd_d2.losses import distill_loss_options

    base = _flatten(get_cfg())
    cfg = get_cfg()
    add_radkd_config(cfg)
    declared = scan_declarations(root / "radkd_d2", root)
    options = dict(distill_loss_options())
    loss_files = loss_config_files(root)
    keys: List[KeyDoc] = []
    for key, default in _flatten(cfg).items():
        if key in base:
            continue
        doc = KeyDoc(key, default)
        if key in options:
            opt = options[key]
            doc.text = opt.help
            node = key[len("MODEL.DISTILL."):].rsplit(".", 1)[0] if key.count(".") > 2 else ""
            doc.source = loss_files.get(node, "radkd_d2/losses/")
            if opt.choices:
                doc.notes.append("one of " + ", ".join(repr(c) for c in opt.choices))
            if opt.positive:
                doc.notes.append("must be > 0")
        elif key in declared:
            doc.text, doc.source = declared[key]
        keys.append(doc)
    _CACHE["keys"] = keys
    _CACHE["nodes"] = declared  # nodes (MODEL.DRN = CN()) have their comments here too
    return keys


def node_text(node: str) -> str:
    """The comment above/next to a node's ``= CN()`` declaration, if any."""
    nodes_ = _CACHE.get("nodes", {})
    return nodes_.get(node, ("", ""))[0]  # type: ignore[union-attr]


def target_id(key: str) -> str:
    return "cfgkey-" + key.lower().replace(".", "-").replace("_", "-")


class ConfigKeysDirective(SphinxDirective):
    """One table per config node of the selected keys."""

    has_content = False
    option_spec = {"prefix": directives.unchanged, "exclude": directives.unchanged}

    def run(self) -> List[nodes.Node]:
        import radkd_d2

        root = Path(radkd_d2.__file__).resolve().parent.parent  # the package imported, wherever
        prefixes = (self.options.get("prefix") or "").split()
        excludes = (self.options.get("exclude") or "").split()
        selected = [
            k for k in collect_keys(root)
            if (not prefixes or any(_under(k.key, p) for p in prefixes))
            and not any(_under(k.key, e) for e in excludes)
        ]
        if not selected:
            LOGGER.warning("radkd-config-keys: no key matches %s", self.options, location=self.get_location())
            return []
        groups: Dict[str, List[KeyDoc]] = {}
        for k in selected:
            groups.setdefault(k.key.rsplit(".", 1)[0], []).append(k)
        std = self.env.get_domain("std")
        out: List[nodes.Node] = []
        for node, docs in groups.items():
            out.append(nodes.rubric(text=node))
            about = node_text(node)
            if about:
                out.append(nodes.paragraph(text=about))
            out.append(self._table(docs, std))
        return out

    def _table(self, docs: List[KeyDoc], std) -> nodes.table:
        table = nodes.table(classes=["radkd-config-keys"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (30, 20, 50):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += _row([nodes.Text("Key"), nodes.Text("Default"), nodes.Text("Meaning")])
        body = nodes.tbody()
        group += body
        for doc in docs:
            if not doc.text:
                LOGGER.warning(
                    "config key %s has no description: write one as a comment on its line in %s",
                    doc.key, doc.source or "the function that declares it", location=self.get_location(),
                )
            tid = target_id(doc.key)
            key_cell = nodes.paragraph()
            key_cell += nodes.target("", "", ids=[tid])
            key_cell += nodes.literal(text=doc.key.rsplit(".", 1)[-1])
            std.note_object("cfgkey", doc.key, tid, location=self.get_location())
            meaning = nodes.paragraph(text=doc.text)
            if doc.notes:
                meaning += nodes.Text(" (" + "; ".join(doc.notes) + ")")
            if doc.source:
                meaning += nodes.Text(" ")
                meaning += nodes.emphasis(text=f"[{doc.source}]")
            body += _row([key_cell, nodes.literal(text=repr(doc.default)), meaning])
        return table


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _row(cells) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        if isinstance(cell, (nodes.Text, nodes.literal, nodes.emphasis)):
            para = nodes.paragraph()
            para += cell
            cell = para
        entry += cell
        row += entry
    return row


def setup(app):
    app.add_crossref_type("cfgkey", "cfgkey", indextemplate="pair: %s; config key")
    app.add_directive("radkd-config-keys", ConfigKeysDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
