#!/usr/bin/env python
"""Per-iteration cost of distillation against its floor (not a test; prints ratios).

floor = one student training step + one teacher inference step on the same batch. The
distillation step (DistillSemanticSegmentor forward+backward+SGD) should cost <= 1.05 x floor,
and the distillation losses + connectors <= 2% of the step. Also reports evaluation throughput
of the student (images/s).

    python bench/bench_distill_step.py --size reduced            # CPU, PSPNet-R101/4 -> R18/4, 2x128x128
    python bench/bench_distill_step.py --size paper --device cuda --amp bf16 --teacher-dtype bfloat16
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import radkd_d2  # noqa: E402,F401
from radkd_d2.config import add_radkd_config  # noqa: E402

SIZES = {  # (student width, teacher width, batch, H, W, classes)
    "reduced": (0.25, 0.25, 2, 128, 128, 19),
    "paper": (1.0, 1.0, 2, 512, 1024, 19),  # per-GPU share of batch 16 on 8 GPUs, Cityscapes crop
}


def make_cfg(args, distill: bool):
    sw, tw, _, _, _, classes = SIZES[args.size]
    cfg = get_cfg()
    add_radkd_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/Base-SemSeg.yaml"))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.DRN.WIDTH_MULT = sw
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = classes
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 512 if sw == 1.0 else 128
    if distill:
        cfg.MODEL.META_ARCHITECTURE = "DistillSemanticSegmentor"
        cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(REPO / "configs/Base-SemSeg.yaml")
        cfg.MODEL.DISTILL.TEACHER.WEIGHTS = ""
        cfg.MODEL.DISTILL.TEACHER.OPTS = [
            "MODEL.DRN.DEPTH", "101", "MODEL.DRN.WIDTH_MULT", str(tw),
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(classes), "MODEL.SEM_SEG_HEAD.CONVS_DIM", "512" if tw == 1.0 else "128",
        ]
        cfg.MODEL.DISTILL.TEACHER.DTYPE = args.teacher_dtype
        cfg.MODEL.DISTILL.TAPS = [["res5", "res5", args.loss, 10.0]]
        cfg.MODEL.DISTILL.KD_WEIGHT = 10.0
        cfg.MODEL.DISTILL.DIAGNOSTICS_PERIOD = 0
    return cfg


def batch(args):
    _, _, b, h, w, classes = SIZES[args.size]
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "sem_seg": torch.randint(0, classes, (h, w), generator=g)}
            for _ in range(b)]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn, args, reps):
    for _ in range(args.warmup):
        fn()
    sync(args.device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(args.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def autocast(args):
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def prepare(model, args):
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def train_step_fn(model, data, args):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    model.train()

    def step():
        with EventStorage(0), autocast(args):
            losses = model(data)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="reduced")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--teacher-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--loss", default="lad")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data = batch(args)

    distill = prepare(build_model(make_cfg(args, True)), args)
    student = prepare(build_model(make_cfg(args, False)), args)
    student.load_state_dict({k: v for k, v in distill.state_dict().items() if not k.startswith("distiller.")})
    teacher = distill.teacher

    t_student = timeit(train_step_fn(student, data, args), args, args.reps)

    def teacher_step():
        with autocast(args):
            distill.teacher_features(data)

    t_teacher = timeit(teacher_step, args, args.reps)
    t_distill = timeit(train_step_fn(distill, data, args), args, args.reps)

    # distillation losses + connectors alone, on cached features
    with torch.no_grad(), autocast(args):
        t_feats = distill.teacher_features(data)
    images = torch.stack([(x["image"].to(args.device) - distill.pixel_mean) / distill.pixel_std for x in data])
    with autocast(args):
        s_feats = {k: v.detach().requires_grad_() for k, v in distill.backbone(images).items()}
        s_feats.update({k: v.detach().requires_grad_() for k, v in distill.sem_seg_head.layers(s_feats).items()})

    def loss_step():
        with EventStorage(0), autocast(args):
            losses = distill.distiller(s_feats, t_feats)
        sum(losses.values()).backward()

    t_losses = timeit(loss_step, args, args.reps)

    model = student.eval()
    n_img = len(data)

    def infer():
        with torch.no_grad(), autocast(args):
            model([{"image": x["image"]} for x in data])

    t_infer = timeit(infer, args, args.reps)

    floor = t_student + t_teacher
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; size={args.size} amp={args.amp} teacher_dtype={args.teacher_dtype} "
          f"channels_last={args.channels_last} loss={args.loss}")
    print(f"student train step        {t_student * 1e3:9.1f} ms")
    print(f"teacher inference step    {t_teacher * 1e3:9.1f} ms")
    print(f"floor (sum)               {floor * 1e3:9.1f} ms")
    print(f"distillation train step   {t_distill * 1e3:9.1f} ms   ratio to floor {t_distill / floor:.3f}  (goal <= 1.05)")
    print(f"distill losses+connectors {t_losses * 1e3:9.1f} ms   share of step  {t_losses / t_distill * 100:.2f}%  (goal <= 2%)")
    print(f"student inference         {n_img / t_infer:9.1f} images/s")


if __name__ == "__main__":
    main()
