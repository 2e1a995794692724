"""Run ``tools/train_net.py`` in a subprocess with a progress bar (tqdm) and ETA.

Detectron2's ``CommonMetricPrinter`` logs ``eta: ... iter: N`` every 20 iterations; those lines
move the bar, and the whole output goes to a log file in the run folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
TRAIN_NET = REPO / "tools" / "train_net.py"
_ITER_RE = re.compile(r"eta: \S+\s+iter: (\d+)")


def train_command(
    config: str | Path, opts: Sequence[str] = (), *, resume: bool = False
) -> list[str]:
    """``python tools/train_net.py --config-file CONFIG [--resume] KEY VALUE ...``."""
    cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(config)]
    if resume:
        cmd.append("--resume")
    return cmd + [os.fspath(x) if isinstance(x, os.PathLike) else str(x) for x in opts]


def run_training(
    cmd: Sequence[str],
    log_path: str | Path,
    *,
    bar: Optional[tqdm] = None,
    offset: int = 0,
    max_iter: Optional[int] = None,
    label: str = "",
) -> int:
    """Run a train_net command from the repository root, writing its output to ``log_path``.

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
            cwd=REPO,
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
