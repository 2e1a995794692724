"""DistillRetinaNet: frozen teacher, one loss per FPN level for every method, FGD boxes through
the model, bad inputs, student init from the teacher, export round trip, and train_net end to
end (1 and 2 processes) on the synthetic set and on tiny_coco."""
import contextlib
import logging

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

from conftest import REPO, SHARED_DATA, load_cfg, read_metrics, run_train_net
from radkd_d2.analysis.profiling import capture_distiller_inputs, count_sync_ops, distiller_step
from radkd_d2.engine import ConfigError, Trainer
from radkd_d2.losses import fgd_loss, fgd_masks
from radkd_d2.modeling.teacher import TeacherLoadError, load_teacher_cfg

DISTILL = "configs/synthetic/distill/lad_fpn_retx50_retr18_tiny_synthetic.yaml"
TEACHER_CFG = str(REPO / "configs/synthetic/retinanet_x50_tiny.yaml")
TINY_COCO_DISTILL = "configs/tiny_coco/distill/fgd_fpn_retx50_retr18_tiny_tiny_coco.yaml"
TINY_COCO_TEACHER = str(REPO / "configs/tiny_coco/retinanet_x50_tiny_coco.yaml")
LEVELS = ("p3", "p4", "p5", "p6", "p7")
METHODS = ("lad", "cad", "pad", "fgd", "mgd", "cwd", "pkd", "fkd", "naive")
SIZE_64 = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 64,
]
SMALL = ["DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64]
NUM_CLASSES = 5


def taps(method, levels=LEVELS, weight=1.0):
    """MODEL.DISTILL.TAPS entries: ``method`` on each of ``levels``."""
    return [[lv, lv, method, weight] for lv in levels]


def distill_cfg(tmp_path, *opts, teacher_weights="", config=DISTILL, teacher_cfg=TEACHER_CFG):
    return load_cfg(
        config, "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_cfg,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights,
        *SIZE_64, *opts, data_root=tmp_path, validate=False,
    )


def instances(boxes, size=(64, 64), classes=None):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    n = len(inst.gt_boxes)
    inst.gt_classes = torch.as_tensor(classes if classes is not None else [i % NUM_CLASSES for i in range(n)])
    return inst


def batch(seed=0, boxes=([[4, 6, 30, 40], [20, 10, 60, 50]], [[0, 0, 16, 16]])):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 255, (3, 64, 64), generator=g).float(), "instances": instances(b)}
        for b in boxes
    ]


def teacher_state(model):
    t = model.teacher
    return {k: v.clone() for k, v in {**dict(t.named_parameters()), **dict(t.named_buffers())}.items()}


def train_steps(model, optimizer, steps=1, boxes=None):
    model.train()
    with EventStorage(0) as storage:
        for i in range(steps):
            storage.iter = i
            losses = model(batch(seed=i) if boxes is None else batch(seed=i, boxes=boxes))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        latest = {k: v for k, (v, _) in storage.latest().items()}
    return losses, latest


@contextlib.contextmanager
def capture_radkd_log(caplog, level=logging.INFO):
    """caplog for the ``radkd_d2`` loggers even after setup_logger turned their propagation off."""
    logger = logging.getLogger("radkd_d2")
    old = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old)


def sgd(model):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)


# ---- the model ------------------------------------------------------------------------------


def test_teacher_bit_identical_and_not_optimised(tmp_path):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps("lad", weight=10.0) + taps("mgd", ["p3"])))
    model = build_model(cfg)
    before = teacher_state(model)
    optimizer = Trainer.build_optimizer(cfg, model)
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not {id(p) for p in model.teacher.parameters()} & opt_ids, "optimizer holds teacher parameters"
    assert {id(p) for p in model.distiller.parameters()} <= opt_ids
    losses, _ = train_steps(model, optimizer, steps=2)
    expected = {f"loss_distill_lad_{lv}" for lv in LEVELS} | {"loss_distill_mgd_p3"}
    assert expected | {"loss_cls", "loss_box_reg"} <= set(losses)
    assert not model.teacher.training and model.training
    after = teacher_state(model)
    for k in before:
        assert torch.equal(before[k], after[k]), f"teacher {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    state = model.state_dict()
    assert not any(k.startswith(("teacher.", "teachers.")) for k in state)
    assert any(k.startswith("distiller.losses.p3__mgd.") for k in state)
    assert "distiller." not in str(list(model.student_state_dict()))


@pytest.mark.parametrize("method", METHODS)
def test_one_loss_per_level_for_each_method(tmp_path, method):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps(method)), "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1)
    model = build_model(cfg)
    losses, logged = train_steps(model, sgd(model))
    for lv in LEVELS:
        key = f"loss_distill_{method}_{lv}"
        assert key in losses and losses[key].dim() == 0 and torch.isfinite(losses[key]), (key, losses)
        for stat in ("m", "n", "mn_over_N", "cos_theta"):
            assert np.isfinite(logged[f"distill/{lv}/{stat}"]), (lv, stat)
    assert model.backbone.bottom_up.res5[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_one_teacher_forward_per_step(tmp_path):
    """All five FPN taps come from one teacher backbone forward without autograd; the teacher's
    head is never run (detection distils features only)."""
    model = build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps("lad"))))
    calls = {"teacher": [], "teacher_head": [], "student": []}
    for side, part in (("teacher", model.teacher.backbone), ("teacher_head", model.teacher.head), ("student", model.backbone)):
        part.register_forward_hook(lambda mod, i, o, side=side: calls[side].append(torch.is_grad_enabled()))
    train_steps(model, sgd(model))
    assert calls == {"teacher": [False], "teacher_head": [], "student": [True]}, calls


@pytest.mark.parametrize("method", METHODS)
def test_loss_path_has_no_host_syncs(tmp_path, method):
    """Per-level losses (FGD's box masks included), forward and backward: no operator that would
    make a GPU wait, except the diagnostics read on their iterations."""
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps(method)), "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 5)
    model = build_model(cfg)
    student, teacher, context = capture_distiller_inputs(model, batch())
    assert count_sync_ops(lambda: distiller_step(model.distiller, student, teacher, context, 1)) == {}
    logged = count_sync_ops(lambda: distiller_step(model.distiller, student, teacher, context, 5))
    assert logged == {"Tensor.tolist": 1}, logged  # five taps, one read


def test_bottom_up_taps_connectors_and_fpn_equivalence(tmp_path):
    cfg = distill_cfg(
        tmp_path,
        "MODEL.DISTILL.TAPS", "[['res4', 'res4', 'lad', 1.0], ['p3', 'p3', 'pad', 1.0], ['res3', 'p3', 'cad', 1.0]]",
        "MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER", "[]",
    )
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.FPN.OUT_CHANNELS", 96]
    model = build_model(cfg)
    assert set(model.distiller.connectors) == {"p3", "res3_to_p3"}  # 64 -> 96 channels
    assert "res4" not in model.distiller.connectors  # equal channels (256): no connector
    inputs = [{"image": torch.randint(0, 255, (3, 64, 96)).float(), "height": 64, "width": 96} for _ in range(2)]
    model.eval()
    read = model.read_features(inputs, ["res3", "res4", "p3"], ["res4", "p3"])
    for side, detector, feats in zip(("student", "teacher"), (model, model.teacher), read):
        with torch.no_grad():
            x = detector.preprocess_image(inputs).tensor
            direct, stages = detector.backbone(x), detector.backbone.bottom_up(x)
        for k, v in feats.items():
            if k != "backbone:input":
                assert torch.equal(v, {**stages, **direct}[k]), (side, k)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # none left
    losses, _ = train_steps(model, sgd(model))
    for key in ("loss_distill_lad_res4", "loss_distill_pad_p3", "loss_distill_cad_res3_to_p3"):
        assert torch.isfinite(losses[key]), key


class _RecordContext(torch.nn.Module):
    """Wraps a loss module and keeps the arguments of its last call."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.calls = loss, []

    def forward(self, student, teacher, **context):
        self.calls.append((student.detach(), teacher.detach(), context))
        return self.loss(student, teacher, **context)


def test_fgd_boxes_reach_the_loss_in_padded_input_pixels(tmp_path):
    """A 128x96 (h x w) image with one box, resized by the stock mapper to 64x48, and a 96x96
    image without boxes (48x48): one batch padded to 64x64. The FGD loss must see the box in
    the resized frame and the padded size, and paint the hand-computed cells."""
    cfg = distill_cfg(
        tmp_path, "MODEL.DISTILL.TAPS", str(taps("fgd", ("p3", "p4"))), "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "INPUT.RANDOM_FLIP", "none",
    )
    rng = np.random.default_rng(0)
    dicts = []
    for i, (h, w, annos) in enumerate([(128, 96, [[24, 32, 48, 64]]), (96, 96, [])]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        objs = [{"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0} for b in annos]
        dicts.append({"file_name": str(path), "height": h, "width": w, "image_id": i, "annotations": objs})
    mapper = DatasetMapper(cfg, is_train=True)
    inputs = [mapper(d) for d in dicts]
    assert tuple(inputs[0]["image"].shape[-2:]) == (64, 48) and tuple(inputs[1]["image"].shape[-2:]) == (48, 48)
    model = build_model(cfg)
    model.train()
    for lv in ("p3", "p4"):
        model.distiller.losses[f"{lv}__fgd"] = _RecordContext(model.distiller.losses[f"{lv}__fgd"])
    with EventStorage(0):
        losses = model(inputs)
    expected_boxes = [torch.tensor([[12.0, 16.0, 36.0, 48.0]]), torch.zeros(0, 4)]
    # p3 is 8x8 (stride 8): columns floor(12/8)=1 .. ceil(36/8)=5, rows 2 .. 6 -> 25 cells;
    # p4 is 4x4: columns 0 .. 3, rows 1 .. 3 -> 12 cells
    cells = {"p3": (8, slice(2, 7), slice(1, 6), 25), "p4": (4, slice(1, 4), slice(0, 4), 12)}
    for lv, (side, rows, cols, area) in cells.items():
        loss = model.distiller.losses[f"{lv}__fgd"]
        (student, teacher, context), = loss.calls
        assert tuple(context["image_size"]) == (64, 64)
        assert torch.equal(context["boxes"][0], expected_boxes[0]) and context["boxes"][1].shape == (0, 4)
        fg, bg = fgd_masks(context["boxes"], context["image_size"], student.shape[-2:])
        want = torch.zeros(2, side, side)
        want[0, rows, cols] = 1.0 / area
        assert torch.allclose(fg, want)
        assert torch.allclose(bg[1], torch.full((side, side), 1.0 / side**2))  # no boxes: all background
        assert bg[0][rows, cols].sum() == 0
        reference = fgd_loss(
            student, teacher, expected_boxes, (64, 64),
            global_student=loss.loss.global_student, global_teacher=loss.loss.global_teacher,
        )
        assert torch.allclose(losses[f"loss_distill_fgd_{lv}"].detach(), reference)


@pytest.mark.parametrize("method", ["fgd", "fkd", "lad"])
def test_batch_without_annotations(tmp_path, method):
    model = build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps(method))))
    losses, _ = train_steps(model, sgd(model), boxes=([], []))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(f"loss_distill_{method}_{lv}" in losses for lv in LEVELS)


def test_bad_configs(tmp_path):
    cfg = distill_cfg(tmp_path)
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.RETINANET.NUM_CLASSES", 7]
    with pytest.raises(ConfigError, match="teacher predicts 7 classes but the student 5"):
        build_model(cfg)
    levels = r"aliases \['p3', 'p4', 'p5', 'p6', 'p7', 'res3', 'res4', 'res5'\]"
    with pytest.raises(ConfigError, match=f"student position 'p8' names no module.*nearest: \\['p7'.*{levels}"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['p8', 'p8', 'lad', 1.0]]"))
    with pytest.raises(ConfigError, match=f"teacher position 'res2' names no module.*{levels}"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['p3', 'res2', 'lad', 1.0]]"))
    with pytest.raises(ConfigError, match="KD_WEIGHT = 10.0: the pixel-wise logit KD term is for segmentation"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.KD_WEIGHT", 10.0))
    with pytest.raises(ConfigError, match="builds a SemanticSegmentor; a detection teacher must be a RetinaNet"):
        build_model(distill_cfg(tmp_path, teacher_cfg=str(REPO / "configs/synthetic/pspnet_r18_tiny.yaml")))


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    seg_cfg = load_teacher_cfg(
        str(REPO / "configs/synthetic/pspnet_r18_tiny.yaml"), "cpu", ["MODEL.DRN.WIDTH_MULT", 0.125]
    )
    torch.save({"model": build_model(seg_cfg).state_dict()}, tmp_path / "seg.pth")
    with pytest.raises(TeacherLoadError) as err:
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "seg.pth")))
    msg = str(err.value)
    assert "does not match the teacher model" in msg
    assert "missing keys:" in msg and "head.cls_score.weight" in msg and "backbone.fpn_lateral3.weight" in msg
    assert "unexpected keys:" in msg and "sem_seg_head." in msg


def test_teacher_checkpoint_loads_exactly(tmp_path):
    source = build_model(load_teacher_cfg(TEACHER_CFG, "cpu"))
    torch.save({"model": source.state_dict()}, tmp_path / "t.pth")
    model = build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "t.pth")))
    for k, v in source.state_dict().items():
        assert torch.equal(v, model.teacher.state_dict()[k]), k


def test_init_student_from_teacher(tmp_path, caplog):
    with capture_radkd_log(caplog):
        model = build_model(distill_cfg(tmp_path))  # FPN + head from the teacher (config default)
    s, t = model.state_dict(), model.teacher.state_dict()
    copied = [k for k in s if k.startswith(("backbone.fpn_", "backbone.top_block.", "head."))]
    assert len(copied) == 28  # FPN 12, P6/P7 4, head 12
    for k in copied:
        assert torch.equal(s[k], t[k]), k
    assert not torch.equal(s["backbone.bottom_up.stem.conv1.weight"], t["backbone.bottom_up.stem.conv1.weight"])
    log = caplog.text
    assert "Initialised 28 student tensors from the teacher" in log
    assert all(k in log for k in copied)
    with pytest.raises(ConfigError, match=r"prefix 'neck\.' matches no student parameter"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER", "['neck.']"))
    cfg = distill_cfg(tmp_path)
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.FPN.OUT_CHANNELS", 96]
    with pytest.raises(ConfigError, match="no student key under 'backbone.fpn_' has a teacher counterpart"):
        build_model(cfg)
    # head.cls_score differs in shape only when class counts differ, which is refused earlier;
    # with fewer teacher convs, the student's extra conv keeps its own initialisation
    cfg = distill_cfg(
        tmp_path, "MODEL.RETINANET.NUM_CONVS", 3, "MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER", "['head.']"
    )
    with capture_radkd_log(caplog, logging.WARNING):
        build_model(cfg)
    assert "head.cls_subnet.4.weight: student (64, 64, 3, 3), teacher absent" in caplog.text


# ---- end to end through tools/train_net.py ------------------------------------------------


def _opts(data_root, out, teacher, iters=6):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL, *SIZE_64,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.CHECKPOINT_PERIOD", iters, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 2, "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
    ]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """An (untrained) tiny X50 RetinaNet checkpoint: the tests check plumbing, not accuracy."""
    path = tmp_path_factory.mktemp("det_teacher") / "teacher.pth"
    torch.save({"model": build_model(load_teacher_cfg(TEACHER_CFG, "cpu")).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def distill_run(data_root, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("det_distill")
    proc = run_train_net("--config-file", REPO / DISTILL, *_opts(data_root, out, teacher_ckpt))
    return out, proc.stdout + proc.stderr


def _copypaste(log):
    return [line.split("copypaste: ")[1] for line in log.splitlines() if "copypaste: " in line][-1]


def test_train_net_distillation(distill_run):
    out, log = distill_run
    rows = read_metrics(out)
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 5
    for lv in LEVELS:
        assert any(f"loss_distill_lad_{lv}" in r for r in rows), lv
        for stat in ("m", "n", "mn_over_N", "cos_theta"):
            values = [r[f"distill/{lv}/{stat}"] for r in rows if f"distill/{lv}/{stat}" in r]
            assert values and all(np.isfinite(values)), (lv, stat)
    final = [r for r in rows if "bbox/AP" in r][-1]
    assert all(f"bbox/{k}" in final for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith(("teacher.", "teachers.")) for k in ckpt["model"]), "teacher saved in checkpoint"
    assert "Initialised 28 student tensors from the teacher" in log


@pytest.mark.slow
def test_export_student_round_trip(distill_run, data_root, tmp_path):
    from radkd_d2.engine.setup import load_config
    from radkd_d2.export import export_student

    out, log = distill_run
    cfg = load_config(str(REPO / DISTILL), _opts(data_root, out, ""), validate=False)
    ckpt, student_cfg = export_student(cfg, str(out / "model_final.pth"), str(tmp_path / "student"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "teachers.", "distiller.")) for k in state)
    proc = run_train_net(
        "--config-file", student_cfg, "--eval-only", "MODEL.WEIGHTS", ckpt, "OUTPUT_DIR", tmp_path / "eval",
        "DATASETS.ROOT", data_root,
    )
    eval_log = proc.stdout + proc.stderr
    assert "Some model parameters or buffers are not found" not in eval_log
    assert "were not used" not in eval_log.replace("not used in the model", "")
    assert "META_ARCHITECTURE: RetinaNet" in student_cfg.read_text()
    assert _copypaste(eval_log) == _copypaste(log)  # AP, AP50, AP75, APs, APm, APl


@pytest.mark.slow
def test_train_net_distillation_two_processes(data_root, teacher_ckpt, tmp_path):
    proc = run_train_net(
        "--config-file", REPO / DISTILL, "--num-gpus", 2, *_opts(data_root, tmp_path, teacher_ckpt, iters=3),
        "DATASETS.TEST", "()",
    )
    assert "World size: 2" in proc.stdout + proc.stderr
    rows = read_metrics(tmp_path)
    assert any("loss_distill_lad_p7" in r for r in rows)


# ---- tiny_coco (real COCO images) -----------------------------------------------------------

needs_tiny_coco = pytest.mark.skipif(
    not (SHARED_DATA / "tiny_coco" / "annotations").is_dir(),
    reason=f"tiny_coco not found under {SHARED_DATA} (set RADKD_SHARED_DATA to the shared data folder)",
)


@needs_tiny_coco
def test_tiny_coco_registration():
    load_cfg(TINY_COCO_DISTILL, "DATASETS.ROOT", SHARED_DATA, validate=True)
    train, val = DatasetCatalog.get("tiny_coco_train2017"), DatasetCatalog.get("tiny_coco_val2017")
    assert len(train) == 50 and len(val) == 50
    meta = MetadataCatalog.get("tiny_coco_train2017")
    assert len(meta.thing_classes) == 80 and meta.thing_dataset_id_to_contiguous_id[90] == 79
    assert meta.evaluator_type == "coco"
    assert sum(len(d["annotations"]) == 0 for d in train) >= 1  # kept: FILTER_EMPTY_ANNOTATIONS False


@pytest.mark.slow
@needs_tiny_coco
def test_tiny_coco_fgd_training_iterations(tmp_path):
    """FGD distillation steps on real COCO images from the stock loader, and a batch holding the
    image without boxes (kept by FILTER_EMPTY_ANNOTATIONS False)."""
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": build_model(load_teacher_cfg(TINY_COCO_TEACHER, "cpu")).state_dict()}, teacher)
    cfg = load_cfg(
        TINY_COCO_DISTILL, "DATASETS.ROOT", SHARED_DATA, "MODEL.DISTILL.TEACHER.CONFIG_FILE", TINY_COCO_TEACHER,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "SOLVER.IMS_PER_BATCH", 2,
    )
    model = build_model(cfg)
    model.train()
    # an untrained teacher's FPN features are large: a small step keeps the student finite
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    train = DatasetCatalog.get("tiny_coco_train2017")
    mapper = DatasetMapper(cfg, is_train=True)
    empty_batch = [mapper(next(d for d in train if not d["annotations"])), mapper(train[0])]
    assert len(empty_batch[0]["instances"]) == 0 and len(empty_batch[1]["instances"]) > 0
    loader = iter(build_detection_train_loader(cfg))
    with EventStorage(0) as storage:
        for i, inputs in enumerate([empty_batch, next(loader), next(loader)]):
            storage.iter = i
            losses = model(inputs)
            assert all(torch.isfinite(losses[f"loss_distill_fgd_{lv}"]) for lv in LEVELS), (i, losses)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
