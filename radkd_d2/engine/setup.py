"""Config loading shared by tools/train_net.py and the other tools."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from radkd_d2.config import add_radkd_config
from radkd_d2.data import register_all

from .checks import validate_config

logger = logging.getLogger(__name__)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory in the process for reuse: no trimming of the
    heap top and no mmap for large blocks. Otherwise every training step on the CPU hands its
    large temporaries back to the OS and takes them fresh (page faults) on the next step; a
    distillation step, whose teacher features and student activations are alive together, paid
    5x the page faults of a student step plus a teacher forward (``bench/bench_distill_step.py``).
    The process then holds its peak memory, which it reaches every step anyway. Returns False
    (and changes nothing) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def load_config(config_file: str, opts=(), *, validate: bool = True):
    """Detectron2 config with radkd-d2 keys, merged from ``config_file`` and ``opts``
    (KEY VALUE pairs), data sets registered for its ``DATASETS.ROOT``, and checked.

    A CUDA device in the config falls back to CPU, with a warning, when no GPU is present, so
    the same config file runs on both.
    """
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file!r} does not exist (--config-file)")
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([os.fspath(x) if isinstance(x, os.PathLike) else x for x in opts])
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is available: using cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE == "cpu":
        # subnormal floats (tiny gradients/activations late in training) take a slow path on
        # x86 CPUs, making iterations up to 100x slower; flush them to zero
        torch.set_flush_denormal(True)
    register_all(cfg)
    if validate:
        validate_config(cfg)
    return cfg


def setup_cfg(args):
    """``load_config`` from parsed ``default_argument_parser`` args, frozen, then Detectron2's
    ``default_setup`` (output dir, logging, config dump). Checks run before anything is written."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    if cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.CPU_KEEP_FREED_MEMORY and not keep_freed_memory():
        # a training process only: a long-lived one that builds many models of varying sizes
        # (a test session) is better served by the allocator's defaults
        logger.info("MODEL.CPU_KEEP_FREED_MEMORY: not a glibc C library, allocator defaults kept")
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several CPU processes on one machine: share the cores instead of oversubscribing them
        # (busy-waiting OpenMP threads of oversubscribed processes slow training down ~10x)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="radkd_d2", abbrev_name="radkd")
    return cfg
