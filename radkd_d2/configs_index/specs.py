"""The matrix's vocabulary: data sets, models, methods and training recipes of the paper."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from radkd_d2.losses import loss_label


@dataclass(frozen=True)
class DatasetSpec:
    """A data set and the paper's recipe for it (Sec. 4.2)."""

    key: str  # folder under configs/ and file-name suffix
    title: str
    train: str  # registered data set names
    test: str
    num_classes: int
    ignore: int
    crop: Tuple[int, int]  # (h, w) training crop
    max_iter: int  # the paper's schedule

    @property
    def recipe_file(self) -> str:
        return f"Base-{self.title.replace(' ', '')}.yaml"


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model: ``configs/models/<key>.yaml``."""

    key: str
    short: str  # abbreviation used in distillation file names
    title: str  # as the paper writes it
    family: str  # student family, for reporting and test sampling


@dataclass(frozen=True)
class MethodSpec:
    """A distillation method at one position: the ``MODEL.DISTILL`` keys of its configs."""

    key: str  # the method (rows are grouped by it)
    tap: str  # file-name position label: res5, decoder, logits, decoder-logits, fpn
    title: str  # as the paper writes it
    taps: Tuple[Tuple[str, str, str, float], ...]  # MODEL.DISTILL.TAPS entries
    kd_weight: float  # MODEL.DISTILL.KD_WEIGHT (lambda_kd) in the paper's recipe; 0: no logit KD
    note: str  # the weights and where they come from (written into each config)
    distill_opts: Tuple[Tuple[str, object], ...] = ()  # other MODEL.DISTILL keys
    per_dataset_opts: Tuple[Tuple[str, Tuple[Tuple[str, object], ...]], ...] = ()  # by data set
    variant: str = ""  # appended to ``key`` in file names: "-w1000" for a non-default weight

    @property
    def prefix(self) -> str:
        """File-name prefix: ``key`` and ``variant`` ("naive", "md-w1000")."""
        return self.key + self.variant

    def opts_for(self, dataset: str) -> Tuple[Tuple[str, object], ...]:
        """``distill_opts`` plus the data set's own entries of ``per_dataset_opts``."""
        return self.distill_opts + dict(self.per_dataset_opts).get(dataset, ())


@dataclass(frozen=True)
class RecipeSpec:
    """Training schedule: the paper's (per data set) or a variant that overrides it."""

    key: str
    note: str
    solver: Tuple[Tuple[str, object], ...] = ()  # SOLVER overrides
    student_model: Tuple[Tuple[str, object], ...] = ()  # MODEL overrides of student baselines
    max_iter: Optional[int] = None  # None: the data set's
    # Logit KD of the code base the recipe follows: its lambda_kd for every method with logit KD
    # (None: the method's own) and its normalisation (MODEL.DISTILL.KD_REDUCTION; the two differ
    # by the factor K, see radkd_d2/losses/logits.py), with where both come from.
    kd_weight: Optional[float] = None
    kd_reduction: str = "element"
    kd_note: str = ""

    def iterations(self, dataset: DatasetSpec) -> int:
        return self.max_iter or dataset.max_iter


DATASETS: Dict[str, DatasetSpec] = {
    d.key: d
    for d in (
        DatasetSpec("cityscapes", "Cityscapes", "cityscapes_fine_sem_seg_train",
                    "cityscapes_fine_sem_seg_val", 19, 255, (512, 1024), 80000),
        DatasetSpec("voc", "VOC", "voc_aug_sem_seg_train", "voc_aug_sem_seg_val",
                    21, 255, (512, 512), 80000),
        DatasetSpec("ade20k", "ADE20K", "ade20k_sem_seg_train", "ade20k_sem_seg_val",
                    150, 255, (512, 512), 160000),
    )
}  # fmt: skip

MODELS: Dict[str, ModelSpec] = {
    m.key: m
    for m in (
        ModelSpec("pspnet_r101", "pspr101", "PSPNet-R101", "psp_r101"),
        ModelSpec("pspnet_r18", "pspr18", "PSPNet-R18", "psp_r18"),
        ModelSpec("pspnet_mv2", "pspmv2", "PSPNet-MV2", "psp_mv2"),
        ModelSpec("deeplabv3_r101", "dlv3r101", "DeepLabV3-R101", "dlv3_r101"),
        ModelSpec("deeplabv3_r18", "dlv3r18", "DeepLabV3-R18", "dlv3_r18"),
        ModelSpec("deeplabv3_mv2", "dlv3mv2", "DeepLabV3-MV2", "dlv3_mv2"),
        ModelSpec("upernet_swin_b", "upswinb", "UPerNet-SwinB", "upernet_swinb"),
        ModelSpec("upernet_swin_t", "upswint", "UPerNet-SwinT", "upernet_swint"),
    )
}

RECIPES: Dict[str, RecipeSpec] = {
    "paper": RecipeSpec(
        "paper",
        "the paper's recipe (Sec. 4.2): SGD lr 0.01, momentum 0.9, wd 5e-4, poly 0.9, batch 16",
        kd_reduction="element",
        kd_note="lambda_kd 10 following SKD, CWD and IFVD (paper Sec. 4.2), at the scale of the "
        "code it follows: KD_REDUCTION element, the KL averaged over all B*K*h*w elements "
        "(PyTorch KLDivLoss default 'mean', as in IFVD's and CWD's released code)",
    ),
    # CIRKD's setup (Table 3): winycg/CIRKD train_cirkd.py defaults (lr 0.02, 40k iterations,
    # batch 16, wd 1e-4). Its ResNet students' auxiliary head on res4 (weight 0.4) is part of the
    # model files (configs/models/deeplabv3_r18.yaml), as in every table.
    "cirkd": RecipeSpec(
        "cirkd",
        "CIRKD's setup (Table 3; winycg/CIRKD train_cirkd.py): lr 0.02, 40k iterations, batch 16, "
        "wd 1e-4, ResNet students with an auxiliary head (weight 0.4)",
        solver=(("BASE_LR", 0.02), ("WEIGHT_DECAY", 0.0001)),
        max_iter=40000,
        # The paper ran its own methods in CIRKD's code for this table (Sec. 4.3), so LAD and
        # CAD get CIRKD's logit KD too, not the lambda_kd 10 of the paper's recipe.
        kd_weight=1.0,
        kd_reduction="pixel",
        kd_note="CIRKD's, for every method of Table 3 (the paper ran its methods in CIRKD's "
        "code): lambda_kd 1 (train_cirkd.py --lambda-kd 1) with KD_REDUCTION pixel, the KL "
        "summed over classes and averaged over the B*h*w pixels (losses/kd.py, batchmean)",
    ),
}


# Fig. 1: naive feature distillation (Eq. 1) and magnitude distillation (Eq. 4) at loss weights
# w. The paper's text names w = 100 and 1000 (Sec. 3.1); the figure's own axis is not in the text,
# so the grid is the decades around them (tools/sweep.py's default grid), with w = 10 the weight
# of Table 5's naive rows.
FIG1_WEIGHTS = (1.0, 10.0, 100.0, 1000.0)
_DEFAULT_WEIGHT = 10.0  # lambda_ad of the paper's recipe (Sec. 4.2)


def _ours(key: str, tap: str, eq: str, weight: float = _DEFAULT_WEIGHT) -> MethodSpec:
    name = loss_label(key)
    what = {"naive": "naive FitNets MSE", "md": "magnitude distillation (Eq. 4)"}.get(
        key, f"{name} ({eq})"
    )
    title = f"{name} (Ours)" if key not in ("naive", "md") else name
    source = (
        "lambda_ad, paper Sec. 4.2 / Tab. 5"
        if weight == _DEFAULT_WEIGHT
        else "a point of the Fig. 1 weight grid"
    )
    return MethodSpec(
        key,
        tap,
        title if weight == _DEFAULT_WEIGHT else f"{title} w={weight:g}",
        ((tap, tap, key, weight),),
        10.0,
        f"{what} on {tap}, weight {weight:g} ({source}), + pixel-wise logit KD "
        "(lambda_kd 10 in the paper's recipe, Sec. 4.2; see Logit KD).",
        variant="" if weight == _DEFAULT_WEIGHT else f"-w{weight:g}",
    )


_METHOD_LIST = [
    MethodSpec(
        "skd", "decoder", "SKD",
        (("decoder", "decoder", "skd", 0.5),), 10.0,
        "SKD (Liu et al., CVPR 2019), official code irfanICMLL/structure_knowledge_distillation: "
        "pair-wise term on the decoder feature weight 0.5 (--lambda-pa 0.5, nodes 2x2: "
        "MODEL.DISTILL.SKD.POOL_SCALE 0.5), pixel-wise KD 10 (--lambda-pi 10), and the holistic "
        "(adversarial) term as that code trains it (commit 5cb4e49: networks/kd_model.py, "
        "utils/train_options.py, run_train_val.sh): lambda_d 0.1 on the student and on the "
        "WGAN-GP critic (gradient penalty 10), critic on BatchNorm-ed logits, SGD lr 4e-4 momentum "
        "0.9 weight decay 5e-4, poly 0.9 (MODEL.DISTILL.HOLISTIC.*).",
        distill_opts=(
            ("HOLISTIC.WEIGHT", 0.1),
            ("HOLISTIC.OPTIMIZER", "sgd"),
            ("HOLISTIC.WEIGHT_DECAY", 5e-4),
        ),
    ),
    MethodSpec(
        "ifvd", "decoder", "IFVD",
        (("decoder", "decoder", "ifvd", 200.0),), 10.0,
        "IFVD (Wang et al., ECCV 2020), official code YukangWang/IFVD: IFV loss on the decoder "
        "feature weight 200 (--lambda-ifv 200), pixel-wise KD 10 (--lambda-kd 10), and the "
        "holistic (adversarial) term of its code (commit 950a7a5: options.py, networks/kd_model.py): "
        "lambda_adv 0.001 on the student, lambda_d 0.1 on the WGAN-GP critic (penalty 10), Adam "
        "lr 4e-4 betas (0.9, 0.99), poly 0.9 (MODEL.DISTILL.HOLISTIC.*).",
        distill_opts=(("HOLISTIC.WEIGHT", 0.001),),
    ),
    MethodSpec(
        "cwd", "decoder-logits", "CWD",
        (("decoder", "decoder", "cwd", 50.0), ("logits", "logits", "cwd", 3.0)), 10.0,
        "CWD (Shu et al., ICCV 2021): tau 4 (MODEL.DISTILL.CWD.TAU) and weight 3 on the logits "
        "(paper Sec. 4.1); weight 50 on the decoder feature as in the CWD baseline of "
        "winycg/CIRKD (train_scripts/train_kd/train_cwd.sh: --lambda-cwd-fea 50 "
        "--lambda-cwd-logit 3); + pixel-wise KD 10 (the RAD paper: lambda_kd 10 following SKD, "
        "CWD, IFVD); the holistic (adversarial) term as CWD's segmentation code trains it "
        "(irfanICMLL/TorchDistiller SemSeg-distill, options.py: lambda_adv 0.001, lambda_d 0.1, "
        "WGAN-GP penalty 10, Adam 4e-4; its --adv flag is off by default, the RAD paper, Sec. 4.3, "
        "says the CWD numbers use it) (MODEL.DISTILL.HOLISTIC.*).",
        distill_opts=(("HOLISTIC.WEIGHT", 0.001),),
    ),
    MethodSpec(
        "mgd", "res5", "MGD",
        (("res5", "res5", "mgd", 1.0),), 0.0,
        "MGD (Yang et al., ECCV 2022), official mmseg config (psp_r101 -> psp_r18): last backbone "
        "stage, alpha_mgd 2e-5, mask ratio 0.75 (MODEL.DISTILL.MGD.*; tap weight 1 keeps them), "
        "a plain 1x1 conv to align channels (CONNECTOR conv), use_logit False (KD_WEIGHT 0).",
        distill_opts=(("CONNECTOR", "conv"),),
    ),
    MethodSpec(
        "cirkd", "decoder", "CIRKD",
        (("decoder", "decoder", "cirkd_minibatch", 1.0),
         ("decoder", "decoder", "cirkd_memory", 1.0)),
        1.0,
        "CIRKD (Yang et al., CVPR 2022), winycg/CIRKD train_cirkd.py: on the feature after ASPP "
        "(decoder), mini-batch pixel-to-pixel weight 1 (--lambda-minibatch-pixel 1), memory "
        "pixel/region weights 0.1 (Cityscapes, ADE20K defaults) and 0.01 (VOC, "
        "train_scripts/train_cirkd/voc/deeplabv3_res18.sh) as MODEL.DISTILL.CIRKD.*_WEIGHT, "
        "logit KD 1 at T 1 (--lambda-kd 1).",
        per_dataset_opts=(("voc", (("CIRKD.PIXEL_WEIGHT", 0.01), ("CIRKD.REGION_WEIGHT", 0.01))),),
    ),
]  # fmt: skip
for _tap in ("res5", "decoder", "logits"):
    _METHOD_LIST += [
        _ours("lad", _tap, "Eq. 5"),
        _ours("cad", _tap, "Eq. 7"),
        _ours("pad", _tap, "Eq. 8"),
        _ours("naive", _tap, "Eq. 1"),
    ]
for _w in FIG1_WEIGHTS:
    _METHOD_LIST += [_ours("naive", "res5", "Eq. 1", _w), _ours("md", "res5", "Eq. 4", _w)]
# (file-name prefix, tap) -> method; the prefix is the key for the default weight
METHODS: Dict[Tuple[str, str], MethodSpec] = {(m.prefix, m.tap): m for m in _METHOD_LIST}


def method_at(key: str, tap: str, weight: float) -> MethodSpec:
    """One of our methods (or naive / MD) on ``tap`` at loss weight ``weight``."""
    variant = "" if weight == _DEFAULT_WEIGHT else f"-w{weight:g}"
    return METHODS[(key + variant, tap)]
