"""The config matrix of Tables 1, 3, 5, 6, 7 and Fig. 1: generated files up to date, every config
loads with the keys the index says, every segmentation teacher/student builds (reduced size) with
its taps, and one distillation step per (table, method, student family) gives finite losses."""

from __future__ import annotations

import functools
import importlib.util
import math
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
import yaml
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg
from radkd_d2.configs_index import (
    COCO,
    DATASETS,
    FIG1_WEIGHTS,
    REDUCED_DISTILL_OPTS,
    TABLES,
    DetRun,
    Run,
    all_rows,
    all_runs,
    reduced_size_opts,
    select_rows,
)
from radkd_d2.modeling.distill import FeatureDistiller, parse_taps
from radkd_d2.modeling.capture import alias_shapes as seg_tap_shapes
from radkd_d2.modeling.teacher import load_teacher_cfg

RUNS = all_runs()
SEG_RUNS = [r for r in RUNS if isinstance(r, Run)]
DET_RUNS = [r for r in RUNS if isinstance(r, DetRun)]
DISTILL = [r for r in SEG_RUNS if r.role == "distill"]
SEG_ROWS = [r for r in all_rows() if isinstance(r.run, Run)]


@functools.lru_cache(maxsize=None)
def _load(path: str, opts: tuple):
    return load_cfg(path, *opts, validate=False)


def load_run(run, *opts):
    """The run's config (cached: each file is read once per session), a mutable copy."""
    cfg = _load(run.path, tuple(map(str, opts))).clone()
    cfg.defrost()
    return cfg


@functools.lru_cache(maxsize=None)
def teacher_cfg(config_file: str):
    return load_teacher_cfg(str(REPO / config_file), "cpu")


@pytest.mark.slow
def test_generator_check_passes():
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_config_matrix.py"), "--check"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generator_check_detects_an_edit(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_config_matrix", REPO / "tools" / "make_config_matrix.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    files = gen.expected_files()
    assert files == gen.expected_files()  # deterministic
    shutil.copytree(REPO / "configs" / "models", tmp_path / "configs" / "models")
    monkeypatch.setattr(gen, "REPO", tmp_path)
    assert gen.main(["--check"]) == 1  # nothing written yet
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    target = tmp_path / DISTILL[0].path
    target.write_text(target.read_text().replace("KD_WEIGHT", "KD_WEIGHT: 1.0\n    #"))
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    stale = tmp_path / "configs" / "voc" / "old_run_voc.yaml"  # a file no longer generated
    stale.write_text(gen.GENERATED + "\n")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and not stale.exists() and gen.main(["--check"]) == 0


def test_matrix_covers_the_tables():
    paths = {r.path for r in RUNS}
    assert len(paths) == len(RUNS) and len(DISTILL) >= 90
    counts = defaultdict(int)
    for row in all_rows():
        counts[row.table, row.dataset] += 1
    # Table 1: teacher + 4 students x (baseline + 5 or 6 methods); 3: 5 rows; 5: 12; 6: 5
    for d in ("cityscapes", "voc", "ade20k"):
        assert (counts["1", d], counts["3", d], counts["5", d]) == (1 + 4 + 22, 5, 12)
    assert counts["6", "cityscapes"] == counts["6", "ade20k"] == 5 and ("6", "voc") not in counts
    # Fig. 1 (Cityscapes): per panel T, S, naive and MD at each weight; SKD, IFVD lines for PSPNet
    assert counts["fig1", "cityscapes"] == 3 * (2 + 2 * len(FIG1_WEIGHTS)) + 2 * 2
    assert {d for t, d in counts if t == "fig1"} == {"cityscapes"}
    # Table 7: teacher, student, the paper's five methods, three more configs
    assert counts["7", COCO.key] == 2 + 5 + 3 and {d for t, d in counts if t == "7"} == {"coco"}
    for row in all_rows():
        assert (REPO / row.run.path).is_file(), row.run.path
        if row.table == "fig1":  # figure only: no numbers in the paper's text
            assert row.paper is None, row.label
        elif row.table in ("7", "rcnn"):
            assert row.paper is None or 35 < row.paper < 45, row.label
        else:
            assert row.paper is not None and 15 < row.paper < 90, row.label
    assert sum(r.paper is not None for r in select_rows("7")) == 7
    # beyond the paper: Faster and Mask R-CNN, 2 teachers + 2 students + 8 methods + 2 LAD pairs
    assert counts["rcnn", COCO.key] == 2 * (2 + 2 + 8 + 2)
    assert all(r.paper is None for r in select_rows("rcnn"))


def test_fig1_runs_differ_only_in_loss_and_weight():
    """Each Fig. 1 point is its student's baseline + one res5 tap (naive or md) at its weight,
    with the paper's logit KD; w = 10 naive is Table 5's file."""
    by_label = {r.label: r.run for r in select_rows("fig1")}
    for student in ("PSPNet-R18", "PSPNet-MV2", "UPerNet-SwinT"):
        for name, loss in (("Naive", "naive"), ("MD", "md")):
            for w in FIG1_WEIGHTS:
                run = by_label[f"{student}: {name} w={w:g}"]
                assert run.method.taps == (("res5", "res5", loss, w),), run.name
                assert run.kd_weight == 10.0 and run.kd_reduction == "element"
                assert (f"-w{w:g}_" in run.name) == (w != 10.0), run.name
    table5 = {r.run.path for r in select_rows("5", "cityscapes")}
    assert by_label["PSPNet-R18: Naive w=10"].path in table5


@pytest.mark.slow
def test_listing_tool_prints_every_row(capsys):
    tool = REPO / "tools" / "list_configs.py"
    cmd = [sys.executable, str(tool)]  # the command as users run it: every row
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True).stdout
    for row in all_rows():
        assert row.run.path in out and f"--config-file {row.run.path} --num-gpus 8" in out
    spec = importlib.util.spec_from_file_location("list_configs", tool)
    listing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listing)
    for table in TABLES:  # one table at a time (in-process)
        assert listing.main(["--table", table]) == 0
        out = capsys.readouterr().out
        for row in select_rows(table):
            assert row.run.path in out
            assert f"--config-file {row.run.path} --num-gpus 8" in out
    readme = (REPO / "configs" / "README.md").read_text()
    assert all(row.run.name in readme for row in all_rows())


@pytest.mark.parametrize("run", SEG_RUNS, ids=lambda r: r.name)
def test_config_loads_as_indexed(run):
    cfg = load_run(run)
    d = DATASETS[run.dataset.key]
    assert cfg.DATASETS.TRAIN == (d.train,) and cfg.DATASETS.TEST == (d.test,)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == d.num_classes
    assert tuple(cfg.INPUT.SEM_SEG.CROP_SIZE) == d.crop and cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.SOLVER.MAX_ITER == run.recipe.iterations(d) and cfg.OUTPUT_DIR == run.output_dir
    # the model section is that of configs/models/<model>.yaml
    model = yaml.safe_load((REPO / "configs" / "models" / f"{run.model.key}.yaml").read_text())
    for node, values in model["MODEL"].items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            if run.role != "teacher" and f"{node}.{key}" in dict(run.recipe.student_model):
                continue
            got = cfg.MODEL[node][key] if key else cfg.MODEL[node]
            assert (list(got) if isinstance(got, tuple) else got) == value, (node, key)
    if run.role == "distill":
        dcfg = cfg.MODEL.DISTILL
        assert cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor"
        assert [tuple(t) for t in dcfg.TAPS] == list(run.method.taps)
        assert dcfg.KD_WEIGHT == run.kd_weight
        if run.kd_weight > 0:
            assert dcfg.KD_REDUCTION == run.kd_reduction
        assert dcfg.TEACHER.CONFIG_FILE == run.teacher_run.path
        assert dcfg.TEACHER.WEIGHTS == f"{run.teacher_run.output_dir}/model_final.pth"
        tcfg = teacher_cfg(dcfg.TEACHER.CONFIG_FILE)
        assert tcfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == d.num_classes


@pytest.mark.parametrize("run", DET_RUNS, ids=lambda r: r.name)
def test_detection_config_loads_as_indexed(run):
    cfg, d = load_run(run), run.dataset
    assert cfg.DATASETS.TRAIN == (d.train,) and cfg.DATASETS.TEST == (d.test,)
    assert cfg.SOLVER.MAX_ITER == d.max_iter and tuple(cfg.SOLVER.STEPS) == d.steps
    assert cfg.SOLVER.BASE_LR == d.base_lr and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == d.min_size_train
    rcnn = run.model.meta_arch == "GeneralizedRCNN"
    heads = cfg.MODEL.ROI_HEADS if rcnn else cfg.MODEL.RETINANET
    assert heads.NUM_CLASSES == d.num_classes and cfg.OUTPUT_DIR == run.output_dir
    assert cfg.MODEL.MASK_ON == run.model.mask_on
    for key, value in run.model.resnets:  # the student's keys in a distillation config
        assert cfg.MODEL.RESNETS[key] == value, key
    weights = run.model.pretrained
    assert cfg.MODEL.WEIGHTS == run.model.weights and cfg.INPUT.FORMAT == weights.input_format
    assert tuple(cfg.MODEL.PIXEL_STD) == weights.pixel_std
    if run.role == "distill":
        dcfg = cfg.MODEL.DISTILL
        assert cfg.MODEL.META_ARCHITECTURE == run.model.distill_meta_arch
        assert [tuple(t) for t in dcfg.TAPS] == list(run.method.taps) and dcfg.KD_WEIGHT == 0
        for key, value in run.method.distill_opts:
            node, leaf = key.split(".")
            assert dcfg[node][leaf] == value, key
        assert dcfg.TEACHER.CONFIG_FILE == run.teacher_run.path
        assert dcfg.TEACHER.WEIGHTS == run.teacher_weights
        tcfg = teacher_cfg(dcfg.TEACHER.CONFIG_FILE)
        for key, value in run.teacher.resnets:
            assert tcfg.MODEL.RESNETS[key] == value, key
        assert tcfg.INPUT.FORMAT == run.teacher.pretrained.input_format
        assert tcfg.MODEL.META_ARCHITECTURE == run.model.meta_arch


@pytest.fixture(scope="module")
def built():
    """Reduced-size models, built once per distinct MODEL section (shared by the configs)."""
    cache = {}

    def get(cfg):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
        cfg.MODEL.DISTILL.TAPS, cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = [], ""
        cfg.merge_from_list(reduced_size_opts(cfg))
        key = cfg.MODEL.dump()
        if key not in cache:
            cache[key] = build_model(cfg)
        return cache[key]

    return get


@pytest.mark.slow
def test_every_distillation_builds_teacher_student_and_taps(built):
    """All distillation configs: student and teacher (reduced) build and every tap resolves."""
    for run in DISTILL:
        cfg = load_run(run, *REDUCED_DISTILL_OPTS)
        student = built(cfg)
        teacher = built(teacher_cfg(cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE))
        distiller = FeatureDistiller(
            parse_taps(cfg.MODEL.DISTILL.TAPS, cfg.MODEL.DISTILL.KD_WEIGHT),
            seg_tap_shapes(student),
            seg_tap_shapes(teacher),
            connector=cfg.MODEL.DISTILL.CONNECTOR,
            distill_cfg=cfg.MODEL.DISTILL,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        )
        assert len(distiller.losses) == len(run.method.taps) + (run.kd_weight > 0), run.name
        kd = [loss for loss in distiller.losses.values() if loss.NAME == "kd"]
        assert [k.reduction for k in kd] == ([run.kd_reduction] if run.kd_weight > 0 else [])


def _step_samples():
    """One distillation config per (table, method, student family), rotating over the data sets
    (and, in Table 5, the positions); a file already sampled is not run twice. Every config's
    parts are built by test_every_distillation_builds_teacher_student_and_taps."""
    by_key = defaultdict(list)
    for row in SEG_ROWS:
        run = row.run
        if run.role == "distill":  # Table 5 (one family): one per method, positions rotate
            tap = "" if row.table == "5" else run.method.tap  # Fig. 1: the weights rotate
            by_key[row.table, run.method.key, tap, run.model.family].append(run)
    samples = {}
    for i, runs in enumerate(by_key.values()):
        run = runs[i % len(runs)]
        samples.setdefault(run.path, run)
    return list(samples.values())


def test_step_samples_cover_the_matrix():
    """The smoke-test sample has every student family, every (table, method) pair and both logit
    KD reductions of the matrix, and no config twice (computed from the selection alone)."""
    samples = _step_samples()
    paths = [r.path for r in samples]
    assert len(paths) == len(set(paths))
    assert {r.model.family for r in samples} == {r.model.family for r in DISTILL}
    sampled = set(paths)
    pairs = defaultdict(set)  # (table, method) -> families sampled for it
    for row in SEG_ROWS:
        if row.run.role == "distill" and row.run.path in sampled:
            pairs[row.table, row.run.method.key].add(row.run.model.family)
    for row in SEG_ROWS:
        if row.run.role == "distill":
            assert row.run.model.family in pairs[row.table, row.run.method.key], row.label
    reductions = {r.kd_reduction for r in samples if r.kd_weight > 0}
    assert reductions == {r.kd_reduction for r in DISTILL if r.kd_weight > 0}
    assert reductions == {"element", "pixel"}


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convs gain nothing from two, and idle threads spin on a
    shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("run", _step_samples(), ids=lambda r: r.name)
def test_one_distillation_step(run, one_thread):
    cfg = load_run(
        run, "MODEL.DISTILL.TEACHER.WEIGHTS", "", *REDUCED_DISTILL_OPTS
    )  # random teacher
    tcfg = teacher_cfg(cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE)
    cfg.merge_from_list(reduced_size_opts(cfg))
    cfg.MODEL.DISTILL.TEACHER.OPTS = reduced_size_opts(tcfg)
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE)
    model = build_model(cfg)
    model.train()
    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = []
    for _ in range(2):
        label = torch.randint(0, k, (64, 64))
        label[:4] = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        batch.append({"image": torch.randint(0, 256, (3, 64, 64)).float(), "sem_seg": label})
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    assert any(k.startswith("loss_distill_") for k in losses), losses
    assert ("loss_distill_kd_logits" in losses) == (run.kd_weight > 0), sorted(losses)
    for name, value in losses.items():
        assert math.isfinite(value.item()), (name, value.item())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())
