"""Forward + backward timings of the distillation losses on CPU, relative to F.mse_loss.

Usage:
    python bench/bench_losses.py                      # default losses, both shapes
    python bench/bench_losses.py --all                # also MGD and CIRKD memory (slow on CPU)
    python bench/bench_losses.py --losses lad cad pad --repeats 5 --threads 2

Each loss gets ``--warmup`` untimed runs and the median of ``--repeats`` timed runs of
forward + backward (gradient w.r.t. the student feature; the teacher needs none), on float32
B x C x H x W tensors. The MSE baseline is timed in the same run on the same tensors. Goal
for the paper's losses: LAD / CAD / PAD within 3x of MSE.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from radkd_d2.losses import build_distill_loss

SHAPES = [(2, 512, 64, 128), (2, 2048, 64, 128)]
DEFAULT = [
    "naive",
    "magnitude",
    "lad",
    "cad",
    "pad",
    "kd",
    "cwd",
    "pkd",
    "fkd",
    "skd",
    "ifvd",
    "cirkd_minibatch",
    "fgd",
]
SLOW = ["mgd", "cirkd_memory"]
NUM_CLASSES = 19


def _context(shape, device, seed=0):
    b, _, h, w = shape
    g = torch.Generator().manual_seed(seed)
    img = (h * 8, w * 8)
    labels = torch.randint(0, NUM_CLASSES, (b,) + img, generator=g)
    labels[:, : img[0] // 8] = 255
    boxes = [torch.tensor([[16.0, 24.0, 300.0, 200.0], [400.0, 100.0, 900.0, 480.0]])]
    boxes += [torch.zeros((0, 4))] * (b - 1)
    boxes = [bx.to(device) for bx in boxes]
    return {"labels": labels.to(device), "ignore_value": 255, "boxes": boxes, "image_size": img}


def _build(name, channels, device):
    extra = {}
    if name == "cirkd_memory":  # published bank sizes would need ~6 GB at 2048 channels
        extra = dict(num_classes=NUM_CLASSES, pixel_memory_size=2000, region_memory_size=200)
    if name == "kd":
        extra = dict(temperature=1.0)
    loss = build_distill_loss(name, student_channels=channels, teacher_channels=channels, **extra)
    return loss.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, student, warmup, repeats):
    for _ in range(warmup):
        student.grad = None
        fn().backward()
    times = []
    for _ in range(repeats):
        student.grad = None
        _sync(student.device)
        t0 = time.perf_counter()
        fn().backward()
        _sync(student.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="*", default=None)
    parser.add_argument("--all", action="store_true", help="include " + ", ".join(SLOW))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps default")
    parser.add_argument("--device", default="cpu", help="cpu (the reference setting) or cuda")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = args.losses or (DEFAULT + (SLOW if args.all else []))
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where} float32, "
        f"forward+backward, median of {args.repeats} after {args.warmup} warm-up"
    )
    header = f"{'loss':<16}" + "".join(f"{'x'.join(map(str, s)):>22}" for s in SHAPES)
    print(header)
    print(f"{'':<16}" + "".join(f"{'ms':>12}{'/ mse':>10}" for _ in SHAPES))
    results = {}
    for shape in SHAPES:
        torch.manual_seed(0)
        student = torch.randn(shape, device=device, requires_grad=True)
        teacher = torch.randn(shape, device=device)
        ctx = _context(shape, device)
        base = _time(lambda: F.mse_loss(student, teacher), student, args.warmup, args.repeats)
        results[("mse", shape)] = base
        for name in names:
            loss = _build(name, shape[1], device)
            results[(name, shape)] = _time(
                lambda: loss(student, teacher, **ctx), student, args.warmup, args.repeats
            )
            del loss
    for name in ["mse"] + names:
        row = f"{name:<16}"
        for shape in SHAPES:
            ms = results[(name, shape)]
            row += f"{ms:>12.1f}{ms / results[('mse', shape)]:>10.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
