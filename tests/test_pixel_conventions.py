"""Every config under configs/ (and the teacher of each distillation config) normalises its inputs
the way its INPUT.FORMAT and its ImageNet weights say: the pixel mean and std are ImageNet's in the
channel order of INPUT.FORMAT, and a config that starts from weights of
radkd_d2/configs_index/pretrained.py uses their format, mean and std exactly. Weights named by a
URL scheme are among the names the installed Detectron2 resolves."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import detectron2
import pytest
from detectron2.checkpoint.catalog import ModelCatalog

from conftest import REPO, load_cfg
from radkd_d2.configs_index import PRETRAINED, pixel_order
from radkd_d2.modeling.teacher import load_teacher_cfg

ALL_CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))


def convention_errors(cfg) -> list:
    """What is wrong with the input normalisation of ``cfg`` (empty: nothing)."""
    fmt, mean, std = cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    errors = []
    if fmt not in ("RGB", "BGR"):
        errors.append(f"INPUT.FORMAT {fmt!r} is neither RGB nor BGR")
    if pixel_order(mean) != fmt:
        errors.append(f"PIXEL_MEAN {mean} is not ImageNet's mean in {fmt} order")
    if pixel_order(std) not in (fmt, "any"):
        errors.append(f"PIXEL_STD {std} is not ImageNet's std in {fmt} order (nor all ones)")
    weights = cfg.MODEL.WEIGHTS
    known = PRETRAINED.get(weights)
    if known is not None:
        if (fmt, tuple(mean), tuple(std)) != (
            known.input_format,
            known.pixel_mean,
            known.pixel_std,
        ):
            errors.append(
                f"MODEL.WEIGHTS {weights} take {known.input_format} inputs with PIXEL_MEAN "
                f"{list(known.pixel_mean)}, PIXEL_STD {list(known.pixel_std)}"
            )
    elif weights and not weights.startswith("output/"):  # output/: a run of these configs
        errors.append(f"MODEL.WEIGHTS {weights} is not in configs_index.PRETRAINED")
    return errors


@functools.lru_cache(maxsize=None)
def _teacher(config_file: str, opts: tuple):
    return load_teacher_cfg(str(REPO / config_file), "cpu", opts)


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=str)
def test_pixel_mean_and_std_follow_format_and_weights(config, tmp_path):
    cfg = load_cfg(config, data_root=tmp_path, validate=False)
    assert not convention_errors(cfg), (str(config), convention_errors(cfg))
    if cfg.MODEL.META_ARCHITECTURE.startswith("Distill"):  # the teacher, or every teacher
        t = cfg.MODEL.DISTILL.TEACHER
        teachers = [(e["CONFIG_FILE"], tuple(e.get("OPTS", ()))) for e in cfg.MODEL.DISTILL.TEACHERS]
        for config_file, opts in teachers or [(t.CONFIG_FILE, tuple(t.OPTS))]:
            tcfg = _teacher(config_file, opts)
            assert not convention_errors(tcfg), (config_file, convention_errors(tcfg))


def test_the_check_catches_a_mixed_order(tmp_path):
    """The COCO X101 teacher once had RGB input and mean with the std in BGR order."""
    cfg = load_cfg("configs/coco/retinanet_X101_64x4d_FPN_2x_coco.yaml", "MODEL.PIXEL_STD",
                   "[57.375, 57.12, 58.395]", validate=False)  # fmt: skip
    assert convention_errors(cfg) == [
        "PIXEL_STD [57.375, 57.12, 58.395] is not ImageNet's std in RGB order (nor all ones)",
        "MODEL.WEIGHTS output/pretrained/X-101-64x4d_torchvision.pth take RGB inputs with "
        "PIXEL_MEAN [123.675, 116.28, 103.53], PIXEL_STD [58.395, 57.12, 57.375]",
    ]
    bgr = load_cfg("configs/coco/retinanet_R50_FPN_2x_coco.yaml", "INPUT.FORMAT", "RGB",
                   validate=False)  # fmt: skip
    assert "PIXEL_MEAN [103.53, 116.28, 123.675] is not ImageNet's mean in RGB order" in (
        convention_errors(bgr)
    )
    unknown = load_cfg(
        "configs/coco/retinanet_R50_FPN_2x_coco.yaml",
        "MODEL.WEIGHTS",
        "detectron2://ImageNetPretrained/FAIR/X-101-64x4d.pkl",
        validate=False,
    )
    assert convention_errors(unknown) == [
        "MODEL.WEIGHTS detectron2://ImageNetPretrained/FAIR/X-101-64x4d.pkl is not in "
        "configs_index.PRETRAINED"
    ]


def _detectron2_imagenet_names() -> set:
    """The ImageNet weights the installed Detectron2 resolves: those its model-zoo configs name
    (``detectron2://ImageNetPretrained/...``) and its ModelCatalog's ``catalog://`` entries."""
    zoo = Path(detectron2.__file__).parent / "model_zoo" / "configs"
    names = set()
    for path in zoo.rglob("*"):
        if path.suffix in (".yaml", ".py"):
            names |= set(re.findall(r"detectron2://ImageNetPretrained/[\w./-]+", path.read_text()))
    names |= {f"catalog://ImageNetPretrained/{k}" for k in ModelCatalog.C2_IMAGENET_MODELS}
    return names


def test_pretrained_names_are_known_or_made_here():
    known = _detectron2_imagenet_names()
    assert "detectron2://ImageNetPretrained/MSRA/R-50.pkl" in known
    assert "detectron2://ImageNetPretrained/FAIR/X-101-64x4d.pkl" not in known  # the old name
    for name, weights in PRETRAINED.items():
        assert weights.source, name
        if "://" in name:
            assert name in known, name
            assert not weights.how, name
        else:  # a file this project's converter writes
            assert name.startswith("output/") and "tools/convert_weights.py" in weights.how, name
            assert f"--output {name}" in weights.how, name


def test_every_configured_weight_is_listed():
    used = set()
    for config in ALL_CONFIGS:
        weights = load_cfg(config, validate=False).MODEL.WEIGHTS
        if (weights and not weights.startswith("output/")) or weights in PRETRAINED:
            used.add(weights)
    assert used <= set(PRETRAINED), sorted(used - set(PRETRAINED))
    assert used == set(PRETRAINED)  # no stale entries either
