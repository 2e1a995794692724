"""Start-up guards of a training or evaluation run, all checked before anything is written:

- :class:`RunLock`: an OUTPUT_DIR belongs to one running process (``fcntl.flock`` on
  ``OUTPUT_DIR/.run.lock``, released by the kernel when the process ends, however it ends, so a
  killed run never blocks a later ``--resume``); a second run into the same folder refuses,
  naming the folder and the holder.
- :func:`check_config_unchanged`: a relaunch into a folder whose ``config.yaml`` holds another
  config refuses (listing every changed key) unless ``--replace-run``; ``--eval-only``
  may change only the evaluation keys, and keeps the run's ``config.yaml``;
  :func:`check_fresh_start`: a training without ``--resume`` into a folder that holds a run
  refuses too, unless ``--replace-run`` (the old run's files are then moved aside).
- :func:`weights_problems` / :func:`check_model_weights`: MODEL.WEIGHTS (or the checkpoint a
  ``--resume`` continues) must exist, read back, and fill the model: every missing, unexpected
  and shape-mismatched key is listed, and only ``MODEL.WEIGHTS_PARTIAL True`` loads a part.
  What a checkpoint cannot hold by design is not missing: the frozen teacher, the connectors of
  a distillation (``distiller.*``) when the file is a plain model's, and everything outside the
  common prefix of a backbone-only file (``backbone.body.``: the head keeps its
  initialisation, as with Detectron2's ImageNet files).
- :func:`check_eval_only`: ``--eval-only`` needs weights and at least one test set.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml
from detectron2.config import get_cfg

from radkd_d2.checkpoint.report import format_incompatible_keys
from radkd_d2.config import add_radkd_config
from radkd_d2.errors import ConfigError, RunFolderError, WeightsLoadError

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.owner"  # stands in for the lock where the file system has no flock
# keys an --eval-only run may set differently from the run whose folder it evaluates in
EVAL_KEYS = ("MODEL.WEIGHTS", "MODEL.DEVICE", "DATASETS.TEST", "TEST.", "DATALOADER.", "INPUT.MIN_SIZE_TEST",
             "INPUT.MAX_SIZE_TEST", "SEED")  # fmt: skip
# keys that never make another run: where it runs, not what it is
IGNORED_KEYS = ("MODEL.DEVICE", "DATALOADER.NUM_WORKERS", "MODEL.CPU_KEEP_FREED_MEMORY")


# ----------------------------------------------------------------------------------- the lock


class RunLock:
    """``flock`` on ``<folder>/.run.lock``; the file names the holder (pid, host, command)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    def holder(self, path: Optional[Path] = None) -> str:
        """Who holds the lock, as written in the lock file (or ``path``; "" if unknown)."""
        try:
            info = json.loads((path or self.path).read_text() or "{}")
        except (OSError, ValueError):
            return ""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return f"pid {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command', '')}"

    def held_by_another(self) -> bool:
        """Whether another live process holds the lock now (without taking it)."""
        if not self.path.is_file():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no flock on this file system: the owner file tells
            return self._owner_alive()
        finally:
            os.close(fd)  # closing drops a lock taken here
        return False

    def acquire(self) -> None:
        """Take the lock (creating the folder) or raise :class:`RunFolderError` naming the
        holder. Kept until the process exits. Where the file system has no ``flock`` (Lustre
        without ``-o flock``, some NFS set-ups), an owner file created exclusively
        (:data:`OWNER_NAME`) stands in: removed when the process exits normally, and taken over
        when its process is gone (same host) after a kill."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(self._refusal()) from None
        except OSError as e:
            os.close(fd)
            logger.info("OUTPUT_DIR %s: no file locks here (%s); using the owner file %s", self.folder, e, OWNER_NAME)
            self._acquire_owner_file()
            return
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self._info()).encode())
        self._fd = fd

    @staticmethod
    def _info() -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}  # fmt: skip

    @property
    def owner_path(self) -> Path:
        return self.folder / OWNER_NAME

    def _owner_alive(self) -> bool:
        """Whether the owner file names a process that may still run (any other host's, since
        its liveness cannot be checked from here; this host's while its pid exists)."""
        try:
            info = json.loads(self.owner_path.read_text() or "{}")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True  # being written, or unreadable: assume held
        if info.get("host") != socket.gethostname():
            return True
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, TypeError):
            return True
        return True

    def _acquire_owner_file(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.owner_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise RunFolderError(
                        self._refusal(self.owner_path)
                        + f". This file system has no file locks: if no run uses the folder any more "
                        f"(a run killed on another machine), delete {self.owner_path} and start again"
                    ) from None
                self.owner_path.unlink(missing_ok=True)  # its process is gone: a stale owner
                continue
            try:
                os.write(fd, json.dumps(self._info()).encode())
            finally:
                os.close(fd)
            atexit.register(self.owner_path.unlink, missing_ok=True)
            return
        raise RunFolderError(f"OUTPUT_DIR {self.folder}: could not take {self.owner_path}; another run took it first")

    def _refusal(self, path: Optional[Path] = None) -> str:
        path = path or self.path
        return (
            f"OUTPUT_DIR {self.folder} is in use by another run ({self.holder(path) or 'holder unknown'}). "
            "A run folder belongs to one run: wait for it to end, or give this run another OUTPUT_DIR"
        )

    def check_free(self) -> None:
        """Refuse early (before building anything) when another process holds the folder."""
        if self.held_by_another():
            raise RunFolderError(self._refusal())


# ------------------------------------------------------------------------ config of the folder


def _flatten(d: Mapping, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(
    old: Mapping, new: Mapping, ignore: Sequence[str] = IGNORED_KEYS, defaults: Optional[Mapping] = None
) -> List[Tuple[str, object, object]]:
    """``[(key, old value, new value)]`` for every key that differs between two config dicts
    (keys starting with one of ``ignore`` left out). A key the old config lacks but the new one
    holds at its default (in ``defaults``, a config dict) is no change: a later version of the
    code added it."""
    a, b = _flatten(old), _flatten(new)
    d = _flatten(defaults or {})
    out = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(tuple(ignore)):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if key not in a and key in d and _norm(vb) == _norm(d[key]):
            continue
        if _norm(va) != _norm(vb):
            out.append((key, va, vb))
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return v


def default_config():
    cfg = get_cfg()
    add_radkd_config(cfg)
    return cfg


def check_config_unchanged(cfg, *, eval_only: bool, allow_change: bool) -> Optional[str]:
    """Refuse a relaunch into an OUTPUT_DIR whose ``config.yaml`` holds another config.

    Returns:
        the text of the folder's ``config.yaml`` when an ``--eval-only`` run must keep it (the
        caller restores it after Detectron2's set-up writes the evaluation's config), else None.

    Raises:
        RunFolderError: listing every changed key, unless ``allow_change``.
    """
    path = Path(cfg.OUTPUT_DIR) / "config.yaml"
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        old = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RunFolderError(f"{path} cannot be read as YAML ({e}); give this run another OUTPUT_DIR") from e
    new = yaml.safe_load(cfg.dump())
    ignore = IGNORED_KEYS + (EVAL_KEYS if eval_only else ())
    changes = config_changes(old, new, ignore, defaults=yaml.safe_load(default_config().dump()))
    if changes and not allow_change:
        lines = [f"  {k}: {a!r} -> {b!r}" for k, a, b in changes[:40]]
        more = [f"  ... and {len(changes) - 40} more"] if len(changes) > 40 else []
        raise RunFolderError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds a run with another config ({len(changes)} keys differ "
            "from its config.yaml):\n" + "\n".join(lines + more) + "\nGive this run another "
            "OUTPUT_DIR, or pass --replace-run (with --resume: continue that run under this "
            "config; without: start afresh, that run's files moved into OUTPUT_DIR/replaced-<time>/)."
        )
    return text if eval_only else None


RUN_FILES = ("last_checkpoint", "metrics.json")


def check_fresh_start(cfg, *, replace: bool) -> List[str]:
    """A training without --resume into an OUTPUT_DIR that already holds a run (checkpoints or
    metrics) would mix the two runs' metrics and overwrite checkpoints: refuse, unless
    ``replace`` (``--replace-run``). Returns the names of the old run's files to move aside."""
    folder = Path(cfg.OUTPUT_DIR)
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if p.name in RUN_FILES or p.suffix == ".pth"
             or p.name.startswith("events.out.tfevents")]  # fmt: skip
    metrics = folder / "metrics.json"
    if found == ["metrics.json"] and not metrics.read_text().strip():
        found = []  # an empty metrics.json of a run stopped before its first iteration
    if found and not replace:
        raise RunFolderError(
            f"OUTPUT_DIR {folder} already holds a run ({', '.join(sorted(found)[:4])}"
            f"{', ...' if len(found) > 4 else ''}): --resume continues it (a finished run is left as "
            "it is); to train a new run give another OUTPUT_DIR, or pass --replace-run to start "
            "afresh (the old run's files are moved into OUTPUT_DIR/replaced-<time>/)"
        )
    if found:
        found += [n for n in ("config.yaml", "log.txt", "inference") if (folder / n).exists()]
        found += [p.name for p in folder.glob("log.txt.rank*")]
    return sorted(set(found))


def move_run_aside(folder: str | Path, names: Sequence[str]) -> Path:
    """Move a replaced run's files into ``folder/replaced-<time>/`` (nothing is deleted)."""
    folder = Path(folder)
    dest = folder / time.strftime("replaced-%Y%m%d-%H%M%S")
    dest.mkdir()
    for name in names:
        if (folder / name).exists():
            os.replace(folder / name, dest / name)
    return dest


# ---------------------------------------------------------------------------------- weights


def _common_prefix(keys: Iterable[str]) -> str:
    """The longest dotted prefix every key shares ("backbone.body." for a backbone file)."""
    parts = None
    for k in keys:
        p = k.split(".")[:-1]
        if parts is None:
            parts = p
        else:
            n = 0
            while n < min(len(parts), len(p)) and parts[n] == p[n]:
                n += 1
            parts = parts[:n]
    return ".".join(parts) + "." if parts else ""


def weights_problems(
    model_shapes: Mapping[str, tuple], ckpt_shapes: Mapping[str, tuple]
) -> Tuple[List[str], List[str], List[Tuple[str, tuple, tuple]], str]:
    """``(missing, unexpected, shape mismatches, scope)`` of a checkpoint against a model (both
    as key -> shape), with what a checkpoint cannot hold by design left out of ``missing``
    (see the module docstring). ``scope``: the checkpoint's common prefix ("" for a whole
    model)."""
    if ckpt_shapes and all(k.startswith("module.") for k in ckpt_shapes):
        ckpt_shapes = {k[len("module."):]: v for k, v in ckpt_shapes.items()}
    scope = _common_prefix(ckpt_shapes) if ckpt_shapes else ""
    has_distiller = any(k.startswith("distiller.") for k in ckpt_shapes)
    missing = [
        k for k in model_shapes
        if k not in ckpt_shapes and k.startswith(scope) and not k.startswith("teachers.")
        and not (k.startswith("distiller.") and not has_distiller)
    ]  # fmt: skip
    # a distillation's connectors are dropped when its checkpoint goes into the plain student
    has_own_distiller = any(k.startswith("distiller.") for k in model_shapes)
    unexpected = [
        k for k in ckpt_shapes
        if k not in model_shapes and (has_own_distiller or not k.startswith("distiller."))
    ]  # fmt: skip
    shapes = [
        (k, tuple(ckpt_shapes[k]), tuple(model_shapes[k]))
        for k in ckpt_shapes
        if k in model_shapes and tuple(ckpt_shapes[k]) != tuple(model_shapes[k])
    ]
    return missing, unexpected, shapes, scope


def read_checkpoint(checkpointer, path: str) -> dict:
    """The checkpoint file as Detectron2's checkpointer reads it (.pth, or a Detectron2/Caffe2
    .pkl), or :class:`WeightsLoadError` naming the file and why it cannot be used."""
    if os.path.isdir(path):
        raise WeightsLoadError(f"checkpoint {path!r} is a folder: name the .pth file in it (model_final.pth)")
    if not os.path.isfile(path):
        raise WeightsLoadError(f"checkpoint {path!r} does not exist")
    from urllib.parse import urlparse

    try:
        # Detectron2's reader expects to run inside its load() (which parses the name first)
        checkpointer._parsed_url_during_load = urlparse(path)
        try:
            ckpt = checkpointer._load_file(path)
        finally:
            checkpointer._parsed_url_during_load = None
    except Exception as e:  # torch.load / pickle / zip errors differ by the kind of damage
        raise WeightsLoadError(
            f"checkpoint {path!r} cannot be read (truncated, damaged or not a checkpoint): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise WeightsLoadError(f"checkpoint {path!r} holds no model state dict")
    return ckpt


def mismatch_report(model, ckpt: Mapping) -> Tuple[str, str]:
    """``(report, scope)``: every key of ``ckpt["model"]`` that does not fill ``model``
    (:func:`weights_problems`, one per line; "" when it fills it) and the file's scope."""
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ckpt_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in ckpt["model"].items()}
    missing, unexpected, shapes, scope = weights_problems(model_shapes, ckpt_shapes)
    return format_incompatible_keys(missing, unexpected, shapes), scope


def mismatch_error(key: str, path: str, report: str, scope: str) -> WeightsLoadError:
    return WeightsLoadError(
        f"{key} = {path!r} does not match the model"
        + (f" (the file holds {scope}* only; keys outside it keep their initialisation)" if scope else "")
        + f":\n{report}\nCheck the config the weights were trained with, or set "
        "MODEL.WEIGHTS_PARTIAL True to load the matching part (every key above stays listed)."
    )


def check_model_weights(model, checkpointer, path: str, *, partial: bool, key: str = "MODEL.WEIGHTS") -> dict:
    """Read ``path`` and check that it fills ``model`` (:func:`weights_problems`), without
    loading it; returns the checkpoint read. Detectron2 model-zoo files matched by its name
    heuristics are only read."""
    ckpt = read_checkpoint(checkpointer, path)
    if ckpt.get("matching_heuristics"):
        return ckpt  # Caffe2/Detectron2 model-zoo names: Detectron2 matches and reports them
    report, scope = mismatch_report(model, ckpt)
    if report and not partial:
        raise mismatch_error(key, path, report, scope)
    if report:
        logger.warning("MODEL.WEIGHTS_PARTIAL: loading the matching part of %s; not loaded:\n%s", path, report)
    return ckpt


def check_eval_only(cfg) -> None:
    """``--eval-only`` scores trained weights on at least one test set."""
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError(
            "--eval-only needs trained weights: MODEL.WEIGHTS is empty, so a randomly initialised "
            "model would be scored. Add MODEL.WEIGHTS path/to/model_final.pth"
        )
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            "--eval-only with DATASETS.TEST () has nothing to evaluate: name a test set, e.g. "
            "DATASETS.TEST \"('camvid_val',)\""
        )
