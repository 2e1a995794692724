"""Training-loop pieces: named non-finite loss errors, AMP on CPU and GPU, atomic checkpoints,
RNG state and the models' running averages in checkpoints, TorchScript that computes the same
on every call, and a train sampler that resumes where it stopped."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import time
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.utils.events import get_event_storage

from radkd_d2.errors import CorruptCheckpointError, DiskFullError
from radkd_d2.modeling.class_map import map_checkpoint_classifiers

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# write errors that mean "no room here", as opposed to a bug
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _size(n: float) -> str:
    """Bytes as "12.3 MB"."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class _FiniteLossMixin:
    """Fail on the first non-finite loss term with its name and the iteration (Detectron2
    only reports that the total became non-finite)."""

    def _write_metrics(self, loss_dict, data_time, prefix: str = "", iter: Optional[int] = None):
        it = self.iter if iter is None else iter
        values = [v.detach().float().reshape(-1) for v in loss_dict.values()]
        if values and not torch.isfinite(torch.cat(values)).all():
            bad = {k: v.item() for k, v in loss_dict.items() if not torch.isfinite(v.detach()).all()}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={it}: non-finite term(s) "
                f"{', '.join(f'{k}={v}' for k, v in bad.items())}"
            )
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class Trainer32(_FiniteLossMixin, SimpleTrainer):
    """SimpleTrainer (float32) with named non-finite loss errors."""


class MixedPrecisionTrainer(_FiniteLossMixin, AMPTrainer):
    """AMPTrainer that also runs on CPU: ``torch.autocast`` on the model's device type, bf16 or
    fp16; the gradient scaler is only active for fp16 on CUDA (bf16 needs none)."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype, device_type: str):
        scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16 and device_type == "cuda")
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)
        self.device_type = device_type
        # the loss-balance diagnostics differentiate the loss as the step does: scaled
        distiller = getattr(getattr(model, "module", model), "distiller", None)
        if distiller is not None and scaler.is_enabled():
            distiller.balance.scale_fn = scaler.get_scale

    def run_step(self):
        """Detectron2's ``AMPTrainer.run_step`` on CUDA; on the CPU the same step with
        ``torch.autocast("cpu")`` (a copy of detectron2 0.7.2's, see
        :mod:`radkd_d2.engine.mirrors`; the original asserts CUDA)."""
        if self.device_type == "cuda":
            return super().run_step()
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


class RNGState:
    """Checkpointable RNG state of this process (python, numpy, torch CPU and CUDA), so that a
    resumed run draws the same augmentations and dropout masks as an uninterrupted one."""

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types only, so checkpoints stay loadable with torch.load(weights_only=True)
        numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class RunningAverages:
    """Checkpointable training state that a model keeps in plain attributes, outside its
    ``state_dict()``: the running averages of Detectron2's dense detectors
    (``DenseDetector._ema_update``), i.e. RetinaNet's and FCOS's ``loss_normalizer``, the EMA of
    the number of foreground anchors that divides their losses, updated at every training step.

    Without it a resumed run restarted the average at its initial value (100 for RetinaNet,
    300 for FCOS) and took different steps from the first resumed iteration on. Saved under
    ``running_averages`` (``{"<module>.loss_normalizer": float}``, "" for the model itself) next
    to the model, not in it: ``MODEL.WEIGHTS`` files (model zoo, teachers) are unaffected, and a
    fine-tuning run (``MODEL.WEIGHTS`` without ``--resume``) starts the averages afresh, as
    Detectron2 does. In a multi-process run every process keeps its own average (Detectron2 does
    not synchronise it); the checkpoint holds the main process's, which every process resumes
    from (as with :class:`RNGState`)."""

    CHECKPOINT_KEY = "running_averages"
    ATTRIBUTES = {DenseDetector: ("loss_normalizer",)}

    def __init__(self, model: torch.nn.Module):
        self.model = getattr(model, "module", model)  # under DDP: the wrapped model
        self.loaded = False  # set when a checkpoint's averages were loaded

    def slots(self) -> dict:
        """``{key: (module, attribute)}`` of every running average the model can hold (a
        distillation's frozen ``teacher``, never trained, has none)."""
        teacher = getattr(self.model, "teacher", None)
        frozen = {id(m) for m in teacher.modules()} if isinstance(teacher, torch.nn.Module) else set()
        out = {}
        for name, module in self.model.named_modules():
            if id(module) in frozen:
                continue
            for cls, attrs in self.ATTRIBUTES.items():
                if isinstance(module, cls):
                    out.update({f"{name}.{a}" if name else a: (module, a) for a in attrs})
        return out

    def state_dict(self) -> dict:
        # only the averages set so far (a detector's attribute appears at its first step)
        return {k: float(getattr(m, a)) for k, (m, a) in self.slots().items() if hasattr(m, a)}

    def load_state_dict(self, state: dict) -> None:
        slots = self.slots()
        unknown = sorted(set(state) - set(slots))
        if unknown:
            logger.warning("Checkpoint running averages not in this model, ignored: %s", ", ".join(unknown))
        for key, (module, attr) in slots.items():
            if key in state:
                setattr(module, attr, float(state[key]))
            elif hasattr(module, attr):  # not started at the checkpoint: starts afresh
                delattr(module, attr)
        self.loaded = True


def same_script_every_step(on_cpu: bool):
    """Context for a training step: TorchScript functions run without graph-executor
    optimisation on CPU, and on GPU when ``torch.use_deterministic_algorithms`` is on.

    TorchScript's profiling executor runs a scripted function's first call(s) op by op, then
    an optimised graph whose backward (symbolic autodiff) rounds differently: fvcore's
    ``sigmoid_focal_loss_jit``, Detectron2's RetinaNet (and FCOS) classification loss, gives
    input gradients 1 ulp apart from the second call on. The executor's state is not in any
    checkpoint, so a resumed process took its first resumed step with the first-call gradients
    where the uninterrupted run used the optimised ones, and its weights drifted from there.
    Unoptimised, every call computes what the eager ops compute, in every process (of a
    function first called inside such a step: the executor keeps a plan it already optimised;
    ``train_net`` computes no training loss before its first step). On CPU
    nothing is lost (TorchScript does not fuse on CPU); on GPU, where its fusers speed the focal
    loss up and training is not bit-reproducible anyway (cuDNN), the optimised graph is kept
    unless deterministic algorithms are asked for."""
    if on_cpu or torch.are_deterministic_algorithms_enabled():
        return torch.jit.optimized_execution(False)
    return contextlib.nullcontext()


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's TrainingSampler that can skip the first ``skip`` indices of the global
    (all ranks) stream, so a resumed run continues with the samples it would have seen."""

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        super().__init__(size, shuffle, seed)
        self.skip = 0

    def __iter__(self):
        import itertools

        stream = itertools.islice(self._infinite_indices(), self.skip, None)
        yield from itertools.islice(stream, self._rank, None, self._world_size)


def checkpoint_readable(path: str) -> bool:
    """Whether a ``.pth`` file reads back whole: the zip archive ``torch.save`` writes passes its
    CRC check of every member (a legacy, non-zip file is loaded instead)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.testzip() is None
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:  # any failure to read is "not readable"
        return False


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are written to a temporary name and renamed, so a kill
    mid-write never leaves a truncated checkpoint or ``last_checkpoint`` behind; and which loads
    strictly: a file that does not fill the model (:func:`radkd_d2.engine.guard.weights_problems`)
    raises :class:`WeightsLoadError` listing every key before anything is loaded, unless
    ``partial`` (MODEL.WEIGHTS_PARTIAL)."""

    partial = False
    _loading = ""
    # (CLASS_MAP, source class count) of MODEL.SEM_SEG_HEAD in "init" mode: a file whose
    # classifier has the source classes is given the merged target rows as it is read
    class_map = None

    def _load_file(self, filename):
        checkpoint = super()._load_file(filename)
        if self.class_map and isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
            changed = map_checkpoint_classifiers(checkpoint["model"], self.model.state_dict(), *self.class_map)
            if changed:
                logger.info(
                    "MODEL.SEM_SEG_HEAD.CLASS_MAP: %s initialised from %d source classes of %s",
                    ", ".join(changed), self.class_map[1], filename,
                )
        return checkpoint

    def load(self, path: str, checkpointables=None):
        self._loading = path
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:  # Detectron2 resets it only after a load that succeeded
            self._parsed_url_during_load = None

    def _load_model(self, checkpoint):
        if not self.partial and not checkpoint.get("matching_heuristics"):
            from .guard import mismatch_error, mismatch_report

            report, scope = mismatch_report(self.model, checkpoint)
            if report:
                raise mismatch_error("the checkpoint", self._loading, report, scope)
        return super()._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        # fvcore's Checkpointer.save (fvcore 0.1.5) writes <name>.pth in place, then tags it in
        # last_checkpoint: let it write <name>.partial.pth, then rename and tag ours. A kill
        # mid-write leaves at most a .partial.pth, never a truncated <name>.pth or a tag to one.
        if not self.save_dir or not self.save_to_disk:
            return
        partial = f"{name}.partial"
        try:
            super().save(partial, **kwargs)
        except OSError as e:
            if e.errno not in _NO_ROOM:
                raise
            raise self._disk_full(name, partial, e) from None
        os.replace(
            os.path.join(self.save_dir, f"{partial}.pth"), os.path.join(self.save_dir, f"{name}.pth")
        )
        self.tag_last_checkpoint(f"{name}.pth")

    def _disk_full(self, name: str, partial: str, error: OSError) -> DiskFullError:
        """Remove the half-written ``<partial>.pth`` and describe the failure: the folder, the
        free space, the size a checkpoint takes (the last one's, else the model state's), and
        that the last checkpoint is intact (``--resume`` goes on once there is room)."""
        half = os.path.join(self.save_dir, f"{partial}.pth")
        with contextlib.suppress(OSError):
            os.remove(half)
        try:
            free = shutil.disk_usage(self.save_dir).free
        except OSError:
            free = None
        last = super().get_checkpoint_file() if self.has_checkpoint() else ""
        if last and os.path.isfile(last):
            need = os.path.getsize(last)
        else:
            need = sum(t.numel() * t.element_size() for t in self.model.state_dict().values() if torch.is_tensor(t))
        why = {errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is used up"}.get(
            error.errno, "no space left on the device"
        )
        return DiskFullError(
            error.errno,
            f"cannot write checkpoint {name}.pth to {self.save_dir}: {why} "
            f"({_size(free) if free is not None else 'unknown'} free, a checkpoint takes about {_size(need)}); "
            + (f"the last checkpoint {os.path.basename(last)} is intact: free space and rerun with --resume"
               if last else "free space and start again"),
        )

    def get_checkpoint_file(self) -> str:
        """The newest *readable* checkpoint of ``save_dir`` (fvcore's ``resume_or_load`` resumes
        from what this returns). When ``last_checkpoint`` is empty, names a file that is gone, or
        names one that is truncated or damaged (a full disk, a bad copy), the newest intact
        ``model_*.pth`` is used instead, with a warning saying which and why; when none is
        intact, :class:`CorruptCheckpointError` says so and what to do."""
        tag = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(tag) as f:
                name = f.read().strip()
        except OSError:
            return super().get_checkpoint_file()  # no tag: nothing to resume (fvcore's answer)
        named = os.path.join(self.save_dir, name) if name else ""
        if name and os.path.isfile(named) and checkpoint_readable(named):
            return named
        if not name:
            problem = "is empty (it names no checkpoint)"
        elif not os.path.isfile(named):
            problem = f"names {name}, which does not exist (deleted or moved)"
        else:
            problem = f"names {name}, which cannot be read (truncated or damaged)"
        others = sorted(
            (
                p
                for p in Path(self.save_dir).glob("model_*.pth")
                if str(p) != named and not p.name.endswith(".partial.pth")
            ),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        bad = [named] if name and os.path.isfile(named) else []
        for p in others:
            if checkpoint_readable(str(p)):
                self.logger.warning(
                    "%s %s; resuming from the newest readable checkpoint, %s%s", tag, problem, p,
                    f" (unreadable: {', '.join(bad)})" if bad else "",
                )
                return str(p)
            bad.append(str(p))
        if bad:
            remedy = (
                f"Move them away (and last_checkpoint) to start again: mkdir -p {self.save_dir}/corrupt && "
                f"mv {' '.join(bad)} {tag} {self.save_dir}/corrupt/"
            )
            found = f"; no checkpoint in {self.save_dir} can be read: {', '.join(bad)}"
        else:
            remedy = f"To train from MODEL.WEIGHTS instead, remove {tag} (or run without --resume)"
            found = f"; {self.save_dir} holds no other checkpoint (model_*.pth)"
        raise CorruptCheckpointError(f"--resume: {tag} {problem}{found}. {remedy}")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(f"{path}.tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(f"{path}.tmp", path)
