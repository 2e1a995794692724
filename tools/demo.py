#!/usr/bin/env python
"""The main job: teacher -> student distillation on the embedded synthetic data, with a report.

Trains (1) the teacher PSPNet-R101 (1/4 width), (2) the student PSPNet-R18 (1/4 width) without
KD, (3) the same student with LAD + logit KD (the paper's Eq. 9), all with the same seed,
iterations and schedule; evaluates each on the synthetic validation set and prints a table
(mIoU, pixel accuracy, train time) that is also written to ``output/demo/report.md``.

    python tools/demo.py [--output output/demo] [--iters N]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)
from radkd_d2.evaluation.runs import read_run  # noqa: E402

RUNS = [
    ("teacher PSPNet-R101/4", "configs/synthetic/pspnet_r101_tiny.yaml", "teacher"),
    ("student PSPNet-R18/4, no KD", "configs/synthetic/pspnet_r18_tiny.yaml", "student_nokd"),
    ("student + LAD (res5) + KD", "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml", "student_lad"),
]
ETA_RE = re.compile(r"eta: (\S+)\s+iter: (\d+)")


def run(label: str, config: str, out: Path, iters: int, extra: list[str], step: str) -> float:
    """Train + evaluate one config through tools/train_net.py, showing progress; returns seconds."""
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(REPO / config),
           "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters), *extra]
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out / "demo_stdout.log", "w") as log:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::FutureWarning")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = ETA_RE.search(line)
            if m:
                print(f"\r{step} {label}: iter {int(m.group(2)) + 1}/{iters}  eta {m.group(1)}   ", end="", flush=True)
            elif "Start inference" in line:
                print(f"\r{step} {label}: evaluating ...{' ' * 30}", end="", flush=True)
        rc = proc.wait()
    seconds = time.time() - start
    if rc != 0:
        print(f"\n{label} failed (exit {rc}); last lines of {out / 'demo_stdout.log'}:")
        print("".join((out / "demo_stdout.log").read_text().splitlines(True)[-30:]))
        sys.exit(rc)
    print(f"\r{step} {label}: done in {seconds:.0f} s{' ' * 40}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo", help="output folder (default output/demo)")
    parser.add_argument("--iters", type=int, default=300, help="training iterations per model")
    args = parser.parse_args(argv)
    out = (REPO / args.output).resolve()
    teacher_weights = out / "teacher" / "model_final.pth"
    t0 = time.time()
    rows = []
    for i, (label, config, sub) in enumerate(RUNS, 1):
        extra = ["MODEL.DISTILL.TEACHER.WEIGHTS", str(teacher_weights)] if "distill" in config else []
        seconds = run(label, config, out / sub, args.iters, extra, f"[{i}/{len(RUNS)}]")
        res = read_run(out / sub, label, max_iter=args.iters)
        rows.append((label, res.metrics.get("mIoU", float("nan")), res.metrics.get("pACC", float("nan")), seconds))
    base = rows[1][1]
    lines = [
        f"# radkd-d2 demo: synthetic scenes, {args.iters} iterations per model, CPU",
        "",
        "| model | mIoU (%) | Δ vs no-KD | pixel acc (%) | train+eval time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, miou, pacc, secs in rows:
        delta = "" if label.startswith("teacher") or label == rows[1][0] else f"{miou - base:+.2f}"
        lines.append(f"| {label} | {miou:.2f} | {delta} | {pacc:.2f} | {secs:.0f} |")
    lines += ["", f"Total wall time: {time.time() - t0:.0f} s. Runs: {out}"]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    print("\n" + report)
    print(f"report written to {out / 'report.md'}")


if __name__ == "__main__":
    main()
