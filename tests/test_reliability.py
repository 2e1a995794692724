"""Kill and resume, atomic checkpoints, teacher integrity, distributed equivalence, mixed
precision and non-finite losses."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, TINY_DISTILL, TINY_DISTILL_OPTS, load_cfg, random_teacher_checkpoint, read_metrics, run_train_net
from radkd_d2.engine.train_loop import AtomicCheckpointer, RNGState

DISTILL, TINY = TINY_DISTILL, TINY_DISTILL_OPTS


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory, data_root):
    """A (randomly initialised) teacher checkpoint: what matters here is that it is fixed."""
    return random_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth", DISTILL, *TINY, data_root=data_root)


def _opts(data_root, out, teacher, iters, period, *extra):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *TINY,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters,
        "SOLVER.CHECKPOINT_PERIOD", period, "TEST.EVAL_PERIOD", 0, "SEED", 7, *extra,
    ]


def _final_state(out):
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(data_root, teacher_weights, tmp_path):
    iters, period = 24, 4
    full = tmp_path / "full"
    run_train_net("--config-file", DISTILL, *_opts(data_root, full, teacher_weights, iters, period))

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(DISTILL),
           *map(str, _opts(data_root, killed, teacher_weights, iters, period))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1800  # a hang guard: a loaded machine only makes it slower
    while not (killed / "model_0000007.pth").exists():  # two checkpoints written
        assert proc.poll() is None and time.time() < deadline, "training ended before it was killed"
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    last = (killed / "last_checkpoint").read_text().strip()
    ckpt = torch.load(killed / last, map_location="cpu", weights_only=False)  # never truncated
    resumed_from = ckpt["iteration"]
    assert not any(k.startswith(("teacher.", "teachers.")) for k in ckpt["model"]), "teacher saved in checkpoint"

    proc = run_train_net("--config-file", DISTILL, "--resume", *_opts(data_root, killed, teacher_weights, iters, period))
    log = (killed / "log.txt").read_text().split("Command line arguments")[-1]  # the resumed run
    assert f"[Checkpointer] Loading from {killed / last}" in log
    assert "Teacher unchanged at the end of training" in log
    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    # the kill came after model_0000007 was written, so the last checkpoint is at least that
    # one, and the resumed run started right after it: at most one checkpoint period was lost
    assert resumed_from >= 7, resumed_from
    assert f"Starting training from iteration {resumed_from + 1}" in log


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_a")
    good = (tmp_path / "model_a.pth").read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_b")
    assert not (tmp_path / "model_b.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    assert (tmp_path / "model_a.pth").read_bytes() == good


def test_rng_state_round_trip():
    state = RNGState().state_dict()
    a = (random.random(), float(torch.rand(1)), float(__import__("numpy").random.rand()))
    RNGState().load_state_dict(state)
    b = (random.random(), float(torch.rand(1)), float(__import__("numpy").random.rand()))
    assert a == b


@pytest.mark.slow
def test_two_processes_match_one(data_root, teacher_weights, tmp_path):
    """Same total batch, deterministic inputs, no BN/dropout randomness across ranks.

    Only per-sample-averaged terms are on (LAD): cross-entropy and KD average over each
    rank's valid pixels, which is not the average over the whole batch when images have
    different numbers of ignored pixels, so they differ by design, not by a bug."""
    same = ["INPUT.SEM_SEG.SCALE_RANGE", "(1.0, 1.0)", "INPUT.SEM_SEG.FLIP", False,
            "MODEL.DRN.NORM", "", "MODEL.SEM_SEG_HEAD.NORM", "", "MODEL.SEM_SEG_HEAD.DROPOUT", 0.0,
            "MODEL.DISTILL.CONNECTOR", "conv", "MODEL.DISTILL.ALWAYS_CONNECT", True, "SOLVER.BASE_LR", 0.001,
            "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 0.0, "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.0,
            "MODEL.DISTILL.KD_WEIGHT", 0.0]
    one, two = tmp_path / "one", tmp_path / "two"
    run_train_net("--config-file", DISTILL, *_opts(data_root, one, teacher_weights, 6, 6, *same))
    run_train_net("--config-file", DISTILL, "--num-gpus", 2, *_opts(data_root, two, teacher_weights, 6, 6, *same))
    l1 = [r["loss_distill_lad_res5"] for r in read_metrics(one) if "loss_distill_lad_res5" in r]
    l2 = [r["loss_distill_lad_res5"] for r in read_metrics(two) if "loss_distill_lad_res5" in r]
    assert l1 and l1 == pytest.approx(l2, rel=1e-3)
    a, b = _final_state(one), _final_state(two)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k


def _cfg(data_root, teacher, *extra):
    return load_cfg(DISTILL, *TINY, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, *extra, data_root=data_root, validate=False)


def _batch():
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 64, 64, generator=g) * 255, "sem_seg": torch.randint(0, 6, (64, 64), generator=g)}
            for _ in range(2)]


def test_bf16_autocast_keeps_distillation_losses_fp32(data_root, teacher_weights):
    model = build_model(_cfg(data_root, teacher_weights))
    model.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batch())
    for name, value in losses.items():
        assert torch.isfinite(value), name
        if name.startswith("loss_distill"):
            assert value.dtype == torch.float32, (name, value.dtype)
    sum(losses.values()).backward()


@pytest.mark.slow
def test_amp_training_on_cpu(data_root, teacher_weights, tmp_path):
    run_train_net("--config-file", DISTILL, *_opts(data_root, tmp_path, teacher_weights, 4, 4,
                  "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "bfloat16"))
    rows = [r for r in read_metrics(tmp_path) if "total_loss" in r]
    assert rows and all(v == v and abs(v) != float("inf") for r in rows for k, v in r.items() if k.startswith("loss_"))


@pytest.mark.slow
def test_nan_loss_stops_with_term_and_iteration(data_root, teacher_weights, tmp_path):
    state = torch.load(teacher_weights, weights_only=False)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "nan_teacher.pth")
    proc = run_train_net("--config-file", DISTILL, *_opts(data_root, tmp_path / "out", tmp_path / "nan_teacher.pth", 4, 4),
                         check=False)
    assert proc.returncode != 0
    # caught when the teacher is loaded, naming it, before any loss is computed
    assert "train_net: error: teacher checkpoint" in proc.stderr and "holds NaN or Inf values" in proc.stderr
    assert "nan_teacher.pth" in proc.stderr and not (tmp_path / "out").exists()  # nothing written
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # one message, no traceback


@pytest.mark.slow
def test_non_finite_loss_stops_with_term_and_iteration(data_root, teacher_weights, tmp_path):
    # a learning rate that makes the student diverge within a few steps
    proc = run_train_net("--config-file", DISTILL, *_opts(data_root, tmp_path / "out", teacher_weights, 8, 8),
                         "SOLVER.BASE_LR", "1e12", check=False)
    assert proc.returncode != 0
    assert re.search(r"FloatingPointError: Loss became infinite or NaN at iteration=\d+: non-finite term",
                     proc.stderr), proc.stderr[-2000:]


def _hooks_built(monkeypatch, **test_keys):
    """Trainer.build_hooks over a stand-in Detectron2 hook list, with the project's config."""
    from unittest import mock

    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer, hooks

    from radkd_d2.config import add_radkd_config
    from radkd_d2.engine.trainer import Trainer

    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.SOLVER.CHECKPOINT_PERIOD = 10
    for key, value in test_keys.items():
        setattr(cfg.TEST, key, value)
    ckpt = hooks.PeriodicCheckpointer(mock.MagicMock(), 10)
    d2_list = [hooks.IterationTimer(), ckpt, hooks.EvalHook(0, lambda: {}), hooks.PeriodicWriter([])]
    monkeypatch.setattr(DefaultTrainer, "build_hooks", lambda self: list(d2_list))
    trainer = Trainer.__new__(Trainer)
    trainer.cfg = cfg
    trainer.checkpointer = mock.MagicMock()
    return [type(h) for h in Trainer.build_hooks(trainer)], len(d2_list)


def test_teacher_integrity_hook_runs_before_the_checkpointer(monkeypatch):
    """Hooks run in list order: the teacher check must come before the PeriodicCheckpointer, so a
    changed teacher stops the run before that iteration's checkpoint is written."""
    from detectron2.engine import hooks

    from radkd_d2.engine.hooks import TeacherIntegrityHook

    kinds, n_d2 = _hooks_built(monkeypatch)
    assert kinds.index(TeacherIntegrityHook) == kinds.index(hooks.PeriodicCheckpointer) - 1
    assert hooks.BestCheckpointer not in kinds  # TEST.BEST_CHECKPOINT_METRIC "" by default
    assert len(kinds) == n_d2 + 1


def test_best_checkpointer_runs_right_after_the_evaluation(monkeypatch):
    """BestCheckpointer reads the EvalHook's results from the event storage of the same iteration."""
    from detectron2.engine import hooks

    kinds, n_d2 = _hooks_built(monkeypatch, BEST_CHECKPOINT_METRIC="sem_seg/mIoU", EVAL_PERIOD=5)
    assert kinds.index(hooks.BestCheckpointer) == kinds.index(hooks.EvalHook) + 1
    assert len(kinds) == n_d2 + 2


def _checkpoints(tmp_path, iterations):
    """A run folder with a checkpoint per iteration (AtomicCheckpointer, as training writes
    them), the newest named in last_checkpoint; mtimes in iteration order."""
    import os

    from radkd_d2.engine.train_loop import AtomicCheckpointer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    paths = []
    for k, it in enumerate(iterations):
        with torch.no_grad():
            model.weight.fill_(float(it))
        ckpt.save(f"model_{it:07d}", iteration=it)
        paths.append(tmp_path / f"model_{it:07d}.pth")
        os.utime(paths[-1], (1000 + k, 1000 + k))
    return model, ckpt, paths


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, caplog):
    """--resume when the newest checkpoint was cut short: the newest readable one is loaded,
    with a warning naming the unreadable file (not a raw PytorchStreamReader traceback)."""
    import logging

    model, ckpt, paths = _checkpoints(tmp_path, [9, 19, 29])
    _truncate(paths[2])
    _truncate(paths[1])
    assert ckpt.get_checkpoint_file() == str(paths[0])
    with caplog.at_level(logging.WARNING):
        extra = ckpt.resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and torch.all(model.weight == 9.0)
    text = caplog.text
    assert f"names {paths[2].name}, which cannot be read (truncated or damaged)" in text
    assert "unreadable: " in text and str(paths[2]) in text and str(paths[1]) in text
    # an intact newest checkpoint is used as before, silently
    model2, ckpt2, paths2 = _checkpoints(tmp_path / "ok", [9, 19])
    assert ckpt2.get_checkpoint_file() == str(paths2[1])


def test_resume_with_no_readable_checkpoint_names_every_file(tmp_path):
    from radkd_d2.errors import CorruptCheckpointError

    _, ckpt, paths = _checkpoints(tmp_path, [9, 19])
    for p in paths:
        _truncate(p)
    with pytest.raises(CorruptCheckpointError) as e:
        ckpt.resume_or_load("", resume=True)
    msg = str(e.value)
    assert all(str(p) in msg for p in paths) and "mv " in msg and "last_checkpoint" in msg


def test_resume_names_an_empty_tag_and_a_deleted_checkpoint(tmp_path, caplog):
    """An empty last_checkpoint and one naming a deleted file are called what they are (not
    "truncated or damaged"), the newest readable checkpoint is used, and with none left the
    advice names only files that exist."""
    import logging

    from radkd_d2.errors import CorruptCheckpointError

    model, ckpt, paths = _checkpoints(tmp_path, [9, 19])
    tag = tmp_path / "last_checkpoint"
    tag.write_text("")
    with caplog.at_level(logging.WARNING):
        assert ckpt.get_checkpoint_file() == str(paths[1])
    assert "last_checkpoint is empty (it names no checkpoint); resuming from the newest readable checkpoint" in caplog.text
    tag.write_text(paths[1].name)
    paths[1].unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert ckpt.get_checkpoint_file() == str(paths[0])
    assert f"names {paths[1].name}, which does not exist (deleted or moved)" in caplog.text
    paths[0].unlink()
    with pytest.raises(CorruptCheckpointError) as e:
        ckpt.get_checkpoint_file()
    msg = str(e.value)
    assert f"names {paths[1].name}, which does not exist" in msg and "holds no other checkpoint" in msg
    assert "mv " not in msg and f"remove {tag}" in msg


def test_fvcore_save_contract_the_atomic_checkpointer_relies_on(tmp_path):
    """AtomicCheckpointer.save lets fvcore's Checkpointer.save (0.1.5) write <name>.pth into
    save_dir and tag it in last_checkpoint, then renames; if fvcore changes either, this fails."""
    from fvcore.common.checkpoint import Checkpointer

    Checkpointer(torch.nn.Linear(2, 2), str(tmp_path)).save("x", iteration=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "x.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "x.pth"
    (tmp_path / "atomic").mkdir()
    ckpt = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path / "atomic"))
    ckpt.save("model_0000003", iteration=3)
    assert sorted(p.name for p in (tmp_path / "atomic").iterdir()) == ["last_checkpoint", "model_0000003.pth"]
    assert torch.load(tmp_path / "atomic" / "model_0000003.pth", weights_only=False)["iteration"] == 3


def test_full_disk_at_a_checkpoint_is_one_message_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC while a checkpoint is written: one DiskFullError naming the folder, the space free
    and needed, the half-written .partial.pth removed, the last checkpoint intact for --resume."""
    import errno

    from fvcore.common.checkpoint import Checkpointer

    from radkd_d2.errors import DiskFullError

    model, ckpt, paths = _checkpoints(tmp_path, [9])
    real_save = Checkpointer.save

    def full(self, name, **kwargs):
        with open(os.path.join(self.save_dir, f"{name}.pth"), "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Checkpointer, "save", full)
    with pytest.raises(DiskFullError) as e:
        ckpt.save("model_0000019", iteration=19)
    msg = str(e.value)
    assert f"cannot write checkpoint model_0000019.pth to {tmp_path}: no space left on the device (" in msg
    assert " free, a checkpoint takes about " in msg
    assert "the last checkpoint model_0000009.pth is intact: free space and rerun with --resume" in msg
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000009.pth"]
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert ckpt.get_checkpoint_file() == str(paths[0])  # --resume goes on from there
