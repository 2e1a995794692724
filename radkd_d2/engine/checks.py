"""Start-up checks: bad config values and missing data fail before anything is written."""
from __future__ import annotations

from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY


from radkd_d2.configs_index import PRETRAINED, pixel_order
from radkd_d2.errors import ConfigError  # noqa: F401  (re-exported)
from radkd_d2.losses import distill_loss_options
from radkd_d2.modeling.class_map import CLASS_MAP_MODES
from radkd_d2.modeling.connectors import connector_choices
from radkd_d2.modeling.heads.deeplab import ASPP_VARIANTS
from radkd_d2.modeling.distill import SPATIAL_ALIGN_CHOICES
from radkd_d2.modeling.teacher import load_teacher_cfg, teacher_specs




def check_choice(cfg, key: str, allowed) -> None:
    """Fail unless ``cfg.<key>`` is one of ``allowed``."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {list(allowed)}")


def check_range(cfg, key: str, *, low=None, high=None, low_inclusive=True) -> None:
    """Fail unless ``low <= cfg.<key> <= high`` (``low < ...`` when not ``low_inclusive``)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ConfigError(f"{key} = {value!r} is out of range; it must be {' and '.join(x for x in (lo, hi) if x)}")


def check_datasets(cfg) -> None:
    """Every data set in DATASETS.TRAIN/TEST is registered, its folders exist, and a
    semantic-segmentation set agrees with the model on ignore label and class count."""
    registered = set(DatasetCatalog.list())
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in getattr(cfg.DATASETS, key.split(".")[1]):
            if name not in registered:
                raise ConfigError(
                    f"{key} names unknown data set {name!r}; registered: {sorted(registered)}"
                )
            meta = MetadataCatalog.get(name)
            _check_task(cfg, key, name, meta)
            for path in getattr(meta, "required_paths", ()):
                p = Path(path)
                if not p.exists() or (p.is_dir() and not any(p.iterdir())):
                    hint = getattr(meta, "prepare_hint", "see datasets/README.md")
                    raise FileNotFoundError(
                        f"data set {name!r}: {p} is missing or empty. {hint}"
                    )
            if getattr(meta, "evaluator_type", None) == "sem_seg":
                _check_sem_seg_meta(cfg, name, meta)


# the kind of data set each kind of model trains on and is scored with
_SEG_MODELS = ("SemanticSegmentor", "DistillSemanticSegmentor")


def _check_task(cfg, key, name, meta) -> None:
    """A segmentation model on a detection set, or a detector on a segmentation set, is refused
    before its class-count advice could send the user down the wrong road."""
    kind = getattr(meta, "evaluator_type", None)
    arch = cfg.MODEL.META_ARCHITECTURE
    student = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE if arch.startswith("Distill") else arch
    seg_model = arch in _SEG_MODELS or student == "SemanticSegmentor"
    if arch == "Distill" and student not in ("SemanticSegmentor", "RetinaNet", "GeneralizedRCNN"):
        return  # another meta-architecture (panoptic, a user's own): its data set is its business
    if kind == "sem_seg" and not seg_model:
        raise ConfigError(
            f"{key} names {name!r}, a semantic-segmentation set, but MODEL.META_ARCHITECTURE = {arch!r} "
            "is a detector: name a COCO-format detection set (e.g. coco_2017_val, tiny_coco_val2017)"
        )
    if kind == "coco" and seg_model:
        raise ConfigError(
            f"{key} names {name!r}, an object-detection set, but MODEL.META_ARCHITECTURE = {arch!r} "
            "is a semantic segmentor: name a segmentation set (e.g. camvid_val, cityscapes_fine_sem_seg_val)"
        )


def _check_sem_seg_meta(cfg, name, meta) -> None:
    head = cfg.MODEL.SEM_SEG_HEAD
    if hasattr(meta, "ignore_label") and meta.ignore_label != head.IGNORE_VALUE:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE = {head.IGNORE_VALUE} but data set {name!r} uses "
            f"ignore label {meta.ignore_label}; set the key to {meta.ignore_label}"
        )
    if hasattr(meta, "stuff_classes") and len(meta.stuff_classes) != head.NUM_CLASSES:
        raise ConfigError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES = {head.NUM_CLASSES} but data set {name!r} has "
            f"{len(meta.stuff_classes)} classes; set the key to {len(meta.stuff_classes)}"
        )


def check_output_dir(cfg) -> None:
    """OUTPUT_DIR can be created and written (probed with a temporary file, then removed)."""
    path = Path(cfg.OUTPUT_DIR)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR!r} is not writable: {existing} is a file")
    import os
    import tempfile

    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR!r} is not writable: no write permission on {existing}")
    if existing is not None:
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:
            raise ConfigError(f"OUTPUT_DIR = {cfg.OUTPUT_DIR!r} is not writable: {e}") from None


def check_holistic(cfg) -> None:
    """MODEL.DISTILL.HOLISTIC (SKD's holistic term): ranges the declared choices do not cover,
    and a segmentation distillation model when the term is on."""
    key = "MODEL.DISTILL.HOLISTIC"
    for name in ("WEIGHT", "GP_WEIGHT", "WEIGHT_DECAY", "POLY_POWER"):
        check_range(cfg, f"{key}.{name}", low=0)
    check_range(cfg, f"{key}.MOMENTUM", low=0, high=1)
    betas = tuple(cfg.MODEL.DISTILL.HOLISTIC.BETAS)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"{key}.BETAS = {betas} must be two numbers in [0, 1), e.g. (0.9, 0.99)")
    arch = cfg.MODEL.META_ARCHITECTURE
    seg = arch == "DistillSemanticSegmentor" or (
        arch == "Distill" and cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE == "SemanticSegmentor"
    )
    if cfg.MODEL.DISTILL.HOLISTIC.WEIGHT > 0 and not seg:
        raise ConfigError(
            f"{key}.WEIGHT = {cfg.MODEL.DISTILL.HOLISTIC.WEIGHT} needs segmentation logits: "
            f"MODEL.META_ARCHITECTURE must be 'DistillSemanticSegmentor', not "
            f"{arch!r}; or set {key}.WEIGHT to 0"
        )


def check_pixel_convention(cfg, what: str = "") -> None:
    """MODEL.PIXEL_MEAN/STD, when they are ImageNet's statistics, are in INPUT.FORMAT's channel
    order, and a known ImageNet checkpoint in MODEL.WEIGHTS gets the inputs it was trained on
    (:data:`radkd_d2.configs_index.PRETRAINED`). ``what`` names the config (the teacher's)."""
    fmt = cfg.INPUT.FORMAT
    where = f" of {what}" if what else ""
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        values = [float(v) for v in getattr(cfg.MODEL, key)]
        order = pixel_order(values)
        if order in ("RGB", "BGR") and order != fmt:
            raise ConfigError(
                f"MODEL.{key}{where} = {values} is ImageNet's in {order} order but INPUT.FORMAT is "
                f"{fmt!r}; reverse it to {values[::-1]} or set INPUT.FORMAT to {order!r}"
            )
    known = PRETRAINED.get(cfg.MODEL.WEIGHTS)
    if known is not None and known.input_format != fmt:
        raise ConfigError(
            f"MODEL.WEIGHTS{where} = {cfg.MODEL.WEIGHTS!r} expects {known.input_format} inputs "
            f"(mean {list(known.pixel_mean)}, std {list(known.pixel_std)}) but INPUT.FORMAT is {fmt!r}"
        )


# each distillation meta-architecture and the stock model its student is (the exported one)
DISTILL_STUDENTS = {
    "DistillSemanticSegmentor": "SemanticSegmentor",
    "DistillRetinaNet": "RetinaNet",
    "DistillGeneralizedRCNN": "GeneralizedRCNN",
}


def validate_config(cfg) -> None:
    """All start-up checks of a training/evaluation config (run before the output dir is made)."""
    check_choice(
        cfg,
        "SOLVER.LR_SCHEDULER_NAME",
        ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR"),
    )
    check_choice(cfg, "MODEL.DRN.DEPTH", (18, 34, 50, 101))
    check_choice(cfg, "MODEL.DRN.OUTPUT_STRIDE", (8, 16, 32))
    check_choice(cfg, "MODEL.MOBILENETV2.PAD_TYPE", ("", "same"))
    check_choice(cfg, "MODEL.EDGETPU.PAD_TYPE", ("", "same"))
    check_choice(cfg, "MODEL.EDGETPU.WIDTH_MULT", (0.75, 1.0))
    check_choice(cfg, "MODEL.EDGETPU.OUTPUT_STRIDE", (8, 16, 32))
    check_choice(cfg, "MODEL.SEM_SEG_HEAD.ASPP_VARIANT", ASPP_VARIANTS)
    check_choice(cfg, "MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE", CLASS_MAP_MODES)
    check_range(cfg, "MODEL.DRN.WIDTH_MULT", low=0, low_inclusive=False)
    check_range(cfg, "SOLVER.MAX_ITER", low=1)
    check_range(cfg, "SOLVER.BASE_LR", low=0, low_inclusive=False)
    check_range(cfg, "SOLVER.MOMENTUM", low=0, high=1)
    check_range(cfg, "SOLVER.WEIGHT_DECAY", low=0)
    check_range(cfg, "SOLVER.WARMUP_ITERS", low=0)
    check_range(cfg, "SOLVER.WARMUP_FACTOR", low=0, high=1, low_inclusive=False)
    check_range(cfg, "SOLVER.GAMMA", low=0, low_inclusive=False)
    check_range(cfg, "SOLVER.POLY_LR_POWER", low=0, low_inclusive=False)
    check_range(cfg, "SOLVER.CHECKPOINT_PERIOD", low=1)
    check_range(cfg, "TEST.EVAL_PERIOD", low=0)
    check_range(cfg, "SOLVER.IMS_PER_BATCH", low=1)
    check_range(cfg, "DATALOADER.NUM_WORKERS", low=0)
    crop = cfg.INPUT.SEM_SEG.CROP_SIZE
    if len(crop) != 2 or min(crop) < 1:
        raise ConfigError(f"INPUT.SEM_SEG.CROP_SIZE = {tuple(crop)} must be two positive sizes (h, w)")
    lo, hi = cfg.INPUT.SEM_SEG.SCALE_RANGE
    if not 0 < lo <= hi:
        raise ConfigError(f"INPUT.SEM_SEG.SCALE_RANGE = {(lo, hi)} must satisfy 0 < min <= max")
    check_choice(cfg, "MODEL.DISTILL.CONNECTOR", connector_choices())
    check_choice(cfg, "MODEL.DISTILL.TEACHER.DTYPE", ("float32", "float16", "bfloat16"))
    check_choice(cfg, "SOLVER.AMP.PRECISION", ("float16", "bfloat16"))
    if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "float16" and cfg.MODEL.DEVICE == "cpu":
        raise ConfigError(
            "SOLVER.AMP.PRECISION = 'float16' with SOLVER.AMP.ENABLED on MODEL.DEVICE 'cpu': CPU "
            "training has no loss scaling, so small float16 gradients would vanish; set "
            "SOLVER.AMP.PRECISION 'bfloat16' (float32's range, no scaler needed) or turn AMP off"
        )
    check_range(cfg, "MODEL.DISTILL.KD_WEIGHT", low=0)
    for key, option in distill_loss_options():  # declared with each loss
        if option.choices:
            check_choice(cfg, key, option.choices)
        if option.positive:
            check_range(cfg, key, low=0, low_inclusive=False)
    check_range(cfg, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", low=0)
    check_range(cfg, "MODEL.DISTILL.GRAD_RATIO_WARN", low=0, low_inclusive=False)
    check_range(cfg, "MODEL.DISTILL.GRAD_RATIO_PATIENCE", low=1)
    check_range(cfg, "MODEL.DISTILL.WARMUP_ITERS", low=0)
    check_range(cfg, "MODEL.DISTILL.STOP_ITER", low=-1)
    check_range(cfg, "MODEL.DISTILL.TEACHER.MIN_SCORE", low=0)
    check_holistic(cfg)
    check_range(cfg, "MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM", low=0)
    check_range(cfg, "MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT", low=0)
    check_pixel_convention(cfg)
    check_choice(cfg, "MODEL.DISTILL.SPATIAL_ALIGN", SPATIAL_ALIGN_CHOICES)
    student_meta = DISTILL_STUDENTS.get(cfg.MODEL.META_ARCHITECTURE)
    if student_meta is not None:
        check_choice(cfg, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", (student_meta,))
    if cfg.MODEL.META_ARCHITECTURE == "Distill":
        students = sorted(k for k, _ in META_ARCH_REGISTRY if not k.startswith("Distill"))
        check_choice(cfg, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", tuple(students))
    if cfg.MODEL.META_ARCHITECTURE.startswith("Distill"):
        dcfg = cfg.MODEL.DISTILL
        if dcfg.TEACHERS and (dcfg.TEACHER.EVAL_BEFORE_TRAIN or dcfg.TEACHER.MIN_SCORE > 0):
            raise ConfigError(
                "MODEL.DISTILL.TEACHER.EVAL_BEFORE_TRAIN / MIN_SCORE score the one teacher of "
                "MODEL.DISTILL.TEACHER; with MODEL.DISTILL.TEACHERS score each teacher with its own "
                "config (train_net.py --eval-only) and leave them False / 0"
            )
        for spec in teacher_specs(cfg):  # every entry's keys, names and ranges
            if Path(spec.config_file).is_file():
                teacher = load_teacher_cfg(spec.config_file, "cpu", spec.opts)
                check_pixel_convention(teacher, f"the teacher ({spec.config_file})")
    check_choice(cfg, "TEST.BEST_CHECKPOINT_MODE", ("max", "min"))
    if cfg.TEST.BEST_CHECKPOINT_METRIC and cfg.TEST.EVAL_PERIOD <= 0:
        raise ConfigError(
            f"TEST.BEST_CHECKPOINT_METRIC = {cfg.TEST.BEST_CHECKPOINT_METRIC!r} needs periodic "
            f"evaluation, but TEST.EVAL_PERIOD = {cfg.TEST.EVAL_PERIOD}; set it > 0 or the metric to \"\""
        )
    check_datasets(cfg)
    check_output_dir(cfg)
