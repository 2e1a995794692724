"""A full-size rehearsal of the config families of the index (``tools/rehearsal.py``).

For one distillation config per family -- Table 1 on Cityscapes, Table 3 on VOC and ADE20K,
Table 7's RetinaNet, the Faster and Mask R-CNN matrix -- at the config's own model and input
size (or, ``reduced``, at CPU-test size):

1. **data**: a few fabricated images in the data set's real layout (:mod:`.fabricate`), made
   ready by its ``datasets/prepare_*.py`` script; COCO's layout is linked from ``tiny_coco``;
2. **weights** (a subprocess): the teacher's full-size checkpoint, generated from its config
   (random weights; each norm layer's statistics set from a training image, as a trained
   network has them, :func:`calibrate_norms`), which the distillation then reads through the
   strict loader; a student whose ``MODEL.WEIGHTS`` is a URL (no network here) gets a generated
   checkpoint of itself;
3. **floor** (the same subprocess): on one batch of the config's training loader, the
   teacher's no-grad forward (what the distillation needs of it) plus one plain student step
   (the student's own config, no distillation: forward, backward, SGD with the run's learning
   rate), timed for a few rounds after a warm-up round, with train_net's allocator setting
   (MODEL.CPU_KEEP_FREED_MEMORY); the floor is the median round. The distilled step takes its
   turn in each round too, on the same batch (a like-for-like ratio where train_net's batches
   vary in size);
4. **train** (a subprocess): the documented command, ``python tools/train_net.py --config-file CFG
   --num-gpus 1 ...``, with the per-GPU share of the 8-GPU batch, 2 iterations and the
   evaluation pass that ends training; start-up (build) time, the last iteration's
   ``step_time`` (``metrics.json``), the evaluation's time and the peak resident memory
   (``os.wait4``) are read from it.

A child that passes the memory limit is stopped and its row says so (the rest of the rehearsal
goes on); so does a child that fails. :func:`markdown` writes the table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from radkd_d2.configs_index import (
    REDUCED_DISTILL_OPTS,
    Row,
    all_rows,
    reduced_size_opts,
    select_rows,
    train_command,
)
from radkd_d2.engine.setup import keep_freed_memory, load_config
from radkd_d2.engine.trainer import Trainer
from radkd_d2.modeling.teacher import load_teacher_cfg

from .fabricate import cityscapes_label_ids, coco_layout, fake_ade20k, fake_cityscapes, fake_voc

RECIPE_GPUS = 8  # the configs' SOLVER.IMS_PER_BATCH is for the documented --num-gpus 8
GIB = 2**30


# ----------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """A config family of the index and how its default config is picked."""

    key: str
    title: str
    table: str  # a key of configs_index.TABLES
    dataset: str  # data set key (data layout to fabricate)
    pick: Callable[[Row], bool]


def _lad(row: Row) -> bool:
    return row.run.role == "distill" and row.run.method.key == "lad"


def _rcnn(mask: bool) -> Callable[[Row], bool]:
    return lambda r: (_lad(r) and r.run.model.mask_on == mask and r.run.schedule == "2x"
                      and "R_101" in r.run.teacher.key)  # fmt: skip


FAMILIES: Dict[str, Family] = {
    f.key: f
    for f in (
        Family("cityscapes", "Table 1, Cityscapes (PSPNet-R101 -> PSPNet-R18, LAD)", "1", "cityscapes",
               lambda r: _lad(r) and r.run.model.key == "pspnet_r18"),
        Family("voc", "Table 3, VOC aug (DeepLabV3-R101 -> DeepLabV3-R18, LAD)", "3", "voc", _lad),
        Family("ade20k", "Table 3, ADE20K (DeepLabV3-R101 -> DeepLabV3-R18, LAD)", "3", "ade20k", _lad),
        Family("retinanet", "Table 7, COCO (RetinaNet X101-64x4d -> R50, LAD)", "7", "coco", _lad),
        Family("faster_rcnn", "R-CNN matrix, COCO (Faster R-CNN R101 -> R50 2x, LAD)", "rcnn", "coco",
               _rcnn(False)),
        Family("mask_rcnn", "R-CNN matrix, COCO (Mask R-CNN R101 -> R50 2x, LAD)", "rcnn", "coco",
               _rcnn(True)),
    )
}  # fmt: skip


def default_row(family: str) -> Row:
    """The family's rehearsal config: the first row of its table that ``pick`` accepts."""
    fam = FAMILIES[family]
    rows = [r for r in select_rows(fam.table, fam.dataset) if fam.pick(r)]
    if not rows:
        raise LookupError(f"no config of {fam.title} in the index")
    return rows[0]


def family_of(row: Row) -> str:
    """The family of a distillation row: its data set for segmentation, the detector for COCO."""
    if row.dataset != "coco":
        return row.dataset
    if row.run.model.meta_arch == "RetinaNet":
        return "retinanet"
    return "mask_rcnn" if row.run.model.mask_on else "faster_rcnn"


def row_of_config(path: str) -> Row:
    """The index's distillation row of a config file (``configs/...yaml``), or ValueError."""
    rel = Path(path).as_posix()
    if "configs/" in rel:
        rel = "configs/" + rel.split("configs/", 1)[1]
    for row in all_rows():
        if row.run.path == rel:
            if row.run.role != "distill":
                raise ValueError(f"{path} is not a distillation config (a {row.run.role} of the index): "
                                 "the rehearsal needs a teacher and a student")
            return row
    raise ValueError(f"{path} is not a config of the index (python tools/list_configs.py lists them)")


# ----------------------------------------------------------------------------- data
FULL_SIZES = {"cityscapes": (1024, 2048), "voc": (375, 500), "ade20k": (512, 683)}
REDUCED_SIZES = {"cityscapes": (128, 256), "voc": (60, 80), "ade20k": (64, 96)}
COCO_IMAGES = {"train2017": 4, "val2017": 2}  # linked from tiny_coco


def prepare_data(dataset: str, root: Path, repo: Path, *, reduced: bool, tiny_coco: Path) -> str:
    """Fabricate ``dataset``'s raw layout under ``root`` (replacing an earlier one) and run its
    ``datasets/prepare_*.py``; COCO's layout is linked from ``tiny_coco``. Returns what was
    made, in words."""
    h, w = (REDUCED_SIZES if reduced else FULL_SIZES).get(dataset, (0, 0))
    folders = {"cityscapes": ["cityscapes"], "voc": ["VOCdevkit", "benchmark_RELEASE"],
               "ade20k": ["ADEChallengeData2016"], "coco": ["coco"]}[dataset]  # fmt: skip
    for name in folders:
        if (root / name).is_symlink():
            (root / name).unlink()
        elif (root / name).exists():
            shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)
    if dataset == "coco":
        if not (tiny_coco / "annotations").is_dir():
            raise FileNotFoundError(f"COCO's layout is made from tiny_coco, which is not at {tiny_coco} (--tiny-coco)")
        for split, n in COCO_IMAGES.items():  # training images of one size: batches of one shape
            coco_layout(root, tiny_coco, splits=(split,), max_images=n, one_size=split == "train2017")
        return (f"COCO 2017 layout linked from {tiny_coco}: "
                + ", ".join(f"{n} {s}" for s, n in COCO_IMAGES.items()) + " (training images of one size)")
    if dataset == "cityscapes":
        fake_cityscapes(root, cityscapes_label_ids(h, w), count=2)
        what = f"2 train + 2 val images of {h}x{w}"
    elif dataset == "voc":
        fake_voc(root, size=(h, w))
        what = f"3 train_aug + 1 val images of {h}x{w} (SBD .mat and VOC PNG labels)"
    elif dataset == "ade20k":
        fake_ade20k(root, size=(h, w), counts=(2, 1))
        what = f"2 training + 1 validation images of {h}x{w}"
    else:
        raise ValueError(f"no fabricated layout for data set {dataset!r}")
    script = repo / "datasets" / f"prepare_{dataset}.py"
    proc = subprocess.run([sys.executable, str(script), "--root", str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed on the fabricated layout:\n{proc.stderr[-2000:]}")
    return f"{what}, prepared by datasets/{script.name}"


# ----------------------------------------------------------------------------- configs
def _load(config: Path, opts: Sequence[str], validate: bool = False):
    return load_config(str(config), [str(x) for x in opts], validate=validate)


def per_gpu_batch(ims_per_batch: int) -> int:
    """The per-GPU share of the configs' 8-GPU batch (at least 1)."""
    return max(1, ims_per_batch // RECIPE_GPUS)


def reduced_opts(cfg, dataset: str) -> Tuple[List[str], List[str]]:
    """(student opts, teacher opts) of ``--reduced``: the index's CPU-test model size
    (:func:`reduced_size_opts`) and small inputs."""
    tcfg = load_teacher_cfg(cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, "cpu", ())
    student = reduced_size_opts(cfg) + list(REDUCED_DISTILL_OPTS)
    if dataset == "coco":
        student += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
                    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]  # fmt: skip
    else:
        student += ["INPUT.SEM_SEG.CROP_SIZE", "(64, 128)" if dataset == "cityscapes" else "(64, 64)"]
    return student, reduced_size_opts(tcfg)


def input_size(cfg) -> str:
    """The training input of a config, in words."""
    if cfg.MODEL.META_ARCHITECTURE == "DistillSemanticSegmentor":
        h, w = cfg.INPUT.SEM_SEG.CROP_SIZE
        return f"crop {h}x{w}"
    sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
    short = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    return f"short {short}, max {cfg.INPUT.MAX_SIZE_TRAIN}"


# ----------------------------------------------------------------------------- children
@dataclass
class Child:
    """A finished subprocess: exit code (-N: killed by signal N), seconds, peak RSS (GiB, from
    ``os.wait4``: the largest of it and the children it waited for), peak PSS of its process
    group (GiB, sampled), seconds since start at which each marker line first appeared,
    whether it was stopped at the memory limit or the time limit, and its log."""

    returncode: int
    seconds: float
    peak_rss_gib: float
    peak_pss_gib: float
    events: Dict[str, float]
    memory_stop: bool
    timed_out: bool
    log: Path

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "".join(text.splitlines(True)[-lines:])


def _group_pss_kib(pgid: int) -> int:
    """Proportional set size (kB) of the processes of group ``pgid`` (VmRSS where smaps_rollup
    cannot be read): shared pages of forked data-loader workers count once."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            try:
                text = Path(f"/proc/{entry}/smaps_rollup").read_text()
                key = "Pss:"
            except OSError:
                text, key = Path(f"/proc/{entry}/status").read_text(), "VmRSS:"
            for line in text.splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return total


def run_child(
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path,
    env: Optional[Dict[str, str]] = None,
    markers: Optional[Dict[str, str]] = None,
    memory_limit_gib: Optional[float] = None,
    timeout_s: Optional[float] = None,
) -> Child:
    """Run ``cmd`` in its own process group, its output to ``log``; stop the group when its
    memory (PSS) passes ``memory_limit_gib`` or it runs past ``timeout_s``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::FutureWarning")
    # the package of this checkout (``cwd``), not another install of radkd_d2 (an editable one
    # elsewhere would win over tools/train_net.py's own folder)
    full_env["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env.update(env or {})
    events: Dict[str, float] = {}
    state = {"pss": 0, "memory_stop": False, "timed_out": False}
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                pss = _group_pss_kib(proc.pid)
                state["pss"] = max(state["pss"], pss)
                over = memory_limit_gib is not None and pss * 1024 > memory_limit_gib * GIB
                late = timeout_s is not None and time.monotonic() - start > timeout_s
                if over or late:
                    state["memory_stop" if over else "timed_out"] = True
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            for line in proc.stdout:
                out.write(line)
                for key, text in (markers or {}).items():
                    if key not in events and text in line:
                        events[key] = time.monotonic() - start
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C on the tool: its own session does not get it, so stop it here
            done.set()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        seconds = time.monotonic() - start
        done.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    try:  # data-loader workers left behind by a killed run
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return Child(proc.returncode, seconds, usage.ru_maxrss * 1024 / GIB, state["pss"] * 1024 / GIB,
                 events, state["memory_stop"], state["timed_out"], log)  # fmt: skip


_OOM = ("can't allocate memory", "DefaultCPUAllocator", "MemoryError", "out of memory")


def failure(child: Child, what: str, limit: Optional[float]) -> str:
    """Why a child did not finish, in one line."""
    if child.memory_stop:
        return (f"does not fit: {what} passed the memory limit of {limit:g} GiB "
                f"(stopped at {child.peak_pss_gib:.1f} GiB)")  # fmt: skip
    if child.timed_out:
        return f"{what} ran past the time limit ({child.seconds:.0f} s)"
    tail = child.tail(60)
    if any(k in tail for k in _OOM) or child.returncode == -signal.SIGKILL:
        return (f"does not fit: {what} ran out of memory (exit {child.returncode}, peak RSS "
                f"{child.peak_rss_gib:.1f} GiB)")  # fmt: skip
    errors = [ln.strip() for ln in tail.splitlines() if re.search(r"(Error|error:|Exception)\b", ln)]
    return f"{what} failed (exit {child.returncode})" + (f": {errors[-1][:300]}" if errors else "")


# ----------------------------------------------------------------------------- one config
@dataclass
class Result:
    """One row of the rehearsal table (times in seconds, memory in GiB; None: not measured)."""

    family: str
    config: str
    status: str = "ok"
    batch: int = 0
    input: str = ""
    build_s: Optional[float] = None
    step_s: Optional[float] = None
    data_s: Optional[float] = None
    peak_rss_gib: Optional[float] = None
    eval_s: Optional[float] = None
    eval_images: Optional[int] = None
    floor_s: Optional[float] = None
    teacher_s: Optional[float] = None
    student_s: Optional[float] = None
    same_batch_step_s: Optional[float] = None
    floor_rounds: List[float] = field(default_factory=list)
    floor_batch: str = ""
    floor_peak_rss_gib: Optional[float] = None
    train_wall_s: Optional[float] = None
    floor_wall_s: Optional[float] = None
    command: str = ""
    data: str = ""

    @property
    def ratio(self) -> Optional[float]:
        if self.step_s is None or not self.floor_s:
            return None
        return self.step_s / self.floor_s

    @property
    def same_batch_ratio(self) -> Optional[float]:
        """The distilled step timed beside the floor, on its batch, over the floor."""
        if self.same_batch_step_s is None or not self.floor_s:
            return None
        return self.same_batch_step_s / self.floor_s

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "same_batch_ratio": self.same_batch_ratio}


TRAIN_MARKERS = {
    "train_start": "Starting training from iteration",
    "eval_start": "Start inference on",
    "eval_total": "Total inference time:",
    "eval_end": "Evaluation results for",
}


@dataclass
class Settings:
    """What every config of one rehearsal shares."""

    repo: Path
    out: Path
    reduced: bool = False
    iters: int = 2
    device: str = "cpu"
    ims_per_batch: Optional[int] = None  # None: the per-GPU share of the config's batch
    floor_rounds: int = 2
    memory_limit_gib: Optional[float] = None
    timeout_s: Optional[float] = None
    threads: Optional[int] = None
    keep_checkpoints: bool = False
    tiny_coco: Path = Path("../shared/data/tiny_coco")
    log: Callable[[str], None] = print

    @property
    def mode(self) -> str:
        return "reduced" if self.reduced else "full"

    @property
    def data_root(self) -> Path:
        return self.out / "data" / self.mode

    def env(self) -> Dict[str, str]:
        if not self.threads:
            return {}
        return {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}


def _rel(path: Path, repo: Path) -> str:
    try:
        return os.path.relpath(path, repo) if Path(path).resolve().is_relative_to(repo.resolve()) else str(path)
    except ValueError:
        return str(path)


def rehearse(row: Row, s: Settings, prepared: Dict[str, str]) -> Result:
    """Rehearse one distillation config (steps 1-4 of the module doc); never raises for a
    failure of a child or of the data: the result's status says what went wrong."""
    config = s.repo / row.run.path
    family = family_of(row)
    res = Result(family, row.run.path)
    name = Path(row.run.path).stem
    work = s.out / "runs" / s.mode / name
    try:
        if row.dataset not in prepared:
            s.log(f"[{name}] data: fabricating {row.dataset} under {s.data_root}")
            prepared[row.dataset] = prepare_data(row.dataset, s.data_root, s.repo, reduced=s.reduced,
                                                 tiny_coco=s.tiny_coco)  # fmt: skip
        res.data = prepared[row.dataset]
        cfg = _load(config, ["MODEL.DEVICE", s.device, "DATASETS.ROOT", str(s.data_root)])
        student_opts, teacher_opts = reduced_opts(cfg, row.dataset) if s.reduced else ([], [])
    except Exception as e:  # a broken layout or config: this row fails, the others go on
        res.status = f"failed before training: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return res
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    res.batch = s.ims_per_batch or per_gpu_batch(cfg.SOLVER.IMS_PER_BATCH)
    teacher_ckpt = work / "teacher_generated.pth"
    student_ckpt = work / "student_generated.pth" if "://" in cfg.MODEL.WEIGHTS else None
    opts = ["MODEL.DEVICE", s.device, "DATASETS.ROOT", str(s.data_root), "OUTPUT_DIR", str(work / "train"),
            "SOLVER.IMS_PER_BATCH", str(res.batch), "SOLVER.MAX_ITER", str(s.iters),
            "SOLVER.CHECKPOINT_PERIOD", str(s.iters), "TEST.EVAL_PERIOD", str(s.iters),
            "MODEL.DISTILL.TEACHER.WEIGHTS", str(teacher_ckpt)]  # fmt: skip
    if student_ckpt is not None:
        opts += ["MODEL.WEIGHTS", str(student_ckpt)]
    opts += student_opts
    if teacher_opts:
        opts += ["MODEL.DISTILL.TEACHER.OPTS", str(teacher_opts)]
    try:
        res.input = input_size(_load(config, ["MODEL.DEVICE", s.device, "DATASETS.ROOT", str(s.data_root), *student_opts]))
    except Exception:
        res.input = "?"

    # 2 + 3: generated weights, then the floor (one subprocess)
    spec = {"config": str(config), "opts": opts, "student_config": str(s.repo / row.run.base_run.path),
            "teacher_out": str(teacher_ckpt), "student_out": str(student_ckpt) if student_ckpt else "",
            "rounds": s.floor_rounds, "floor_dir": str(work / "floor")}  # fmt: skip
    (work / "floor_spec.json").write_text(json.dumps(spec, indent=1))
    s.log(f"[{name}] weights + floor ({s.floor_rounds} rounds after a warm-up round)")
    floor = run_child([sys.executable, "-m", "radkd_d2.analysis.rehearsal", "floor", str(work / "floor_spec.json"),
                       str(work / "floor.json")], work / "floor.log", cwd=s.repo, env=s.env(),
                      memory_limit_gib=s.memory_limit_gib, timeout_s=s.timeout_s)  # fmt: skip
    res.floor_wall_s, res.floor_peak_rss_gib = floor.seconds, floor.peak_rss_gib
    floor_status = ""
    if floor.returncode == 0 and (work / "floor.json").is_file():
        f = json.loads((work / "floor.json").read_text())
        res.floor_s, res.teacher_s, res.student_s = f["floor_s"], f["teacher_s"], f["student_s"]
        res.same_batch_step_s = f["distill_s"]
        res.floor_rounds, res.floor_batch = f["rounds"], f["batch"]
    else:
        floor_status = failure(floor, "the floor process (generated weights, teacher + plain student)",
                               s.memory_limit_gib)  # fmt: skip
    if not teacher_ckpt.is_file() or (student_ckpt is not None and not student_ckpt.is_file()):
        res.status = floor_status or "the generated weights are missing"
        return res

    # 4: the documented command
    readme = train_command(row.run, num_gpus=1).split()  # python tools/train_net.py --config-file ...
    cmd = [*readme[1:], *opts]
    res.command = " ".join(readme + [_quote(_rel(Path(o), s.repo) if os.sep in o else o) for o in opts])
    s.log(f"[{name}] train: {res.command}")
    train = run_child([sys.executable, *cmd], work / "train.log", cwd=s.repo, env=s.env(), markers=TRAIN_MARKERS,
                      memory_limit_gib=s.memory_limit_gib, timeout_s=s.timeout_s)  # fmt: skip
    res.train_wall_s, res.peak_rss_gib = train.seconds, train.peak_rss_gib
    ev = train.events
    if "train_start" in ev:
        res.build_s = ev["train_start"]
    if "eval_start" in ev:
        end = ev.get("eval_end", ev.get("eval_total"))
        res.eval_s = None if end is None else end - ev["eval_start"]
        m = re.search(r"Start inference on (\d+) batches", train.log.read_text(errors="replace"))
        res.eval_images = int(m.group(1)) if m else None
    metrics = _metrics(work / "train" / "metrics.json", s.iters - 1)
    if metrics:
        res.step_s, res.data_s = metrics.get("step_time"), metrics.get("data_time")
    if train.returncode != 0:
        res.status = failure(train, "train_net", s.memory_limit_gib)
    elif res.step_s is None or res.eval_s is None:
        res.status = "train_net finished without step_time in metrics.json or without an evaluation"
    elif floor_status:
        res.status = floor_status
    if not s.keep_checkpoints:
        for p in [teacher_ckpt, student_ckpt, *(work / "train").glob("*.pth")]:
            if p is not None and p.is_file():
                p.unlink()
    return res


def _quote(text: str) -> str:
    return f'"{text}"' if any(c in text for c in " ()[]',") else text


def _metrics(path: Path, iteration: int) -> dict:
    """The row of ``iteration`` of a metrics.json if it has ``step_time`` ({} otherwise: a run
    that failed in that iteration still evaluates and writes its earlier step)."""
    if not path.is_file():
        return {}
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return next((r for r in rows if "step_time" in r and r.get("iteration") == iteration), {})


# ----------------------------------------------------------------------------- floor process
def _save(state: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": state}, tmp)
    os.replace(tmp, path)


def calibrate_norms(model: torch.nn.Module, inputs: List[dict]) -> int:
    """Give every BatchNorm / FrozenBatchNorm of ``model`` the running mean and variance of its
    own input on ``inputs`` (one inference forward, each layer set before it runs), as a trained
    checkpoint has them. Random weights with the default statistics (mean 0, variance 1) do not
    normalise: activations grow with depth (a ResNet-50's FPN outputs reach 1e6) and the first
    SGD step of a distillation diverges. Returns the number of layers set."""
    def set_stats(module, args):
        x = args[0].float()
        dims = [0, *range(2, x.dim())]
        module.running_mean.copy_(x.mean(dims))
        module.running_var.copy_(x.var(dims, unbiased=False).clamp_min(1e-5))

    norms = [m for m in model.modules() if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(set_stats) for m in norms]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return len(norms)


def generate_weights(cfg, path: Path, inputs: List[dict]) -> None:
    """A generated checkpoint of the model of ``cfg``: random weights (seed 0), norm layers
    calibrated on ``inputs`` (:func:`calibrate_norms`), written atomically to ``path``."""
    torch.manual_seed(0)
    model = build_model(cfg)
    n = calibrate_norms(model, inputs)
    _save(model.state_dict(), path)
    print(f"generated {path.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{n} norm layers calibrated", flush=True)


def measure_floor(spec: dict) -> dict:
    """The floor subprocess: generate the weights, then time the teacher's forward, the plain
    student's step and the distilled step on one batch of the training loader, taking turns for
    ``rounds`` rounds after a warm-up round (see the module doc); medians in seconds."""
    opts = list(spec["opts"]) + ["OUTPUT_DIR", spec["floor_dir"]]
    cfg = _load(Path(spec["config"]), opts, validate=True)
    dcfg = cfg.MODEL.DISTILL
    lcfg = cfg.clone()
    lcfg.defrost()
    lcfg.DATALOADER.NUM_WORKERS = 0
    batch = next(iter(Trainer.build_train_loader(object.__new__(Trainer), lcfg)))
    sizes = sorted({tuple(x["image"].shape[-2:]) for x in batch})
    # generated weights: the teacher's full model, and the student's where MODEL.WEIGHTS was a
    # URL; norm statistics from the first image of the batch
    calib = [{"image": x["image"], "height": x["image"].shape[-2], "width": x["image"].shape[-1]} for x in batch[:1]]
    generate_weights(load_teacher_cfg(dcfg.TEACHER.CONFIG_FILE, "cpu", dcfg.TEACHER.OPTS), Path(spec["teacher_out"]), calib)
    scfg = _load(Path(spec["student_config"]), opts)
    if spec["student_out"]:
        scfg.MODEL.WEIGHTS = ""
        generate_weights(scfg, Path(spec["student_out"]), calib)
        scfg.MODEL.WEIGHTS = spec["student_out"]
    gc.collect()

    t0 = time.perf_counter()
    distill = build_model(cfg)  # the teacher from its config, loaded strictly from the file above
    build_s = time.perf_counter() - t0
    student = build_model(scfg)
    if scfg.MODEL.WEIGHTS:
        DetectionCheckpointer(student).load(scfg.MODEL.WEIGHTS)
    scfg.SOLVER.MAX_ITER = spec["rounds"] + 2  # a scheduler step per round
    dcfg_steps = cfg.clone()
    dcfg_steps.defrost()
    dcfg_steps.SOLVER.MAX_ITER = spec["rounds"] + 2
    distill.train()
    student.train()
    if cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.CPU_KEEP_FREED_MEMORY:
        keep_freed_memory()  # as train_net does once the run is built: no page faults every step

    def sgd_step(model, c):
        """One training step of ``model`` with the run's optimizer and learning rate schedule."""
        optimizer = Trainer.build_optimizer(c, model)
        scheduler = Trainer.build_lr_scheduler(c, optimizer)

        def step(it: int):
            with EventStorage(it):  # round 0 (warm-up) also runs the distillation's diagnostics
                losses = model(batch)
                total = sum(losses.values())
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                scheduler.step()

        return step

    def teacher_step(it: int):
        with torch.no_grad():
            distill.teacher_features(batch)

    steps = {"teacher": teacher_step, "student": sgd_step(student, scfg), "distill": sgd_step(distill, dcfg_steps)}
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for it in range(1 + spec["rounds"]):  # round 0: warm-up; the steps take turns in each round
        took = {}
        for key, fn in steps.items():
            t = time.perf_counter()
            fn(it)
            took[key] = time.perf_counter() - t
        print(f"round {it}: " + ", ".join(f"{k} {v:.3f} s" for k, v in took.items()), flush=True)
        if it > 0:
            for key, v in took.items():
                times[key].append(v)
    rounds = [a + b for a, b in zip(times["teacher"], times["student"])]
    return {
        "floor_s": statistics.median(rounds),
        "teacher_s": statistics.median(times["teacher"]),
        "student_s": statistics.median(times["student"]),
        "distill_s": statistics.median(times["distill"]),
        "rounds": rounds,
        "build_s": build_s,
        "batch": f"{len(batch)} x " + ", ".join(f"{h}x{w}" for h, w in sizes),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- the table
def _num(v: Optional[float], fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def machine() -> str:
    """CPU model, cores, memory, torch threads of a child (OMP_NUM_THREADS or all cores)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:"))  # fmt: skip
        mem_text = f", {mem / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem_text = ""
    return f"{cpu}, {os.cpu_count()} cores{mem_text}"


def markdown(results: Sequence[Result], s: Settings, started: str, wall_s: float) -> str:
    """The rehearsal table (one row per config) with what each column measures."""
    mode = ("reduced size (CPU-test models and inputs: not the configs' real size)" if s.reduced
            else "full size (the configs' models and inputs)")  # fmt: skip
    threads = s.threads or os.environ.get("OMP_NUM_THREADS") or f"all {os.cpu_count()} cores"
    lines = [
        f"## Rehearsal: {mode}, {s.device.upper()}",
        "",
        f"{started}; {machine()}; torch threads per process: {threads}; {s.iters} training "
        f"iterations and one evaluation pass per config; {wall_s / 60:.1f} min in all.",
        "",
        "| Family | Config | Batch / process | Input | Build (s) | Step (s) | Peak RSS (GiB) "
        "| Eval (s) | Floor (s) | Step ÷ floor | Same batch ÷ floor | Status |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ev = _num(r.eval_s) + (f" ({r.eval_images} img)" if r.eval_images else "")
        lines.append(
            f"| {r.family} | `{Path(r.config).name}` | {r.batch or '–'} | {r.input or '–'} | {_num(r.build_s)} "
            f"| {_num(r.step_s, '{:.2f}')} | {_num(r.peak_rss_gib)} | {ev} | {_num(r.floor_s, '{:.2f}')} "
            f"| {_num(r.ratio, '{:.2f}')} | {_num(r.same_batch_ratio, '{:.2f}')} | {r.status} |"
        )
    lines += [
        "",
        f"- **Batch / process**: one process (`--num-gpus 1`) with the per-GPU share of the config's "
        f"8-GPU batch, SOLVER.IMS_PER_BATCH / {RECIPE_GPUS} (at least 1)"
        + (f"; here set to {s.ims_per_batch} by --ims-per-batch" if s.ims_per_batch else "") + ".",
        "- **Build**: from starting train_net to its first iteration (imports, student and teacher built, "
        "the teacher's generated checkpoint read by the strict loader, data loaders).",
        "- **Step**: the last training iteration (`step_time` in metrics.json: data, forward, backward, "
        "SGD); the first iteration also computes the loss-balance diagnostics and warms up.",
        "- **Peak RSS**: the train_net process's maximum resident memory (`os.wait4`; the largest of "
        "it and its data-loader workers).",
        "- **Eval**: the evaluation pass that ends training, from `Start inference` to its results, on "
        "the fabricated val images (a randomly initialised model: the scores mean nothing).",
        "- **Floor**: in a separate process, on one batch of the same training loader, the teacher's "
        "no-grad forward (what the distillation needs of it) plus one step of the plain student "
        "(its own config, no distillation), with train_net's allocator setting; the median of "
        f"{s.floor_rounds} rounds after a warm-up round. **Step ÷ floor**: train_net's step over it. "
        "**Same batch ÷ floor**: the distilled step timed in the floor's rounds (the steps take "
        "turns), on the floor's batch, over it. The R-CNN configs train at a random short side "
        "(Detectron2's multi-scale recipe), so train_net's step and the floor can see batches of "
        "different sizes; the same-batch ratio compares like with like. Each time is a measurement "
        "on a machine that may be shared: a ratio a little under 1 is noise.",
        "- Teachers load a generated full-size checkpoint through the strict loader (random weights, "
        "each norm layer's running statistics set from a training image so that activations keep a "
        "trained network's scale); a student whose MODEL.WEIGHTS is a detectron2:// URL gets a "
        "generated checkpoint of itself.",
        "",
        "Per config (data, floor batch and rounds, the command run from the repository root):",
        "",
    ]
    for r in results:
        rounds = ", ".join(f"{x:.2f}" for x in r.floor_rounds)
        lines += [
            f"- `{r.config}` ({FAMILIES[r.family].title if r.family in FAMILIES else r.family}): {r.data or '–'}. "
            + (f"Floor batch {r.floor_batch}: teacher {_num(r.teacher_s, '{:.2f}')} s + student step "
               f"{_num(r.student_s, '{:.2f}')} s (rounds {rounds} s); distilled step on it "
               f"{_num(r.same_batch_step_s, '{:.2f}')} s. " if r.floor_s else "")
            + (f"train_net {r.train_wall_s:.0f} s wall" if r.train_wall_s else "")
            + (f", floor process {r.floor_wall_s:.0f} s wall" if r.floor_wall_s else "") + ".",
        ]
        if r.command:
            lines += ["", f"  `{r.command}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def _floor_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="internal: the rehearsal's floor process")
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    result = measure_floor(json.loads(args.spec.read_text()))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["floor"]:
        sys.exit("usage: python -m radkd_d2.analysis.rehearsal floor SPEC OUT (internal; see tools/rehearsal.py)")
    sys.exit(_floor_main(sys.argv[2:]))
