"""Read finished runs (Detectron2 output folders) for reports."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SEM_SEG_METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
DET_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class RunResult:
    """Final evaluation metrics of one run; ``status`` is "finished", "unfinished" or "missing"."""

    name: str
    path: Path
    status: str
    metrics: dict = field(default_factory=dict)
    last_iter: int = -1
    train_seconds: float | None = None


def read_metrics_json(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
    return rows


def read_run(path: str | Path, name: str | None = None, max_iter: int | None = None) -> RunResult:
    """Metrics of the last evaluation in ``<path>/metrics.json`` (Detectron2's EvalHook writes
    ``sem_seg/mIoU`` or ``bbox/AP`` there). A run with no evaluation is "unfinished"; a folder
    with no metrics.json is "missing"."""
    path = Path(path)
    name = name or path.name
    rows = read_metrics_json(path / "metrics.json")
    if not rows:
        return RunResult(name, path, "missing")
    metrics, last_iter = {}, max(r.get("iteration", -1) for r in rows)
    for row in rows:
        for key, value in row.items():
            task, _, metric = key.partition("/")
            if task in ("sem_seg", "bbox") and metric in SEM_SEG_METRICS + DET_METRICS:
                metrics[metric] = value
    times = [r["time"] for r in rows if "time" in r]
    train_seconds = (sum(times) / len(times)) * (last_iter + 1) if times else None
    done = bool(metrics) and (max_iter is None or last_iter + 1 >= max_iter)
    return RunResult(name, path, "finished" if done else "unfinished", metrics, last_iter, train_seconds)
