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
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from radkd_d2.engine.guard import IGNORED_KEYS, config_changes, default_config
from radkd_d2.engine.setup import load_config
from radkd_d2.evaluation.runs import seed_folder

TRAIN_NET_MODULE = "radkd_d2.train_net"  # the package's own train_net: no repository needed
_ITER_RE = re.compile(r"eta: \S+\s+iter: (\d+)")


def train_command(
    config: str | Path,
    opts: Sequence[str] = (),
    *,
    resume: bool = False,
    eval_only: bool = False,
    replace: bool = False,
) -> list[str]:
    """``python -m radkd_d2.train_net --config-file CONFIG [--resume] [--eval-only] KEY VALUE ...``
    (the same command as the repository's ``tools/train_net.py``). The flags come before the
    overrides: Detectron2's parser takes everything after the first override as overrides."""
    cmd = [sys.executable, "-m", TRAIN_NET_MODULE, "--config-file", str(config)]
    if resume:
        cmd.append("--resume")
    if eval_only:
        cmd.append("--eval-only")
    if replace:  # the tool owns the folder: a run it trains again replaces what is there
        cmd.append("--replace-run")
    return cmd + [os.fspath(x) if isinstance(x, os.PathLike) else str(x) for x in opts]


def default_sigint() -> None:
    """In a training's child process, before it runs: Ctrl-C's default action back. A tool
    started in the background of a non-interactive shell (``cmd &``, nohup) inherits SIGINT
    ignored, and Python then never turns it into KeyboardInterrupt, so an interrupt (a time
    limit, Ctrl-C on the tool) would not reach the training."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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

    def config_changes(self) -> List[Tuple[str, object, object]]:
        """Keys whose value in ``out_dir/config.yaml`` (a run already there) differs from this
        plan's config, as train_net's guard compares them (``[]`` when the folder holds no
        config). A tool that reuses finished runs must reuse only runs of its own config."""
        path = self.out_dir / "config.yaml"
        if not path.is_file():
            return []
        old = yaml.safe_load(path.read_text()) or {}
        new = yaml.safe_load(load_config(str(self.config), [str(x) for x in self.opts], validate=False).dump())
        defaults = yaml.safe_load(default_config().dump())
        return config_changes(old, new, IGNORED_KEYS, defaults=defaults)

    def command(self, resume: bool = False, replace: bool = False) -> list[str]:
        """The train_net command line of this run (``replace``: it may replace a run already in
        its folder, see ``--replace-run``)."""
        return train_command(self.config, self.opts, resume=resume, replace=replace)


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
    env: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[int, str], None]] = None,
    started: Optional[Callable[[subprocess.Popen], None]] = None,
) -> int:
    """Run a train_net command in ``cwd`` (default: the working directory; relative paths in
    configs, such as a teacher's CONFIG_FILE, resolve against it), writing its output to
    ``log_path``.

    With ``bar``, the bar is moved to ``offset + iterations done`` as the run logs them (and to
    ``offset + max_iter`` at the end), and its postfix shows ``label`` and the phase. Several
    runs at once share a bar through ``progress`` instead: it is called with (iterations done,
    phase) as the run logs them, phase "training", "evaluating" or "finished".

    Args:
        env: variables set for the subprocess on top of this process's (e.g. OMP_NUM_THREADS).
        started: called with the subprocess once it runs (so a scheduler can stop it).

    Returns:
        the exit code of the subprocess.
    """
    if bar is not None and progress is None:

        def progress(done: int, phase: str) -> None:
            bar.update(max(0, offset + done - bar.n))
            if phase != "finished":
                bar.set_postfix_str(f"{label}: {phase}", refresh=True)

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::FutureWarning")
    full_env.update(env or {})
    done = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=default_sigint,
        )
        if started is not None:
            started(proc)
        for line in proc.stdout:
            log.write(line)
            if progress is None:
                continue
            m = _ITER_RE.search(line)
            if m:
                done = int(m.group(1)) + 1
                done = min(done, max_iter or done)
                progress(done, "training")
            elif "Start inference" in line:
                progress(done, "evaluating")
        rc = proc.wait()
    if progress is not None and max_iter is not None and rc == 0:
        progress(max_iter, "finished")
    return rc


@dataclass
class Job:
    """One run of a :func:`run_jobs` schedule: the run, its iterations (for the progress bar)
    and the names of the runs whose results it reads (a teacher's or a start's checkpoint)."""

    run: PlannedRun
    max_iter: int
    needs: Tuple[str, ...] = ()


def run_jobs(
    jobs: Sequence[Job],
    log_name: str,
    *,
    lanes: int = 1,
    threads: Optional[int] = None,
    bar: Optional[tqdm] = None,
    cwd: str | Path | None = None,
) -> Tuple[Dict[str, float], Dict[str, int], Optional[Job]]:
    """Run train_net jobs, up to ``lanes`` at a time, each once the jobs it needs have finished.

    A free lane takes the first job (in ``jobs`` order) whose needs are met. The ``threads``
    CPU threads (default: this machine's cores) are shared: a job gets ``threads // k`` of them
    (OMP_NUM_THREADS and MKL_NUM_THREADS), with k the number of jobs running or ready when it
    starts (at most ``lanes``), so the last job alone gets them all. Two single-thread runs on
    two cores finish sooner than the same runs one after another with two threads each, as
    long as both lanes have work. One bar counts the iterations of every job; its postfix
    names the running ones.

    Args:
        log_name: file name of each job's log in its run folder.

    Returns:
        (seconds of each job's run, threads it had, the first job that failed or None). After a
        failure no new job starts and the running ones are stopped.
    """
    names = [j.run.name for j in jobs]
    for k, job in enumerate(jobs):
        later = [n for n in job.needs if n not in names[:k]]
        if later:
            raise ValueError(
                f"job {job.run.name} needs {later}, which are not earlier jobs of the schedule "
                "(a job may only wait for jobs listed before it)"
            )
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, got {lanes}")
    threads = max(1, threads or os.cpu_count() or 1)
    lock = threading.Condition()
    pending = list(jobs)
    finished: set = set()
    running: Dict[str, str] = {}  # name -> phase
    procs: Dict[str, subprocess.Popen] = {}
    done_iters: Dict[str, int] = {}
    seconds: Dict[str, float] = {}
    used: Dict[str, int] = {}
    failed: List[Job] = []
    base = bar.n if bar is not None else 0

    def show() -> None:  # with the lock held
        if bar is None:
            return
        bar.update(base + sum(done_iters.values()) - bar.n)
        bar.set_postfix_str(" | ".join(f"{n}: {p}" for n, p in running.items()), refresh=True)

    def ready() -> List[Job]:
        return [j for j in pending if all(n in finished for n in j.needs)]

    def lane() -> None:
        while True:
            with lock:
                while not failed and pending and not ready():
                    lock.wait()
                if failed or not pending:
                    lock.notify_all()
                    return
                job = ready()[0]
                pending.remove(job)
                name = job.run.name
                share = max(1, threads // min(lanes, len(running) + 1 + len(ready())))
                used[name] = share
                running[name] = "starting"
                show()
            t0 = time.time()

            def progress(n: int, phase: str, name: str = name) -> None:
                with lock:
                    done_iters[name] = n
                    if name in running:
                        running[name] = phase
                    show()

            def started(proc: subprocess.Popen, name: str = name) -> None:
                with lock:
                    procs[name] = proc
                    if failed:
                        proc.terminate()

            env = {"OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}
            rc = run_training(
                job.run.command(replace=True),
                job.run.out_dir / log_name,
                max_iter=job.max_iter,
                cwd=cwd,
                env=env,
                progress=progress,
                started=started,
            )
            with lock:
                seconds[name] = time.time() - t0
                running.pop(name, None)
                procs.pop(name, None)
                if rc == 0:
                    finished.add(name)
                elif not failed:
                    failed.append(job)
                    for other in procs.values():
                        other.terminate()
                if bar is not None:
                    bar.write(
                        f"{job.run.label}: "
                        + ("done" if rc == 0 else f"failed (exit {rc})")
                        + f" in {seconds[name]:.0f} s ({share} thread{'s' if share > 1 else ''})"
                    )
                show()
                lock.notify_all()

    workers = [
        threading.Thread(target=lane, daemon=True) for _ in range(min(lanes, len(jobs)) or 1)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return seconds, used, (failed[0] if failed else None)


def log_tail(log_path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist)."""
    p = Path(log_path)
    return "".join(p.read_text(errors="replace").splitlines(True)[-lines:]) if p.is_file() else ""


FOLDER_OWNER = ".radkd-folder.json"  # which tool and which kind of result an output folder holds


class FolderOfAnotherKind(SystemExit):
    """An output folder that holds another tool's or another task's results (the tool exits
    with status 1 and the message)."""


def claim_folder(out: Path, tool: str, kind: str, infer: Optional[Callable[[Path], Optional[str]]] = None) -> None:
    """Make ``out`` the folder of ``tool``'s ``kind`` of results (the demo's task, the study's
    scale, the sweep's config), or refuse it, naming what it holds: a tool writes report.md,
    CSV tables and run folders of the same names for every kind, so reusing another kind's
    folder would overwrite its results without a copy and table stale runs beside new ones.

    The claim is ``out/.radkd-folder.json``. A folder made before claims existed is judged by
    ``infer(out)`` (the kind its files show, or None when they show nothing) and claimed when it
    agrees. Raises :class:`FolderOfAnotherKind` (a ``SystemExit`` with the message).
    """
    marker = out / FOLDER_OWNER
    held = None
    if marker.is_file():
        try:
            held = json.loads(marker.read_text())
        except (OSError, ValueError):
            held = None
    elif infer is not None and out.is_dir():
        found = infer(out)
        held = {"tool": tool, "kind": found} if found else None
    if held is not None and (held.get("tool"), held.get("kind")) != (tool, kind):
        raise FolderOfAnotherKind(
            f"{out} holds the results of {held.get('tool')} ({held.get('kind')}), not of {tool} ({kind}): "
            "a folder belongs to one kind of result, so nothing in it is overwritten. Give this "
            "run another output folder, or move that one away"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(json.dumps({"tool": tool, "kind": kind}) + "\n")
