"""Train or evaluate a radkd-d2 model (segmentation, detection, or their distillation).

    python -m radkd_d2.train_net --config-file configs/synthetic/pspnet_r18_tiny.yaml
    radkd-train-net --config-file CFG --num-gpus 2            # DDP (gloo on CPU)
    radkd-train-net --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    radkd-train-net --config-file CFG --resume                # continue a run

``tools/train_net.py`` in the repository is the same command. Shaped like Detectron2's own
tools/train_net.py: default_argument_parser, default_setup, launch. Part of the package, so an
installed radkd-d2 trains without the repository (relative paths in configs resolve against the
working directory).
"""
import argparse
import json
import logging
import re
import os
import sys

import torch.distributed as dist
from torch.multiprocessing import ProcessRaisedException
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import radkd_d2  # noqa: F401  (registers models, losses and data sets)
from radkd_d2.engine import Trainer, setup_cfg
from radkd_d2.engine.setup import preflight, start_run
from radkd_d2.engine.train_loop import AtomicCheckpointer
from radkd_d2.engine.inputs import RUN_FAULTS, USER_ERRORS
from radkd_d2.evaluation.runs import EVAL_RESULTS_FILE


def main(args):
    """One process of a run (``launch`` starts one per GPU). With several processes, the process
    group is destroyed at the end: left to the interpreter's exit, gloo's threads were
    sometimes torn down while running, aborting a finished run ("terminate called without an
    active exception", SIGABRT). A process that fails does not wait at a barrier for the others
    (they may be inside a collective that never completes): it exits with its error at once, and
    ``launch`` (torch.multiprocessing) then ends the other processes and shows that error."""
    result = _run(args)
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    return result


def _run(args):
    # every start-up check (config, run folder, model, teacher, data, weights) runs before the
    # first write to OUTPUT_DIR; start_run then takes the folder and writes config.yaml and logs
    cfg = setup_cfg(args)
    with preflight(cfg) as early:
        if args.eval_only:
            model = Trainer.build_model(cfg)
            checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
            checkpointer.partial = cfg.MODEL.WEIGHTS_PARTIAL
            early.check_weights(model, checkpointer, resume=args.resume, eval_only=True)
        else:
            trainer = Trainer(cfg)
            early.check_weights(trainer.model, trainer.checkpointer, resume=args.resume)
    if early.finished:
        # nothing to train, and nothing written: no second evaluation row, no new config.yaml
        print(
            f"train_net: the run in {cfg.OUTPUT_DIR} has finished (SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER} "
            "reached): nothing to train, its results are left as they are. Score it again with --eval-only",
            file=sys.stderr,
        )
        return {}
    start_run(cfg, args, early)
    if args.eval_only:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            write_eval_results(cfg.OUTPUT_DIR, res)
        return res
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def write_eval_results(output_dir: str, results) -> None:
    """Keep an ``--eval-only`` run's full results (per-class IoUs included; ``log.txt``'s
    copypaste lines hold only the summary metrics) in ``OUTPUT_DIR/eval_results.json``."""
    path = os.path.join(output_dir, EVAL_RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def build_parser():
    """Detectron2's parser with this project's flags (before the KEY VALUE overrides)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--replace-run",
        action="store_true",
        help="let this run replace the run already in OUTPUT_DIR (refused otherwise: a run folder "
        "belongs to one run): with --resume, continue it under a changed config; without, start "
        "afresh, the old run's files moved into OUTPUT_DIR/replaced-<time>/",
    )
    return parser


def cli(argv=None):
    """The command line: Detectron2's argument parser, then ``launch`` over the processes."""
    args = build_parser().parse_args(argv)
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    try:
        world = args.num_gpus * args.num_machines
        if world > 1 and args.machine_rank == 0:
            # the start-up checks once, here, before the processes are spawned: a bad input is
            # one line with exit status 2, as in a single-process run, not one traceback per
            # process (each process checks again, and builds the run, before writing anything)
            setup_cfg(argparse.Namespace(**vars(args)), world_size=world)
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except USER_ERRORS as e:
        # a bad input of the user's: its one message, no traceback (nothing has been written)
        print(f"train_net: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RUN_FAULTS as e:
        # a fault met while training (Detectron2 has logged where): the cause on the last line
        print(f"train_net: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    except ProcessRaisedException as e:
        # one of several processes failed: launch's traceback above, the cause on one line here
        cause = _child_cause(str(e))
        if cause is None:
            raise
        print(f"train_net: error: {cause}", file=sys.stderr)
        sys.exit(1)


def _child_cause(text: str):
    """``"process 1: DataError: cannot read ..."`` from the text of a ProcessRaisedException
    (the child's traceback), when its error is one of the project's (an input or a run fault);
    None for anything else (a bug keeps its traceback)."""
    names = {c.__name__ for c in USER_ERRORS + RUN_FAULTS}
    rank = re.search(r"Process (\d+) terminated", text)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(r"([\w.]+(?:Error|Fault)): (.*)", lines[i])
        if m and m.group(1).rsplit(".", 1)[-1] in names:
            return f"process {rank.group(1) if rank else '?'}: {m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return None


if __name__ == "__main__":
    cli()
