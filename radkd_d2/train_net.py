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
import logging

import torch.distributed as dist
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import radkd_d2  # noqa: F401  (registers models, losses and data sets)
from radkd_d2.engine import Trainer, setup_cfg


def main(args):
    """One process of a run (``launch`` starts one per GPU). With several processes, the process
    group is destroyed at the end: left to the interpreter's exit, gloo's threads were
    sometimes torn down while running, aborting a finished run ("terminate called without an
    active exception", SIGABRT)."""
    try:
        return _run(args)
    finally:
        if dist.is_available() and dist.is_initialized():
            comm.synchronize()
            dist.destroy_process_group()


def _run(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    """The command line: Detectron2's argument parser, then ``launch`` over the processes."""
    args = default_argument_parser().parse_args(argv)
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
