#!/usr/bin/env python
"""Per-iteration cost of distillation against its floor (not a test; prints ratios).

floor = one student training step + one teacher inference step (the teacher forward the
distillation needs: up to its tapped features) on the same batch. The distillation step
(forward+backward+SGD of the distillation meta-architecture) should cost <= 1.05 x floor, and
the distillation losses + connectors <= 2% of the step. Also reports evaluation throughput of
the student (images/s) and the host reads (GPU synchronisations) of the loss path, counted with
the profiler.

    python bench/bench_distill_step.py --task seg --size reduced   # CPU, PSPNet-R101/4 -> R18/4, 2x128x128
    python bench/bench_distill_step.py --task det --size reduced   # CPU, RetinaNet-X101-64x4d -> R50, 2x256x256
    python bench/bench_distill_step.py --task det --size paper --device cuda --teacher-dtype float16
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis  # noqa: E402
from fvcore.nn import FlopCountAnalysis  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import radkd_d2  # noqa: E402,F401
from radkd_d2.analysis.profiling import capture_distiller_inputs, count_sync_ops, distiller_step  # noqa: E402
from radkd_d2.config import add_radkd_config  # noqa: E402
from radkd_d2.engine.setup import keep_freed_memory, load_config  # noqa: E402

SIZES = {  # (student width, teacher width, batch, H, W, classes)
    "reduced": (0.25, 0.25, 2, 128, 128, 19),
    "paper": (1.0, 1.0, 2, 512, 1024, 19),  # per-GPU share of batch 16 on 8 GPUs, Cityscapes crop
    "smoke": (0.125, 0.125, 2, 64, 64, 19),  # seconds: checks that the script runs
}
# Detection: the full Table 7 architectures (RetinaNet X101-64x4d-FPN -> R50-FPN, 80 classes),
# batch 2 per GPU (16 on 8 GPUs); images (H, W) and boxes per image.
DET_SIZES = {"reduced": (2, 256, 256, 5), "paper": (2, 800, 1333, 7), "smoke": (2, 64, 64, 2)}
DET_CONFIG = "configs/coco/distill/{loss}_fpn_retx101_retr50_2x_coco.yaml"


def make_det_cfg(args, distill: bool):
    """The COCO Table 7 distillation config with random weights (or the plain R50 student)."""
    opts = ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "",
            "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(REPO / "configs/coco/retinanet_X101_64x4d_FPN_2x_coco.yaml"),
            "MODEL.DISTILL.TEACHER.WEIGHTS", "", "MODEL.DISTILL.TEACHER.DTYPE", args.teacher_dtype,
            "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 0, "MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER", []]
    cfg = load_config(str(REPO / DET_CONFIG.format(loss=args.loss)), opts, validate=False)
    if not distill:
        cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    return cfg


def det_batch(args):
    b, h, w, n_boxes = DET_SIZES[args.size]
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(b):
        xy = torch.rand(n_boxes, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(n_boxes, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 80, (n_boxes,), generator=g)
        out.append({"image": torch.rand(3, h, w, generator=g) * 255, "instances": inst, "height": h, "width": w})
    return out


def make_cfg(args, distill: bool):
    if args.task == "det":
        return make_det_cfg(args, distill)
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
    if args.task == "det":
        return det_batch(args)
    _, _, b, h, w, classes = SIZES[args.size]
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "sem_seg": torch.randint(0, classes, (h, w), generator=g)}
            for _ in range(b)]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timing(float):
    """A callable's median seconds (the float value), with the spread and the page faults."""

    def __new__(cls, times, faults):
        self = super().__new__(cls, statistics.median(times))
        self.min, self.max = min(times), max(times)
        self.slow = sum(t > 1.5 * float(self) for t in times)  # steps 1.5x the median or more
        self.faults = statistics.median(faults)  # minor page faults per call
        return self


def timeit(fns, args, reps):
    """{name: Timing} of each callable in ``fns`` ({name: fn}); the callables take turns in
    every round, so a slow spell of a shared machine hits all of them alike. The minor page
    faults of each call (``ru_minflt``: memory the allocator took fresh from the OS) come with
    the times."""
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    sync(args.device)
    times = {name: [] for name in fns}
    faults = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - t)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {name: Timing(times[name], faults[name]) for name in fns}


def spread(t: "Timing") -> str:
    return (f"min..max {t.min * 1e3:.1f}..{t.max * 1e3:.1f} ms, {t.slow} step(s) >= 1.5x median, "
            f"{t.faults:.0f} page faults")


def flops(model, inputs) -> float:
    """Forward multiply-adds (fvcore's count, via Detectron2's wrapper for its models)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(inputs, list):
                count = D2FlopCountAnalysis(model, inputs)
            else:
                count = FlopCountAnalysis(model, inputs)
            count.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return float(count.total())
    finally:
        model.train(was_training)


def autocast(args):
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    return torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def prepare(model, args):
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def train_step_fn(model, data, args, diagnostics: bool = False):
    """One SGD step; with ``diagnostics`` at an iteration where the loss-balance diagnostics
    (gradient norm per term, feature statistics) run, else at one where they do not."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    model.train()
    distiller = getattr(model, "distiller", None)

    def step():
        period = getattr(distiller, "diagnostics_period", 0)
        if distiller is not None:
            distiller.diagnostics_period = 1 if diagnostics else 0
        with EventStorage(0), autocast(args):
            losses = model(data)
        if distiller is not None:
            distiller.diagnostics_period = period
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["seg", "det"], default="seg",
                   help="seg: PSPNet-R101 -> PSPNet-R18; det: RetinaNet-X101-64x4d -> R50 (COCO configs)")
    p.add_argument("--size", choices=sorted(SIZES), default="reduced")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--teacher-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--loss", default="lad", help="distillation loss (det: one with a COCO config)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--malloc-defaults", action="store_true",
                   help="CPU: keep glibc's allocator defaults instead of what training sets "
                   "(MODEL.CPU_KEEP_FREED_MEMORY), to see the page faults that costs")
    args = p.parse_args(argv)
    kept = args.device == "cpu" and not args.malloc_defaults and keep_freed_memory()
    torch.manual_seed(0)
    data = batch(args)

    distill = prepare(build_model(make_cfg(args, True)), args)
    student = prepare(build_model(make_cfg(args, False)), args)
    student.load_state_dict({k: v for k, v in distill.state_dict().items() if not k.startswith("distiller.")})

    def teacher_step():
        with autocast(args):
            distill.teacher_features(data)

    # distillation losses + connectors alone, on the features the distiller received
    with autocast(args):
        s_feats, t_feats, context = capture_distiller_inputs(distill, data)

    def loss_step():
        with autocast(args):
            distiller_step(distill.distiller, s_feats, t_feats, context)

    connectors = [(distill.distiller.connectors[tap.key], tap.student)
                  for tap in distill.distiller.taps if tap.key in distill.distiller.connectors]

    def connector_step():
        with autocast(args):
            outs = [conn(s_feats[pos]) for conn, pos in connectors]
        if outs:
            sum(o.float().mean() for o in outs).backward()

    model = student
    n_img = len(data)
    plain = [{k: v for k, v in x.items() if k not in ("sem_seg", "instances")} for x in data]

    def infer():
        with torch.no_grad(), autocast(args):
            model(plain)

    t = timeit({"student": train_step_fn(student, data, args), "teacher": teacher_step,
                "distill": train_step_fn(distill, data, args), "losses": loss_step,
                "diagnostics": train_step_fn(distill, data, args, diagnostics=True),
                "connectors": connector_step}, args, args.reps)
    t_student, t_teacher, t_distill, t_losses = t["student"], t["teacher"], t["distill"], t["losses"]
    model.eval()
    t_infer = timeit({"infer": infer}, args, args.reps)["infer"]
    model.train()
    syncs = count_sync_ops(loss_step)

    # multiply-adds: a training step is ~3 forwards (forward + twice as much backward)
    f_student, f_teacher = flops(student, plain), flops(distill.teacher, plain)
    f_conn = sum(flops(conn, s_feats[pos]) for conn, pos in connectors)
    conn_share = 3 * f_conn / (3 * f_student + f_teacher + 3 * f_conn)

    floor = t_student + t_teacher
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; task={args.task} size={args.size} amp={args.amp} teacher_dtype={args.teacher_dtype} "
          f"channels_last={args.channels_last} loss={args.loss} keep_freed_memory={kept}")
    print(f"student train step        {t_student * 1e3:9.1f} ms   {spread(t_student)}")
    print(f"teacher inference step    {t_teacher * 1e3:9.1f} ms   {spread(t_teacher)}")
    print(f"floor (sum)               {floor * 1e3:9.1f} ms   {t_student.faults + t_teacher.faults:.0f} page faults")
    print(f"distillation train step   {t_distill * 1e3:9.1f} ms   ratio to floor {t_distill / floor:.3f}  (goal <= 1.05)")
    print(f"                                       {spread(t_distill)}; page faults / floor's "
          f"{t_distill.faults / max(1.0, t_student.faults + t_teacher.faults):.2f}")
    print(f"distill losses+connectors {t_losses * 1e3:9.1f} ms   share of step  {t_losses / t_distill * 100:.2f}%  (goal <= 2%)")
    print(f"  of which connectors     {t['connectors'] * 1e3:9.1f} ms   share of step  {t['connectors'] / t_distill * 100:.2f}%")
    print(f"  connectors' share of the step's multiply-adds "
          f"{conn_share * 100:.2f}%  (student fwd {f_student / 1e9:.1f} G, teacher fwd {f_teacher / 1e9:.1f} G, "
          f"connectors fwd {f_conn / 1e9:.2f} G)")
    extra = t["diagnostics"] - t_distill
    print(f"diagnostics iteration     {t['diagnostics'] * 1e3:9.1f} ms   +{extra * 1e3:.1f} ms over an ordinary step "
          f"({extra / t_distill * 100:.1f}%; every DIAGNOSTICS_PERIOD iterations, "
          f"{extra / t_distill * 100 / 20:.2f}% of training at the default 20)")
    print(f"student inference         {n_img / t_infer:9.1f} images/s")
    print(f"host reads in loss path   {sum(syncs.values()):9d}   {syncs or ''}  (goal 0; profiler)")


if __name__ == "__main__":
    main()
