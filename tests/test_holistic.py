"""SKD's holistic (adversarial) term as a trainer extension (MODEL.DISTILL.HOLISTIC): the gradient
penalty and the objectives against independent formulas, the critic and the student updating on
alternate steps, one step of the SKD config, start-up checks, export without the critic, and
(slow, through train_net) kill/resume and two processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import REPO, TINY_DISTILL, TINY_DISTILL_OPTS, load_cfg, random_teacher_checkpoint, read_metrics, run_train_net
from radkd_d2.configs_index import reduced_size_opts
from radkd_d2.engine import ConfigError, Trainer
from radkd_d2.engine.adversarial import HolisticCritic, HolisticCriticHook, build_holistic_critic
from radkd_d2.export import export_student
from radkd_d2.losses import (
    SKDHolisticDiscriminator,
    gradient_penalty,
    holistic_critic_loss,
    holistic_student_loss,
)
from radkd_d2.modeling.teacher import load_teacher_cfg

DISTILL, TINY = TINY_DISTILL, TINY_DISTILL_OPTS
# the holistic term with a CPU-sized critic (8 -> 16 channels, the two stages self-attending)
HOLISTIC = [
    "MODEL.DISTILL.HOLISTIC.WEIGHT", 0.1, "MODEL.DISTILL.HOLISTIC.CONV_DIM", 8,
    "MODEL.DISTILL.HOLISTIC.DEPTH", 2,
]  # fmt: skip
CRITIC_KEY = HolisticCritic.CHECKPOINT_KEY


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convs gain nothing from two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------ formulas, no model
class LinearCritic(nn.Module):
    """score(x) = mean over positions of a 1x1 conv: d score / d x[c, h, w] = w_c / (h w)."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(1, 2, 3))


def test_gradient_penalty_of_a_linear_critic_is_the_closed_form():
    critic = LinearCritic(3).double()
    real, fake = torch.randn(4, 3, 5, 6, dtype=torch.float64), torch.randn(
        4, 3, 5, 6, dtype=torch.float64
    )
    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    # the gradient is the same at every interpolate: ||w|| / sqrt(h w) per sample
    expected = (critic.conv.weight.norm() / (5 * 6) ** 0.5 - 1) ** 2
    assert gp.item() == pytest.approx(expected.item(), rel=1e-10)
    gp.backward()  # differentiable in the critic's parameters (create_graph)
    assert critic.conv.weight.grad.abs().sum() > 0


def test_gradient_penalty_matches_finite_differences_of_the_critic():
    """The SKD critic in eval mode (a fixed function: no power-iteration or BatchNorm updates),
    float64: per-sample input-gradient norms by central differences at the same interpolates."""
    d = SKDHolisticDiscriminator(3, image_channels=3, width=4, depth=2).double().eval()
    with torch.no_grad():  # non-zero attention, so the penalty goes through it as well
        for m in d.modules():
            if hasattr(m, "gamma"):
                m.gamma.fill_(0.7)
    seg = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    image = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    real, fake = d.assemble(seg, image), d.assemble(torch.randn_like(seg), image)
    gp = gradient_penalty(d.score, real, fake, generator=torch.Generator().manual_seed(3))
    a = torch.rand(2, 1, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mixed = a * real + (1 - a) * fake
    eps, norms = 1e-6, []
    with torch.no_grad():
        for b in range(2):
            x = mixed[b : b + 1].clone()
            grad = torch.zeros_like(x).flatten()
            for i in range(x.numel()):
                up, down = x.clone().flatten(), x.clone().flatten()
                up[i] += eps
                down[i] -= eps
                diff = d.score(up.view_as(x)) - d.score(down.view_as(x))
                grad[i] = diff.item() / (2 * eps)
            norms.append(grad.norm())
    expected = torch.stack([(n - 1) ** 2 for n in norms]).mean()
    assert gp.item() == pytest.approx(expected.item(), rel=1e-6)


def test_objectives_by_hand():
    d_s, d_t = torch.tensor([0.5, -2.0]), torch.tensor([3.0, 0.2])
    assert holistic_student_loss(d_s).item() == pytest.approx(0.75)  # -(0.5 - 2) / 2
    assert holistic_critic_loss(d_s, d_t, "wgan-gp").item() == pytest.approx(-0.75 - 1.6)
    # hinge: relu(1 - d_t) = (0, 0.8), relu(1 + d_s) = (1.5, 0)
    assert holistic_critic_loss(d_s, d_t, "hinge").item() == pytest.approx(0.4 + 0.75)
    with pytest.raises(ValueError, match="objective"):
        holistic_critic_loss(d_s, d_t, "lsgan")


# -------------------------------------------------------------------------- the training loop
def tiny_cfg(data_root, out, *opts):
    return load_cfg(
        DISTILL, *TINY, *HOLISTIC, "OUTPUT_DIR", out, "MODEL.DISTILL.TEACHER.WEIGHTS", "",
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 100,
        "TEST.EVAL_PERIOD", 0, *opts, data_root=data_root,
    )  # fmt: skip


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}


def changed(before, after):
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


def test_critic_and_student_update_on_alternate_steps(data_root, tmp_path):
    """Detectron2's loop, one phase at a time: ``run_step`` (the student's update) moves every
    trainable model parameter and no parameter of D; the hooks' ``after_step`` (the critic's
    update) moves D and no model parameter."""
    trainer = Trainer(tiny_cfg(data_root, tmp_path))
    trainer.resume_or_load(resume=False)
    critic = trainer.holistic
    assert isinstance(critic, HolisticCritic)
    assert any(isinstance(h, HolisticCriticHook) for h in trainer._hooks)
    model, d = trainer.model, critic.discriminator
    assert not any(
        p is q for p in model.parameters() for q in d.parameters()
    )  # D is not in the model
    with EventStorage(0) as trainer.storage:
        trainer.before_train()
        for it in range(2):
            trainer.iter = it
            trainer.before_step()
            s0, d0 = params(model), params(d)
            trainer.run_step()
            s1, d1 = params(model), params(d)
            assert changed(d0, d1) == [], "the student's step moved D"
            assert set(changed(s0, s1)) >= {
                k for k in s0 if k.startswith(("backbone.", "sem_seg_head."))
            }
            trainer.after_step()
            s2, d2 = params(model), params(d)
            assert changed(s1, s2) == [], "the critic's step moved the model"
            # Parameters whose gradient is exactly 0: the last bias (it cancels in E[D(s)] - E[D(t)])
            # and, while gamma is still 0, attention's q/k/v. Zero only up to rounding, so Adam may
            # or may not move them: the keys' biases (a softmax over keys ignores them) and the
            # last attention's value bias (a constant shift that the linear head turns into the
            # same score for s and t). Everything else must move.
            zero = {"head.bias"} | {k for k in d1 if it == 0 and k.split(".")[-2] in ("query", "key", "value")}
            last = f"stages.{len(d.stages) - 1}.2.value.bias"
            rounding = {k for k in d1 if k.endswith("key.bias")} | {last}
            assert last in d1
            moved = set(changed(d1, d2))
            assert moved >= set(d1) - zero - rounding
            assert not moved & zero, "a parameter with an exactly zero gradient moved"
        storage = trainer.storage
        for name in ("critic_loss", "gp", "wasserstein", "d_teacher", "d_student", "lr"):
            assert len(storage.history(f"holistic/{name}").values()) == 2, name
        assert len(storage.history("loss_distill_holistic").values()) == 2
    # D's own schedule: poly from BASE_LR over SOLVER.MAX_ITER, stepped once per iteration
    lrs = [v for v, _ in storage.history("holistic/lr").values()]
    assert lrs == pytest.approx([4e-4, 4e-4 * (1 - 1 / 10) ** 0.9])


HOLISTIC_CONFIGS = sorted(  # the matrix's SKD/IFVD/CWD rows: the references train with the term
    str(p.relative_to(REPO)) for d in ("cityscapes", "voc", "ade20k") for p in (REPO / "configs" / d).glob("*.yaml")
    if p.name.startswith(("skd_", "ifvd_", "cwd_"))
)


def _one_step(config: str):
    """Build ``config`` at reduced size, run one student step (forward + backward) and one
    critic step; return the model, the critic, the losses and the critic's statistics."""
    cfg = load_cfg(config, "MODEL.DISTILL.TEACHER.WEIGHTS", "", validate=False)
    cfg.merge_from_list(reduced_size_opts(cfg))
    teacher_file = str(REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE)
    cfg.MODEL.DISTILL.TEACHER.OPTS = reduced_size_opts(load_teacher_cfg(teacher_file, "cpu"))
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = teacher_file
    model = build_model(cfg)
    model.train()
    critic = build_holistic_critic(cfg, model)
    g = torch.Generator().manual_seed(0)
    classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = [{"image": torch.randint(0, 256, (3, 64, 64), generator=g).float(),
              "sem_seg": torch.randint(0, classes, (64, 64), generator=g)} for _ in range(2)]  # fmt: skip
    d0 = params(critic.discriminator)
    with EventStorage(0):
        losses = model(batch)
        sum(losses.values()).backward()
        grads_d = [p.grad for p in critic.discriminator.parameters()]
        stats = critic.critic_step()
    return cfg, model, critic, losses, grads_d, stats, changed(d0, params(critic.discriminator)), len(d0)


@pytest.mark.slow
@pytest.mark.parametrize("config", HOLISTIC_CONFIGS)
def test_every_skd_ifvd_cwd_matrix_config_steps_with_the_holistic_term(one_thread, config):
    cfg, model, critic, losses, grads_d, stats, moved, n_d = _one_step(config)
    method = Path(config).name.split("_")[0]
    assert cfg.MODEL.DISTILL.HOLISTIC.WEIGHT == {"skd": 0.1, "ifvd": 0.001, "cwd": 0.001}[method]
    assert torch.isfinite(losses["loss_distill_holistic"]) and losses["loss_distill_holistic"].requires_grad
    assert all(g is None for g in grads_d)  # the student step leaves D alone
    assert stats is not None and all(v == v for v in stats.values()), stats
    assert "head.weight" in moved  # the critic step moves D (idle attention parts may not move)


def test_one_step_of_the_skd_config_with_the_holistic_term(one_thread):
    """The Cityscapes SKD config (PSPNet-R101 -> PSPNet-R18) at reduced size, with the holistic
    term as SKD's released code trains it: one student step and one critic step."""
    cfg, model, critic, losses, grads_d, stats, moved, n_d = _one_step(
        "configs/cityscapes/skd_decoder_pspr101_pspr18_80k_cityscapes.yaml")
    holistic = cfg.MODEL.DISTILL.HOLISTIC
    assert (holistic.WEIGHT, holistic.OPTIMIZER, holistic.WEIGHT_DECAY) == (0.1, "sgd", 5e-4)
    assert isinstance(critic.optimizer, torch.optim.SGD)
    assert not any(k.startswith(("discriminator", "_holistic")) for k in model.state_dict())
    assert {"loss_distill_holistic", "loss_distill_skd_decoder", "loss_sem_seg"} <= set(losses)
    assert torch.isfinite(losses["loss_distill_holistic"])
    assert all(g is None for g in grads_d)
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert stats["gp"] > 0 and all(v == v for v in stats.values()), stats
    assert len(moved) == n_d
    with EventStorage(1):
        assert critic.critic_step() is None  # one critic step per student step
        # once distillation stops (no teacher logits) the term is 0 and there is no critic step
        zero = critic(torch.randn(2, 19, 8, 8), None, torch.randn(2, 3, 64, 64))
    assert zero["loss_distill_holistic"].item() == 0.0 and critic.critic_step() is None


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DISTILL.HOLISTIC.OBJECTIVE", "lsgan"], "MODEL.DISTILL.HOLISTIC.OBJECTIVE"),
        (["MODEL.DISTILL.HOLISTIC.BETAS", "(0.9, 1.5)"], "MODEL.DISTILL.HOLISTIC.BETAS"),
        (["MODEL.DISTILL.HOLISTIC.WEIGHT", -0.1], "MODEL.DISTILL.HOLISTIC.WEIGHT"),
        (["MODEL.DISTILL.HOLISTIC.BASE_LR", 0.0], "MODEL.DISTILL.HOLISTIC.BASE_LR"),
        (["MODEL.DISTILL.HOLISTIC.MOMENTUM", 1.5], "MODEL.DISTILL.HOLISTIC.MOMENTUM"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_key(data_root, opts, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_cfg(DISTILL, *opts, data_root=data_root)


def test_the_holistic_term_needs_segmentation_distillation(data_root):
    with pytest.raises(ConfigError, match="DistillSemanticSegmentor"):
        load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "MODEL.DISTILL.HOLISTIC.WEIGHT", 0.1,
                 data_root=data_root)  # fmt: skip


def test_export_drops_the_critic_and_amp_runs(data_root, tmp_path):
    """A short bf16-autocast run on the CPU: the checkpoint holds the critic next to the model,
    the model state holds none of it, and the exported student loads into the stock model."""
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 2, "SOLVER.AMP.ENABLED", True,
                   "SOLVER.AMP.PRECISION", "bfloat16")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    rows = [r for r in read_metrics(tmp_path) if "holistic/critic_loss" in r]
    assert rows and all(
        v == v for r in rows for k, v in r.items() if k.startswith(("holistic/", "loss_"))
    )
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert set(ckpt[CRITIC_KEY]) == {"discriminator", "optimizer", "scheduler"}
    d_keys = set(ckpt[CRITIC_KEY]["discriminator"])
    assert not d_keys & set(ckpt["model"]) and not any("discriminator" in k for k in ckpt["model"])
    path, _ = export_student(cfg, str(tmp_path / "model_final.pth"), str(tmp_path / "export"))
    exported = torch.load(path, map_location="cpu", weights_only=False)
    assert set(exported) == {"model"} and not d_keys & set(exported["model"])
    assert all(k.startswith(("backbone.", "sem_seg_head.")) for k in exported["model"])


# ------------------------------------------------------------------- train_net, in subprocesses
@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory, data_root):
    """A (randomly initialised) teacher checkpoint: what matters here is that it is fixed."""
    return random_teacher_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pth", DISTILL, *TINY, data_root=data_root)


def _opts(data_root, out, teacher, iters, period, *extra):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *TINY, *HOLISTIC,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters,
        "SOLVER.CHECKPOINT_PERIOD", period, "TEST.EVAL_PERIOD", 0, "SEED", 7, *extra,
    ]  # fmt: skip


def _final(out):
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)


def _assert_same(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), f"{what}: {k}"


@pytest.mark.slow
def test_kill_and_resume_restores_the_critic(data_root, teacher_weights, tmp_path):
    iters, period = 8, 2
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_train_net("--config-file", DISTILL, *_opts(data_root, full, teacher_weights, iters, period))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(DISTILL),
           *map(str, _opts(data_root, killed, teacher_weights, iters, period))]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 1800  # a hang guard: a loaded machine only makes it slower
    while not (killed / "model_0000003.pth").exists():  # two checkpoints written
        assert proc.poll() is None and time.time() < deadline, "training ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    last = (killed / "last_checkpoint").read_text().strip()
    assert CRITIC_KEY in torch.load(killed / last, map_location="cpu", weights_only=False)
    run_train_net(
        "--config-file",
        DISTILL,
        "--resume",
        *_opts(data_root, killed, teacher_weights, iters, period),
    )
    log = (killed / "log.txt").read_text().split("Command line arguments")[-1]  # the resumed run
    assert f"Loading {CRITIC_KEY} from" in log and "without a holistic critic" not in log
    a, b = _final(full), _final(killed)
    _assert_same(a[CRITIC_KEY]["discriminator"], b[CRITIC_KEY]["discriminator"], "D")
    _assert_same(a["model"], b["model"], "student")
    assert (
        a[CRITIC_KEY]["scheduler"]["last_epoch"]
        == b[CRITIC_KEY]["scheduler"]["last_epoch"]
        == iters
    )
    state_a, state_b = a[CRITIC_KEY]["optimizer"]["state"], b[CRITIC_KEY]["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for k in state_a:  # Adam's moments and step count
        _assert_same(state_a[k], state_b[k], f"D's optimizer state {k}")


@pytest.mark.slow
def test_two_processes_average_the_critics_gradients(data_root, teacher_weights, tmp_path):
    """1 process x 4 images and 2 processes x 2 images train the same D (and student): D's
    gradients are averaged over the processes. Only per-sample-averaged terms (as in
    test_reliability.py::test_two_processes_match_one), a critic without BatchNorm (batch
    statistics are per process) and without the penalty (its random mixes are drawn per
    process); SGD for D, as Adam would blow the rounding noise of gradients that are 0 in exact
    arithmetic (the keys' biases) up to steps of the learning rate's size."""
    same = ["INPUT.SEM_SEG.SCALE_RANGE", "(1.0, 1.0)", "INPUT.SEM_SEG.FLIP", False,
            "MODEL.DRN.NORM", "", "MODEL.SEM_SEG_HEAD.NORM", "", "MODEL.SEM_SEG_HEAD.DROPOUT", 0.0,
            "MODEL.DISTILL.CONNECTOR", "conv", "MODEL.DISTILL.ALWAYS_CONNECT", True, "SOLVER.BASE_LR", 0.001,
            "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 0.0, "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", 0.0,
            "MODEL.DISTILL.KD_WEIGHT", 0.0, "MODEL.DISTILL.HOLISTIC.PREPROCESS", "none", "MODEL.DISTILL.HOLISTIC.GP_WEIGHT", 0.0,
            "MODEL.DISTILL.HOLISTIC.OPTIMIZER", "sgd", "MODEL.DISTILL.HOLISTIC.BASE_LR", 0.002]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_train_net("--config-file", DISTILL, *_opts(data_root, one, teacher_weights, 4, 4, *same))
    run_train_net(
        "--config-file",
        DISTILL,
        "--num-gpus",
        2,
        *_opts(data_root, two, teacher_weights, 4, 4, *same),
    )
    w1 = [r["holistic/wasserstein"] for r in read_metrics(one) if "holistic/wasserstein" in r]
    w2 = [r["holistic/wasserstein"] for r in read_metrics(two) if "holistic/wasserstein" in r]
    assert w1 and w1 == pytest.approx(w2, rel=1e-3, abs=1e-6)
    a, b = _final(one), _final(two)
    _assert_same(a[CRITIC_KEY]["discriminator"], b[CRITIC_KEY]["discriminator"], "D")
    _assert_same(a["model"], b["model"], "student")
