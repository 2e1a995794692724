"""FCOS from a yacs config: Detectron2 ships FCOS for its LazyConfig system only; this
registration builds the same class from ``MODEL.FCOS.*`` keys, so ``build_model`` (and
``MODEL.META_ARCHITECTURE: "FCOS"``, or ``"Distill"`` with an FCOS student) works with the
project's config files. Backbone: ``MODEL.BACKBONE.NAME`` (an FPN with p3..p7, as RetinaNet's)."""
from __future__ import annotations

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

from radkd_d2.errors import ConfigError

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(_FCOS):
    """Detectron2's ``FCOS``, unchanged, plus :meth:`from_config`."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [n for n in f.IN_FEATURES if n not in shapes]
        if missing:
            raise ConfigError(
                f"MODEL.FCOS.IN_FEATURES = {list(f.IN_FEATURES)}: the backbone has no {missing}; it "
                f"returns {sorted(shapes)}"
            )
        in_shapes = [shapes[n] for n in f.IN_FEATURES]
        head = FCOSHead(
            input_shape=in_shapes,
            conv_dims=[in_shapes[0].channels] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            norm=f.NORM,
            prior_prob=f.PRIOR_PROB,
        )
        return dict(
            backbone=backbone,
            head=head,
            head_in_features=list(f.IN_FEATURES),
            num_classes=f.NUM_CLASSES,
            center_sampling_radius=f.CENTER_SAMPLING_RADIUS,
            focal_loss_alpha=f.FOCAL_LOSS_ALPHA,
            focal_loss_gamma=f.FOCAL_LOSS_GAMMA,
            test_score_thresh=f.SCORE_THRESH_TEST,
            test_topk_candidates=f.TOPK_CANDIDATES_TEST,
            test_nms_thresh=f.NMS_THRESH_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )
