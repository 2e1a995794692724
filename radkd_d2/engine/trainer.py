"""The radkd-d2 trainer: Detectron2's DefaultTrainer with the project's loaders, evaluators,
poly LR, and DDP that also works for CPU processes (gloo)."""
from __future__ import annotations

import logging
import weakref

from detectron2.data import (
    MetadataCatalog,
    get_detection_dataset_dicts,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from radkd_d2.data import ReadableDatasetMapper, SemSegDatasetMapper
from radkd_d2.evaluation import build_evaluator
from radkd_d2.solver import build_lr_scheduler

from .hooks import TeacherIntegrityHook
from .train_loop import (
    AMP_DTYPES,
    AtomicCheckpointer,
    MixedPrecisionTrainer,
    ResumableTrainingSampler,
    RNGState,
    Trainer32,
)


def _is_sem_seg(dataset_name: str) -> bool:
    return getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None) == "sem_seg"


class Trainer(DefaultTrainer):
    """DefaultTrainer with: the semantic-segmentation mapper for ``sem_seg`` data sets, the
    evaluator picked from ``evaluator_type``, ``WarmupPolyLR``, and DDP without ``device_ids``
    for CPU models (Detectron2's ``create_ddp_model`` always passes them)."""

    def __init__(self, cfg):
        # Same construction order as DefaultTrainer.__init__; only the DDP call differs.
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
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        # before the checkpointer/writers so a changed teacher stops the run before saving
        hooks.insert(-1, TeacherIntegrityHook(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hooks

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume)
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


