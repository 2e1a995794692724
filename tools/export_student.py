#!/usr/bin/env python
"""Export the student of a distillation run: a plain Detectron2 checkpoint + config (``d2``), or
a deployable TorchScript / ONNX model (see radkd_d2/export/deploy.py for its inputs and outputs).

    python tools/export_student.py --config-file CFG --weights output/run/model_final.pth \
        --output output/run/student                          # d2: model_student.pth + config
    python tools/export_student.py --config-file CFG --weights output/run/model_final.pth \
        --output output/run/student --format onnx            # model_student.onnx (+ .json)
    python tools/eval_exported.py --model output/run/student/model_student.onnx
    python tools/train_net.py --config-file output/run/student/config_student.yaml --eval-only \
        MODEL.WEIGHTS output/run/student/model_student.pth

The example traced is the first image(s) of the config's test set, or random pixels at
``--size H W``; TorchScript traces and ONNX models (unless ``--fixed-size``) accept any size.
"""
import argparse
import logging

from detectron2.utils.logger import setup_logger

import radkd_d2  # noqa: F401
from radkd_d2.engine.exported import example_images
from radkd_d2.engine.inputs import existing_file, readable_checkpoint, run_tool, writable_output
from radkd_d2.engine.setup import load_config
from radkd_d2.export import FORMATS, export_deployable, export_student


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the distillation config of the run")
    parser.add_argument("--weights", required=True, help="checkpoint of the run (model_final.pth)")
    parser.add_argument("--output", required=True, help="folder for the exported student (created if its parent exists)")
    parser.add_argument("--format", choices=FORMATS, default="d2", help="d2 (default), torchscript or onnx")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example size (default: the test set's first image)")
    parser.add_argument("--batch", type=int, default=1, help="detection: images per call of the exported model (default 1)")
    parser.add_argument("--fixed-size", action="store_true", help="ONNX: only the example's H x W (default: any size)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    existing_file(args.config_file, "--config-file", "config file")
    readable_checkpoint(args.weights, "--weights")
    writable_output(args.output, "--output", folder=True)
    setup_logger(name="radkd_d2")
    setup_logger(name="detectron2")
    cfg = load_config(args.config_file, args.opts, validate=False)
    if args.format == "d2":
        ckpt, cfg_path = export_student(cfg, args.weights, args.output)
        logging.getLogger("radkd_d2").info("student checkpoint: %s\nstudent config: %s", ckpt, cfg_path)
        print(f"student checkpoint: {ckpt}\nstudent config:     {cfg_path}")
        return
    example = example_images(cfg, args.batch, args.size)
    path, info = export_deployable(cfg, args.weights, args.output, args.format, example, dynamic_size=not args.fixed_size)
    size = "x".join(map(str, info.fixed_size)) if info.fixed_size else "any"
    print(f"{args.format} model: {path}\n  task {info.task}, input size {size}, "
          f"max |exported - PyTorch| on the example {info.check_max_abs_diff:.2g}; dropped {info.dropped or 'nothing'}")


if __name__ == "__main__":
    run_tool(main)
