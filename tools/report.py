#!/usr/bin/env python
"""Paper-style comparison tables (Markdown + CSV) from run folders.

    python tools/report.py output/camvid/*_camvid --out output/camvid/report
    python tools/report.py RUN [RUN ...] --teacher T_RUN --baseline S_RUN --out report
    python tools/report.py output/demo/teacher output/demo/student_* --out report   # seeds

Writes ``<out>/report.md`` (segmentation tables like the paper's Tables 1/5/6, detection tables
like Table 7, each distilled setting with Δ versus its no-KD student; the loss balance; then the
runs that are missing or unfinished, and every run read), ``<out>/segmentation.csv``,
``<out>/detection.csv``, ``<out>/loss_balance.csv`` and ``<out>/runs.csv``; prints the Markdown.
Plain runs given positionally are classified as teacher or no-KD baseline from the distilled
runs' teacher configs; --teacher/--baseline force it.

Seeds: runs whose configs differ only in SEED and OUTPUT_DIR make one row: the mean, the sample
std (ddof 1) and the number of seeds, ``52.00 ± 8.00 (5)`` (CSV: ``mIoU``, ``mIoU_std``,
``seeds``, likewise for every metric); Δ is the difference of means ± its standard error
sqrt(s²/n + s_b²/n_b) (CSV: ``delta_mIoU``, ``delta_se``; detection ``delta_AP``,
``delta_AP_se``, ...; blank when either side has one seed), marked ``*`` when Δ > 2·SE. A folder
holding ``seed<k>`` run folders (what ``--seeds`` of demo.py, sweep.py and camvid_study.py
writes) stands for those seeds. runs.csv still lists every run folder, with its SEED.

Loss balance: per setting, the median over all diagnostics periods and seeds of each
distillation term's ``grad_ratio/<term>`` (its gradient norm over the task loss's at the same
student feature), as a Markdown section and ``loss_balance.csv``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radkd_d2.evaluation.report import (
    build_report,
    collect_runs,
    report_markdown,
    write_report,
)  # noqa: E402
from radkd_d2.evaluation.runs import SEM_SEG_METRICS  # noqa: E402
from radkd_d2.engine.inputs import existing_file, run_tool, writable_output  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR",
        help="run output folders (Detectron2 OUTPUT_DIR), or arm folders of seed<k> runs",
    )
    parser.add_argument(
        "--teacher", nargs="+", default=[], metavar="DIR", help="teacher run folder(s)"
    )
    parser.add_argument(
        "--baseline", nargs="+", default=[], metavar="DIR", help="no-KD student run folder(s)"
    )
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument(
        "--metric", default="mIoU", choices=SEM_SEG_METRICS, help="segmentation metric"
    )
    parser.add_argument("--title", default="radkd-d2 report", help="title of report.md")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a run is missing or unfinished"
    )
    parser.add_argument(
        "--speed", metavar="JSON", help="inference speed of teacher and student (bench/bench_export.py --json)"
    )
    args = parser.parse_args(argv)
    if not (args.runs or args.teacher or args.baseline):
        parser.error("give at least one run folder")
    # a missing or unfinished run folder is no error: the report lists it (--strict: exit 1)
    if args.speed:
        existing_file(args.speed, "--speed", "JSON file")
    writable_output(args.out, "--out", folder=True)
    infos = collect_runs(args.runs, args.teacher, args.baseline)
    report = build_report(infos, seg_metric=args.metric)
    if args.speed:
        report.speed_rows = json.loads(Path(args.speed).read_text())["rows"]
    paths = write_report(report, args.out, args.title)
    print(report_markdown(report, args.title), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 1 if args.strict and report.left_out else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
