"""The radkd-d2 trainer: Detectron2's DefaultTrainer with the project's loaders, evaluators,
poly LR, and DDP that also works for CPU processes (gloo)."""
from __future__ import annotations

import json
import logging
import os
import weakref

from detectron2.data import (
    MetadataCatalog,
    get_detection_dataset_dicts,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter
from detectron2.utils.logger import setup_logger

from radkd_d2.data import ReadableDatasetMapper, SemSegDatasetMapper
from radkd_d2.evaluation import build_evaluator
from radkd_d2.modeling.teacher import load_teacher_cfg
from radkd_d2.solver import build_lr_scheduler

from radkd_d2.errors import ConfigError
from .adversarial import HolisticCritic, HolisticCriticHook, build_holistic_critic
from .hooks import StepTimer, TeacherIntegrityHook
from .mirrors import warn_if_changed
from .train_loop import (
    AMP_DTYPES,
    AtomicCheckpointer,
    MixedPrecisionTrainer,
    ResumableTrainingSampler,
    RNGState,
    RunningAverages,
    Trainer32,
    same_script_every_step,
)


logger = logging.getLogger(__name__)

# the metric a teacher floor (MODEL.DISTILL.TEACHER.MIN_SCORE) applies to, per evaluator task
PRIMARY_METRICS = {"sem_seg": "mIoU", "bbox": "AP"}
TEACHER_EVAL_FILE = "teacher_eval.json"


def primary_score(results: dict):
    """``(task/metric, value)`` of the first evaluation task with a primary metric, or None.
    ``results`` is ``DefaultTrainer.test``'s output: ``{task: {metric: v}}``, or
    ``{dataset: {task: {metric: v}}}`` for several test sets (the first set counts)."""
    if results and not any(k in PRIMARY_METRICS for k in results):
        results = next(iter(results.values()), {})
    for task, metric in PRIMARY_METRICS.items():
        if metric in (results or {}).get(task, {}):
            return f"{task}/{metric}", float(results[task][metric])
    return None


def teacher_eval_config(cfg):
    """The config :meth:`Trainer.evaluate_teacher` scores the teacher with: the teacher's own
    model and pixel convention (``MODEL.DISTILL.TEACHER.CONFIG_FILE`` + ``OPTS``), on the run's
    test sets at the run's test size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``: the inputs the
    student is scored on, not the teacher file's own, often full-size, setting)."""
    dcfg = cfg.MODEL.DISTILL
    tcfg = load_teacher_cfg(dcfg.TEACHER.CONFIG_FILE, cfg.MODEL.DEVICE, dcfg.TEACHER.OPTS)
    tcfg.defrost()
    tcfg.DATASETS = cfg.DATASETS.clone()  # the student's data: where it will be scored
    tcfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MIN_SIZE_TEST
    tcfg.INPUT.MAX_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST
    tcfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "teacher_eval")
    tcfg.freeze()
    return tcfg


def _is_sem_seg(dataset_name: str) -> bool:
    return getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None) == "sem_seg"


class LazyJSONWriter(JSONWriter):
    """Detectron2's JSONWriter whose file is opened (for appending) at the first write."""

    def __init__(self, json_file: str, window_size: int = 20):
        self._json_file = json_file
        self._handle = None
        self._window_size = window_size
        self._last_write = -1

    @property
    def _file_handle(self):
        if self._handle is None:
            os.makedirs(os.path.dirname(self._json_file) or ".", exist_ok=True)
            self._handle = open(self._json_file, "a")
        return self._handle

    def close(self):
        if self._handle is not None:
            self._handle.close()


class Trainer(DefaultTrainer):
    """DefaultTrainer with: the semantic-segmentation mapper for ``sem_seg`` data sets, the
    evaluator picked from ``evaluator_type``, ``WarmupPolyLR``, and DDP without ``device_ids``
    for CPU models (Detectron2's ``create_ddp_model`` always passes them). With
    MODEL.DISTILL.HOLISTIC.WEIGHT > 0 it also trains SKD's holistic critic (``self.holistic``,
    :mod:`radkd_d2.engine.adversarial`), checkpointed as ``holistic_critic``. A dense detector's
    running loss normalizer (RetinaNet), which its state dict lacks, is checkpointed as
    ``running_averages`` (:class:`~radkd_d2.engine.train_loop.RunningAverages`); on CPU its
    steps run TorchScript unoptimised (the same on every call, resumed or not)."""

    def __init__(self, cfg):
        # A copy of detectron2 0.7.2's DefaultTrainer.__init__ (radkd_d2/engine/mirrors.py: no
        # extension point reaches the DDP call). Differs in: DDP without device_ids on CPU, the
        # inner trainer (named non-finite losses; AMP on CPU), the atomic checkpointer, the
        # model's running averages and the holistic critic (built before the hooks, which step it).
        warn_if_changed(logger)
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = next(model.parameters()).device.type == "cpu"
        ddp_kwargs = {"device_ids": None} if on_cpu else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        if cfg.SOLVER.AMP.ENABLED:
            device_type = "cuda" if not on_cpu else "cpu"
            precision = AMP_DTYPES[cfg.SOLVER.AMP.PRECISION]
            self._trainer = MixedPrecisionTrainer(model, data_loader, optimizer, precision, device_type)
        else:
            self._trainer = Trainer32(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), rng=RNGState()
        )
        # the dense detectors' loss normalizers (RetinaNet): model state outside its state_dict
        self.running_averages = RunningAverages(model)
        if self.running_averages.slots():
            self.checkpointer.add_checkpointable(RunningAverages.CHECKPOINT_KEY, self.running_averages)
        self.holistic = build_holistic_critic(cfg, model)  # None unless the holistic term is on
        if self.holistic is not None:
            self.checkpointer.add_checkpointable(HolisticCritic.CHECKPOINT_KEY, self.holistic)
        self._on_cpu = on_cpu
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def run_step(self):
        """Detectron2's step, its TorchScript computing the same on every call (on CPU; see
        :func:`~radkd_d2.engine.train_loop.same_script_every_step`): a resumed run's first
        steps compute what the uninterrupted run's computed."""
        with same_script_every_step(getattr(self, "_on_cpu", True)):
            super().run_step()

    def train(self):
        """Detectron2's training loop, after the teacher check when it is asked for."""
        dcfg = self.cfg.MODEL.DISTILL
        if dcfg.TEACHER.EVAL_BEFORE_TRAIN or dcfg.TEACHER.MIN_SCORE > 0:
            self.evaluate_teacher()
        return super().train()

    def evaluate_teacher(self) -> dict:
        """Score the frozen teacher on ``DATASETS.TEST`` (the student's test sets, read with the
        teacher's own input settings) before distilling; write the results to
        ``OUTPUT_DIR/teacher_eval.json``; raise when its primary metric (mIoU, box AP) is below
        ``MODEL.DISTILL.TEACHER.MIN_SCORE``. Runs on every process (evaluation is distributed)."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        teacher = getattr(model, "teacher", None)
        dcfg = self.cfg.MODEL.DISTILL
        if teacher is None:
            raise ConfigError(
                "MODEL.DISTILL.TEACHER.EVAL_BEFORE_TRAIN / MIN_SCORE need a Distill* "
                f"meta-architecture; MODEL.META_ARCHITECTURE is {self.cfg.MODEL.META_ARCHITECTURE!r}"
            )
        tcfg = teacher_eval_config(self.cfg)
        logger.info("Evaluating the teacher (%s) on %s at the run's test size (MIN_SIZE_TEST %s) before distillation",
                    dcfg.TEACHER.WEIGHTS or "random weights", tuple(tcfg.DATASETS.TEST), tcfg.INPUT.MIN_SIZE_TEST)
        results = comm.all_gather(self.test(tcfg, teacher))[0]  # the main process's results
        score = primary_score(results)
        if comm.is_main_process():
            record = {
                "config_file": dcfg.TEACHER.CONFIG_FILE,
                "weights": dcfg.TEACHER.WEIGHTS,
                "datasets": list(tcfg.DATASETS.TEST),
                "min_size_test": tcfg.INPUT.MIN_SIZE_TEST,
                "max_size_test": tcfg.INPUT.MAX_SIZE_TEST,
                "results": results,
            }
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            with open(os.path.join(self.cfg.OUTPUT_DIR, TEACHER_EVAL_FILE), "w") as f:
                json.dump(record, f, indent=2)
        floor = dcfg.TEACHER.MIN_SCORE
        if floor > 0:
            if score is None:
                raise ConfigError(
                    f"MODEL.DISTILL.TEACHER.MIN_SCORE = {floor}: the teacher's evaluation on "
                    f"{tuple(tcfg.DATASETS.TEST)} gave no mIoU or AP to compare with (results: {results})"
                )
            name, value = score
            if value < floor:
                raise RuntimeError(
                    f"refusing to distil: the teacher scores {name} = {value:.2f} on "
                    f"{tuple(tcfg.DATASETS.TEST)}, below MODEL.DISTILL.TEACHER.MIN_SCORE = {floor:g}. "
                    "A teacher this weak would teach the student its mistakes; check that "
                    f"MODEL.DISTILL.TEACHER.WEIGHTS ({dcfg.TEACHER.WEIGHTS or 'empty: random'}) is "
                    "a trained checkpoint of MODEL.DISTILL.TEACHER.CONFIG_FILE "
                    f"({dcfg.TEACHER.CONFIG_FILE}), or lower the floor"
                )
            logger.info("Teacher %s = %.2f >= MODEL.DISTILL.TEACHER.MIN_SCORE = %g", name, value, floor)
        return results

    def build_hooks(self):
        # every iteration's time as ``step_time`` (Detectron2's ``time`` skips the first three)
        hooks = [StepTimer() if type(h) is d2_hooks.IterationTimer else h for h in super().build_hooks()]
        # right before the PeriodicCheckpointer (hooks run in list order): a changed teacher
        # stops the run before a checkpoint of that iteration is saved
        at = next(
            (i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.PeriodicCheckpointer)),
            len(hooks),
        )
        hooks.insert(at, TeacherIntegrityHook(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        holistic = getattr(self, "holistic", None)
        if holistic is not None:
            # the critic's step follows the student's update and precedes the checkpoint of the
            # iteration, so a checkpoint holds both players at the same iteration
            hooks.insert(at, HolisticCriticHook(holistic))
        metric = self.cfg.TEST.BEST_CHECKPOINT_METRIC
        if metric and comm.is_main_process():
            # right after the EvalHook, whose results it reads from the event storage
            at = 1 + max(i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.EvalHook))
            best = d2_hooks.BestCheckpointer(
                self.cfg.TEST.EVAL_PERIOD, self.checkpointer, metric, mode=self.cfg.TEST.BEST_CHECKPOINT_MODE
            )
            hooks.insert(at, best)
        return hooks

    def build_writers(self):
        """Detectron2's writers (console, metrics.json, TensorBoard), the file ones opened at
        their first write: building the trainer writes nothing to OUTPUT_DIR."""
        from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter

        return [
            CommonMetricPrinter(self.max_iter),
            LazyJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),  # its SummaryWriter is made on first write
        ]

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
        holistic = getattr(self, "holistic", None)
        if holistic is not None and self.start_iter > 0 and not holistic.loaded:
            logger.warning(
                "Resumed from a checkpoint without a holistic critic (%s): the critic starts "
                "afresh at iteration %d", HolisticCritic.CHECKPOINT_KEY, self.start_iter,
            )
        averages = getattr(self, "running_averages", None)
        if averages is not None and self.start_iter > 0 and averages.slots() and not averages.loaded:
            logger.warning(
                "Resumed from a checkpoint without the model's running averages (%s: %s, saved "
                "by radkd-d2 checkpoints since they were added): they restart at their initial "
                "values at iteration %d, so this run's weights will differ from an uninterrupted "
                "run's", RunningAverages.CHECKPOINT_KEY, ", ".join(averages.slots()), self.start_iter,
            )
        # continue the sample stream where the checkpointed run stopped (global, all ranks)
        sampler = getattr(self, "_train_sampler", None)
        if isinstance(sampler, ResumableTrainingSampler) and self.start_iter > 0:
            sampler.skip = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH

    def build_train_loader(self, cfg):
        """Train loader (an instance method here, so the resumable sampler can be kept)."""
        mapper_cls = SemSegDatasetMapper if _is_sem_seg(cfg.DATASETS.TRAIN[0]) else ReadableDatasetMapper
        mapper = mapper_cls(cfg, True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            self._train_sampler = None
            return build_detection_train_loader(cfg, mapper=mapper)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        if not dataset:
            raise ValueError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} holds no images")
        seed = cfg.SEED if cfg.SEED >= 0 else None
        self._train_sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        # the loader's own generator (seed) keeps it from drawing on the global RNG, which the
        # checkpoint restores on resume: a resumed run then reproduces augmentation and dropout
        # exactly with DATALOADER.NUM_WORKERS 0 (workers restart their seeds on resume)
        return build_detection_train_loader(
            cfg, mapper=mapper, dataset=dataset, sampler=self._train_sampler, seed=seed
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = (SemSegDatasetMapper if _is_sem_seg(dataset_name) else ReadableDatasetMapper)(cfg, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


