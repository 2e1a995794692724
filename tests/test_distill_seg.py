"""DistillSemanticSegmentor: frozen teacher, taps at every position, losses from the registry,
strict teacher loading, export round trip, and train_net end to end (1 and 2 processes)."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg, read_metrics, run_train_net
from radkd_d2.analysis.profiling import capture_distiller_inputs, count_sync_ops, distiller_step
from radkd_d2.engine import ConfigError, Trainer
from radkd_d2.losses import DISTILL_LOSS_REGISTRY
from radkd_d2.modeling.teacher import TeacherLoadError

DISTILL = "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml"
TEACHER_CFG = str(REPO / "configs/synthetic/pspnet_r101_tiny.yaml")
SMALL = ["DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64]
# detection-only losses need GT boxes, which segmentation batches do not have
DETECTION_ONLY = {"fgd", "fkd"}
SMALL_CIRKD = [  # CIRKD's published memory sizes are for full-size training
    "MODEL.DISTILL.CIRKD.PIXEL_MEMORY_SIZE", 64, "MODEL.DISTILL.CIRKD.REGION_MEMORY_SIZE", 16,
    "MODEL.DISTILL.CIRKD.PIXEL_CONTRAST_SIZE", 32, "MODEL.DISTILL.CIRKD.REGION_CONTRAST_SIZE", 16,
]


def distill_cfg(tmp_path, *opts, teacher_weights=""):
    cfg = load_cfg(
        DISTILL, "MODEL.DISTILL.TEACHER.CONFIG_FILE", TEACHER_CFG,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights, "MODEL.DRN.WIDTH_MULT", 0.125,
        "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.DRN.WIDTH_MULT', 0.125, 'MODEL.DRN.DEPTH', 50]",
        *opts, data_root=tmp_path, validate=False,
    )
    return cfg


def batch(n=2, size=64, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randint(0, 255, (3, size, size), generator=g).float(),
            "sem_seg": torch.randint(0, classes, (size, size), generator=g),
        }
        for _ in range(n)
    ]


def teacher_state(model):
    return {k: v.clone() for k, v in {**dict(model.teacher.named_parameters()), **dict(model.teacher.named_buffers())}.items()}


def train_steps(model, optimizer, steps=3):
    model.train()
    with EventStorage(0) as storage:
        for i in range(steps):
            storage.iter = i
            losses = model(batch(seed=i))
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    return losses


def test_teacher_frozen_and_not_optimised(tmp_path):
    cfg = distill_cfg(tmp_path)
    model = build_model(cfg)
    before = teacher_state(model)
    optimizer = Trainer.build_optimizer(cfg, model)
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_ids & opt_ids, "optimizer holds teacher parameters"
    assert {id(p) for p in model.distiller.parameters()} <= opt_ids
    losses = train_steps(model, optimizer)
    assert set(losses) >= {"loss_sem_seg", "loss_distill_lad_res5", "loss_distill_kd_logits"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert not model.teacher.training and model.training
    after = teacher_state(model)
    for k in before:
        assert torch.equal(before[k], after[k]), f"teacher {k} changed"
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not any(k.startswith(("teacher.", "teachers.")) for k in model.state_dict())


def test_gradients_reach_student_and_connectors_only(tmp_path):
    cfg = distill_cfg(tmp_path)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch())
    losses["loss_distill_lad_res5"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    connector = model.distiller.connectors["res5"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector.parameters())
    assert model.backbone.res5[0].conv1.weight.grad.abs().sum() > 0
    # the feature loss on res5 does not reach the head
    assert model.sem_seg_head.predictor.weight.grad is None


@pytest.mark.parametrize("head", ["PSPHead", "DeepLabV3Head"])
@pytest.mark.parametrize("position", ["res5", "decoder", "logits", "res4"])
def test_tap_positions(tmp_path, head, position):
    taps = f"[['{position}', '{position}', 'cad', 1.0], ['{position}', '{position}', 'naive', 1.0]]"
    cfg = distill_cfg(tmp_path, "MODEL.SEM_SEG_HEAD.NAME", head, "MODEL.DISTILL.TAPS", taps)
    cfg.MODEL.DISTILL.TEACHER.OPTS += ["MODEL.SEM_SEG_HEAD.NAME", head]
    model = build_model(cfg)
    losses = train_steps(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01), 1)
    for name in ("cad", "naive"):
        assert torch.isfinite(losses[f"loss_distill_{name}_{position}"])


def test_cross_position_tap_with_resize(tmp_path):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['res2', 'res5', 'lad', 1.0]]")
    model = build_model(cfg)
    losses = train_steps(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01), 1)
    assert torch.isfinite(losses["loss_distill_lad_res2_to_res5"])


@pytest.mark.parametrize("name", sorted(n for n, _ in DISTILL_LOSS_REGISTRY))
def test_every_registered_loss_on_a_tap(tmp_path, name):
    if name in DETECTION_ONLY:
        pytest.skip(f"{name} needs ground-truth boxes: covered by the detection tests")
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", f"[['res5', 'res5', '{name}', 1.0]]",
                      "MODEL.DISTILL.KD_WEIGHT", 0.0, *SMALL_CIRKD)
    model = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = train_steps(model, torch.optim.SGD(params, lr=0.001), 2)
    key = f"loss_distill_{name}_res5"
    assert key in losses and torch.isfinite(losses[key]), losses


def test_one_teacher_forward_per_step(tmp_path):
    """Taps on backbone, decoder and logits all come from a single teacher forward (and a single
    student forward), without autograd on the teacher side."""
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['res4', 'res4', 'lad', 1.0], ['decoder', 'decoder', 'cad', 1.0]]",
                      "MODEL.DISTILL.KD_WEIGHT", 1.0)
    model = build_model(cfg)
    calls = {"teacher": [], "student": []}
    for side, m in (("teacher", model.teacher), ("student", model)):
        for part in (m.backbone, m.sem_seg_head.predictor):
            part.register_forward_hook(lambda mod, i, o, side=side: calls[side].append(torch.is_grad_enabled()))
    train_steps(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3), 1)
    assert calls == {"teacher": [False, False], "student": [True, True]}, calls


@pytest.mark.parametrize("name", sorted(n for n, _ in DISTILL_LOSS_REGISTRY))
def test_loss_path_has_no_host_syncs(tmp_path, name):
    """Connector + resize + loss + KD, forward and backward, call no operator that would make a
    GPU wait (item/float/bool reads, nonzero, unique...), except on diagnostics iterations."""
    if name in DETECTION_ONLY:
        pytest.skip(f"{name} needs ground-truth boxes: covered by the detection tests")
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", f"[['res4', 'res5', '{name}', 1.0]]",
                      "MODEL.DISTILL.KD_WEIGHT", 1.0, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 5, *SMALL_CIRKD)
    model = build_model(cfg)
    student, teacher, context = capture_distiller_inputs(model, batch())
    assert count_sync_ops(lambda: distiller_step(model.distiller, student, teacher, context, 1)) == {}
    logged = count_sync_ops(lambda: distiller_step(model.distiller, student, teacher, context, 5))
    assert logged == {"Tensor.tolist": 1}, logged  # one read of all taps' statistics


def test_bad_tap_configs(tmp_path):
    with pytest.raises(ConfigError, match=r"student position 'res9' names no module.*nearest: \['res5'.*aliases \['decoder', 'logits', 'res2'"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['res9', 'res5', 'lad', 1.0]]"))
    with pytest.raises(KeyError, match="registered names: .*lad"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['res5', 'res5', 'lad2', 1.0]]"))
    with pytest.raises(ConfigError, match=r"tap res5: student 'res5' has 64 channels but teacher 'res5' has 256"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.CONNECTOR", "none"))
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['res5', 'res5', 'lad', -1.0]]"))
    with pytest.raises(ConfigError, match="teacher predicts 7 classes but the student 6"):
        cfg = distill_cfg(tmp_path)
        cfg.MODEL.DISTILL.TEACHER.OPTS += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7]
        build_model(cfg)


def test_teacher_files_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher weights '.*nope.pth' do not exist"):
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "nope.pth")))
    cfg = distill_cfg(tmp_path)
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="CONFIG_FILE: teacher config .*nope.yaml' does not exist"):
        build_model(cfg)


def test_teacher_weights_folder_and_empty_file_are_named(tmp_path):
    from radkd_d2.errors import TeacherLoadError

    (tmp_path / "run").mkdir()
    with pytest.raises(TeacherLoadError, match=r"MODEL.DISTILL.TEACHER.WEIGHTS = '.*run' is a folder: name the .pth file in it"):
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "run")))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(TeacherLoadError, match=r"empty.pth': the file is empty \(0 bytes\)$"):
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "empty.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherLoadError, match=r"junk.pth': \w+.*\(truncated, damaged or not a checkpoint\)$"):
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "junk.pth")))


def test_strict_teacher_loading_lists_keys(tmp_path):
    cfg = distill_cfg(tmp_path)
    teacher = build_model(cfg).teacher
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("sem_seg_head.predictor")}
    state["extra.weight"] = torch.zeros(3)
    state["backbone.stem.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(TeacherLoadError) as err:
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "bad.pth")))
    msg = str(err.value)
    assert "sem_seg_head.predictor.weight" in msg and "sem_seg_head.predictor.bias" in msg
    assert "extra.weight" in msg and "backbone.stem.conv1.weight: (1, 1, 1, 1)" in msg
    # non-strict loads, still listing the keys (as warnings)
    model = build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TEACHER.STRICT", False, teacher_weights=str(tmp_path / "bad.pth")))
    assert torch.equal(model.teacher.backbone.res5[0].conv1.weight, state["backbone.res5.0.conv1.weight"])
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherLoadError, match="could not read teacher checkpoint"):
        build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "corrupt.pth")))


def test_teacher_loads_exact_weights(tmp_path):
    cfg = distill_cfg(tmp_path)
    source = build_model(cfg).teacher
    torch.save({"model": source.state_dict()}, tmp_path / "t.pth")
    model = build_model(distill_cfg(tmp_path, teacher_weights=str(tmp_path / "t.pth")))
    for k, v in source.state_dict().items():
        assert torch.equal(v, model.teacher.state_dict()[k]), k


# ---- end to end through tools/train_net.py -------------------------------------------------


def _opts(data_root, out, teacher, iters=10):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL,
        "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters,
        "SOLVER.CHECKPOINT_PERIOD", iters, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 2,
    ]


@pytest.fixture(scope="module")
def teacher_ckpt(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run_train_net(
        "--config-file", TEACHER_CFG, "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out,
        *SMALL, "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 10,
        "SOLVER.CHECKPOINT_PERIOD", 10,
    )
    return out / "model_final.pth"


@pytest.fixture(scope="module")
def distill_run(data_root, teacher_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    run_train_net("--config-file", REPO / DISTILL, *_opts(data_root, out, teacher_ckpt))
    return out


def test_train_net_distillation_writes_diagnostics(distill_run):
    rows = read_metrics(distill_run)
    assert any("loss_distill_lad_res5" in r for r in rows)
    for stat in ("m", "n", "mn_over_N", "cos_theta"):
        values = [r[f"distill/res5/{stat}"] for r in rows if f"distill/res5/{stat}" in r]
        assert values and all(v == v for v in values), stat
    ckpt = torch.load(distill_run / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith(("teacher.", "teachers.")) for k in ckpt["model"]), "teacher saved in checkpoint"
    assert any(k.startswith("distiller.connectors.res5") for k in ckpt["model"])


@pytest.mark.slow
def test_export_student_round_trip(distill_run, data_root, tmp_path):
    from radkd_d2.engine.setup import load_config
    from radkd_d2.export import export_student

    cfg = load_config(str(REPO / DISTILL), [*_opts(data_root, distill_run, "")], validate=False)
    ckpt, student_cfg = export_student(cfg, str(distill_run / "model_final.pth"), str(tmp_path / "student"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("teacher.", "teachers.", "distiller.")) for k in state)
    proc = run_train_net(
        "--config-file", student_cfg, "--eval-only", "MODEL.WEIGHTS", ckpt,
        "OUTPUT_DIR", tmp_path / "eval", "DATASETS.ROOT", data_root,
    )
    log = proc.stdout + proc.stderr
    assert "Some model parameters or buffers are not found" not in log
    assert "were not used" not in log.replace("not used in the model", "")
    final = [r for r in read_metrics(distill_run) if "sem_seg/mIoU" in r][-1]
    assert f"copypaste: {final['sem_seg/mIoU']:.4f}" in log
