#!/usr/bin/env python
"""Angular losses: the fused implementation in ``radkd_d2.losses.angular`` against the plain
``(normalize(s) - normalize(t))^2.sum(dim).mean()`` written with autograd, forward + backward.

Shape by default: res5 of PSPNet-R18 (512 channels, output stride 8) at 512 x 1024, batch 2,
i.e. 2 x 512 x 64 x 128. Each (loss, implementation) runs in its own process so its peak
memory is its own: the table gives the median and the spread (min..max) of the step time over
``--repeats`` steps and the peak resident memory the steps add on top of the inputs, the student gradient included (ru_maxrss;
on CUDA, ``torch.cuda.max_memory_allocated``), and the speed-up over the plain one (plain time / its time). ``unchunked`` is the fused
backward with whole-tensor reductions (the GPU path), to see what the CPU chunking adds.

    python bench/bench_angular.py [--device cpu|cuda] [--shape 2 512 64 128] [--repeats 20]

Timed expectations live here, never in tests; the tests check that both give the same values.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOSSES = ("lad", "cad", "pad")
IMPLS = ("fused", "unchunked", "plain")  # unchunked: the fused backward, whole-tensor reductions


def plain_loss(name: str, s, t, eps: float):
    """The textbook form: normalise, subtract, square, sum over the compared dimensions."""
    from radkd_d2.losses._utils import safe_l2_normalize

    b, c = s.shape[:2]
    if name == "lad":
        s, t, dim = s.reshape(b, 1, -1), t.reshape(b, 1, -1), 2
    else:
        s, t, dim = s.reshape(b, c, -1), t.reshape(b, c, -1), (2 if name == "cad" else 1)
    diff = safe_l2_normalize(s, dim, eps) - safe_l2_normalize(t, dim, eps)
    return diff.pow(2).sum(dim=dim).mean()


def measure(name: str, impl: str, shape, device: str, warmup: int, repeats: int) -> dict:
    """One (loss, implementation): step times (ms) and the peak memory the steps add (MiB)."""
    import torch

    from radkd_d2.losses import cad_loss, lad_loss, pad_loss
    from radkd_d2.losses._utils import DEFAULT_EPS

    fused = {"lad": lad_loss, "cad": cad_loss, "pad": pad_loss}[name]
    if impl == "unchunked":
        from radkd_d2.losses import angular

        angular._reductions = angular._reductions_whole
    torch.manual_seed(0)
    s = torch.randn(shape, device=device, requires_grad=True)
    t = torch.randn(shape, device=device)

    def step():
        loss = plain_loss(name, s, t, DEFAULT_EPS) if impl == "plain" else fused(s, t)
        loss.backward()
        s.grad = None
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    # the baseline is the inputs alone: the extra memory includes the gradient of the student
    # feature (one input's size, the same for both implementations) and every temporary
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        value = step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    if device == "cuda":
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "extra_mib": extra,
        "value": float(value),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--shape", type=int, nargs=4, default=(2, 512, 64, 128), metavar=("B", "C", "H", "W"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--one", nargs=2, metavar=("LOSS", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = tuple(args.shape)
    if args.one:
        print(json.dumps(measure(*args.one, shape, args.device, args.warmup, args.repeats)))
        return 0
    import torch

    results = {}
    for name in args.losses:
        for impl in IMPLS:
            cmd = [sys.executable, __file__, "--one", name, impl, "--device", args.device,
                   "--shape", *map(str, shape), "--warmup", str(args.warmup),
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[f"{name}/{impl}"] = json.loads(out.strip().splitlines()[-1])
    print(f"angular losses, forward + backward, {args.device}, shape {'x'.join(map(str, shape))}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} steps")
    print(f"{'loss':<5}{'impl':<10}{'median ms':>10}{'min..max ms':>18}{'extra MiB':>11}{'speed-up':>10}")
    for name in args.losses:
        pl = results[f"{name}/plain"]
        for impl in IMPLS:
            r = results[f"{name}/{impl}"]
            ratio = f"{pl['median_ms'] / r['median_ms']:.2f}" if impl != "plain" else ""
            span = f"{r['min_ms']:.1f}..{r['max_ms']:.1f}"
            print(f"{name:<5}{impl:<10}{r['median_ms']:>10.1f}{span:>18}{r['extra_mib']:>11.0f}{ratio:>10}")
        for impl in IMPLS[:-1]:
            r = results[f"{name}/{impl}"]
            rel = abs(r["value"] - pl["value"]) / max(abs(pl["value"]), 1e-30)
            assert rel < 1e-4, f"{name}: {impl} {r['value']} vs plain {pl['value']}"
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "device": args.device, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
