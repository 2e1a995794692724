#!/usr/bin/env python
"""Export the student of a distillation run as a plain Detectron2 checkpoint and config.

    python tools/export_student.py --config-file CFG --weights output/run/model_final.pth \
        --output output/run/student
    python tools/train_net.py --config-file output/run/student/config_student.yaml --eval-only \
        MODEL.WEIGHTS output/run/student/model_student.pth
"""
import argparse
import logging

from detectron2.utils.logger import setup_logger

import radkd_d2  # noqa: F401
from radkd_d2.engine.setup import load_config
from radkd_d2.export import export_student


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config of the run")
    parser.add_argument("--weights", required=True, help="checkpoint of the run (model_final.pth)")
    parser.add_argument("--output", required=True, help="folder for model_student.pth + config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="radkd_d2")
    setup_logger(name="detectron2")
    cfg = load_config(args.config_file, args.opts, validate=False)
    ckpt, cfg_path = export_student(cfg, args.weights, args.output)
    logging.getLogger("radkd_d2").info("student checkpoint: %s\nstudent config: %s", ckpt, cfg_path)
    print(f"student checkpoint: {ckpt}\nstudent config:     {cfg_path}")


if __name__ == "__main__":
    main()
