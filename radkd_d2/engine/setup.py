"""Config loading shared by tools/train_net.py and the other tools."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from radkd_d2.config import add_radkd_config
from radkd_d2.data import register_all

from radkd_d2.errors import ConfigError, WeightsLoadError
from radkd_d2.modeling.teacher import local_weights

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


def _all_keys(cfg, prefix: str = "") -> list:
    out = []
    for k, v in cfg.items():
        out += _all_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _unknown_key(cfg, key: str, where: str) -> ConfigError:
    import difflib

    keys = _all_keys(cfg)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.85)
    if not close:  # a misspelt last part under the right section
        section, _, last = key.rpartition(".")
        close = [f"{section}.{m}" for m in difflib.get_close_matches(
            last, [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section], n=3)]
    hint = f"; did you mean {' or '.join(close)}?" if close else " (tools/list_configs.py and radkd_d2/config.py list the keys)"
    return ConfigError(f"{key} is not a config key ({where}){hint}")


def _check_yaml_chain(path: Path, asked_by: str = "") -> None:
    """Read a config file and its _BASE_ chain as YAML, naming the file and line of a syntax
    error and the file that asks for a missing base."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{asked_by} asks for _BASE_ {str(path)!r}, which does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path}: YAML syntax error{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds no KEY: VALUE mapping")
    base = data.get("_BASE_")
    if base:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _check_yaml_chain(base_path, asked_by=f"config file {path}")


def merge_checked(cfg, config_file: str, opts: list) -> None:
    """``merge_from_file`` then ``merge_from_list``, with each mistake turned into one
    :class:`ConfigError` naming the key (or file and line) and the fix: YAML syntax errors, a
    missing _BASE_, unknown keys (with "did you mean"), an odd-length override list, and values
    of the wrong type. An integer given for a float key is taken as that float."""
    import ast

    _check_yaml_chain(Path(config_file))
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, AssertionError) as e:
        text = str(e.args[0] if e.args else e)
        if "Non-existent config key: " in text:
            raise _unknown_key(cfg, text.split("Non-existent config key: ")[1].strip("'"), f"in {config_file}") from None
        raise
    if len(opts) % 2:
        raise ConfigError(
            f"the KEY VALUE overrides have an odd number of items ({len(opts)}): every key needs a "
            f"value; the overrides were {' '.join(map(str, opts))}"
        )
    fixed = []
    for key, value in zip(opts[0::2], opts[1::2]):
        key = str(key)
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise _unknown_key(cfg, key, "command-line override")
        default = node[parts[-1]]
        try:
            parsed = ast.literal_eval(value) if isinstance(value, str) else value
        except (ValueError, SyntaxError):
            parsed = value
        if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
            value = repr(float(parsed))
        elif isinstance(default, (tuple, list)) and isinstance(parsed, str):
            raise ConfigError(
                f"{key} takes a {type(default).__name__}, e.g. {default!r}; {value!r} is a single "
                f"string: write \"('{value}',)\""
            )
        elif default is not None and type(parsed) is not type(default) and not (
            isinstance(parsed, (tuple, list)) and isinstance(default, (tuple, list))
        ) and not (isinstance(default, str) and isinstance(value, str)):
            raise ConfigError(
                f"{key} takes a {type(default).__name__} (default {default!r}); got {value!r}"
            )
        fixed += [key, value]
    try:
        cfg.merge_from_list(fixed)
    except ValueError as e:  # yacs's type check, for what the checks above let through
        raise ConfigError(f"{e}: give the value in the key's type") from None


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
    merge_checked(cfg, config_file, [os.fspath(x) if isinstance(x, os.PathLike) else x for x in opts])
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


def setup_cfg(args, world_size: int = 0):
    """``load_config`` from parsed ``default_argument_parser`` args (checked), frozen, and the
    run folder's checks: not held by another running process, and holding no run of another
    config (:mod:`radkd_d2.engine.guard`). Writes nothing: :func:`preflight` builds the run and
    :func:`start_run` then takes the folder and writes to it.

    ``world_size``: the number of processes the run will have (default: this process group's);
    ``train_net`` runs these checks once before ``launch`` spawns several processes, so a bad
    input gives one line there too."""
    from .guard import RunLock, check_config_unchanged, check_eval_only, check_fresh_start

    _explain_misplaced_flags(getattr(args, "opts", []))
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    if getattr(args, "eval_only", False):
        check_eval_only(cfg)
    elif not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: name a training set, e.g. \"('camvid_train',)\"")
    world = world_size or comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the {world} "
            f"processes (--num-gpus x --num-machines): each takes an equal share of the batch"
        )
    if comm.is_main_process():
        RunLock(cfg.OUTPUT_DIR).check_free()
    replace = getattr(args, "replace_run", False)
    args._keep_config = check_config_unchanged(cfg, eval_only=getattr(args, "eval_only", False), allow_change=replace)
    if not getattr(args, "eval_only", False) and not getattr(args, "resume", False):
        args._old_run = check_fresh_start(cfg, replace=replace)
    return cfg


_FLAGS = ("--resume", "--eval-only", "--num-gpus", "--num-machines", "--machine-rank", "--dist-url",
          "--config-file", "--replace-run")  # fmt: skip


def _explain_misplaced_flags(opts) -> None:
    """Detectron2's parser takes everything after the first KEY VALUE override as overrides, so
    a flag written after them would be read as a config key: say so."""
    flags = [o for o in map(str, opts) if o.split("=")[0] in _FLAGS]
    if flags:
        raise ConfigError(
            f"{' '.join(flags)} came after the config overrides (KEY VALUE ...), where it is read as "
            f"a config key: put the flags first, e.g. train_net.py --config-file CFG {flags[0]} "
            "MODEL.WEIGHTS ..."
        )


class _Preflight:
    """What :func:`preflight` collected: the log records of the build (replayed into the log
    files once they exist) and the weights checks."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.records = []
        self.finished = False  # --resume of a run that has reached SOLVER.MAX_ITER

    def check_weights(self, model, checkpointer, *, resume: bool, eval_only: bool = False) -> None:
        """The checkpoint that will be loaded (``--resume``: the run's newest readable one, else
        MODEL.WEIGHTS) reads back and fills ``model`` (strictly unless MODEL.WEIGHTS_PARTIAL),
        and the test sets that will be evaluated can be read."""
        from detectron2.data import DatasetCatalog
        from torch.nn.parallel import DistributedDataParallel

        from .guard import check_model_weights

        checkpointer.partial = self.cfg.MODEL.WEIGHTS_PARTIAL
        head = self.cfg.MODEL.SEM_SEG_HEAD
        if head.CLASS_MAP and head.CLASS_MAP_MODE == "init":
            checkpointer.class_map = (head.CLASS_MAP, head.CLASS_MAP_SOURCE_CLASSES)
        if isinstance(model, DistributedDataParallel):
            model = model.module
        path, key = self.cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
        if resume and checkpointer.has_checkpoint():
            path, key = checkpointer.get_checkpoint_file(), "the checkpoint to resume from"
        if path and "://" in path:
            # fetched now (or found in Detectron2's download cache), before anything is written
            path = str(local_weights(path, "the model's", key=key, error=WeightsLoadError))
        if path:
            ckpt = check_model_weights(model, checkpointer, path, partial=self.cfg.MODEL.WEIGHTS_PARTIAL, key=key)
            if key != "MODEL.WEIGHTS" and not eval_only and isinstance(ckpt.get("iteration"), int):
                self._check_resume_point(ckpt["iteration"] + 1, path)
        if eval_only or self.cfg.TEST.EVAL_PERIOD > 0:
            for name in self.cfg.DATASETS.TEST:
                DatasetCatalog.get(name)


    def _check_resume_point(self, reached: int, path: str) -> None:
        """``--resume`` of a run that reached ``reached`` iterations: past SOLVER.MAX_ITER is
        refused (a run cannot resume backwards; the old config.yaml would sit beside later
        weights); exactly at it, the run is finished and nothing is to be done (``finished``)."""
        max_iter = self.cfg.SOLVER.MAX_ITER
        if reached > max_iter:
            raise ConfigError(
                f"--resume: the run in {self.cfg.OUTPUT_DIR} has reached iteration {reached} ({path}), "
                f"past SOLVER.MAX_ITER = {max_iter}; a run cannot resume backwards. Set SOLVER.MAX_ITER "
                f">= {reached} to go on, or start afresh with --replace-run and without --resume (the old "
                "run is kept in replaced-<time>/)"
            )
        self.finished = reached == max_iter


class _ListHandler(logging.Handler):
    def __init__(self, records):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record):
        self.records.append(record)


_LOGGERS = ("detectron2", "radkd_d2", "fvcore")


@contextlib.contextmanager
def preflight(cfg):
    """Build the run (model, teacher, data loaders, weights checks) before anything is written.

    The RNG is seeded as Detectron2's ``default_setup`` seeds it (SEED + rank), so models are
    initialised as before. Log records are kept and replayed by :func:`start_run` into the
    console and ``log.txt``; when a check fails they are printed to stderr with the error, and
    nothing has been written."""
    from detectron2.utils.env import seed_all_rng

    state = _Preflight(cfg)
    handler = _ListHandler(state.records)
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
    try:
        yield state
    except BaseException:
        fmt = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
        for rec in state.records:
            if rec.levelno >= logging.WARNING:
                print(fmt.format(rec), file=sys.stderr)
        raise
    finally:
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def start_run(cfg, args, early: _Preflight) -> None:
    """Take the run folder (:class:`~radkd_d2.engine.guard.RunLock`, main process), then
    Detectron2's ``default_setup`` (output dir, logging, config dump, seeding) and the records
    of the build replayed into the logs. An ``--eval-only`` run into a run's folder keeps that
    run's ``config.yaml`` and writes its own as ``config_eval.yaml``."""
    from .guard import RunLock, move_run_aside

    keep = getattr(args, "_keep_config", None)
    if comm.is_main_process():
        lock = RunLock(cfg.OUTPUT_DIR)
        lock.acquire()
        _HELD_LOCKS.append(lock)  # held until the process exits
        old = getattr(args, "_old_run", None)
        if old:  # --replace-run without --resume: the replaced run's files kept aside, not mixed
            moved = move_run_aside(cfg.OUTPUT_DIR, old)
            print(f"--replace-run: the run in {cfg.OUTPUT_DIR} moved to {moved}", file=sys.stderr)
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
    for rec in early.records:
        logging.getLogger(rec.name).handle(rec)
    if keep is not None and comm.is_main_process():
        folder = Path(cfg.OUTPUT_DIR)
        os.replace(folder / "config.yaml", folder / "config_eval.yaml")
        (folder / "config.yaml.tmp").write_text(keep)
        os.replace(folder / "config.yaml.tmp", folder / "config.yaml")
        logger.info("--eval-only: the run's config.yaml kept; this evaluation's config is config_eval.yaml")


_HELD_LOCKS: list = []
