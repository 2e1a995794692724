#!/usr/bin/env python
"""Print, for each row of the paper's Tables 1, 3, 5, 6, 7 and Fig. 1, its config file and train
command; or the parameter counts of the matrix's models against their reference definitions.

    python tools/list_configs.py --table 1 --dataset cityscapes
    python tools/list_configs.py --table 5 --format commands      # commands only, teachers first
    python tools/list_configs.py --table fig1                     # naive vs MD at each weight
    python tools/list_configs.py --table 7                        # COCO detection
    python tools/list_configs.py --format markdown                # the tables of configs/README.md
    python tools/list_configs.py --params --dataset cityscapes    # models built on CPU, K = 19

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


def count_parameters(model_key: str, num_classes: int) -> int:
    """Parameters of ``configs/models/<model_key>.yaml`` built on CPU with ``num_classes``
    classes: every parameter, the auxiliary head included (as CIRKD counts them)."""
    from detectron2.modeling import build_model

    from radkd_d2.engine.setup import load_config

    cfg = load_config(
        str(REPO / "configs" / "models" / f"{model_key}.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes)],
        validate=False,
    )
    return sum(p.numel() for p in build_model(cfg).parameters())


def params_listing(index, num_classes: int) -> str:
    """Per model with a reference: ours (built), each reference count, the difference and why."""
    lines = [f"Parameters at K = {num_classes} classes (all of the model, auxiliary head included)"]
    for key, model in index.MODELS.items():
        refs = index.reference_counts(key, num_classes)
        if not refs:
            continue
        ours = count_parameters(key, num_classes)
        lines.append(f"{model.title}: ours {ours:,} ({ours / 1e6:.2f}M)")
        for ref, count in refs:
            expected = ref.differs_by(num_classes)
            if ours - count != expected:
                why = f" -- expected {expected:+,d}: the model no longer matches its reference"
            else:
                why = f" (by design: {ref.why})" if ref.why else ""
            lines.append(
                f"  reference {count:,} ({count / 1e6:.2f}M), ours {ours - count:+,d}{why}"
            )
            lines.append(f"    {ref.source}")
    return "\n".join(lines)


def main(argv=None) -> int:
    index = _index()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=list(index.TABLES), help="paper table (fig1: Fig. 1)")
    parser.add_argument("--dataset", choices=list(index.dataset_titles()), help="data set")
    parser.add_argument("--format", choices=("text", "commands", "markdown"), default="text")
    parser.add_argument("--num-gpus", type=int, default=8, help="--num-gpus of the commands")
    parser.add_argument(
        "--params",
        action="store_true",
        help="parameter counts of the segmentation models against their reference definitions "
        "(at the class count of --dataset, default cityscapes)",
    )
    args = parser.parse_args(argv)
    if args.params:
        dataset = index.DATASETS.get(args.dataset or "cityscapes")
        if dataset is None:
            print(f"--params needs a segmentation data set, not {args.dataset!r}", file=sys.stderr)
            return 1
        print(params_listing(index, dataset.num_classes))
        return 0
    rows = index.select_rows(args.table, args.dataset)
    if not rows:
        what = index.item_name(args.table) if args.table else "The matrix"
        print(f"no rows: {what} has no {args.dataset} column", file=sys.stderr)
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
