"""Run ``tools/train_net.py`` in a subprocess with a progress bar (tqdm) and ETA.

Detectron2's ``CommonMetricPrinter`` logs ``eta: ... iter: N`` every 20 iterations; those lines
move the bar, and the whole output goes to a log file in the run folder.

Seeds (the tools' ``--seeds N``): seed ``k`` of an arm runs with ``SEED`` = the config's SEED
+ k (0 + k when the config leaves it random, -1), so the first seed keeps the config's SEED, into
``<arm>/seed<k>/``; a single seed keeps the config's SEED untouched and the plain ``<arm>/``
folder, as before seeds existed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from radkd_d2.evaluation.runs import seed_folder

TRAIN_NET_MODULE = "radkd_d2.train_net"  # the package's own train_net: no repository needed
_ITER_RE = re.compile(r"eta: \S+\s+iter: (\d+)")


def train_command(
    config: str | Path, opts: Sequence[str] = (), *, resume: bool = False
) -> list[str]:
    """``python -m radkd_d2.train_net --config-file CONFIG [--resume] KEY VALUE ...`` (the same
    command as the repository's ``tools/train_net.py``)."""
    cmd = [sys.executable, "-m", TRAIN_NET_MODULE, "--config-file", str(config)]
    if resume:
        cmd.append("--resume")
    return cmd + [os.fspath(x) if isinstance(x, os.PathLike) else str(x) for x in opts]


def seeds_arg(text: str) -> int:
    """argparse type of ``--seeds``: a count of at least 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be at least 1, got {n}")
    return n


def config_seed(config: str | Path) -> int:
    """``SEED`` of a config file, following its ``_BASE_`` chain; -1 (Detectron2's default:
    a random seed per run) when no file of the chain sets it. Reads YAML only (no Detectron2)."""
    from fvcore.common.config import CfgNode

    cfg = CfgNode.load_yaml_with_base(str(config), allow_unsafe=False)
    seed = cfg.get("SEED", -1)
    return int(seed) if seed is not None else -1


def seed_values(seeds: int, base: int) -> List[Optional[int]]:
    """The ``SEED`` of each of ``seeds`` seeds: ``[None]`` for one (keep the config's SEED, as
    before --seeds), else ``base, base + 1, ...`` with ``base`` the config's SEED, or 0 when the
    config's is random (< 0): the seeds must differ and be written down in their config.yaml."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    if seeds == 1:
        return [None]
    start = base if base >= 0 else 0
    return [start + k for k in range(seeds)]


@dataclass
class PlannedRun:
    """One train_net run of a tool's plan.

    Attributes:
        arm: the setting it is a seed of ("student_lad"); its seeds share it.
        name: the run's name, ``arm`` or ``arm/seed<k>`` (as the report names it).
        config: config file; ``opts`` its KEY VALUE overrides, OUTPUT_DIR and SEED included.
        out_dir: OUTPUT_DIR.
        seed: the SEED set in ``opts`` (None: the config's own).
        index: seed index k (0 for a single seed).
        label: human-readable description for the progress bar.
    """

    arm: str
    name: str
    config: Path
    opts: list
    out_dir: Path
    seed: Optional[int] = None
    index: int = 0
    label: str = ""

    def command(self, resume: bool = False) -> list[str]:
        """The train_net command line of this run."""
        return train_command(self.config, self.opts, resume=resume)


def plan_seeds(
    arm: str,
    config: str | Path,
    opts: Sequence,
    arm_dir: str | Path,
    seeds: int,
    *,
    base_seed: Optional[int] = None,
    label: str = "",
) -> List[PlannedRun]:
    """The ``seeds`` runs of one arm: ``opts`` plus OUTPUT_DIR (``arm_dir`` for one seed, else
    ``arm_dir/seed<k>``) and, for several seeds, a distinct SEED each (see the module doc).

    Args:
        base_seed: SEED of the first seed (default: the config's, :func:`config_seed`).
    """
    if base_seed is None:
        base_seed = config_seed(config) if seeds > 1 else -1  # one seed keeps the config's
    runs = []
    for k, seed in enumerate(seed_values(seeds, base_seed)):
        out_dir = seed_folder(arm_dir, k, seeds)
        extra = ["OUTPUT_DIR", str(out_dir)] + ([] if seed is None else ["SEED", str(seed)])
        name = f"{arm}/{out_dir.name}" if seeds > 1 else arm
        text = f"{label or arm}" + (f", seed {k} (SEED {seed})" if seed is not None else "")
        runs.append(PlannedRun(arm, name, Path(config), [*opts, *extra], out_dir, seed, k, text))
    return runs


def run_training(
    cmd: Sequence[str],
    log_path: str | Path,
    *,
    bar: Optional[tqdm] = None,
    offset: int = 0,
    max_iter: Optional[int] = None,
    label: str = "",
    cwd: str | Path | None = None,
) -> int:
    """Run a train_net command in ``cwd`` (default: the working directory; relative paths in
    configs, such as a teacher's CONFIG_FILE, resolve against it), writing its output to
    ``log_path``.

    With ``bar``, the bar is moved to ``offset + iterations done`` as the run logs them (and to
    ``offset + max_iter`` at the end), and its postfix shows ``label`` and the phase.

    Returns:
        the exit code of the subprocess.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::FutureWarning")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in proc.stdout:
            log.write(line)
            if bar is None:
                continue
            m = _ITER_RE.search(line)
            if m:
                done = int(m.group(1)) + 1
                bar.update(max(0, offset + min(done, max_iter or done) - bar.n))
                bar.set_postfix_str(f"{label}: training", refresh=True)
            elif "Start inference" in line:
                bar.set_postfix_str(f"{label}: evaluating", refresh=True)
        rc = proc.wait()
    if bar is not None and max_iter is not None and rc == 0:
        bar.update(max(0, offset + max_iter - bar.n))
    return rc


def log_tail(log_path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    p = Path(log_path)
    return "".join(p.read_text(errors="replace").splitlines(True)[-lines:]) if p.is_file() else ""
