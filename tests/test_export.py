"""TorchScript and ONNX export of students: round trips, evaluator parity, the tools end to end,
and bad input (distillation keys, unsupported models, unwritable destinations)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from conftest import REPO, load_cfg, run_train_net
from models.seg_test_utils import NUM_CLASSES, make_cfg, synthetic_batch
from radkd_d2.engine.exported import export_parity
from radkd_d2.errors import ExportError
from radkd_d2.export import ExportedModel, export_deployable
from radkd_d2.export.deploy import export_module
from radkd_d2.modeling.heads.pooling import adaptive_avg_pool2d, pool_matrix

pytest.importorskip("onnxruntime")

FORMATS = ("torchscript", "onnx")
RETINANET = "configs/synthetic/retinanet_r18_tiny.yaml"


def _save(model: nn.Module, path: Path, extra: dict | None = None) -> str:
    torch.save({"model": {**model.state_dict(), **(extra or {})}}, path)
    return str(path)


def _reference_cfg():
    """PSPNet as the SKD/CIRKD code bases run it: align_corners upsampling, auxiliary head."""
    cfg = make_cfg("drn", "PSPHead", aux=0.4)
    cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS = True
    cfg.MODEL.SEM_SEG_HEAD.PSP_POOL_ALIGN_CORNERS = True
    return cfg


@pytest.fixture(scope="module")
def seg_models():
    torch.manual_seed(0)
    cfgs = {"PSPHead": make_cfg("drn", "PSPHead"), "DeepLabV3Head": make_cfg("drn", "DeepLabV3Head"),
            "PSPHead-reference": _reference_cfg()}
    return {name: (cfg, build_model(cfg).eval()) for name, cfg in cfgs.items()}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("head", ["PSPHead", "DeepLabV3Head", "PSPHead-reference"])
def test_segmentation_round_trip_any_size(seg_models, head, fmt, tmp_path):
    cfg, model = seg_models[head]
    batch = synthetic_batch((56, 88), 2)  # features 7 x 11: not a multiple of PSP's 2/3/6 bins
    path, info = export_deployable(cfg, _save(model, tmp_path / "w.pth"), str(tmp_path / "out"), fmt, [b["image"] for b in batch[:1]])
    assert info.fixed_size is None and info.task == "sem_seg" and info.num_classes == NUM_CLASSES
    exported = ExportedModel(str(path)).eval()
    for size, n in [((56, 88), 2), ((48, 72), 3)]:  # another batch size and image size than traced
        images = [{"image": b["image"]} for b in synthetic_batch(size, n, seed=1)]
        with torch.no_grad():
            ref = model(images)
        out = exported(images)
        for o, r in zip(out, ref):
            assert o["sem_seg"].shape == r["sem_seg"].shape == (NUM_CLASSES, *size)
            torch.testing.assert_close(o["sem_seg"], r["sem_seg"], atol=1e-4, rtol=0)


def test_evaluator_metrics_equal_on_synthetic_images(data_root, tmp_path):
    """The PyTorch student and both exports through one test loader and SemSegEvaluator each."""
    cfg = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "DATASETS.SYNTHETIC.NUM_VAL", 4,
                   "DATASETS.SYNTHETIC.SIZE", 64, data_root=data_root)
    model = build_model(cfg)
    rows = export_parity(cfg, _save(model, tmp_path / "w.pth"), str(tmp_path / "out"), FORMATS, "synthetic_sem_seg_val")
    assert [r["format"] for r in rows] == ["pytorch", *FORMATS]
    reference = rows[0]["metrics"]["sem_seg"]
    for row in rows[1:]:
        assert row["max_abs_diff"] < 1e-4, row["format"]
        for key in ("mIoU", "fwIoU", "mACC", "pACC"):
            assert row["metrics"]["sem_seg"][key] == pytest.approx(reference[key], abs=1e-9), (row["format"], key)


def test_exported_model_on_a_data_set_of_other_classes_is_named(data_root, tmp_path):
    """A 6-class model scored on an 11-class set: the class counts are named before any image
    is read (it blamed a label file)."""
    from radkd_d2.engine.exported import evaluate_exported
    from radkd_d2.errors import ExportError

    cfg = load_cfg("configs/synthetic/pspnet_r18_tiny.yaml", "DATASETS.SYNTHETIC.NUM_VAL", 4,
                   "DATASETS.SYNTHETIC.SIZE", 64, data_root=data_root)  # fmt: skip
    path, _ = export_deployable(cfg, _save(build_model(cfg), tmp_path / "w.pth"), str(tmp_path / "out"), "torchscript",
                                [torch.rand(3, 64, 64) * 255])
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / "camvid" / split).mkdir(parents=True)
        (root / "camvid" / f"{split}annot").mkdir(parents=True)
        (root / "camvid" / split / "a.png").write_bytes(b"x")
        (root / "camvid" / f"{split}annot" / "a.png").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"predicts 6 classes but data set 'camvid_val' has 11 \(Sky, Building, Pole, Road, ...\)"):
        evaluate_exported(str(path), "camvid_val", ["DATASETS.ROOT", str(root)])


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    cfg = load_cfg(RETINANET)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, model, _save(model, tmp_path_factory.mktemp("retina") / "w.pth")


@pytest.mark.parametrize("fmt", FORMATS)
def test_retinanet_round_trip(retinanet, fmt, tmp_path):
    cfg, model, weights = retinanet
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g) * 255 for _ in range(3)]
    path, info = export_deployable(cfg, weights, str(tmp_path / "out"), fmt, images[:2])
    assert info.batch == 2 and info.task == "detection"
    exported = ExportedModel(str(path)).eval()
    inputs = [{"image": im, "height": 144, "width": 144} for im in images]
    inputs += [{"image": torch.rand(3, 128, 96, generator=g) * 255}]  # another size than traced
    inputs += [{"image": torch.rand(3, 96, 128, generator=g) * 255}]  # 5 images: a short last call
    with torch.no_grad():  # Detectron2 pads the images of one call to a common size: same calls
        ref = model(inputs[:2]) + model(inputs[2:4]) + model(inputs[4:])
    out = exported(inputs)
    assert len(out) == len(ref) == 5
    for o, r in zip(out, ref):
        o, r = o["instances"], r["instances"]
        assert len(o) == len(r) > 0 and o.image_size == r.image_size
        scale = max(r.image_size)  # box coordinates within 1e-4 of the image size
        torch.testing.assert_close(o.pred_boxes.tensor / scale, r.pred_boxes.tensor / scale, atol=1e-4, rtol=0)
        torch.testing.assert_close(o.scores, r.scores, atol=1e-4, rtol=0)
        assert torch.equal(o.pred_classes, r.pred_classes)


def test_distillation_keys_dropped_and_listed_once(seg_models, tmp_path, caplog):
    cfg, model = seg_models["DeepLabV3Head"]
    extra = {"teachers.teacher.backbone.w": torch.zeros(1), "distiller.connectors.res5.weight": torch.zeros(1)}
    weights = _save(model, tmp_path / "run.pth", extra)
    with caplog.at_level("INFO", logger="radkd_d2"):
        path, info = export_deployable(cfg, weights, str(tmp_path / "out"), "onnx", [torch.rand(3, 64, 64) * 255])
    assert info.dropped == ["distiller", "teachers"]
    assert sum("Dropped the distillation-only parts ['distiller', 'teachers']" in r.message for r in caplog.records) == 1
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["dropped"] == ["distiller", "teachers"]


def test_student_keys_missing_is_an_error(seg_models, tmp_path):
    cfg, model = seg_models["PSPHead"]
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("sem_seg_head.predictor")}
    torch.save({"model": state}, tmp_path / "w.pth")
    with pytest.raises(Exception, match="sem_seg_head.predictor") as e:
        export_deployable(cfg, str(tmp_path / "w.pth"), str(tmp_path / "out"), "onnx", [torch.rand(3, 64, 64)])
    assert not any((tmp_path / "out").glob("model_student*"))
    # the message names the user's file and the user's flags, not a temporary copy or a teacher key
    msg = str(e.value)
    assert f"student checkpoint '{tmp_path / 'w.pth'}' does not match the student model" in msg
    assert "check that --weights is a checkpoint of the model --config-file builds" in msg
    assert "TEACHER" not in msg and "/tmp" not in msg.replace(str(tmp_path), "")


class _Odd(nn.Module):
    def forward(self, x):
        return torch.special.erfcx(x)  # no ONNX symbolic (aten::special_erfcx)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), _Odd())

    def forward(self, x):
        return self.body(x)


def test_unexportable_module_one_clear_error(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"onnx export failed in module 'body.1' \(_Odd\): operator aten::special_erfcx"):
        export_module(_Net().eval(), (torch.rand(1, 3, 8, 8),), "sem_seg", "onnx", path)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_unsupported_architecture_named(tmp_path):
    from radkd_d2.export import deployable

    with pytest.raises(ExportError, match="exporting a _Net is not supported"):
        deployable(_Net(), [torch.rand(3, 8, 8)])


def test_output_folder_errors(seg_models, tmp_path):
    cfg, model = seg_models["PSPHead"]
    weights = _save(model, tmp_path / "w.pth")
    with pytest.raises(ExportError, match="parent .* does not exist"):
        export_deployable(cfg, weights, str(tmp_path / "no" / "such"), "onnx", [torch.rand(3, 64, 64)])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ExportError, match="is not a folder"):
        export_deployable(cfg, weights, str(tmp_path / "a_file"), "onnx", [torch.rand(3, 64, 64)])


def test_unwritable_output_folder(seg_models, tmp_path):
    cfg, model = seg_models["PSPHead"]
    weights = _save(model, tmp_path / "w.pth")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write to read-only folders (root)")
        with pytest.raises(ExportError, match="is not writable"):
            export_deployable(cfg, weights, str(locked), "onnx", [torch.rand(3, 64, 64)])
    finally:
        locked.chmod(0o700)
    assert not list(locked.iterdir())


def test_fixed_size_export_refuses_larger_inputs(seg_models, tmp_path):
    cfg, model = seg_models["DeepLabV3Head"]
    path, info = export_deployable(cfg, _save(model, tmp_path / "w.pth"), str(tmp_path / "o"), "onnx",
                                   [torch.rand(3, 64, 64) * 255], dynamic_size=False)
    assert info.fixed_size == [64, 64]
    exported = ExportedModel(str(path)).eval()
    same = [{"image": torch.rand(3, 64, 64) * 255}]
    with torch.no_grad():
        torch.testing.assert_close(exported(same)[0]["sem_seg"], model(same)[0]["sem_seg"], atol=1e-4, rtol=0)
    # a smaller image is padded to the size (a different context than the eager model's, so
    # only its shape is checked); a larger one cannot be run
    assert exported([{"image": torch.rand(3, 48, 56) * 255}])[0]["sem_seg"].shape == (NUM_CLASSES, 48, 56)
    with pytest.raises(ExportError, match="fixed size 64x64"):
        exported([{"image": torch.rand(3, 80, 64)}])


@pytest.mark.parametrize("n,bins", [(7, 6), (11, 3), (45, 6), (60, 2), (5, 1), (3, 6)])
def test_pool_matrix_matches_adaptive_pool(n, bins):
    x = torch.randn(2, 3, n, n + 1)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, bins)
    ours = pool_matrix(n, bins, x) @ x @ pool_matrix(n + 1, bins, x).T
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(adaptive_avg_pool2d(x, bins), ref)  # outside an export: the op itself


# ---- the tools end to end on the demo's student (short runs of the demo configs) --------------
DEMO = "configs/synthetic/demo"
DEMO_SMALL = ["DATASETS.SYNTHETIC.NUM_TRAIN", 8, "DATASETS.SYNTHETIC.NUM_TEST", 4, "DATASETS.SYNTHETIC.SIZE", 64,
              "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3,
              "SOLVER.CHECKPOINT_PERIOD", 3, "TEST.EVAL_PERIOD", 0]


@pytest.fixture(scope="module")
def demo_student(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_train_net("--config-file", REPO / DEMO / "teacher_pspnet_r18x2_synthetic.yaml", "MODEL.DEVICE", "cpu",
                  "DATASETS.ROOT", data_root, "OUTPUT_DIR", out / "teacher", *DEMO_SMALL)
    run_train_net("--config-file", REPO / DEMO / "lad_res5_pspr18x2_pspr18x4_synthetic.yaml", "MODEL.DEVICE", "cpu",
                  "DATASETS.ROOT", data_root, "OUTPUT_DIR", out / "lad", *DEMO_SMALL,
                  "MODEL.DISTILL.TEACHER.WEIGHTS", out / "teacher" / "model_final.pth")
    return out / "lad"


def _tool(name: str, *args) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def test_tools_end_to_end_on_demo_student(demo_student, data_root, tmp_path):
    miou = [r for r in map(json.loads, (demo_student / "metrics.json").read_text().splitlines()) if "sem_seg/mIoU" in r][-1]["sem_seg/mIoU"]
    for fmt, suffix in [("torchscript", "ts"), ("onnx", "onnx")]:
        log = _tool("export_student.py", "--config-file", demo_student / "config.yaml", "--weights",
                    demo_student / "model_final.pth", "--output", tmp_path / fmt, "--format", fmt,
                    "DATASETS.ROOT", data_root)
        assert "dropped ['distiller']" in log
        metrics = tmp_path / f"{fmt}.json"
        log = _tool("eval_exported.py", "--model", tmp_path / fmt / f"model_student.{suffix}", "--output", metrics,
                    "DATASETS.ROOT", data_root)
        assert json.loads(metrics.read_text())["sem_seg"]["mIoU"] == pytest.approx(miou, abs=0.01), log


def test_parity_compares_detections_as_sets():
    from detectron2.structures import Boxes, Instances

    from radkd_d2.engine.exported import _max_diff

    def inst(order, shift=0.0):
        boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 70]])[order] + shift
        return {"instances": Instances((96, 96), pred_boxes=Boxes(boxes), scores=torch.tensor([0.5, 0.5])[order],
                                       pred_classes=torch.tensor([1, 2])[order])}

    assert _max_diff(inst([0, 1]), inst([1, 0])) == 0.0  # a near tie sorted the other way
    assert _max_diff(inst([0, 1]), inst([1, 0], shift=0.25)) == pytest.approx(0.25)
    assert _max_diff(inst([0]), inst([0, 1])) is None


MASK_RCNN = "configs/synthetic/mask_rcnn_r18_tiny.yaml"


@pytest.fixture(scope="module")
def mask_rcnn(tmp_path_factory):
    # score threshold 0: an untrained model still returns detections (and masks) to compare
    cfg = load_cfg(MASK_RCNN, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 20)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, model, _save(model, tmp_path_factory.mktemp("mask_rcnn") / "w.pth")


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_rcnn_round_trip(mask_rcnn, fmt, tmp_path):
    """A Mask R-CNN student exports through TracingAdapter (before postprocessing, as
    Detectron2's recipe does) and its detections and pasted masks equal the eager model's."""
    from radkd_d2.export.runtime import DET_MASK_OUTPUTS

    cfg, model, weights = mask_rcnn
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g) * 255 for _ in range(2)]
    path, info = export_deployable(cfg, weights, str(tmp_path / "out"), fmt, images)
    assert info.task == "detection" and info.num_classes == 5
    assert info.output_names == [f"{k}{i}" for i in range(2) for k in DET_MASK_OUTPUTS]
    exported = ExportedModel(str(path)).eval()
    inputs = [{"image": im, "height": 144, "width": 144} for im in images]
    with torch.no_grad():
        ref = model(inputs)
    out = exported(inputs)
    for o, r in zip(out, ref):
        o, r = o["instances"], r["instances"]
        assert len(o) == len(r) > 0 and o.image_size == r.image_size == (144, 144)
        torch.testing.assert_close(o.pred_boxes.tensor / 144, r.pred_boxes.tensor / 144, atol=1e-4, rtol=0)
        torch.testing.assert_close(o.scores, r.scores, atol=1e-4, rtol=0)
        assert torch.equal(o.pred_classes, r.pred_classes)
        assert o.pred_masks.shape == r.pred_masks.shape == (len(r), 144, 144)
        # pasted at threshold 0.5: a pixel may flip where a probability sits at 0.5 ± 1e-5
        assert (o.pred_masks != r.pred_masks).float().mean() < 1e-3


def test_parity_tool_scores_boxes_and_masks_of_a_mask_rcnn(mask_rcnn, data_root, tmp_path, capsys):
    """tools/export_parity.py on a Mask R-CNN: box AP and mask AP of PyTorch and both exports
    through COCOEvaluator on the same images, and how far the pasted masks differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_parity_tool", REPO / "tools" / "export_parity.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _, _, weights = mask_rcnn
    config = tmp_path / "config.yaml"
    config.write_text(load_cfg(MASK_RCNN, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 20,
                               "DATASETS.SYNTHETIC.NUM_VAL", 4, data_root=data_root).dump())  # fmt: skip
    tool.main(["--config-file", str(config), "--weights", str(weights), "--output", str(tmp_path / "out")])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and table[0] == ("| model | data | format | box AP | Δ vs PyTorch | mask AP | Δ vs PyTorch | max abs output "
                        "diff | images with other detections | mask pixels differing (max) |")  # fmt: skip
    rows = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert [r["format"] for r in rows] == ["pytorch", *FORMATS] and rows[0]["mask_pixels_differing"] is None
    for row in rows[1:]:
        assert row["images_differing"] == 0 and row["max_abs_diff"] < 1e-2, row
        assert row["mask_pixels_differing"] < 1e-3, row  # pixels at probability 0.5 ± 1e-5 may flip
        for task in ("bbox", "segm"):
            assert row["metrics"][task]["AP"] == pytest.approx(rows[0]["metrics"][task]["AP"], abs=0.05), (row["format"], task)


def test_faster_rcnn_exports_without_masks(tmp_path):
    cfg = load_cfg("configs/synthetic/faster_rcnn_r18_tiny.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path, info = export_deployable(cfg, _save(model, tmp_path / "w.pth"), str(tmp_path / "out"), "torchscript", [torch.rand(3, 96, 96) * 255])
    assert info.output_names == ["pred_boxes0", "pred_classes0", "scores0", "image_size0"]
    out = ExportedModel(str(path)).eval()([{"image": torch.rand(3, 96, 96) * 255}])
    assert not out[0]["instances"].has("pred_masks") and len(out[0]["instances"]) > 0
