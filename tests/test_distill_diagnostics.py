"""Distillation you can diagnose: per-term gradient balance, the weight schedule, teacher
sanity checks, taps that read the features they name, and a distillation that has an effect."""
import json
import logging

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from conftest import REPO, run_train_net
from radkd_d2.modeling.distill import DistillSchedule, LossBalanceMonitor, Tap
from radkd_d2.modeling.teacher import TeacherLoadError
from test_distill_seg import SMALL, TEACHER_CFG, batch, distill_cfg



def capture(module, store, key):
    """Forward hook that keeps ``module``'s output dict (the tapped features) in ``store[key]``."""
    return module.register_forward_hook(lambda m, i, out: store.__setitem__(key, out))


def independent_lad(s, t):
    """Eq. 5 from its definition: each sample flattened, L2-normalised, squared distance."""
    b = s.shape[0]
    return (F.normalize(s.reshape(b, -1), dim=1) - F.normalize(t.reshape(b, -1), dim=1)).pow(2).sum(1).mean()


# ---------------------------------------------------------------- gradient-balance diagnostics


def test_grad_norms_logged_on_diagnostics_iterations_and_match_autograd(tmp_path):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 2)
    model = build_model(cfg).train()
    feats = {}
    capture(model.backbone, feats, "backbone")
    with EventStorage(0) as storage:
        storage.iter = 2
        losses = model(batch())
        logged = {k: v[0] for k, v in storage.latest().items() if k.startswith(("grad_norm/", "grad_ratio/"))}
    res5 = feats["backbone"]["res5"]
    for term in ("loss_sem_seg", "loss_distill_lad_res5", "loss_distill_kd_logits"):
        (g,) = torch.autograd.grad(losses[term], res5, retain_graph=True)
        assert logged[f"grad_norm/{term}/res5"] == pytest.approx(g.norm().item(), rel=1e-4), term
    task = logged["grad_norm/task/res5"]
    assert task == pytest.approx(logged["grad_norm/loss_sem_seg/res5"], rel=1e-6)  # the only task term
    assert logged["grad_ratio/loss_distill_lad_res5"] == pytest.approx(
        logged["grad_norm/loss_distill_lad_res5/res5"] / task, rel=1e-5
    )
    # the KD term's ratio is taken at its own position, the logits
    assert logged["grad_ratio/loss_distill_kd_logits"] == pytest.approx(
        logged["grad_norm/loss_distill_kd_logits/logits"] / logged["grad_norm/task/logits"], rel=1e-5
    )
    # the LAD term does not reach the logits
    assert "grad_norm/loss_distill_lad_res5/logits" not in logged
    # no parameter gradient was touched by the measurement
    assert all(p.grad is None for p in model.parameters())


def test_grad_norms_cost_nothing_on_ordinary_iterations(tmp_path, monkeypatch):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 5)
    model = build_model(cfg).train()
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    with EventStorage(0) as storage:
        storage.iter = 3
        model(batch())
        assert not calls
        assert not [k for k in storage.latest() if k.startswith("grad_")]
        storage.iter = 5
        model(batch())
        assert len(calls) == 4  # one partial backward per loss term: CE, aux CE, LAD, KD
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 0)  # 0 disables them
    model = build_model(cfg).train()
    with EventStorage(0):
        model(batch())
    assert len(calls) == 4


def _monitor(warn=5.0, patience=3):
    taps = [Tap("res5", "res5", [("lad", 10.0)]), Tap("logits", "logits", [("kd", 10.0)], "MODEL.DISTILL.KD_WEIGHT")]
    return LossBalanceMonitor(taps, warn, patience)


def test_dominance_warning_once_after_patience_and_names_the_key(caplog):
    monitor = _monitor()
    caplog.set_level(logging.WARNING, logger="radkd_d2.modeling.distill")
    ratios = [9.0, 9.0, 1.0, 9.0, 9.0, 9.0, 9.0, 9.0]  # broken streak, then 5 over the limit
    for i, r in enumerate(ratios):
        monitor._check({"grad_ratio/loss_distill_kd_logits": r, "grad_ratio/loss_distill_lad_res5": 0.2}, i * 20)
        warned = [rec for rec in caplog.records if "dominates" in rec.getMessage()]
        assert len(warned) == (1 if i >= 5 else 0), (i, warned)
    msg = warned[0].getMessage()
    assert "loss_distill_kd_logits" in msg and "MODEL.DISTILL.KD_WEIGHT" in msg and "iteration 100" in msg
    assert "loss_distill_lad_res5" not in msg


def test_dominance_warning_for_a_feature_tap_names_its_taps_entry(caplog):
    monitor = _monitor(warn=2.0, patience=1)
    caplog.set_level(logging.WARNING, logger="radkd_d2.modeling.distill")
    monitor._check({"grad_ratio/loss_distill_lad_res5": 2.5}, 0)
    (rec,) = [r for r in caplog.records if "dominates" in r.getMessage()]
    assert "MODEL.DISTILL.TAPS entry ['res5', 'res5', 'lad', 10]" in rec.getMessage()


def test_dominance_warning_in_training(tmp_path, caplog):
    """With KD at the per-pixel scale and a low limit the warning fires from a real model."""
    cfg = distill_cfg(
        tmp_path, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1, "MODEL.DISTILL.GRAD_RATIO_WARN", 1e-6,
        "MODEL.DISTILL.GRAD_RATIO_PATIENCE", 2,
    )
    model = build_model(cfg).train()
    caplog.set_level(logging.WARNING, logger="radkd_d2.modeling.distill")
    with EventStorage(0) as storage:
        for i in range(3):
            storage.iter = i
            model(batch(seed=i))
    warned = sorted(r.getMessage().split()[2] for r in caplog.records if "dominates" in r.getMessage())
    assert warned == ["loss_distill_kd_logits", "loss_distill_lad_res5"]


# ---------------------------------------------------------------- weight schedule


def test_schedule_factor():
    s = DistillSchedule(warmup_iters=4, stop_iter=10)
    assert [s.factor(i) for i in (0, 1, 2, 4, 9, 10, 11)] == [0.0, 0.25, 0.5, 1.0, 1.0, 0.0, 0.0]
    assert s.factor(None) == 1.0 and s.active
    plain = DistillSchedule()
    assert not plain.active and plain.factor(10**6) == 1.0 and not plain.stopped(10**6)


def test_warmup_scales_every_distillation_term_and_logs_effective_weights(tmp_path):
    def losses_at(it, *opts):
        torch.manual_seed(0)
        model = build_model(distill_cfg(tmp_path, *opts)).train()
        with EventStorage(0) as storage:
            storage.iter = it
            out = model(batch())
            return {k: v.item() for k, v in out.items()}, {k: v[0] for k, v in storage.latest().items()}

    full, _ = losses_at(3)
    warm, logged = losses_at(3, "MODEL.DISTILL.WARMUP_ITERS", 4)
    assert warm["loss_sem_seg"] == pytest.approx(full["loss_sem_seg"], rel=1e-6)
    for term in ("loss_distill_lad_res5", "loss_distill_kd_logits"):
        assert warm[term] == pytest.approx(0.75 * full[term], rel=1e-5)
    assert logged["distill/weight_factor"] == 0.75
    assert logged["distill_weight/loss_distill_lad_res5"] == pytest.approx(7.5)


def test_stop_skips_the_teacher_and_keeps_every_distiller_parameter_in_the_graph(tmp_path):
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.STOP_ITER", 2, "MODEL.DRN.WIDTH_MULT", 0.25)
    model = build_model(cfg).train()
    assert len(model.distiller.connectors) == 1  # student 1/4 width vs teacher 1/8: a connector
    calls = []
    real = model.teacher_features
    model.teacher_features = lambda b: calls.append(1) or real(b)
    with EventStorage(0) as storage:
        storage.iter = 1
        model(batch())
        assert calls == [1]
        storage.iter = 2
        losses = model(batch())
    assert calls == [1], "teacher run after the stop"
    assert {k: v.item() for k, v in losses.items() if k.startswith("loss_distill_")} == {
        "loss_distill_lad_res5": 0.0, "loss_distill_kd_logits": 0.0,
    }
    sum(losses.values()).backward()
    for name, p in model.distiller.named_parameters():
        assert p.grad is not None and not p.grad.any(), name  # in the graph (DDP), zero gradient


# ---------------------------------------------------------------- taps read what they name


@pytest.mark.parametrize("student_pos,teacher_pos", [("res5", "res5"), ("res4", "res4"), ("res4", "res5"), ("decoder", "decoder")])
def test_tap_reads_the_feature_it_names(tmp_path, student_pos, teacher_pos):
    taps = f"[['{student_pos}', '{teacher_pos}', 'lad', 3.0]]"
    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", taps, "MODEL.DISTILL.KD_WEIGHT", 0.0,
                      "MODEL.DISTILL.ALWAYS_CONNECT", True)
    model = build_model(cfg).train()
    s_feats, t_feats = {}, {}
    capture(model.backbone, s_feats, "backbone")
    capture(model.teacher.backbone, t_feats, "backbone")
    head_out = {}
    real_layers = model.sem_seg_head.layers
    model.sem_seg_head.layers = lambda f: head_out.setdefault("s", real_layers(f))
    with EventStorage(0):
        losses = model(batch())
    student = {**s_feats["backbone"], **head_out.get("s", {})}[student_pos]
    with torch.no_grad():  # the teacher's forward stops at its tap: its head is run here
        t_head = model.teacher.sem_seg_head.layers(t_feats["backbone"])
    teacher = {**t_feats["backbone"], **t_head}[teacher_pos]
    key = student_pos if student_pos == teacher_pos else f"{student_pos}_to_{teacher_pos}"
    with torch.no_grad():
        s = model.distiller.connectors[key](student)
        if s.shape[-2:] != teacher.shape[-2:]:
            s = F.interpolate(s, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        expected = 3.0 * independent_lad(s, teacher)
    assert losses[f"loss_distill_lad_{key}"].item() == pytest.approx(expected.item(), rel=1e-4)


# ---------------------------------------------------------------- distillation has an effect


@pytest.mark.slow
def test_lad_falls_and_cos_theta_rises_over_training(tmp_path):
    """Forty iterations on synthetic scenes: the student's res5 turns towards the teacher's."""
    import numpy as np

    from radkd_d2.data.synthetic import render_scene

    cfg = distill_cfg(tmp_path, "MODEL.DISTILL.KD_WEIGHT", 0.0, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1)
    model = build_model(cfg).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    rng = np.random.default_rng(0)
    lad, cos = [], []
    with EventStorage(0) as storage:
        for i in range(40):
            storage.iter = i
            scenes = [render_scene(rng, 64)[:2] for _ in range(2)]
            inputs = [{"image": torch.as_tensor(img).permute(2, 0, 1).float(), "sem_seg": torch.as_tensor(lbl).long()}
                      for img, lbl in scenes]
            losses = model(inputs)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            lad.append(losses["loss_distill_lad_res5"].item())
            cos.append(storage.latest()["distill/res5/cos_theta"][0])
    first, last = sum(lad[:5]) / 5, sum(lad[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert sum(cos[-5:]) / 5 > sum(cos[:5]) / 5 + 0.1, cos


# ---------------------------------------------------------------- teacher sanity


def test_teacher_with_a_nan_weight_is_refused_at_load(tmp_path):
    cfg = distill_cfg(tmp_path)
    teacher = build_model(cfg).teacher
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    name = next(k for k in state if k.endswith("conv1.weight"))
    state[name].view(-1)[3] = float("nan")
    path = tmp_path / "nan_teacher.pth"
    torch.save({"model": state}, path)
    with pytest.raises(TeacherLoadError, match=r"NaN or Inf") as err:
        build_model(distill_cfg(tmp_path, teacher_weights=str(path)))
    assert f"{name}: 1 of " in str(err.value) and str(path) in str(err.value)


def _teacher_run(tmp_path, data_root, *opts, check=True):
    out = tmp_path / "run"
    proc = run_train_net(
        "--config-file", REPO / "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml",
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL,
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", TEACHER_CFG, "MODEL.DISTILL.TEACHER.WEIGHTS", "",
        "MODEL.DRN.WIDTH_MULT", 0.125,
        "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.DRN.WIDTH_MULT', 0.125, 'MODEL.DRN.DEPTH', 18]",
        "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "TEST.EVAL_PERIOD", 0,
        "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", *opts, check=check,
    )
    return out, proc


@pytest.mark.slow
def test_teacher_evaluated_before_training_and_recorded(tmp_path, data_root):
    out, _ = _teacher_run(tmp_path, data_root, "MODEL.DISTILL.TEACHER.EVAL_BEFORE_TRAIN", True)
    record = json.loads((out / "teacher_eval.json").read_text())
    assert record["datasets"] == ["synthetic_sem_seg_val"] and record["weights"] == ""
    assert 0.0 <= record["results"]["sem_seg"]["mIoU"] <= 100.0
    log = (out / "log.txt").read_text()
    assert log.index("Evaluating the teacher") < log.index("Starting training from iteration 0")
    assert (out / "model_final.pth").exists()


@pytest.mark.slow
def test_teacher_below_the_floor_refuses_to_start(tmp_path, data_root):
    out, proc = _teacher_run(tmp_path, data_root, "MODEL.DISTILL.TEACHER.MIN_SCORE", 99.0, check=False)
    assert proc.returncode != 0
    assert "refusing to distil: the teacher scores sem_seg/mIoU" in proc.stderr
    assert "below MODEL.DISTILL.TEACHER.MIN_SCORE = 99" in proc.stderr
    assert not (out / "model_final.pth").exists() and not list(out.glob("model_*.pth"))
    assert json.loads((out / "teacher_eval.json").read_text())["results"]["sem_seg"]["mIoU"] < 99
