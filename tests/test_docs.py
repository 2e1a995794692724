"""The documentation: the site builds with warnings as errors, the config reference lists every
declared key, the README stays short and in its order, and each command it shows parses.

The site build is the one ``make docs`` runs (``sphinx -W --keep-going -n``): a broken
cross-reference (``{cfgkey}`...``` to a key that no longer exists, a ``py`` reference to a
removed name), a page left out of every toctree, a docstring that does not parse or a config key
declared without a description fails it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
PAGES = [
    "index", "getting_started", "config", "losses", "segmentation", "detection", "export",
    "diagnosing", "reliability", "performance", "api/index", "results/index",
    "guides/own_data", "guides/own_teacher", "guides/own_detector",
]  # fmt: skip


def build_site(out: Path) -> Path:
    """``make docs``'s build into ``out``; fails listing every warning."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(REPO / "docs"), str(out / "html")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    warnings = [ln for ln in proc.stderr.splitlines() if re.search(r"(WARNING|ERROR|CRITICAL)", ln)]
    assert proc.returncode == 0 and not warnings, (
        f"the documentation site does not build with warnings as errors (exit {proc.returncode}):\n"
        + "\n".join(warnings or proc.stderr.splitlines()[-40:])
    )
    return out / "html"


@pytest.mark.slow
def test_site_builds_with_warnings_as_errors(tmp_path):
    """One test (one build: pytest-xdist would run a shared fixture once per worker, and two
    builds at once would both write the API pages autosummary generates under docs/api/)."""
    site = build_site(tmp_path)
    _has_every_page(site)
    _config_reference_lists_every_declared_key(site)


def _has_every_page(site: Path) -> None:
    missing = [p for p in PAGES if not (site / f"{p}.html").is_file()]
    assert not missing, missing
    results = sorted(p.stem for p in (REPO / "docs" / "results").glob("2*.md"))
    assert results and all((site / "results" / f"{r}.html").is_file() for r in results)
    # the API reference covers every module of the package
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "radkd_d2").rglob("*.py")
        if not p.name.startswith("_") or p.name == "__init__.py"
    }
    pages = {p.stem for p in (site / "api" / "generated").glob("*.html")}
    assert not modules - pages, sorted(modules - pages)


def _config_reference_lists_every_declared_key(site: Path) -> None:
    from detectron2.config import get_cfg

    from radkd_d2.config import add_radkd_config

    def flat(node, prefix=""):
        for k, v in node.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    base = set(flat(get_cfg()))
    cfg = get_cfg()
    add_radkd_config(cfg)
    keys = [k for k in flat(cfg) if k not in base]
    assert any(k.startswith("MODEL.DISTILL.") for k in keys)
    html = (site / "config.html").read_text()
    ids = set(re.findall(r'id="(cfgkey-[^"]+)"', html))
    expected = {"cfgkey-" + k.lower().replace(".", "-").replace("_", "-") for k in keys}
    assert not expected - ids, sorted(expected - ids)


def test_readme_is_short_and_in_the_issue_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    headings = [m.group(1) for m in re.finditer(r"^## (.+)$", _outside_fences(text), re.M)]
    assert headings == [
        "The two commands",
        "What the demo prints",
        "Distilling your own model in one config",
        "Results",
        "Where everything else lives",
    ]
    first = _bash_blocks(text)[0]
    assert [c.split()[:2] for c in first] == [["make", "demo"], ["make", "test"]]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), "CI must run the README's test command"


def test_readme_results_name_source_and_date():
    text = _outside_fences(README.read_text())
    section = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| Experiment")]
    assert rows
    for row in rows:
        source = row.rstrip(" |").rsplit("|", 1)[-1]
        assert re.search(r"20\d\d-\d\d-\d\d", source) or "paper" in source.lower(), row


def test_study_result_slots_are_on_their_results_pages():
    for page, slot in (
        ("2026-12-08-camvid-cityscapes-teacher.md", "<!-- cityscapes-study-results -->"),
        ("2026-12-05-camvid-pretrained.md", "<!-- pretrained-study-results -->"),
    ):
        assert slot in (REPO / "docs" / "results" / page).read_text()


_DRIVER = textwrap.dedent(
    """
    import argparse, json, runpy, sys

    class Parsed(BaseException):
        pass

    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    results = []
    for argv in json.loads(sys.argv[1]):
        sys.argv = list(argv)
        try:
            runpy.run_path(argv[0], run_name="__main__")
            results.append([argv, "ran without parsing arguments"])
        except Parsed as parsed:
            ns = parsed.args[0]
            note = "parsed"
            if argv[0].endswith("train_net.py"):  # its overrides are config keys: load them
                from radkd_d2.engine.setup import load_config
                load_config(ns.config_file, ns.opts, validate=False)
                note = "parsed, config loaded"
            results.append([argv, note])
        except SystemExit as e:
            results.append([argv, f"exit {e.code}"])
        except Exception as e:
            results.append([argv, f"{type(e).__name__}: {e}"])
    print("RESULTS " + json.dumps(results))
    """
)


def test_readme_commands_parse_and_start():
    """Every command in the README's shell blocks: a make target exists (``make -n``); a
    ``python tools/...`` command starts, and its arguments parse with the tool's own parser
    (stopped right after parsing, nothing trained); train_net's config loads with its overrides."""
    commands = [c for block in _bash_blocks(README.read_text()) for c in block]
    assert commands
    python, checked = [], 0
    for command in commands:
        argv = shlex.split(command, comments=True)
        if argv[0] == "make":
            proc = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True)
            assert proc.returncode == 0, f"{command}: {proc.stderr}"
            checked += 1
        elif argv[0] == "python":
            assert (REPO / argv[1]).is_file(), command
            python.append(argv[1:])
        elif argv[0] not in (".", "source", "cat", "cd"):
            pytest.fail(f"README command of an unknown kind: {command}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(python)], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    for argv, note in json.loads(lines[-1][len("RESULTS "):]):
        assert note.startswith("parsed"), f"python {' '.join(argv)}: {note}"
        checked += 1
    assert checked == len([c for c in commands if c.split()[0] in ("make", "python")])


def _outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ``bash`` block, continuation lines joined."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", body)
        blocks.append([ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")])
    return blocks
