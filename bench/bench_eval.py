#!/usr/bin/env python
"""Evaluation throughput of a student (not a test; prints images/s).

Runs the student of a config over its test set twice: the model alone on pre-loaded inputs
(pure compute) and Detectron2's ``inference_on_dataset`` with the project's evaluator (data
loading + model + SemSegEvaluator / COCOEvaluator), and prints images/s for each.

    python bench/bench_eval.py                                     # synthetic set, CPU, random weights
    python bench/bench_eval.py --weights output/demo/student/model_final.pth
    python bench/bench_eval.py --device cuda --amp bf16 DATASETS.SYNTHETIC.SIZE 1024   # large inputs, GPU
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from radkd_d2.engine import Trainer  # noqa: E402
from radkd_d2.engine.setup import load_config  # noqa: E402

DEFAULT_CONFIG = "configs/synthetic/demo/student_pspnet_r18x4_synthetic.yaml"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=str(REPO / DEFAULT_CONFIG))
    p.add_argument("--weights", default="", help="student checkpoint (default: random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--data-root", default="", help="DATASETS.ROOT (default: a temporary folder)")
    p.add_argument("--warmup", type=int, default=2, help="batches run before timing")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = p.parse_args(argv)
    torch.manual_seed(0)  # the same random weights every run when no checkpoint is given

    with contextlib.ExitStack() as stack:
        root = args.data_root or stack.enter_context(tempfile.TemporaryDirectory())
        cfg = load_config(args.config_file, ["DATASETS.ROOT", root, "MODEL.DEVICE", args.device, *args.opts])
        model = build_model(cfg).eval()
        if args.weights:
            DetectionCheckpointer(model).load(args.weights)
        dataset = cfg.DATASETS.TEST[0]
        loader = Trainer.build_test_loader(cfg, dataset)
        dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

        def amp():
            return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None)

        batches = [[{k: v for k, v in x.items() if k not in ("sem_seg", "instances")} for x in b] for b in loader]
        n_img = sum(len(b) for b in batches)
        with torch.no_grad(), amp():
            for b in batches[: args.warmup]:
                model(b)
            sync(args.device)
            t0 = time.perf_counter()
            for b in batches:
                model(b)
            sync(args.device)
        compute = time.perf_counter() - t0

        evaluator = Trainer.build_evaluator(cfg, dataset, output_folder=stack.enter_context(tempfile.TemporaryDirectory()))
        t0 = time.perf_counter()
        with amp():
            results = inference_on_dataset(model, loader, evaluator)
        sync(args.device)
        end_to_end = time.perf_counter() - t0

    h, w = batches[0][0]["image"].shape[-2:]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; config={Path(args.config_file).name} data={dataset} ({n_img} images, {h}x{w}) amp={args.amp}")
    print(f"model only                {n_img / compute:9.1f} images/s")
    print(f"inference_on_dataset      {n_img / end_to_end:9.1f} images/s  (loading + model + evaluator)")
    first = next(iter(results.values()), {})
    metric = "mIoU" if "mIoU" in first else "AP"
    if metric in first:
        print(f"{metric} of these weights     {first[metric]:9.2f}")


if __name__ == "__main__":
    main()
