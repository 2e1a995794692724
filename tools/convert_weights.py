#!/usr/bin/env python
"""Convert a checkpoint of another code base into a Detectron2 checkpoint of this project's model.

    python tools/convert_weights.py --source mmseg_pspnet --input pspnet_r101.pth \
        --output weights/pspnet_r101_teacher.pth \
        --config-file configs/camvid/pspnet_r101_camvid.yaml
    python tools/train_net.py --config-file CFG \
        MODEL.DISTILL.TEACHER.WEIGHTS weights/pspnet_r101_teacher.pth

Sources: torchvision_resnet, torchvision_mobilenetv2, timm_mobilenetv2, torchvision_swin,
timm_swin, cirkd_resnet, mmseg_pspnet, mmseg_deeplabv3, mmdet_retinanet, d2_pkl (see
radkd_d2/checkpoint/convert.py for each mapping). With --config-file the model is built from the
config (the student of a Distill* config), every key is checked by name and shape, and the
written file is loaded back into the model as MODEL.WEIGHTS would; without it only the names are
converted (default prefixes). The conversion fails, listing every unused source key, missing
target key and shape mismatch, unless --allow-partial is given: then the matching keys are written
and the report still lists the rest. Output: {"model": state_dict, "__author__": ...,
"matching_heuristics": False}.
"""

import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

import radkd_d2  # noqa: F401  (registers the models)
from radkd_d2.engine.inputs import existing_file, run_tool, writable_output
from radkd_d2.checkpoint import (
    CONVERTERS,
    WeightConversionError,
    convert_checkpoint,
    save_d2_checkpoint,
    verify_loadable,
)

logger = logging.getLogger("radkd_d2.convert_weights")


def build_target_model(config_file: str, opts):
    """The model a converted checkpoint is for (CPU); a Distill* config gives its student."""
    from detectron2.modeling import build_model

    from radkd_d2.engine.setup import load_config

    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", *opts], validate=False)
    if cfg.MODEL.META_ARCHITECTURE.startswith("Distill"):
        logger.info(
            "%s is a distillation config: converting for its student (%s)",
            config_file,
            cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE,
        )
        cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return build_model(cfg).eval(), cfg


def _options_from_cfg(source: str, cfg) -> dict:
    if source == "mmdet_retinanet" and cfg is not None:
        gen = cfg.MODEL.ANCHOR_GENERATOR
        return {"anchor_grid": (len(gen.SIZES[0]), len(gen.ASPECT_RATIOS[0]))}
    return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, choices=sorted(CONVERTERS))
    parser.add_argument("--input", required=True, help="source checkpoint file")
    parser.add_argument("--output", required=True, help="converted checkpoint (.pth)")
    parser.add_argument("--config-file", default="", help="config of the target model")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the matching keys of an incomplete conversion",
    )
    parser.add_argument(
        "--prefix", default=None, help="target key prefix of the backbone (default: found)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle non-tensor objects (trusted files only)",
    )
    parser.add_argument(
        "--show-mapping", action="store_true", help="list every source -> target key"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="radkd_d2")
    setup_logger(name="detectron2")

    existing_file(args.input, "--input", "checkpoint")
    writable_output(args.output, "--output", folder=False)
    if args.config_file:
        existing_file(args.config_file, "--config-file", "config file")
    model = cfg = None
    if args.config_file:
        model, cfg = build_target_model(args.config_file, args.opts)
    elif args.source == "d2_pkl":
        parser.error("--source d2_pkl needs --config-file (the model to check the file against)")
    else:
        logger.warning("No --config-file: names converted with default prefixes, NOT checked")

    try:
        state_dict, report = convert_checkpoint(
            args.source,
            args.input,
            model,
            prefix=args.prefix,
            allow_partial=args.allow_partial,
            trust_pickle=args.trust_pickle,
            **_options_from_cfg(args.source, cfg),
        )
    except WeightConversionError as e:
        logger.error("%s", e)
        print(f"conversion failed: {e}", file=sys.stderr)
        return 1
    logger.info("%s", report.format(show_mapped=args.show_mapping))
    save_d2_checkpoint(
        state_dict, args.output, author=f"radkd_d2 convert_weights --source {args.source}"
    )
    if model is not None:
        verify_loadable(model, args.output, report)
        logger.info("%s loads into the model of %s as converted", args.output, args.config_file)
    print(report.summary())
    print(f"{'PARTIAL ' if not report.ok else ''}checkpoint written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
