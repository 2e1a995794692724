"""The paper's experiments as data: which config file reproduces which table row.

Tables 1, 3, 5 and 6 of the paper (val mIoU on Cityscapes, Pascal VOC aug, ADE20K) and the
points of Fig. 1 (naive vs magnitude distillation at a grid of loss weights, Cityscapes) map to
config files under ``configs/<dataset>/``, Table 7 (COCO box AP) to ``configs/coco/``
(:mod:`.detection`), as do the Faster / Mask R-CNN distillations beyond the paper. The reference parameter counts of the segmentation models are in
:mod:`.reference`, the ImageNet weights and their input conventions in :mod:`.pretrained`. This
module is the single source of truth for
``tools/make_config_matrix.py`` (which writes those files and ``configs/README.md``) and
``tools/list_configs.py`` (which prints each row's config and train command).

File names: ``<method>_<tap>_<teacher>_<student>_<schedule>_<dataset>.yaml`` for distillation,
``teacher_<model>_<schedule>_<dataset>.yaml`` / ``student_<model>_<schedule>_<dataset>.yaml`` for
a model trained on its own (``<model>`` names a ``configs/models/<model>.yaml``). Inheritance
(``_BASE_`` takes one file, so it is a chain)::

    configs/Base-SemSeg.yaml                 model-independent defaults
      <- configs/<dataset>/Base-<Dataset>.yaml   the data set recipe (paper Sec. 4.2)
        <- teacher_* / student_*                 + MODEL of configs/models/<model>.yaml
          <- <method>_<tap>_*                    + MODEL.DISTILL (teacher, taps, weights)

so a distilled student has exactly the keys of its own baseline config.
"""

from .detection import (
    COCO,
    COCO_RCNN,
    DET_DISTILL_COMMON,
    DET_METHODS,
    DET_MODELS,
    DetDatasetSpec,
    DetModelSpec,
    DetRun,
    RCNN_DISTILL_COMMON,
    RCNN_METHODS,
)
from .kd import HANDWRITTEN_KD, KDFamily, kd_families, kd_per_pixel_weight
from .pretrained import PIXEL_STATS, PRETRAINED, Pretrained, pixel_order
from .reduced import REDUCED_DETECTION_OPTS, REDUCED_DISTILL_OPTS, reduced_size_opts
from .reference import REFERENCE_PARAMS, ReferenceCount, reference_counts
from .rows import (
    TABLES,
    Row,
    Run,
    all_rows,
    all_runs,
    dataset_titles,
    format_rows,
    item_name,
    markdown_tables,
    select_rows,
    train_command,
)
from .specs import (
    DATASETS,
    FIG1_WEIGHTS,
    METHODS,
    MODELS,
    RECIPES,
    DatasetSpec,
    MethodSpec,
    ModelSpec,
    RecipeSpec,
    method_at,
)

__all__ = [
    "COCO",
    "COCO_RCNN",
    "RCNN_DISTILL_COMMON",
    "RCNN_METHODS",
    "DET_DISTILL_COMMON",
    "DET_METHODS",
    "DET_MODELS",
    "DetDatasetSpec",
    "DetModelSpec",
    "DetRun",
    "FIG1_WEIGHTS",
    "PIXEL_STATS",
    "PRETRAINED",
    "Pretrained",
    "pixel_order",
    "REFERENCE_PARAMS",
    "ReferenceCount",
    "reference_counts",
    "dataset_titles",
    "item_name",
    "method_at",
    "DATASETS",
    "MODELS",
    "METHODS",
    "RECIPES",
    "DatasetSpec",
    "HANDWRITTEN_KD",
    "KDFamily",
    "ModelSpec",
    "MethodSpec",
    "RecipeSpec",
    "Run",
    "Row",
    "TABLES",
    "all_rows",
    "all_runs",
    "select_rows",
    "train_command",
    "format_rows",
    "kd_families",
    "kd_per_pixel_weight",
    "markdown_tables",
    "reduced_size_opts",
    "REDUCED_DISTILL_OPTS",
    "REDUCED_DETECTION_OPTS",
]


