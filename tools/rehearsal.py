#!/usr/bin/env python
"""Full-size rehearsal of every config family of the index, on CPU: for one distillation config
per family, fabricated data in the data set's real layout, the config's real model and input
size, a generated full-size teacher checkpoint read by the strict loader, the README's train
command for 2 iterations and one evaluation pass; and a table of build time, step time, peak
memory, evaluation time and step ÷ floor (the floor: teacher no-grad forward + plain student
step on the same batch, measured in its own process).

    python tools/rehearsal.py                                   # every family, output/rehearsal/
    python tools/rehearsal.py --families cityscapes retinanet
    python tools/rehearsal.py --configs configs/voc/cad_res5_dlv3r101_dlv3r18_40k_voc.yaml
    python tools/rehearsal.py --reduced --out /tmp/rh            # CPU-test size (what make test runs)
    python tools/rehearsal.py --list                            # the configs and commands only

Families: cityscapes (Table 1), voc and ade20k (Table 3), retinanet (Table 7), faster_rcnn and
mask_rcnn (the R-CNN matrix). Writes ``<out>/rehearsal.md`` (the table, what each column measures,
the commands), ``<out>/rehearsal.json`` and, per config, ``<out>/runs/<full|reduced>/<config>/``
(train.log, floor.log, the run folder). A config that passes --memory-limit-gib (default: 90%
of the memory available at the start) is stopped and its row says it does not fit; the others
still run. Exit status 1 when a row failed for another reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radkd_d2.analysis.launch import claim_folder  # noqa: E402
from radkd_d2.analysis.rehearsal import (  # noqa: E402
    FAMILIES,
    GIB,
    Settings,
    default_row,
    family_of,
    markdown,
    rehearse,
    row_of_config,
)
from radkd_d2.configs_index import train_command  # noqa: E402
from radkd_d2.engine.inputs import run_tool, writable_output  # noqa: E402
from radkd_d2.errors import ConfigError  # noqa: E402


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=list(FAMILIES), help="families to run (default: all)")
    p.add_argument("--configs", nargs="+", help="distillation configs of the index to run instead of the "
                   "families' defaults (with --families: only those of these families)")
    p.add_argument("--out", default="output/rehearsal", help="output folder (default: output/rehearsal)")
    p.add_argument("--reduced", action="store_true", help="CPU-test model and input sizes "
                   "(configs_index.reduced_size_opts, small crops and images): a smoke test of the steps")
    p.add_argument("--iters", type=int, default=2, help="training iterations (default 2; the step is the last)")
    p.add_argument("--ims-per-batch", type=int, help="images per step (default: the config's "
                   "SOLVER.IMS_PER_BATCH / 8, the per-GPU share of its 8-GPU recipe)")
    p.add_argument("--floor-rounds", type=int, default=2, help="timed rounds of the floor after a warm-up round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each process (default: inherited)")
    p.add_argument("--memory-limit-gib", type=float, help="stop a process whose memory passes this "
                   "(default: 90%% of the memory available at the start)")
    p.add_argument("--timeout", type=float, help="stop a process that runs longer (seconds)")
    p.add_argument("--tiny-coco", type=Path, default=REPO.parent / "shared" / "data" / "tiny_coco",
                   help="the COCO-format folder COCO's layout is linked from (default ../shared/data/tiny_coco)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the generated weights and model_final.pth")
    p.add_argument("--list", action="store_true", help="print the configs and their README commands, run nothing")
    return p


def selected_rows(args):
    """The index rows to rehearse, in family order."""
    order = list(FAMILIES)
    if args.configs:
        try:
            rows = [row_of_config(c) for c in args.configs]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if args.families:
            rows = [r for r in rows if family_of(r) in args.families]
        return sorted(rows, key=lambda r: order.index(family_of(r)) if family_of(r) in order else len(order))
    return [default_row(f) for f in (args.families or order)]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.iters < 2:
        raise ConfigError(f"--iters {args.iters}: at least 2 (the step measured is the last, the first "
                          "also runs the loss-balance diagnostics)")
    rows = selected_rows(args)
    if not rows:
        raise ConfigError("no config selected (--configs of none of the --families)")
    if args.list:
        for r in rows:
            print(f"{family_of(r)}: {r.run.path}\n  {train_command(r.run, num_gpus=1)} ...")
        return 0
    out = writable_output(args.out, "--out", folder=True)
    claim_folder(out, "tools/rehearsal.py", "rehearsal")
    limit = args.memory_limit_gib or round(0.9 * available_gib(), 1)
    settings = Settings(
        repo=REPO, out=out.resolve(), reduced=args.reduced, iters=args.iters, device=args.device,
        ims_per_batch=args.ims_per_batch, floor_rounds=args.floor_rounds, memory_limit_gib=limit,
        timeout_s=args.timeout, threads=args.threads, keep_checkpoints=args.keep_checkpoints,
        tiny_coco=args.tiny_coco.resolve(), log=lambda m: print(m, flush=True),
    )  # fmt: skip
    print(f"rehearsal ({settings.mode} size) of {len(rows)} config(s) into {out}; memory limit {limit:g} GiB",
          flush=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    results, prepared = [], {}
    for row in rows:
        res = rehearse(row, settings, prepared)
        results.append(res)
        print(f"[{Path(row.run.path).stem}] {res.status}: build {res.build_s}, step {res.step_s}, "
              f"peak RSS {res.peak_rss_gib}, eval {res.eval_s}, floor {res.floor_s}, step/floor {res.ratio}",
              flush=True)
        # the table so far, so that an interrupted rehearsal keeps what it measured
        text = markdown(results, settings, started, time.monotonic() - t0)
        (out / "rehearsal.md").write_text(text)
        (out / "rehearsal.json").write_text(json.dumps([r.to_json() for r in results], indent=1))
    print()
    print(text)
    print(f"written: {out / 'rehearsal.md'}, {out / 'rehearsal.json'}")
    failed = [r for r in results if not r.ok and not r.status.startswith("does not fit")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
