#!/usr/bin/env python
"""Print, for each row of the paper's Tables 1, 3, 5 and 6, its config file and train command.

    python tools/list_configs.py --table 1 --dataset cityscapes
    python tools/list_configs.py --table 5 --format commands      # commands only, teachers first
    python tools/list_configs.py --format markdown                # the tables of configs/README.md

The rows come from ``radkd_d2/configs_index/`` (as do the files, via
``tools/make_config_matrix.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _index():
    sys.path.insert(0, str(REPO))
    from radkd_d2 import configs_index

    return configs_index


def main(argv=None) -> int:
    index = _index()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=int, choices=sorted(index.TABLES), help="paper table")
    parser.add_argument("--dataset", choices=list(index.DATASETS), help="data set")
    parser.add_argument("--format", choices=("text", "commands", "markdown"), default="text")
    parser.add_argument("--num-gpus", type=int, default=8, help="--num-gpus of the commands")
    args = parser.parse_args(argv)
    rows = index.select_rows(args.table, args.dataset)
    if not rows:
        print(f"no rows: Table {args.table} has no {args.dataset} column", file=sys.stderr)
        return 1
    if args.format == "markdown":
        print(index.markdown_tables(rows))
    elif args.format == "commands":
        # every run once, each teacher before the distillations that need it
        seen, commands = set(), []
        for row in rows:
            for run in (row.run.teacher_run, row.run):
                if run is not None and run.path not in seen:
                    seen.add(run.path)
                    commands.append(index.train_command(run, args.num_gpus))
        print("\n".join(commands))
    else:
        print(index.format_rows(rows, args.num_gpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
