"""The COCO Faster / Mask R-CNN configs of the generated matrix: each teacher and student file is
the model of the Detectron2 model-zoo config it names (same parameters, same input
normalisation), so Detectron2's released checkpoints load strictly as the teachers; the
distillation configs point to those releases; a release is fetched through Detectron2's
PathManager (and one that cannot be fetched is one clear error); and every R-CNN distillation
config trains one step, at reduced size, with its own taps and coefficients."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from detectron2 import model_zoo
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import radkd_d2.modeling.teacher as teacher_mod
from conftest import REPO, load_cfg
from radkd_d2.configs_index import COCO_RCNN, RCNN_METHODS, DetRun, all_rows, all_runs
from radkd_d2.modeling.teacher import TeacherLoadError, build_teacher
from test_distill_rcnn import masked_batch

RCNN_RUNS = [r for r in all_runs() if isinstance(r, DetRun) and r.model.meta_arch == "GeneralizedRCNN"]
PLAIN = [r for r in RCNN_RUNS if r.role != "distill"]
DISTILL = [r for r in RCNN_RUNS if r.role == "distill"]
D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def _shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _zoo_model(zoo: str):
    cfg = model_zoo.get_config(f"{zoo}.yaml")
    cfg.MODEL.DEVICE = "cpu"
    return cfg, _shapes(build_model(cfg))


def test_the_matrix_has_both_detectors_at_every_pair():
    rows = [r for r in all_rows() if r.table == "rcnn"]
    assert len(rows) == 2 * (2 + 2 + len(RCNN_METHODS) + 2)
    for kind in ("faster", "mask"):
        methods = {(r.run.method.key, r.run.teacher.key, r.run.dataset.schedule) for r in rows
                   if r.run.role == "distill" and r.run.model.key.startswith(kind)}  # fmt: skip
        t101, x101 = f"{kind}_rcnn_R_101_FPN", f"{kind}_rcnn_X_101_32x8d_FPN"
        assert {(m, t101, "2x") for m in RCNN_METHODS} | {("lad", t101, "1x"), ("lad", x101, "2x")} == methods
    assert all(r.reference for r in rows if r.run.role != "distill")  # every T / S row is sourced
    assert {r.dataset.schedule for r in PLAIN if r.role == "teacher"} == {"3x"}


@pytest.mark.slow
@pytest.mark.parametrize("run", PLAIN, ids=lambda r: r.name)
def test_each_file_is_its_model_zoo_model(run):
    """Same state-dict keys and shapes as Detectron2's model-zoo config (so its released
    checkpoint loads strictly), and the same input normalisation."""
    cfg = load_cfg(run.path, validate=False)
    zoo_cfg, zoo_shapes = _zoo_model(run.model.zoo)
    assert _shapes(build_model(cfg)) == zoo_shapes
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        assert [round(v, 3) for v in cfg.MODEL[key]] == [round(v, 3) for v in zoo_cfg.MODEL[key]], key
    assert cfg.INPUT.FORMAT == zoo_cfg.INPUT.FORMAT and cfg.MODEL.WEIGHTS == zoo_cfg.MODEL.WEIGHTS
    assert cfg.MODEL.MASK_ON == zoo_cfg.MODEL.MASK_ON == run.model.mask_on
    if run.role == "teacher":  # the 3x schedule of the release
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (zoo_cfg.SOLVER.MAX_ITER, tuple(zoo_cfg.SOLVER.STEPS))
    else:
        d = COCO_RCNN[run.dataset.schedule]
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (d.max_iter, d.steps)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(zoo_cfg.INPUT.MIN_SIZE_TRAIN)


@pytest.mark.parametrize("run", DISTILL, ids=lambda r: r.name)
def test_distillation_loads_the_released_teacher(run):
    cfg = load_cfg(run.path, validate=False)
    dcfg = cfg.MODEL.DISTILL
    assert cfg.MODEL.META_ARCHITECTURE == "DistillGeneralizedRCNN"
    assert dcfg.STUDENT_META_ARCHITECTURE == "GeneralizedRCNN" and dcfg.KD_WEIGHT == 0
    assert dcfg.TEACHER.CONFIG_FILE == run.teacher_run.path
    assert dcfg.TEACHER.WEIGHTS == run.teacher.released
    # the URL Detectron2's model zoo gives for the teacher's config
    expected = model_zoo.get_checkpoint_url(f"{run.teacher.zoo}.yaml")
    assert dcfg.TEACHER.WEIGHTS.replace("detectron2://", D2_URL) == expected
    assert [tuple(t) for t in dcfg.TAPS] == list(run.method.taps)
    for key, value in run.method.distill_opts:
        node, leaf = key.split(".")
        assert dcfg[node][leaf] == value, key
    assert not dcfg.INIT_STUDENT_FROM_TEACHER  # the student starts from ImageNet alone


def test_a_released_teacher_is_fetched_through_detectron2s_path_manager(tmp_path, monkeypatch):
    """TEACHER.WEIGHTS may be a URL (detectron2://, https://): Detectron2's PathManager fetches
    and caches it, and the file then loads strictly; a URL that cannot be fetched is one error
    naming it."""
    cfg_file = str(REPO / "configs/synthetic/faster_rcnn_x50_tiny.yaml")
    teacher, _ = build_teacher(cfg_file, "", device="cpu")
    local = tmp_path / "release.pth"
    torch.save({"model": teacher.state_dict()}, local)
    url = "detectron2://COCO-Detection/some_release/model_final.pkl"
    asked = []

    def fetch(path, **kwargs):
        if "://" not in path:  # local files are their own local path, as for the real one
            return path
        asked.append(path)
        if path != url:
            raise OSError("HTTP Error 404: Not Found")
        return str(local)

    monkeypatch.setattr(teacher_mod.PathManager, "get_local_path", fetch)
    loaded, _ = build_teacher(cfg_file, url, device="cpu")
    assert asked[0] == url
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in loaded.state_dict().items())
    bad = "https://example.invalid/teacher.pth"
    with pytest.raises(TeacherLoadError, match=r"could not fetch teacher weights MODEL.DISTILL.TEACHER.WEIGHTS = "
                       r"'https://example.invalid/teacher.pth' \(HTTP Error 404: Not Found\): with no network, download it "
                       r"elsewhere and put it at .*/teacher.pth"):
        build_teacher(cfg_file, bad, device="cpu")
    assert asked[-1] == bad


# A few channels and one block per stage: the configs' own taps, losses and coefficients on a
# model small enough for a CPU step (the full models are checked above).
_SMALL = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NUM_GROUPS", 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 64, "MODEL.RESNETS.STEM_OUT_CHANNELS", 32,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64,
]  # fmt: skip


@pytest.mark.parametrize("run", DISTILL, ids=lambda r: r.name)
def test_one_step_of_every_rcnn_distillation(run):
    torch.manual_seed(0)
    cfg = load_cfg(
        run.path, "MODEL.DISTILL.TEACHER.WEIGHTS", "", "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        str(REPO / run.teacher_run.path), "MODEL.DISTILL.TEACHER.OPTS", str([str(x) for x in _SMALL]),
        *_SMALL, validate=False,
    )  # fmt: skip
    model = build_model(cfg).train()
    with EventStorage(0):
        losses = model(masked_batch())
        sum(losses.values()).backward()
    expected = {f"loss_distill_{run.method.key}_{s}" for s, *_ in run.method.taps}
    assert expected <= set(losses), sorted(losses)
    assert ("loss_mask" in losses) == run.model.mask_on
    for name, value in losses.items():
        assert math.isfinite(value.item()), (name, value.item())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.backbone.bottom_up.res4[0].conv1.weight.grad.abs().sum() > 0  # FREEZE_AT 2
