"""Logit KD settings of the config files: every config with logit KD names its
MODEL.DISTILL.KD_REDUCTION, the paper's matrix uses the paper's scale (lambda_kd 10, "element"),
Table 3 CIRKD's (lambda_kd 1, "pixel"), and the hand-written configs match the families that
configs/README.md lists (radkd_d2.configs_index.kd_families)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from detectron2.config import get_cfg

from conftest import REPO, load_cfg
from radkd_d2.config import add_radkd_config
from radkd_d2.configs_index import (
    DATASETS,
    HANDWRITTEN_KD,
    Run,
    all_rows,
    kd_families,
    kd_per_pixel_weight,
)

ALL_CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))
HANDWRITTEN = [c for c in ALL_CONFIGS if c.parts[1] not in DATASETS]
_MISSING = object()


@functools.lru_cache(maxsize=None)
def _raw(path: Path) -> dict:
    return yaml.safe_load((REPO / path).read_text()) or {}


def _get(mapping: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return _MISSING
        mapping = mapping[part]
    return mapping


def _chain(path: Path) -> list:
    """The file and its ``_BASE_`` files, nearest first (as yacs merges them, reversed)."""
    chain = [path]
    while "_BASE_" in _raw(chain[-1]):
        base = ((REPO / chain[-1]).parent / _raw(chain[-1])["_BASE_"]).resolve()
        chain.append(base.relative_to(REPO))
    return chain


def _chain_value(path: Path, dotted: str):
    """The value of ``dotted`` written in the nearest file of the chain, or _MISSING."""
    for p in _chain(path):
        value = _get(_raw(p), dotted)
        if value is not _MISSING:
            return value
    return _MISSING


def _defaults():
    cfg = get_cfg()
    add_radkd_config(cfg)
    return cfg


def _is_distillation(path: Path) -> bool:
    meta = _chain_value(path, "MODEL.META_ARCHITECTURE")
    return meta is not _MISSING and str(meta).startswith("Distill")


def _effective_kd_weight(path: Path) -> float:
    """MODEL.DISTILL.KD_WEIGHT of a distillation config (the default where its chain has none);
    0 for a model trained on its own (no teacher, no KD)."""
    if not _is_distillation(path):
        return 0.0
    kd = _chain_value(path, "MODEL.DISTILL.KD_WEIGHT")
    return float(_defaults().MODEL.DISTILL.KD_WEIGHT if kd is _MISSING else kd)


WITH_KD = [c for c in ALL_CONFIGS if _effective_kd_weight(c) > 0]


def test_configs_with_logit_kd_found():
    assert len(WITH_KD) > 100  # the matrix (~100) plus the synthetic and CamVid ones
    assert any(c.parts[1] == "camvid" for c in WITH_KD)
    assert any(c.parts[1] == "synthetic" for c in WITH_KD)


@pytest.mark.parametrize("config", WITH_KD, ids=str)
def test_every_config_with_logit_kd_names_its_reduction(config):
    # "element" and "pixel" differ by the factor K, as much as lambda_kd itself: a config that
    # uses KD must say which one it means, in the file that sets lambda_kd.
    reduction = _chain_value(config, "MODEL.DISTILL.KD_REDUCTION")
    assert reduction in ("element", "pixel"), (config, reduction)
    if _get(_raw(config), "MODEL.DISTILL.KD_WEIGHT") is not _MISSING:
        assert _get(_raw(config), "MODEL.DISTILL.KD_REDUCTION") is not _MISSING, config


def test_matrix_kd_scale_follows_the_table():
    """Table 3 (CIRKD's protocol): lambda_kd 1 with "pixel" for every method with logit KD;
    Tables 1, 5, 6 and Fig. 1: lambda_kd 10 with "element"; methods without logit KD (MGD):
    neither. (Table 7, detection, has no logit KD; its family is checked with the hand-written
    ones.)"""
    seen = set()
    for row in all_rows():
        run = row.run
        if run.role != "distill" or not isinstance(run, Run):
            continue
        assert (row.table == "3") == (run.recipe.key == "cirkd"), row.label
        distill = _raw(Path(run.path))["MODEL"]["DISTILL"]
        got = (distill["KD_WEIGHT"], distill.get("KD_REDUCTION"))
        if run.method.kd_weight == 0:
            assert got == (0.0, None), (run.path, got)
            continue
        expected = (1.0, "pixel") if row.table == "3" else (10.0, "element")
        assert got == expected, (run.path, got)
        seen.add((row.table, run.method.key))
    assert {m for t, m in seen if t == "3"} == {"cirkd", "cad", "lad"}
    assert {m for t, m in seen if t == "fig1"} == {"naive", "md", "skd", "ifvd"}
    assert {t for t, _ in seen} == {"1", "3", "5", "6", "fig1"}


@pytest.mark.parametrize("config", [c for c in HANDWRITTEN if _is_distillation(c)], ids=str)
def test_handwritten_distillation_configs_match_their_family(config):
    meta = _chain_value(config, "MODEL.META_ARCHITECTURE")
    families = [f for f in HANDWRITTEN_KD if config.parts[1] in f.folders and f.meta_arch == meta]
    assert len(families) == 1, (config, meta, families)
    family = families[0]
    cfg = load_cfg(config, validate=False)
    assert cfg.MODEL.DISTILL.KD_WEIGHT == family.kd_weight, config
    if family.kd_weight > 0:
        assert cfg.MODEL.DISTILL.KD_REDUCTION == family.reduction, config
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == family.num_classes, config


def test_every_handwritten_family_has_configs():
    for family in HANDWRITTEN_KD:
        matched = [
            c for c in HANDWRITTEN
            if c.parts[1] in family.folders
            and _chain_value(c, "MODEL.META_ARCHITECTURE") == family.meta_arch
        ]  # fmt: skip
        assert matched, family.title


def test_kd_families_per_pixel_weights():
    by_title = {f.title: f for f in kd_families()}
    cityscapes = by_title["Cityscapes, Tables 1, 5, 6, Fig. 1 (paper recipe)"]
    assert cityscapes.per_pixel_weight == pytest.approx(10 / 19)
    assert by_title["ADE20K, Table 3 (CIRKD's protocol)"].per_pixel_weight == 1.0
    assert kd_per_pixel_weight(10.0, "element", 11) == pytest.approx(10 / 11)
    assert kd_per_pixel_weight(1.0, "pixel", 150) == 1.0
    with pytest.raises(ValueError, match="element"):
        kd_per_pixel_weight(1.0, "mean", 19)
    # every family is in configs/README.md (written by tools/make_config_matrix.py)
    readme = (REPO / "configs" / "README.md").read_text()
    assert all(f"| {f.title} |" in readme for f in by_title.values())
