"""All config keys radkd-d2 adds to Detectron2's defaults, each declared once with a comment.

The distillation losses' keys are declared with each loss, in its own file
(``radkd_d2/losses/<loss>.py``, a ``LossConfig``); :func:`add_distill_loss_config` adds them.
"""
from detectron2.config import CfgNode as CN

from radkd_d2.losses import add_distill_loss_config


def cfg_get(cfg: dict, key: str, default=None):
    """``cfg_get(cfg, "MODEL.DISTILL.TAPS")`` on a config dict (a run's saved config.yaml, or a
    CfgNode); ``default`` when a part of the key is absent."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def add_radkd_config(cfg: CN) -> None:
    """Add radkd-d2's keys to a Detectron2 config (call before ``merge_from_file``)."""
    _add_model_config(cfg)
    _add_distill_config(cfg)
    _add_data_config(cfg)
    _add_solver_config(cfg)
    add_distill_loss_config(cfg)
    _add_backbone_config(cfg)


def _add_model_config(cfg: CN) -> None:
    cfg.MODEL.WEIGHTS_PARTIAL = False  # True: MODEL.WEIGHTS may fill only part of the model (every missing/unexpected key still listed); False: it must fill its scope
    cfg.MODEL.CPU_KEEP_FREED_MEMORY = True  # CPU training (train_net): glibc keeps freed memory (no page faults each step); False: its defaults
    # Deep-stem dilated ResNet (PSPNet/CIRKD style) used as segmentation backbone.
    cfg.MODEL.DRN = CN()
    cfg.MODEL.DRN.DEPTH = 18  # 18, 34, 50 or 101
    cfg.MODEL.DRN.WIDTH_MULT = 1.0  # multiplies every channel width; < 1 gives CPU-sized models
    cfg.MODEL.DRN.OUTPUT_STRIDE = 8  # 8 (res4 dil 2, res5 dil 4), 16 (res5 dil 2) or 32
    cfg.MODEL.DRN.NORM = "BN"  # normalisation: "BN", "SyncBN", "FrozenBN", "GN"
    cfg.MODEL.DRN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # stages returned by forward()
    cfg.MODEL.DRN.FREEZE_AT = 0  # 0 trains all; 1 freezes the stem; k freezes stem..res(k)
    cfg.MODEL.DRN.STEM_OUT_CHANNELS = 128  # deep-stem width: 128 (PSPNet/CIRKD), 64 (mmseg V1c)

    # Extra keys of the PSP / DeepLabV3 segmentation heads (others: MODEL.SEM_SEG_HEAD.*).
    cfg.MODEL.SEM_SEG_HEAD.PSP_BINS = [1, 2, 3, 6]  # pyramid pooling output sizes (PSPNet)
    cfg.MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS = False  # align_corners of the pooled maps' upsampling; True for CIRKD/PSPNet weights
    cfg.MODEL.SEM_SEG_HEAD.ASPP_DILATIONS = [12, 24, 36]  # atrous rates of ASPP (DeepLabV3)
    cfg.MODEL.SEM_SEG_HEAD.ASPP_VARIANT = "full"  # DeepLabV3Head: "full" (ASPP + 3x3 bottleneck) or "lite" (1x1 + pooling branches, TF mobile DeepLab)
    # A source model's classes through a class map (radkd_d2/modeling/class_map.py): target
    # class i is made of the source classes CLASS_MAP[i] (several may map to one).
    cfg.MODEL.SEM_SEG_HEAD.CLASS_MAP = []  # per target class, the list of source class ids; [] off
    cfg.MODEL.SEM_SEG_HEAD.CLASS_MAP_SOURCE_CLASSES = 0  # class count of MODEL.WEIGHTS' classifier when CLASS_MAP is set
    cfg.MODEL.SEM_SEG_HEAD.CLASS_MAP_MODE = "init"  # "init": merge source rows into the classifier at load; "zero_shot": keep the source classifier, map its probabilities
    cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.1  # dropout before the classifier
    cfg.MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE = "res4"  # input of the auxiliary FCN head
    cfg.MODEL.SEM_SEG_HEAD.AUX_LOSS_WEIGHT = 0.0  # weight of the auxiliary CE loss; 0 disables it
    cfg.MODEL.SEM_SEG_HEAD.AUX_CONVS_DIM = 0  # width of the auxiliary head's 3x3 conv, >= 0; 0: its input's channels // 4 (CIRKD, mmseg)
    cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS = False  # align_corners of the logits' upsampling (CE losses, inference); True as SKD/IFVD/CIRKD


    # FCOS (Detectron2's class, built from these keys by radkd_d2/modeling/meta_arch/fcos.py).
    cfg.MODEL.FCOS = CN()
    cfg.MODEL.FCOS.NUM_CLASSES = 80  # object classes
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # FPN levels the head reads
    cfg.MODEL.FCOS.NUM_CONVS = 4  # convs of each head branch
    cfg.MODEL.FCOS.NORM = "GN"  # head normalisation: "GN", "BN", "" (none)
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5  # positives within this many strides of a box centre
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25  # focal loss alpha
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0  # focal loss gamma
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2  # inference score threshold
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000  # candidates per level before NMS
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6  # NMS IoU threshold


def _add_distill_config(cfg: CN) -> None:
    cfg.MODEL.DISTILL = CN()
    # The student's registered META_ARCHITECTURE, built from this config unchanged: any one with
    # MODEL.META_ARCHITECTURE "Distill"; the family wrappers fix it (DistillSemanticSegmentor:
    # "SemanticSegmentor", DistillRetinaNet: "RetinaNet", DistillGeneralizedRCNN: "GeneralizedRCNN").
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.DISTILL.TEACHER = CN()
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = ""  # teacher's own config file (model, pixel mean/std)
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = ""  # teacher checkpoint; loaded strictly
    cfg.MODEL.DISTILL.TEACHER.OPTS = []  # KEY VALUE overrides applied to the teacher's config
    cfg.MODEL.DISTILL.TEACHER.STRICT = True  # False loads partially but still logs every key
    cfg.MODEL.DISTILL.TEACHER.DTYPE = "float32"  # teacher compute dtype on GPU: float32/float16/bfloat16
    cfg.MODEL.DISTILL.TEACHER.EVAL_BEFORE_TRAIN = False  # score the teacher on DATASETS.TEST first
    cfg.MODEL.DISTILL.TEACHER.MIN_SCORE = 0.0  # refuse to train when the teacher's mIoU/AP is below
    cfg.MODEL.DISTILL.TEACHER.INPUT_SCALE = 1.0  # the teacher sees the batch resized by this factor (1.0: as the student)
    # Several teachers: a list of mappings with keys NAME, CONFIG_FILE, WEIGHTS, OPTS, STRICT, DTYPE,
    # INPUT_SCALE, TAPS (each teacher's own) and KD_MIX (its weight in the KD target). [] uses TEACHER.
    cfg.MODEL.DISTILL.TEACHERS = []
    # Feature taps: [student position, teacher position, loss name, weight] per entry. A position
    # is a module path ("backbone.bottom_up.res5", "backbone:p3" for a dict output's key, "@k" for a
    # module's k-th call) or an alias: backbone outputs (res2..res5, p3..p7), "decoder", "logits".
    # Entries sharing a position pair share one connector. Default: the paper's LAD on the last
    # backbone stage, lambda_ad 10.
    cfg.MODEL.DISTILL.TAPS = [["res5", "res5", "lad", 10.0]]
    cfg.MODEL.DISTILL.CONNECTOR = "conv_bn_relu"  # student->teacher adapter: conv_bn_relu/conv/none
    cfg.MODEL.DISTILL.ALWAYS_CONNECT = False  # add a connector even when channels already match
    cfg.MODEL.DISTILL.SPATIAL_ALIGN = "bilinear"  # student map to the teacher's size: bilinear/area (resize) or strided_conv (learned, integer ratio)
    cfg.MODEL.DISTILL.SHARED_PADDING = False  # segmentation pairs whose backbones pad differently: True pads both to the lcm; False refuses them
    # Pixel-wise logit KD (Hinton) term, lambda_kd in the paper's Eq. 9.
    cfg.MODEL.DISTILL.KD_WEIGHT = 10.0  # lambda_kd; 0 disables the logit KD term
    # KD_TEMPERATURE and KD_REDUCTION: declared with the loss (radkd_d2/losses/logits.py).
    # Iterations between diagnostics: m, n, mn/N, cos(theta) per tap and the per-term gradient
    # norms w.r.t. the student features (grad_norm/*, grad_ratio/*); 0 disables them.
    cfg.MODEL.DISTILL.DIAGNOSTICS_PERIOD = 20
    cfg.MODEL.DISTILL.GRAD_RATIO_WARN = 10.0  # warn when a term's gradient exceeds the task's by this
    cfg.MODEL.DISTILL.GRAD_RATIO_PATIENCE = 3  # ... for this many consecutive diagnostics periods
    # Distillation-weight schedule: every distillation weight is multiplied by a factor in [0, 1].
    cfg.MODEL.DISTILL.WARMUP_ITERS = 0  # factor rises linearly from 0 to 1 over these iterations
    cfg.MODEL.DISTILL.STOP_ITER = -1  # from this iteration on, no distillation (and no teacher); -1 never
    # Copy teacher parameters with identical names and shapes into the student (MGD/FGD recipe).
    cfg.MODEL.DISTILL.INIT_STUDENT_FROM_TEACHER = []  # name prefixes to copy, e.g. ["head."]


def _add_data_config(cfg: CN) -> None:
    cfg.INPUT.SEM_SEG = CN()
    cfg.INPUT.SEM_SEG.SCALE_RANGE = (0.5, 2.0)  # random resize factor range of the train mapper
    cfg.INPUT.SEM_SEG.CROP_SIZE = (512, 512)  # (h, w) train crop; images padded when smaller
    cfg.INPUT.SEM_SEG.BASE_SIZE = 0  # long side before random scaling; 0 keeps the image size
    cfg.INPUT.SEM_SEG.FLIP = True  # random horizontal flip in training
    cfg.DATASETS.ROOT = ""  # dataset root; "" uses $DETECTRON2_DATASETS or ./datasets
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 256  # synthetic-scene training images
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 64  # synthetic-scene validation images
    cfg.DATASETS.SYNTHETIC.NUM_TEST = 0  # held-out test images (synthetic_*_test); 0: no test split
    cfg.DATASETS.SYNTHETIC.TEST_STREAM = 0  # random stream of the test split; a new value: fresh scenes
    cfg.DATASETS.SYNTHETIC.SIZE = 96  # side of the square synthetic images
    cfg.DATASETS.SYNTHETIC.SEED = 0  # generator seed; same seed gives identical files
    cfg.DATASETS.SYNTHETIC.PARTIAL_IGNORE = []  # class ids synthetic_sem_seg_train_partial marks ignored (registered when set)


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.AMP.PRECISION = "float16"  # autocast dtype with SOLVER.AMP.ENABLED: float16/bfloat16
    cfg.SOLVER.POLY_LR_POWER = 0.9  # power of WarmupPolyLR (LR_SCHEDULER_NAME: WarmupPolyLR)
    cfg.TEST.BEST_CHECKPOINT_METRIC = ""  # e.g. "sem_seg/mIoU": keep model_best.pth at its best eval; "" off
    cfg.TEST.BEST_CHECKPOINT_MODE = "max"  # "max" or "min": which way TEST.BEST_CHECKPOINT_METRIC is better


def _add_backbone_config(cfg: CN) -> None:
    """Add ``MODEL.MOBILENETV2`` and ``MODEL.SWIN`` to a Detectron2 config."""
    # MobileNetV2 (timm "mobilenetv2_*"), the paper's MV2 student; res2..res5 = 24/32/96/320 ch.
    cfg.MODEL.MOBILENETV2 = CN()
    cfg.MODEL.MOBILENETV2.WIDTH_MULT = 1.0  # timm width variant: 0.35, 0.5, 0.75, 1.0 or 1.4
    cfg.MODEL.MOBILENETV2.OUTPUT_STRIDE = 8  # 8 (dilated, as CIRKD/SKD), 16 or 32
    cfg.MODEL.MOBILENETV2.NORM = "BN"  # "BN", "SyncBN" or "FrozenBN" (timm builds BatchNorm2d)
    cfg.MODEL.MOBILENETV2.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # stages returned
    cfg.MODEL.MOBILENETV2.PAD_TYPE = ""  # "" PyTorch's symmetric padding; "same": TensorFlow's (timm pad_type)

    # MobileNet-EdgeTPU v1 (timm "mobilenet_edgetpu", first block linear); res2..res5, head.
    cfg.MODEL.EDGETPU = CN()
    cfg.MODEL.EDGETPU.WIDTH_MULT = 0.75  # channel multiplier: 0.75 (the Cityscapes DeepLab) or 1.0
    cfg.MODEL.EDGETPU.OUTPUT_STRIDE = 16  # 8, 16 (the Cityscapes DeepLab) or 32
    cfg.MODEL.EDGETPU.NORM = "BN"  # "BN", "SyncBN" or "FrozenBN"
    cfg.MODEL.EDGETPU.OUT_FEATURES = ["res4", "res5", "head"]  # among res2..res5 and head (the 1280-ch conv)
    cfg.MODEL.EDGETPU.PAD_TYPE = "same"  # "same": TensorFlow's padding, as its weights; "": PyTorch's

    # Swin Transformer (timm SwinTransformer). Defaults: Swin-T; Swin-B: 128, [2,2,18,2], [4..32].
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.EMBED_DIM = 96  # channels of res2; doubled at every later stage
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # transformer blocks per stage
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # side of the attention windows (in tokens)
    cfg.MODEL.SWIN.MLP_RATIO = 4.0  # hidden width of the MLPs / channels
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth (0.3 in the Swin UPerNet recipes)
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # returned, strides 4..32
