"""SKD's holistic (adversarial) term as an extension of the training loop.

The critic D (:class:`~radkd_d2.losses.skd.SKDHolisticDiscriminator`) belongs to the trainer, not
to the model: it is not among the model's parameters, state dict, optimizer or DDP wrapper, so
the exported student never holds it. Each iteration alternates the two players as the released
SKD/IFVD/CWD code does:

1. student step (the model's forward, Detectron2's ``run_step``): the meta-architecture hands
   the student's and the teacher's logits to :class:`HolisticCritic`, which scores the student's
   with D frozen and returns ``loss_distill_holistic = lambda * -E[D(student)]``; the main
   optimizer steps the student;
2. critic step (:class:`HolisticCriticHook`, after the student's update): D's loss on the same
   batch, teacher maps as real and the (detached) student maps as fake, with the gradient
   penalty; D's gradients are averaged over the processes, D's own optimizer steps, and its own
   poly schedule advances.

D, its optimizer and its schedule are one checkpointable (``holistic_critic`` in every
checkpoint), saved and resumed with the rest. D runs in float32, also under AMP.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from radkd_d2.errors import ConfigError
from radkd_d2.losses import (
    HOLISTIC_CONFIG,
    SKDHolisticDiscriminator,
    frozen_parameters,
    gradient_penalty,
    holistic_critic_loss,
    holistic_student_loss,
)

__all__ = ["HolisticCritic", "HolisticCriticHook", "build_holistic_critic"]

logger = logging.getLogger(__name__)

# the critic step's diagnostics, in the order critic_step computes them (event storage:
# holistic/<name>)
CRITIC_STATS = ("critic_loss", "objective", "gp", "wasserstein", "d_teacher", "d_student")


class HolisticCritic:
    """The critic of SKD's holistic term and what trains it: D, D's optimizer and D's LR schedule.

    Called by the meta-architecture in the student's step (:meth:`__call__`); :meth:`critic_step`
    then updates D on the batch of that call. ``state_dict``/``load_state_dict`` make it a
    checkpointable of the trainer's checkpointer.

    Args:
        discriminator: the critic, on the training device, in train mode.
        optimizer, scheduler: D's own optimizer and LR schedule (stepped once per iteration).
        weight: lambda of the student's term ``-E[D(student)]``.
        critic_weight: multiplies D's whole loss (objective + penalty), the references' lambda_d.
        objective: "wgan-gp" or "hinge" (:func:`~radkd_d2.losses.skd.holistic_critic_loss`).
        gp_weight: weight of the gradient penalty; 0 leaves it out.
        input: "logits" (D scores raw logits) or "softmax" (class probabilities).
    """

    TERM = "loss_distill_holistic"
    CHECKPOINT_KEY = "holistic_critic"

    def __init__(
        self,
        discriminator: SKDHolisticDiscriminator,
        optimizer: torch.optim.Optimizer,
        scheduler,
        *,
        weight: float,
        critic_weight: float = HOLISTIC_CONFIG.critic_weight,
        objective: str = HOLISTIC_CONFIG.objective,
        gp_weight: float = HOLISTIC_CONFIG.gp_weight,
        input: str = HOLISTIC_CONFIG.input,
    ):
        if input not in ("logits", "softmax"):
            raise ValueError(f"HolisticCritic: input must be 'logits' or 'softmax', got {input!r}")
        self.discriminator = discriminator.train()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.weight, self.critic_weight = float(weight), float(critic_weight)
        self.objective, self.gp_weight, self.input = objective, float(gp_weight), input
        self.loaded = False  # set when a checkpoint's critic was loaded
        self._pending = None  # (student map, teacher map, image) of the last student step
        if comm.get_world_size() > 1:  # every process starts from the main process's D
            for t in [*discriminator.parameters(), *discriminator.buffers()]:
                dist.broadcast(t.data, src=0)

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> Optional["HolisticCritic"]:
        """The critic of ``cfg.MODEL.DISTILL.HOLISTIC``; None when its WEIGHT is 0."""
        args = HOLISTIC_CONFIG.read(cfg.MODEL.DISTILL)
        if args["weight"] <= 0:
            return None
        device = torch.device(cfg.MODEL.DEVICE)
        discriminator = SKDHolisticDiscriminator(
            num_classes,
            3 if args["image"] else 0,
            args["width"],
            args["depth"],
            self_attention=args["self_attention"],
            spectral_norm=args["spectral_norm"],
            preprocess=args["preprocess"],
        ).to(device)
        params = [p for p in discriminator.parameters() if p.requires_grad]
        if args["optimizer"] == "adam":
            optimizer = torch.optim.Adam(
                params,
                lr=args["base_lr"],
                betas=tuple(args["betas"]),
                weight_decay=args["weight_decay"],
            )
        else:
            optimizer = torch.optim.SGD(
                params,
                lr=args["base_lr"],
                momentum=args["momentum"],
                weight_decay=args["weight_decay"],
            )
        scheduler = LRMultiplier(
            optimizer,
            multiplier=PolynomialDecayParamScheduler(1.0, args["poly_power"]),
            max_iter=cfg.SOLVER.MAX_ITER,
        )
        logger.info(
            "Holistic term: lambda %g, critic %s (%d parameters), %s lr %g, poly %g",
            args["weight"],
            args["objective"],
            sum(p.numel() for p in params),
            args["optimizer"],
            args["base_lr"],
            args["poly_power"],
        )
        return cls(
            discriminator,
            optimizer,
            scheduler,
            weight=args["weight"],
            critic_weight=args["critic_weight"],
            objective=args["objective"],
            gp_weight=args["gp_weight"],
            input=args["input"],
        )

    def _map(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=1) if self.input == "softmax" else logits

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: Optional[torch.Tensor],
        images: torch.Tensor,
        factor: float = 1.0,
    ) -> Dict[str, torch.Tensor]:
        """The student's side: ``{"loss_distill_holistic": factor * weight * -E[D(student)]}``,
        with D's parameters frozen (the loss moves only the student); the batch is kept for the
        next :meth:`critic_step`.

        Args:
            student_logits: B x K x h x w, in the student's graph.
            teacher_logits: B x K x h' x w' (the student's are resized to h' x w' when they
                differ), or None when distillation has stopped: the term is 0 and no critic
                step follows.
            images: B x 3 x H x W normalised input, for a conditional critic.
            factor: the distillation schedule's factor at this iteration.
        """
        if teacher_logits is None:
            self._pending = None
            return {self.TERM: student_logits.new_zeros((), dtype=torch.float32)}
        with torch.autocast(student_logits.device.type, enabled=False):
            s, t = student_logits.float(), teacher_logits.detach().float()
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            s_map, t_map = self._map(s), self._map(t)
            image = images.detach().float() if self.discriminator.image_channels else None
            with frozen_parameters(self.discriminator):
                term = holistic_student_loss(self.discriminator(s_map, image))
        self._pending = (s_map.detach(), t_map, image)
        return {self.TERM: term * (self.weight * factor)}

    def critic_step(self) -> Optional[Dict[str, float]]:
        """One update of D on the batch of the last student step: ``critic_weight *
        (objective + gp_weight * GP)``, teacher maps real, student maps fake; gradients averaged
        over the processes; D's optimizer steps. Returns the diagnostics (:data:`CRITIC_STATS`,
        averaged over the processes), or None when no student step left a batch."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        fake_map, real_map, image = pending
        d = self.discriminator
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(fake_map.device.type, enabled=False):
            fake, real = d.assemble(fake_map, image), d.assemble(real_map, image)
            d_fake, d_real = d.score(fake), d.score(real)
            objective = holistic_critic_loss(d_fake, d_real, self.objective)
            gp = (
                gradient_penalty(d.score, real, fake)
                if self.gp_weight > 0
                else objective.new_zeros(())
            )
            loss = self.critic_weight * (objective + self.gp_weight * gp)
            loss.backward()
        self._all_reduce_grads()
        stats = torch.stack(
            [loss, objective, gp, d_real.mean() - d_fake.mean(), d_real.mean(), d_fake.mean()]
        ).detach()
        world = comm.get_world_size()
        if world > 1:
            dist.all_reduce(stats)
            stats /= world
        values = dict(zip(CRITIC_STATS, stats.tolist()))  # one host read
        if not all(v == v and abs(v) != float("inf") for v in values.values()):
            raise FloatingPointError(
                "the holistic critic's loss became infinite or NaN: "
                + ", ".join(f"{k}={v}" for k, v in values.items())
                + "; lower MODEL.DISTILL.HOLISTIC.BASE_LR or CRITIC_WEIGHT"
            )
        self.optimizer.step()
        return values

    def _all_reduce_grads(self) -> None:
        """Average D's gradients over the processes (one flat buffer), as DDP does the model's."""
        world = comm.get_world_size()
        if world == 1:
            return
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:  # every process must reduce the same buffer
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= world
        for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def state_dict(self) -> dict:
        # the schedule's multiplier object is rebuilt from the config: checkpoints keep plain data
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "_multiplier"}
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": sched,
        }

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **state["scheduler"]})
        self._pending = None
        self.loaded = True


class HolisticCriticHook(HookBase):
    """After every iteration's student update: the critic's step (:meth:`HolisticCritic.
    critic_step`), its diagnostics to the event storage (``holistic/critic_loss``, ``gp``,
    ``wasserstein`` = E[D(teacher)] - E[D(student)], ``d_teacher``, ``d_student``, ``lr``), and
    one step of D's schedule."""

    def __init__(self, critic: HolisticCritic):
        self.critic = critic

    def after_step(self):
        storage = self.trainer.storage
        storage.put_scalar(
            "holistic/lr", self.critic.optimizer.param_groups[0]["lr"], smoothing_hint=False
        )
        stats = self.critic.critic_step()
        for name, value in (stats or {}).items():
            storage.put_scalar(f"holistic/{name}", value, smoothing_hint=False)
        self.critic.scheduler.step()


def build_holistic_critic(cfg, model: nn.Module) -> Optional[HolisticCritic]:
    """The trainer's critic for ``cfg.MODEL.DISTILL.HOLISTIC`` (None when its WEIGHT is 0),
    attached to ``model`` (a ``DistillSemanticSegmentor``, or a DDP wrapper of one), which then
    adds ``loss_distill_holistic`` to its training losses."""
    if HOLISTIC_CONFIG.read(cfg.MODEL.DISTILL)["weight"] <= 0:
        return None
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not hasattr(inner, "attach_holistic"):
        raise ConfigError(
            f"MODEL.DISTILL.HOLISTIC.WEIGHT = {cfg.MODEL.DISTILL.HOLISTIC.WEIGHT} needs a model with "
            f"segmentation logits, MODEL.META_ARCHITECTURE 'DistillSemanticSegmentor'; this one is "
            f"{type(inner).__name__}: set the weight to 0"
        )
    critic = HolisticCritic.from_config(cfg, num_classes=inner.sem_seg_head.num_classes)
    inner.attach_holistic(critic)
    return critic
