"""Sphinx extension: the API reference's docstrings, read as the package writes them.

The package's docstrings are Google style (as Detectron2's) with plain-text maths: ``|x|`` for a
norm, ``C*H*W`` for a product. Three things keep the ``-W -n`` build strict about what matters
(names that do not exist) without rewriting that style:

- ``autodoc-process-docstring``: outside inline literals, ``|`` and a ``*`` between two word
  characters are escaped, so ``|Ft|`` and ``B*K*h*w`` read as text, not substitutions or
  emphasis; ``:paper:`...``` (Detectron2's role for citing a paper) is defined below.
- ``missing-reference`` for ``py`` references, in this order: a short name (``MobileNetV2``)
  resolves to the one documented object of that name in the package, if there is exactly one;
  a config key (``MODEL.DISTILL.TAPS``) resolves to its row of the config reference; a name
  that imports (from the referring module or class, or a Detectron2 / torch namespace) but is
  not documented here (an object of another library, a private helper) is shown as code,
  unlinked. Anything else -- a name that does not exist -- stays a warning, which ``-W`` turns
  into an error.
- ``:doc:`/tutorials/...``` (Detectron2's own pages, cited in docstrings copied from it) link to
  Detectron2's documentation.
"""
from __future__ import annotations

import importlib
import re
from typing import Optional

from docutils import nodes
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
_LITERAL = re.compile(r"(``.+?``|`[^`]+`)", re.S)
_STAR = re.compile(r"(?<=[\w)\]])\*(?=[\w(\[])")
_PIPE = re.compile(r"(?<!\\)\|")
_OUTSIDE_NAMESPACES = (
    "detectron2.modeling", "detectron2.modeling.backbone.fpn", "detectron2.data",
    "detectron2.data.transforms", "detectron2.engine", "detectron2.checkpoint",
    "detectron2.evaluation", "detectron2.structures", "detectron2.layers", "detectron2.config",
    "torch", "torch.nn", "fvcore.common.checkpoint",
)  # fmt: skip
D2_DOCS = "https://detectron2.readthedocs.io/en/latest"


def _escape(text: str) -> str:
    parts = _LITERAL.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside literals and roles
        parts[i] = _STAR.sub(r"\*", _PIPE.sub(r"\|", parts[i]))
    return "".join(parts)


def process_docstring(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped == "|" or stripped.startswith(("| ", "+-", "+=")):  # line block, table row
            continue
        lines[i] = _escape(line)


def restore_attribute_prose(app, what, name, obj, options, lines):
    """After napoleon: it reads "Some text: more" on an attribute's first line as "type:
    description"; a "type" that is prose (it has a space and no brackets) goes back in front."""
    if what not in ("attribute", "data", "property"):
        return
    for i, line in enumerate(lines):
        m = re.fullmatch(r":type: (.+)", line)
        if m and " " in m.group(1) and "[" not in m.group(1):
            del lines[i]
            first = next((j for j, ln in enumerate(lines) if ln.strip()), 0)
            lines[first] = f"{m.group(1)}: {lines[first]}"
            while lines and not lines[-1].strip():
                lines.pop()
            return


def paper_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:paper:`resnet``` -> the name in italics (a citation of a paper by its short name)."""
    return [nodes.emphasis(rawtext, text)], []


def _import(path: str) -> Optional[object]:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _exists(target: str, module: Optional[str], klass: Optional[str]) -> bool:
    target = target.split("(")[0].strip()
    candidates = [target]
    if module:
        candidates.append(f"{module}.{target}")
        if klass:
            candidates.append(f"{module}.{klass}.{target}")
    candidates += [f"{ns}.{target}" for ns in _OUTSIDE_NAMESPACES]
    return any(_import(c) is not None for c in candidates if not c.startswith("."))


def missing_reference(app, env, node, contnode):
    domain, reftype = node.get("refdomain"), node.get("reftype")
    target = re.sub(r"\s+", "", node.get("reftarget", ""))  # a role's target may wrap a line
    if domain == "std" and reftype == "doc" and target.startswith("/tutorials/"):
        return nodes.reference("", "", contnode, refuri=f"{D2_DOCS}{target}.html", internal=False)
    if domain != "py":
        return None
    py = env.get_domain("py")
    short = target.lstrip(".~").split("(")[0]
    if short.startswith("self."):
        short = short[len("self."):]
    module, klass = node.get("py:module"), node.get("py:class")
    for scope in filter(None, (module and klass and f"{module}.{klass}", module)):
        entry = py.objects.get(f"{scope}.{short}")
        if entry is not None and not entry.aliased:  # a name of the referring class or module
            return _link(app, node, contnode, entry.docname, entry.node_id, title=f"{scope}.{short}")
    if re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+", short):  # a config key
        std = env.get_domain("std")
        if ("cfgkey", short) in std.objects:
            docname, labelid = std.objects[("cfgkey", short)]
            return _link(app, node, contnode, docname, labelid)
    obj = _import(short) if "." in short else None
    if obj is not None and hasattr(obj, "__qualname__"):  # a re-export: its defining module
        where = f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
        if where in py.objects and not py.objects[where].aliased:
            entry = py.objects[where]
            return _link(app, node, contnode, entry.docname, entry.node_id, title=where)
    last = short.rsplit(".", 1)[-1]
    matches = [
        (fullname, obj) for fullname, obj in py.objects.items()
        if fullname.rsplit(".", 1)[-1] == last and fullname.endswith(short) and not obj.aliased
    ]
    if len(matches) == 1:
        fullname, obj = matches[0]
        return _link(app, node, contnode, obj.docname, obj.node_id, title=fullname)
    if _exists(short, module, klass):
        return contnode  # real, but documented elsewhere (another library) or private: unlinked
    return None


def _link(app, node, contnode, docname, anchor, title=""):
    from sphinx.util.nodes import make_refnode

    return make_refnode(app.builder, node["refdoc"], docname, anchor, contnode, title)


def setup(app):
    app.connect("autodoc-process-docstring", process_docstring, priority=400)  # before napoleon
    app.connect("autodoc-process-docstring", restore_attribute_prose, priority=600)  # after it
    app.connect("missing-reference", missing_reference)
    app.add_role("paper", paper_role)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
