"""The radkd-d2 trainer: Detectron2's DefaultTrainer with the project's loaders, evaluators,
poly LR, and DDP that also works for CPU processes (gloo)."""
from __future__ import annotations

import logging
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from radkd_d2.data import SemSegDatasetMapper
from radkd_d2.evaluation import build_evaluator
from radkd_d2.solver import build_lr_scheduler


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
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = SemSegDatasetMapper(cfg, True) if _is_sem_seg(cfg.DATASETS.TRAIN[0]) else None
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = SemSegDatasetMapper(cfg, False) if _is_sem_seg(dataset_name) else None
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


