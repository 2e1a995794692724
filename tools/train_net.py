#!/usr/bin/env python
"""Train or evaluate a radkd-d2 model (segmentation, detection, or their distillation).

    python tools/train_net.py --config-file configs/synthetic/pspnet_r18_tiny.yaml
    python tools/train_net.py --config-file CFG --num-gpus 2            # DDP (gloo on CPU)
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --resume                # continue a run

Shaped like Detectron2's own tools/train_net.py: default_argument_parser, default_setup, launch.
"""
import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import radkd_d2  # noqa: F401  (registers models, losses and data sets)
from radkd_d2.engine import Trainer, setup_cfg


def main(args):
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


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
