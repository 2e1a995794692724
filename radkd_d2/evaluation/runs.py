"""Read runs (Detectron2 output folders) for reports and plots.

A run folder holds what ``tools/train_net.py`` writes: ``config.yaml`` (the full config),
``metrics.json`` (one JSON object per logged iteration, with the EvalHook's ``sem_seg/mIoU`` or
``bbox/AP`` rows) and ``log.txt``. Nothing here needs torch.

Seeds: the tools that train several seeds of one setting (``--seeds N``) put them in
``<arm>/seed<k>/``; such a run is named ``<arm>/seed<k>`` and an ``<arm>`` folder given in their
place stands for all its seed folders (:func:`seed_run_dirs`). Runs whose configs differ only in
:data:`SEED_FREE_KEYS` are seeds of one setting (:func:`setting_key`).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from radkd_d2.config import cfg_get

SEM_SEG_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
DET_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MASK_METRICS = tuple(f"mask_{m}" for m in DET_METRICS)  # COCOEvaluator's segm/* (Mask R-CNN)
EVAL_TASKS = ("sem_seg", "bbox", "segm")

STATUSES = ("finished", "unfinished", "missing")
# config keys that differ between the seeds of one setting (and nothing else may)
# keys (dotted for nested ones) that do not make a different setting: the seed, the folder, and
# how often the run was evaluated on the way (the final score does not depend on it)
SEED_FREE_KEYS = ("SEED", "OUTPUT_DIR", "TEST.EVAL_PERIOD")
GRAD_RATIO_PREFIX = "grad_ratio/"

_SEED_DIR = re.compile(r"^seed(\d+)$")

_COPYPASTE = re.compile(r"copypaste: (.*)$")
_EVAL_FOR = re.compile(r"Evaluation results for (\S+) in csv format")
_CRASH_MARKERS = ("Exception during training", "Traceback (most recent call last)")


def _metric_key(task: str, metric: str) -> Optional[str]:
    """The run's key of one evaluation value: ``mask_AP`` for ``segm/AP``, the metric itself for
    box and segmentation metrics, None for values the report does not read."""
    if task == "segm":
        return f"mask_{metric}" if metric in DET_METRICS else None
    return metric if metric in SEM_SEG_METRICS + DET_METRICS else None


@dataclass
class RunResult:
    """Final evaluation metrics of one run.

    Attributes:
        status: "finished" (evaluated after its last iteration), "unfinished" (stopped early,
            crashed, or never evaluated) or "missing" (no folder, or nothing in it).
        metrics: last evaluation of the first test set, e.g. ``{"mIoU": 71.2, "pACC": 93.0}``.
        metrics_by_dataset: last evaluation per test set (runs with several DATASETS.TEST).
        task: "sem_seg" or "bbox" when an evaluation was found, else None.
        note: why a run is not finished ("stopped at iteration 120/300", "crashed: ...").
        config: the run's ``config.yaml`` as a dict ({} when absent).
    """

    name: str
    path: Path
    status: str
    metrics: dict = field(default_factory=dict)
    last_iter: int = -1
    train_seconds: Optional[float] = None
    max_iter: Optional[int] = None
    task: Optional[str] = None
    metrics_by_dataset: Dict[str, dict] = field(default_factory=dict)
    note: str = ""
    config: dict = field(default_factory=dict)
    grad_ratios: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def seed(self) -> Optional[int]:
        """The run's ``SEED`` from its config.yaml (None when it has no config)."""
        value = cfg_get(self.config, "SEED")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def progress(self) -> str:
        """``"iterations done/planned"``, e.g. ``"120/300"`` ("" when nothing was logged)."""
        if self.last_iter < 0:
            return ""
        done = min(self.last_iter + 1, self.max_iter) if self.max_iter else self.last_iter + 1
        return f"{done}/{self.max_iter}" if self.max_iter else str(done)


def seed_folder(arm_dir: str | Path, index: int, seeds: int) -> Path:
    """Output folder of seed ``index`` of ``seeds`` seeds of one arm: ``arm_dir`` itself when
    there is one seed (the layout from before seeds existed), else ``arm_dir/seed<index>``."""
    arm_dir = Path(arm_dir)
    return arm_dir if seeds == 1 else arm_dir / f"seed{index}"


def seed_run_dirs(path: str | Path) -> List[Path]:
    """The run folders ``path`` stands for: its ``seed<k>`` subfolders (by k) when it holds no
    run files of its own but such subfolders, else ``[path]``."""
    path = Path(path)
    if not path.is_dir() or any(
        (path / f).exists() for f in ("config.yaml", "metrics.json", "log.txt")
    ):
        return [path]
    seeds = [(int(m.group(1)), d) for d in path.iterdir() if (m := _SEED_DIR.match(d.name))]
    return [d for _, d in sorted(seeds) if d.is_dir()] or [path]


def run_name(path: str | Path) -> str:
    """Display name of a run folder: ``lad_res5``, or ``lad_res5/seed2`` for a seed folder
    (every seed folder is called ``seed<k>``, so the arm has to be in the name)."""
    path = Path(path)
    if _SEED_DIR.match(path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def setting_key(config: dict) -> str:
    """What a run's seeds have in common: its config without :data:`SEED_FREE_KEYS`, as
    canonical JSON (two runs are seeds of one setting when their keys are equal)."""
    rest = json.loads(json.dumps(config, default=str))
    for key in SEED_FREE_KEYS:
        *parents, leaf = key.split(".")
        node = rest
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps(rest, sort_keys=True, default=str)


def grad_ratios(rows: List[dict]) -> Dict[str, List[float]]:
    """``term -> [value per logged iteration]`` of the ``grad_ratio/<term>`` scalars in
    metrics.json rows (the gradient norm of a distillation term over that of the task loss at
    the same student feature, logged every MODEL.DISTILL.DIAGNOSTICS_PERIOD iterations).

    An iteration logged twice (a run resumed from a checkpoint before it) counts once, with its
    last value; values that are not finite numbers are dropped.
    """
    by_term: Dict[str, dict] = defaultdict(dict)
    for row in rows:
        it = row.get("iteration")
        for key, value in row.items():
            if not key.startswith(GRAD_RATIO_PREFIX) or len(key) == len(GRAD_RATIO_PREFIX):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                term = key[len(GRAD_RATIO_PREFIX) :]
                # a row without an iteration number cannot repeat one: give it a slot of its own
                slot = it if isinstance(it, int) else ("row", len(by_term[term]))
                by_term[term][slot] = float(value)
    return {term: list(vals.values()) for term, vals in by_term.items()}


def read_metrics_json(path: Path) -> list[dict]:
    """Rows of a Detectron2 metrics.json; lines cut by a kill mid-write are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_run_config(path: str | Path) -> dict:
    """``<run>/config.yaml`` (written by Detectron2's ``default_setup``) as a dict; {} if absent."""
    f = Path(path) / "config.yaml"
    if not f.is_file():
        return {}
    try:
        return yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError:
        return {}


def _eval_metrics(rows: List[dict], default_dataset: str) -> Tuple[Dict[str, dict], Optional[str]]:
    """Last value of each evaluation metric per test set from metrics.json rows.

    Keys are ``<task>/<metric>`` for a single test set and ``<dataset>/<task>/<metric>`` for
    several (Detectron2's DefaultTrainer.test flattens them so).
    """
    by_ds: Dict[str, dict] = defaultdict(dict)
    task = None
    for row in rows:
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) == 2:
                ds, (t, metric) = default_dataset, parts
            elif len(parts) == 3 and parts[1] in EVAL_TASKS:
                ds, t, metric = parts
            else:
                continue
            key = _metric_key(t, metric) if t in EVAL_TASKS else None
            if key is not None:
                by_ds[ds][key] = value
                task = "bbox" if t == "segm" else t  # a Mask R-CNN run is a detection run
    return dict(by_ds), task


def _log_eval_metrics(log: Path, default_dataset: str) -> Tuple[Dict[str, dict], Optional[str]]:
    """Evaluation results from log.txt's ``copypaste:`` lines (eval-only runs have no
    metrics.json). Each block is ``Task: <task>``, a header line and a value line."""
    if not log.is_file():
        return {}, None
    by_ds: Dict[str, dict] = {}
    task, found_task, dataset, lines = None, None, default_dataset, []
    for line in log.read_text(errors="replace").splitlines():
        m = _EVAL_FOR.search(line)
        if m:
            dataset = m.group(1)
            continue
        m = _COPYPASTE.search(line)
        if not m:
            continue
        text = m.group(1).strip()
        if text.startswith("Task:"):
            task, lines = text.split(":", 1)[1].strip(), []
            continue
        lines.append(text)
        if len(lines) == 2 and task in EVAL_TASKS:
            header, values = lines[0].split(","), lines[1].split(",")
            try:
                parsed = {
                    key: float(v)
                    for k, v in zip(header, values)
                    if (key := _metric_key(task, k)) is not None
                }
            except ValueError:
                continue
            by_ds.setdefault(dataset, {}).update(parsed)
            found_task = "bbox" if task == "segm" else task
            lines = []
    return by_ds, found_task


def _crash_note(path: Path) -> str:
    """``"crashed: <last error line>"`` when a log of the run shows an exception, else ""."""
    for name in ("log.txt", "sweep_stdout.log", "demo_stdout.log"):
        f = path / name
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if any(marker in text for marker in _CRASH_MARKERS):
            last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
            return "crashed: " + (last[0].strip()[-160:] if last else "see " + name)
    return ""


def read_run(path: str | Path, name: str | None = None, max_iter: int | None = None) -> RunResult:
    """Read one run folder.

    The metrics are those of the last evaluation in ``metrics.json`` (or, for an eval-only run
    without metrics.json, the ``copypaste`` lines of ``log.txt``). A run is "finished" when it
    was evaluated and reached ``max_iter`` (default: SOLVER.MAX_ITER of its config.yaml),
    "unfinished" when it stopped early, crashed or was never evaluated, and "missing" when the
    folder does not exist or holds neither metrics.json nor log.txt.
    """
    path = Path(path)
    name = name or run_name(path)
    if not path.is_dir():
        return RunResult(name, path, "missing", note="no such folder")
    config = read_run_config(path)
    if max_iter is None:
        max_iter = cfg_get(config, "SOLVER.MAX_ITER")
    test_sets = cfg_get(config, "DATASETS.TEST") or ["?"]
    default_ds = test_sets[0]
    rows = read_metrics_json(path / "metrics.json")
    crash = _crash_note(path)
    if not rows:
        by_ds, task = _log_eval_metrics(path / "log.txt", default_ds)
        if by_ds:  # evaluated by `train_net.py --eval-only`
            first = by_ds.get(default_ds) or next(iter(by_ds.values()))
            return RunResult(
                name,
                path,
                "finished",
                first,
                -1,
                None,
                max_iter,
                task,
                by_ds,
                "evaluation only (from log.txt)",
                config,
            )
        if not (path / "log.txt").is_file() and not config:
            return RunResult(
                name,
                path,
                "missing",
                max_iter=max_iter,
                note="no metrics.json, log.txt or config.yaml",
            )
        note = crash or "started, but no iteration logged yet"
        return RunResult(name, path, "unfinished", max_iter=max_iter, note=note, config=config)

    by_ds, task = _eval_metrics(rows, default_ds)
    metrics = by_ds.get(default_ds) or (next(iter(by_ds.values())) if by_ds else {})
    last_iter = max(r.get("iteration", -1) for r in rows)
    times = [r["time"] for r in rows if "time" in r]
    train_seconds = (sum(times) / len(times)) * (last_iter + 1) if times else None
    reached = max_iter is None or last_iter + 1 >= max_iter
    done = bool(metrics) and reached and not crash
    if done:
        note = ""
    elif crash:
        note = crash
    elif not reached:
        note = f"stopped at iteration {last_iter + 1}/{max_iter}"
        note += "" if metrics else ", never evaluated"
    else:
        note = "trained but not evaluated"
    return RunResult(
        name,
        path,
        "finished" if done else "unfinished",
        metrics,
        last_iter,
        train_seconds,
        max_iter,
        task,
        by_ds,
        note,
        config,
        grad_ratios(rows),
    )


def read_scalars(path: str | Path, prefix: str = "") -> Dict[str, List[Tuple[int, float]]]:
    """Every scalar of ``<path>/metrics.json`` whose key starts with ``prefix``, as a series
    ``key -> [(iteration, value), ...]`` sorted by iteration (e.g. ``prefix="distill/"`` gives
    the ``distill/<tap>/{m,n,mn_over_N,cos_theta}`` diagnostics of FeatureDistiller)."""
    series: Dict[str, Dict[int, float]] = defaultdict(dict)
    for row in read_metrics_json(Path(path) / "metrics.json"):
        it = row.get("iteration")
        if it is None:
            continue
        for key, value in row.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and key != "iteration":
                series[key][int(it)] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


EVAL_RESULTS_FILE = "eval_results.json"  # an --eval-only run's full results (train_net writes it)


def per_class_iou(path: str | Path) -> Dict[str, float]:
    """``{class name: IoU}`` of a segmentation run's last evaluation (of its first test set):
    from ``metrics.json`` (``sem_seg/IoU-<class>``, a training run) or, for an ``--eval-only``
    run, from :data:`EVAL_RESULTS_FILE`; {} when neither has them."""
    path = Path(path)
    last: Dict[str, float] = {}
    for row in read_metrics_json(path / "metrics.json"):
        found = {k.split("/IoU-", 1)[1]: float(v) for k, v in row.items() if "sem_seg/IoU-" in k}
        if found:
            last = found
    if last:
        return last
    f = path / EVAL_RESULTS_FILE
    if not f.is_file():
        return {}
    try:
        results = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    first = next(iter(results.values()), {}) if results and "sem_seg" not in results else results
    sem = first.get("sem_seg", {}) if isinstance(first, dict) else {}
    return {k[len("IoU-"):]: float(v) for k, v in sem.items() if k.startswith("IoU-")}


_LOG_STAMP = re.compile(r"^\[(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)")


def log_wall_seconds(path: str | Path, max_gap: float = 600.0) -> Optional[float]:
    """Seconds a run spent running, from the time stamps of its ``log.txt`` (Detectron2's
    ``[MM/DD hh:mm:ss]``): the sum of the gaps between consecutive lines, leaving out gaps over
    ``max_gap`` (a run stopped and resumed later). None without a log or a stamp."""
    log = Path(path) / "log.txt"
    if not log.is_file():
        return None
    total, last = 0.0, None
    for line in log.read_text(errors="replace").splitlines():
        m = _LOG_STAMP.match(line)
        if not m:
            continue
        month, day, h, mi, s = map(int, m.groups())
        # seconds within a (non-leap) year: enough for differences between neighbouring lines
        days = sum((31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[: month - 1]) + day
        now = ((days * 24 + h) * 60 + mi) * 60 + s
        if last is not None and 0 <= now - last <= max_gap:
            total += now - last
        last = now
    return total if last is not None else None
