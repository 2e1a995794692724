#!/usr/bin/env python
"""Inference latency of a distillation pair (not a test): teacher vs student, PyTorch eager vs
TorchScript vs ONNX Runtime, per input size and batch size.

Both models of a distillation config are built (random weights unless given: latency does not
depend on them), exported to TorchScript and ONNX (dynamic sizes) in a temporary folder, and
timed on the same raw image batch. Rounds are interleaved (each round runs every model x
backend once, in turn) and the median round is reported, so drifting machine load shifts every
row alike. Speed-up = teacher ms / student ms on the same backend.

    python bench/bench_export.py                                           # demo pair, 96 x 96
    python bench/bench_export.py --config-file configs/camvid/lad_res5_pspr101_pspr18_camvid.yaml \
        --size 360 480
    python bench/bench_export.py --json output/run/speed.json   # for tools/report.py --speed
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from radkd_d2.engine.setup import load_config  # noqa: E402
from radkd_d2.export import Backend, deployable, export_module, student_config  # noqa: E402
from radkd_d2.modeling.teacher import load_teacher_cfg  # noqa: E402

DEFAULT_CONFIG = "configs/synthetic/demo/lad_res5_pspr18x2_pspr18x4_synthetic.yaml"
BACKENDS = ("pytorch", "torchscript", "onnx")


def machine(device: str) -> str:
    """The machine a row was measured on, in words."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def build_pair(cfg, teacher_weights: str, student_weights: str) -> dict:
    teacher_cfg = load_teacher_cfg(cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DEVICE, cfg.MODEL.DISTILL.TEACHER.OPTS)
    models = {}
    for name, mcfg, weights in [("teacher", teacher_cfg, teacher_weights), ("student", student_config(cfg), student_weights)]:
        mcfg.defrost()
        mcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
        model = build_model(mcfg).eval()
        if weights:
            DetectionCheckpointer(model).load(weights)
        models[name] = model
    return models


def callables(models: dict, example: list, folder: Path, device: str) -> dict:
    """(model, backend) -> function of the input tuple (segmentation: one B x 3 x H x W batch)."""
    out = {}
    for name, model in models.items():
        wrapper, inputs, task = deployable(model, example)
        if task != "sem_seg":
            raise SystemExit(f"bench_export times segmentation pairs; the {name} is a {type(model).__name__}")
        out[(name, "pytorch")] = lambda xs, w=wrapper: w(*xs)
        for fmt in ("torchscript", "onnx"):
            if fmt == "onnx" and device != "cpu":
                continue  # the pinned onnxruntime runs on the CPU only
            path = folder / f"{name}.{fmt}"
            export_module(wrapper, inputs, task, fmt, path)
            backend = Backend(fmt, str(path), ["images"], device)
            out[(name, fmt)] = lambda xs, b=backend: b(list(xs))
    return out


def time_rows(fns: dict, inputs: tuple, rounds: int, warmup: int, device: str) -> dict:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn(inputs)
        for _ in range(rounds):
            for k, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn(inputs)
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=str(REPO / DEFAULT_CONFIG), help="a distillation config (teacher + student)")
    p.add_argument("--teacher-weights", default="")
    p.add_argument("--student-weights", default="", help="the run's checkpoint or an exported model_student.pth")
    p.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"), help="input size (repeatable; default 96 96)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = load_config(args.config_file, ["MODEL.DEVICE", args.device, *args.opts], validate=False)
    models = build_pair(cfg, args.teacher_weights, args.student_weights)
    where = machine(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fns = callables(models, [torch.rand(3, 64, 64) * 255], Path(tmp), args.device)
        for h, w in args.size or [(96, 96)]:
            for b in args.batch:
                g = torch.Generator().manual_seed(0)
                images = torch.rand(b, 3, h, w, generator=g).mul(255).to(args.device)
                med = time_rows(fns, (images,), args.rounds, args.warmup, args.device)
                for (name, backend), sec in med.items():
                    teacher = med[("teacher", backend)]
                    rows.append({
                        "machine": where, "model": name, "backend": backend, "size": f"{h}x{w}", "batch": b,
                        "ms_per_image": 1000 * sec / b, "images_per_s": b / sec, "speedup_vs_teacher": teacher / sec,
                    })
    print(f"config: {args.config_file}; medians of {args.rounds} interleaved rounds")
    print("| machine | model | backend | size | batch | ms / image | images / s | speed-up vs teacher |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['machine']} | {r['model']} | {r['backend']} | {r['size']} | {r['batch']} | "
              f"{r['ms_per_image']:.2f} | {r['images_per_s']:.1f} | {r['speedup_vs_teacher']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config_file, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
