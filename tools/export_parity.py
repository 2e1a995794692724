#!/usr/bin/env python
"""Export a student to TorchScript and ONNX and check the exports against the PyTorch student on
a test set: the metric of each (mIoU or box AP, same evaluator as ``train_net --eval-only``),
its difference from PyTorch's, and the max abs output difference over every image.

    python tools/export_parity.py --config-file CFG --weights output/run/model_final.pth \
        --output output/run/parity [--dataset camvid_val] [KEY VALUE ...]
"""
import argparse
import json
from pathlib import Path

from detectron2.utils.logger import setup_logger

import radkd_d2  # noqa: F401
from radkd_d2.engine.exported import export_parity
from radkd_d2.engine.exported import check_dataset_name
from radkd_d2.engine.inputs import existing_file, readable_checkpoint, run_tool, writable_output
from radkd_d2.engine.setup import load_config


def headlines(metrics: dict) -> list:
    """[(name, value)] of the metrics a parity row is judged by: mIoU, or box AP (and mask AP
    for a Mask R-CNN)."""
    if "sem_seg" in metrics:
        return [("mIoU", metrics["sem_seg"]["mIoU"])]
    return [("box AP", metrics["bbox"]["AP"])] + (
        [("mask AP", metrics["segm"]["AP"])] if "segm" in metrics else []
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--output", required=True, help="folder for the exports and parity.json")
    parser.add_argument("--dataset", help="registered test set (default: DATASETS.TEST[0])")
    parser.add_argument("--formats", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"])
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="example size to trace at")
    parser.add_argument("--batch", type=int, default=1, help="detection: images per exported call")
    parser.add_argument("--label", default="", help="model name in the table")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    setup_logger(name="radkd_d2")
    existing_file(args.config_file, "--config-file", "config file")
    readable_checkpoint(args.weights, "--weights")
    writable_output(args.output, "--output", folder=True)
    cfg = load_config(args.config_file, args.opts, validate=False)
    if args.dataset:
        check_dataset_name(args.dataset, "--dataset")
    rows = export_parity(cfg, args.weights, args.output, args.formats, args.dataset, args.size, args.batch)
    refs = headlines(rows[0]["metrics"])
    masks = any(row["mask_pixels_differing"] is not None for row in rows)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    head = "".join(f" {name} | Δ vs PyTorch |" for name, _ in refs)
    print(f"| model | data | format |{head} max abs output diff | images with other detections |"
          + (" mask pixels differing (max) |" if masks else ""))
    print("|---|---|---|" + "---:|---:|" * len(refs) + "---:|---:|" + ("---:|" if masks else ""))
    for row in rows:
        cells = "".join(
            f" {value:.4f} | {value - ref:+.5f} |"
            for (_, value), (_, ref) in zip(headlines(row["metrics"]), refs)
        )
        extra = ""
        if masks:
            m = row["mask_pixels_differing"]
            extra = " – |" if m is None else f" {m:.2e} |"
        print(f"| {args.label or Path(args.config_file).stem} | {dataset} | {row['format']} |{cells} "
              f"{row['max_abs_diff']:.2e} | {row['images_differing']} |{extra}")
    Path(args.output, "parity.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")


if __name__ == "__main__":
    run_tool(main)
