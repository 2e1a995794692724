"""The package's layering, read from its source: imports run one way (bottom to top), and no
function-local import of a project module hides a loop."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "radkd_d2"
# bottom to top; a module may import from its own sub-package and from lower layers only
LAYERS = [
    {"errors"},
    {"losses", "data", "checkpoint", "solver"},
    {"config"},
    {"modeling"},
    {"evaluation", "export", "configs_index"},
    {"engine"},
    {"analysis", "train_net"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """``radkd_d2/<unit>/...`` or ``radkd_d2/<unit>.py`` -> unit."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    """(imported radkd_d2 unit, line, whether at module level) of every project import."""
    tree = ast.parse(path.read_text())
    # the package a relative import starts from (a module's own, or the __init__'s folder)
    pkg = ["radkd_d2", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]
    top_level = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names = [target]
            if node.level and not node.module:  # from . import a, b
                names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "radkd_d2" and len(parts) > 1:
                yield parts[1], node.lineno, id(node) in top_level


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(LAYER), f"units without a layer in LAYERS: {sorted(units - set(LAYER))}"


def test_imports_run_one_way_and_at_module_level():
    upward, local = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for target, line, at_top in _imports(path):
            where = f"{path.relative_to(REPO)}:{line} imports radkd_d2.{target}"
            if target != unit and LAYER[target] >= LAYER[unit]:
                upward.append(where)
            if not at_top and target != unit:
                local.append(where)
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(upward)
    assert not local, "function-local imports of other units:\n" + "\n".join(local)
