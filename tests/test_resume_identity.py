"""Kill and resume is bit-identical for every meta-architecture family: a run killed with
SIGKILL right after a checkpoint and resumed with ``--resume`` ends with exactly the weights of
an uninterrupted run of the same config (every tensor of ``model_final.pth`` ``torch.equal``).

The kill is deterministic: train_net runs with one extra hook, last in the list (after the
PeriodicCheckpointer has written ``model_{K-1}.pth``), that sends SIGKILL to its own process at
iteration K-1; the resumed run is the plain command with ``--resume``. Both runs use the same
config (MAX_ITER 2K, CHECKPOINT_PERIOD K), so the LR schedule is the same.

RetinaNet's running loss normalizer (an EMA of the foreground-anchor count, a plain attribute
outside its state dict) is what made its resumed runs differ: it is checkpointed as
``running_averages`` (:class:`radkd_d2.engine.train_loop.RunningAverages`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, TINY_DISTILL, TINY_DISTILL_OPTS, load_cfg, random_teacher_checkpoint
from radkd_d2.engine.guard import mismatch_report
from radkd_d2.engine.train_loop import AtomicCheckpointer, RunningAverages
from test_distill_det import batch

K = 2  # checkpoint period; the runs are 2K iterations, the killed one stops after iteration K-1

# train_net with a hook, appended after every other (the checkpoint of the iteration is on disk
# by then), that kills the process with SIGKILL after iteration RADKD_TEST_KILL_AFTER
KILLED_TRAIN_NET = """
import os, signal
from detectron2.engine import HookBase
from radkd_d2.engine.trainer import Trainer

class KillAfter(HookBase):
    def __init__(self, it):
        self.it = it
    def after_step(self):
        if self.trainer.iter == self.it:
            os.kill(os.getpid(), signal.SIGKILL)

_build_hooks = Trainer.build_hooks
Trainer.build_hooks = lambda self: [*_build_hooks(self), KillAfter(int(os.environ["RADKD_TEST_KILL_AFTER"]))]

from radkd_d2.train_net import cli
cli()
"""

SEG = "configs/synthetic/pspnet_r18_tiny.yaml"
RETINANET = "configs/synthetic/retinanet_r18_tiny.yaml"
RETINANET_DISTILL = "configs/synthetic/distill/lad_fpn_retx50_retr18_tiny_synthetic.yaml"
FASTER = "configs/synthetic/faster_rcnn_r18_tiny.yaml"
FASTER_DISTILL = "configs/synthetic/distill/lad_fpn_frcnnx50_frcnnr18_tiny_synthetic.yaml"
MASK = "configs/synthetic/mask_rcnn_r18_tiny.yaml"
MASK_DISTILL = "configs/synthetic/distill/lad_fpn_mrcnnx50_mrcnnr18_tiny_synthetic.yaml"

SEG_OPTS = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64,
    "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "MODEL.DRN.WIDTH_MULT", 0.125,
]  # fmt: skip
DET_OPTS = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64,
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
    "SOLVER.STEPS", "()",
]  # fmt: skip

# family: (config, opts, distilled)
FAMILIES = {
    "pspnet": (SEG, SEG_OPTS, False),
    "pspnet_distilled": (str(TINY_DISTILL.relative_to(REPO)), TINY_DISTILL_OPTS, True),
    "retinanet": (RETINANET, DET_OPTS, False),
    "retinanet_distilled": (RETINANET_DISTILL, DET_OPTS, True),
    "faster_rcnn": (FASTER, DET_OPTS, False),
    "faster_rcnn_distilled": (FASTER_DISTILL, DET_OPTS, True),
    "mask_rcnn": (MASK, DET_OPTS, False),
    "mask_rcnn_distilled": (MASK_DISTILL, DET_OPTS, True),
}


def _opts(data_root: Path, out: Path, opts, teacher) -> list:
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *opts,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2 * K, "SOLVER.CHECKPOINT_PERIOD", K,
        "SOLVER.WARMUP_ITERS", 1, "TEST.EVAL_PERIOD", 0, "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", 0, "SEED", 7,
        *(["MODEL.DISTILL.TEACHER.WEIGHTS", teacher] if teacher else []),
    ]  # fmt: skip


def train_net(config, opts, *, resume: bool = False, kill_after: int | None = None, timeout: int = 900):
    """tools/train_net.py in a subprocess, importing this checkout's radkd_d2 (PYTHONPATH: an
    installed radkd_d2 may be another checkout's); with ``kill_after``, killed by SIGKILL right
    after that iteration (its checkpoint written)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    args = ["--config-file", str(REPO / config), *(["--resume"] if resume else []), *map(str, opts)]
    if kill_after is None:
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *args]
    else:
        env["RADKD_TEST_KILL_AFTER"] = str(kill_after)
        cmd = [sys.executable, "-c", KILLED_TRAIN_NET, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    expected = 0 if kill_after is None else -signal.SIGKILL
    assert proc.returncode == expected, f"train_net returned {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _killed_run(config, opts, out: Path) -> None:
    """train_net killed (SIGKILL) right after its checkpoint at iteration K-1."""
    train_net(config, opts, kill_after=K - 1)
    assert (out / "last_checkpoint").read_text().strip() == f"model_{K - 1:07d}.pth"
    assert not (out / "model_final.pth").exists()


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Keys of two state dicts whose tensors are not identical (missing on one side included)."""
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not torch.equal(a[k], b[k]))


def _final(out: Path) -> dict:
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def kill_and_resume(family: str, data_root: Path, tmp_path: Path) -> tuple[list[str], int]:
    """Train ``family`` uninterrupted and killed-then-resumed; ``(differing keys, tensor count)``
    of the two model_final.pth files."""
    config, extra, distilled = FAMILIES[family]
    teacher = None
    if distilled:
        teacher = random_teacher_checkpoint(tmp_path / "teacher.pth", config, *extra, data_root=data_root)
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_net(config, _opts(data_root, full, extra, teacher))
    _killed_run(config, _opts(data_root, killed, extra, teacher), killed)
    proc = train_net(config, _opts(data_root, killed, extra, teacher), resume=True)
    assert f"Starting training from iteration {K}" in proc.stdout + proc.stderr
    a, b = _final(full), _final(killed)
    return differing_tensors(a, b), len(a)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_kill_and_resume_is_bit_identical(family, data_root, tmp_path):
    differ, total = kill_and_resume(family, data_root, tmp_path)
    assert not differ, f"{family}: {len(differ)} of {total} tensors differ after kill and resume: {differ[:10]}"


# ---- the running averages as a checkpointable (in-process, fast) ----------------------------
def _retinanet(*opts, config=RETINANET):
    cfg = load_cfg(config, *DET_OPTS, *opts, validate=False)
    return build_model(cfg)


def _step(model, seed=0):
    model.train()
    with EventStorage(0):
        model(batch(seed=seed))


def test_retinanet_loss_normalizer_round_trips_through_a_checkpoint(tmp_path):
    model = _retinanet()
    assert RunningAverages(model).state_dict() == {}  # no step yet: nothing to save
    _step(model, 0)
    _step(model, 1)
    value = model.loss_normalizer
    assert value != 100  # moved from Detectron2's initial value
    AtomicCheckpointer(model, str(tmp_path), running_averages=RunningAverages(model)).save("model_0000001", iteration=1)
    ckpt = torch.load(tmp_path / "model_0000001.pth", weights_only=True)  # plain types only
    assert ckpt["running_averages"] == {"loss_normalizer": value}
    assert "loss_normalizer" not in ckpt["model"]  # outside the model's state dict

    resumed = _retinanet()
    averages = RunningAverages(resumed)
    AtomicCheckpointer(resumed, str(tmp_path), running_averages=averages).resume_or_load("", resume=True)
    assert averages.loaded and resumed.loss_normalizer == value
    # the next step of the resumed model normalises as the original's does
    _step(model, 2)
    _step(resumed, 2)
    assert resumed.loss_normalizer == model.loss_normalizer


def test_checkpoint_without_running_averages_still_loads(tmp_path):
    """A checkpoint from before ``running_averages`` loads (resume or MODEL.WEIGHTS): the
    normalizer then starts afresh at Detectron2's initial value, as it did before."""
    model = _retinanet()
    _step(model)
    old = tmp_path / "old.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, old)
    (tmp_path / "last_checkpoint").write_text("old.pth")
    fresh = _retinanet()
    averages = RunningAverages(fresh)
    extra = AtomicCheckpointer(fresh, str(tmp_path), running_averages=averages).resume_or_load("", resume=True)
    assert extra["iteration"] == 3
    assert not averages.loaded and not hasattr(fresh, "loss_normalizer")

    # MODEL.WEIGHTS (no --resume) loads the model only: a fine-tuning run starts the average afresh
    new = tmp_path / "new"
    new.mkdir()
    AtomicCheckpointer(model, str(new), running_averages=RunningAverages(model)).save("model_0000000", iteration=0)
    fresh = _retinanet()
    averages = RunningAverages(fresh)
    AtomicCheckpointer(fresh, str(tmp_path / "ft"), running_averages=averages).resume_or_load(
        str(new / "model_0000000.pth"), resume=False
    )
    assert not averages.loaded and not hasattr(fresh, "loss_normalizer")
    # the strict weights guard looks at the model's state dict only: nothing missing or unexpected
    assert mismatch_report(_retinanet(), torch.load(new / "model_0000000.pth", weights_only=True))[0] == ""


def test_running_averages_of_each_family():
    """RetinaNet (plain or distilled: the student's, not the frozen teacher's) has one; R-CNN
    and segmentation models have none (nothing is added to their checkpoints)."""
    assert set(RunningAverages(_retinanet()).slots()) == {"loss_normalizer"}
    distilled = _retinanet("MODEL.DISTILL.TEACHER.WEIGHTS", "", config=RETINANET_DISTILL)
    assert set(RunningAverages(distilled).slots()) == {"loss_normalizer"}
    _step(distilled)
    assert set(RunningAverages(distilled).state_dict()) == {"loss_normalizer"}
    assert not RunningAverages(_retinanet(config=FASTER)).slots()
    assert not RunningAverages(build_model(load_cfg(SEG, *SEG_OPTS, validate=False))).slots()


# in a fresh process: TorchScript's executor keeps the plan of a function's earlier calls
FOCAL_LOSS_CALLS = """
import torch
from fvcore.nn import sigmoid_focal_loss, sigmoid_focal_loss_jit
from radkd_d2.engine.train_loop import same_script_every_step

g = torch.Generator().manual_seed(0)
same = []
for n in (3000, 2500, 3000, 2800):
    x = torch.randn(n, 5, generator=g)
    target = (torch.rand(n, 5, generator=g) < 0.05).float()
    out = []
    for fn, step in ((sigmoid_focal_loss_jit, True), (sigmoid_focal_loss, False)):
        xi = x.clone().requires_grad_()
        if step:
            with same_script_every_step(True):
                loss = fn(xi, target, alpha=0.25, gamma=2.0, reduction="sum")
        else:
            loss = fn(xi, target, alpha=0.25, gamma=2.0, reduction="sum")
        loss.backward()
        out.append((loss.detach(), xi.grad))
    same.append(torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1]))
assert torch._C._get_graph_executor_optimize()  # restored after the step
print("same:", same)
"""


def test_torchscript_focal_loss_is_the_same_on_every_call_of_a_cpu_step():
    """RetinaNet's focal loss is TorchScript (fvcore's ``sigmoid_focal_loss_jit``), whose
    optimised graph (from the second call on) rounds its gradient otherwise than the first call:
    a resumed process's first call would differ from the uninterrupted run's n-th. Inside a
    training step on CPU every call computes what the eager function does, first or not."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, "-c", FOCAL_LOSS_CALLS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "same: [True, True, True, True]" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_resume_from_a_checkpoint_without_running_averages_warns(data_root, tmp_path):
    """A run killed before ``running_averages`` existed resumes, saying that the normalizer
    restarts (so its weights will not match an uninterrupted run's)."""
    out = tmp_path / "killed"
    opts = _opts(data_root, out, DET_OPTS, None)
    _killed_run(RETINANET, opts, out)
    path = out / f"model_{K - 1:07d}.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    del ckpt["running_averages"]
    torch.save(ckpt, path)
    proc = train_net(RETINANET, opts, resume=True)
    log = proc.stdout + proc.stderr
    assert f"Starting training from iteration {K}" in log
    assert "Resumed from a checkpoint without the model's running averages (running_averages: loss_normalizer" in log
    assert (out / "model_final.pth").is_file()
