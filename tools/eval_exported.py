#!/usr/bin/env python
"""Evaluate an exported student (TorchScript ``.ts`` or ONNX ``.onnx``, from
tools/export_student.py) on a registered test set, with the loader and evaluator of
``train_net --eval-only`` (SemSegEvaluator / COCOEvaluator).

    python tools/eval_exported.py --model output/run/student/model_student.onnx
    python tools/eval_exported.py --model M.ts --dataset camvid_val DATASETS.ROOT ../shared/data
"""
import argparse
import json
from pathlib import Path

from detectron2.evaluation import print_csv_format
from detectron2.utils.logger import setup_logger

import radkd_d2  # noqa: F401
from radkd_d2.engine.exported import evaluate_exported
from radkd_d2.engine.inputs import existing_file, run_tool, writable_output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model_student.ts or model_student.onnx")
    parser.add_argument("--dataset", help="registered test set (default: the config's DATASETS.TEST[0])")
    parser.add_argument("--output", help="write the metrics here as JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides of the student config, KEY VALUE ...")
    args = parser.parse_args(argv)
    existing_file(args.model, "--model", "exported model")
    if args.output:
        writable_output(args.output, "--output", folder=False)  # before the evaluation, not after
    setup_logger(name="radkd_d2")
    setup_logger(name="detectron2")
    results, _ = evaluate_exported(args.model, args.dataset, args.opts)
    print_csv_format(results)
    if args.output:  # its folder is made if missing (checked writable before the evaluation)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    run_tool(main)
