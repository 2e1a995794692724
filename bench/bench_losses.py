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
    "naive", "magnitude", "lad", "cad", "pad", "kd", "cwd", "pkd", "fkd", "skd", "ifvd",
    "cirkd_minibatch", "fgd",
]
SLOW = ["mgd", "cirkd_memory"]
NUM_CLASSES = 19


def _context(shape, seed=0):
    b, _, h, w = shape
    g = torch.Generator().manual_seed(seed)
    img = (h * 8, w * 8)
    labels = torch.randint(0, NUM_CLASSES, (b,) + img, generator=g)
    labels[:, : img[0] // 8] = 255
    boxes = [torch.tensor([[16.0, 24.0, 300.0, 200.0], [400.0, 100.0, 900.0, 480.0]])]
    boxes += [torch.zeros((0, 4))] * (b - 1)
    return {"labels": labels, "ignore_value": 255, "boxes": boxes, "image_size": img}


def _build(name, channels):
    extra = {}
    if name == "cirkd_memory":  # published bank sizes would need ~6 GB at 2048 channels
        extra = dict(num_classes=NUM_CLASSES, pixel_memory_size=2000, region_memory_size=200)
    if name == "kd":
        extra = dict(temperature=1.0)
    return build_distill_loss(
        name, student_channels=channels, teacher_channels=channels, **extra
    )


def _time(fn, student, warmup, repeats):
    for _ in range(warmup):
        student.grad = None
        fn().backward()
    times = []
    for _ in range(repeats):
        student.grad = None
        t0 = time.perf_counter()
        fn().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="*", default=None)
    parser.add_argument("--all", action="store_true", help="include " + ", ".join(SLOW))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = args.losses or (DEFAULT + (SLOW if args.all else []))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU float32, "
          f"forward+backward, median of {args.repeats} after {args.warmup} warm-up")
    header = f"{'loss':<16}" + "".join(f"{'x'.join(map(str, s)):>22}" for s in SHAPES)
    print(header)
    print(f"{'':<16}" + "".join(f"{'ms':>12}{'/ mse':>10}" for _ in SHAPES))
    results = {}
    for shape in SHAPES:
        torch.manual_seed(0)
        student = torch.randn(shape, requires_grad=True)
        teacher = torch.randn(shape)
        ctx = _context(shape)
        base = _time(lambda: F.mse_loss(student, teacher), student, args.warmup, args.repeats)
        results[("mse", shape)] = base
        for name in names:
            loss = _build(name, shape[1])
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
