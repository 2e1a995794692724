"""DistillGeneralizedRCNN: Faster and Mask R-CNN students under a frozen R-CNN teacher, on the
shared machinery (teacher, taps, connectors, losses, diagnostics): the teacher stays frozen and
in eval mode, each tap reads the feature it names, one step of every loss at every FPN level,
ground-truth boxes reach FGD/FKD, inference and the student checkpoint are plain R-CNN, and bad
pairs are refused at build time."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import BitMasks
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg
from radkd_d2.engine import ConfigError, Trainer
from test_distill_det import SIZE_64, batch, needs_tiny_coco, sgd, taps, teacher_state, train_steps

DISTILL = "configs/synthetic/distill/lad_fpn_frcnnx50_frcnnr18_tiny_synthetic.yaml"
TEACHER_CFG = str(REPO / "configs/synthetic/faster_rcnn_x50_tiny.yaml")
LEVELS = ("p2", "p3", "p4", "p5", "p6")
METHODS = ("lad", "cad", "pad", "fgd", "mgd", "cwd", "pkd", "fkd", "naive")
TASK_LOSSES = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def rcnn_cfg(tmp_path, *opts, mask=False):
    extra = ["MODEL.MASK_ON", True, "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.MASK_ON', True]"] if mask else []
    return load_cfg(
        DISTILL, "MODEL.DISTILL.TEACHER.CONFIG_FILE", TEACHER_CFG, "MODEL.DISTILL.TEACHER.WEIGHTS", "",
        *SIZE_64, *extra, *opts, data_root=tmp_path, validate=False,
    )  # fmt: skip


def masked_batch(seed=0):
    """:func:`batch` with a filled-box mask per object (what Mask R-CNN trains on)."""
    out = batch(seed)
    for x in out:
        inst = x["instances"]
        masks = torch.zeros(len(inst), 64, 64, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    return out


def test_teacher_frozen_in_eval_mode_and_out_of_the_checkpoint(tmp_path):
    cfg = rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps("lad", LEVELS, 10.0) + taps("mgd", ["p3"])))
    model = build_model(cfg)
    assert isinstance(model, GeneralizedRCNN) and isinstance(model.teacher, GeneralizedRCNN)
    before = teacher_state(model)
    optimizer = Trainer.build_optimizer(cfg, model)
    opt_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not {id(p) for p in model.teacher.parameters()} & opt_ids
    losses, _ = train_steps(model, optimizer, steps=2)
    assert TASK_LOSSES | {f"loss_distill_lad_{lv}" for lv in LEVELS} | {"loss_distill_mgd_p3"} <= set(losses)
    assert model.training and not model.teacher.training
    assert all(not m.training for m in model.teacher.modules())
    after = teacher_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher changed"
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    student = model.student_state_dict()
    assert not any(k.startswith(("teacher.", "teachers.", "distiller.")) for k in student)
    plain = build_model(load_cfg("configs/synthetic/faster_rcnn_r18_tiny.yaml", *SIZE_64, data_root=tmp_path))
    assert set(student) == set(plain.state_dict())  # the student is a stock Faster R-CNN
    plain.load_state_dict(student)  # strictly


@pytest.mark.parametrize("method", METHODS)
def test_one_step_of_each_loss_at_every_level_mask_rcnn(tmp_path, method):
    cfg = rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps(method, LEVELS)), "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1, mask=True)
    model = build_model(cfg).train()
    with EventStorage(0) as storage:
        losses = model(masked_batch())
        sum(losses.values()).backward()
        logged = {k: v for k, (v, _) in storage.latest().items()}
    assert TASK_LOSSES | {"loss_mask"} <= set(losses)
    for lv in LEVELS:
        key = f"loss_distill_{method}_{lv}"
        assert key in losses and losses[key].dim() == 0 and torch.isfinite(losses[key]), (key, losses)
        assert f"grad_ratio/{key}" in logged, key  # the diagnostics see every level
    assert model.backbone.bottom_up.res2[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_each_tap_reads_the_feature_it_names(tmp_path, monkeypatch):
    """What the distiller receives at p2..p6 and res3/res4 is what the student's and teacher's
    backbones compute for that name on the same (normalised, padded) batch."""
    cfg = rcnn_cfg(
        tmp_path, "MODEL.DISTILL.TAPS",
        str(taps("lad", LEVELS) + [["res3", "res3", "cad", 1.0], ["res4", "p4", "lad", 1.0]]),
    )  # fmt: skip
    model = build_model(cfg).train()
    seen = {}

    def capture(student, teacher_fn, task_losses, **context):
        seen["student"], seen["teacher"] = student, teacher_fn()
        return task_losses

    monkeypatch.setattr(model.distiller, "step", capture)
    inputs = batch()
    with EventStorage(0):
        model(inputs)
    refs = []
    for detector in (model, model.teacher):
        with torch.no_grad():
            x = detector.preprocess_image(inputs).tensor
            refs.append({**detector.backbone.bottom_up(x), **detector.backbone(x)})
    s_ref, t_ref = refs
    for name in (*LEVELS, "res3", "res4"):
        assert torch.allclose(seen["student"][name], s_ref[name], atol=1e-5), name
    for name in (*LEVELS, "res3"):
        assert torch.allclose(seen["teacher"][name], t_ref[name], atol=1e-5), name
    assert "res4" not in seen["teacher"] and "p4" in seen["teacher"]  # res4 -> p4 reads the teacher's p4


def test_inference_is_the_plain_student(tmp_path):
    model = build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps("lad", LEVELS)))).eval()
    calls = []
    model.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 64)).float(), "height": 64, "width": 64}])
    assert calls == [] and set(out[0]) == {"instances"}
    assert out[0]["instances"].has("pred_boxes")


def test_gt_boxes_reach_fgd_and_fkd(tmp_path, monkeypatch):
    """FGD's foreground mask comes from the ground-truth boxes the R-CNN trains on."""
    model = build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", str(taps("fgd", ["p2"]) + taps("fkd", ["p3"]))))
    got = {}
    step = model.distiller.step

    def spy(student, teacher_fn, task_losses, **context):
        got.update(context)
        return step(student, teacher_fn, task_losses, **context)

    monkeypatch.setattr(model.distiller, "step", spy)
    inputs = batch()
    train_steps(model, sgd(model))  # a normal step first: the spy sees the batch of the next
    with EventStorage(0):
        model.train()(inputs)
    assert [b.tolist() for b in got["boxes"]] == [x["instances"].gt_boxes.tensor.tolist() for x in inputs]
    assert got["image_size"] == (64, 64)


def test_bad_pairs_are_refused_at_build(tmp_path):
    with pytest.raises(ConfigError, match="teacher predicts 7 classes but the student 5"):
        build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.ROI_HEADS.NUM_CLASSES', 7]"))
    with pytest.raises(ConfigError, match="a detection teacher must be a GeneralizedRCNN"):
        build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(REPO / "configs/synthetic/retinanet_x50_tiny.yaml")))
    with pytest.raises(ConfigError, match="KD_WEIGHT"):
        build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.KD_WEIGHT", 1.0))
    with pytest.raises(ConfigError, match=r"student position 'p9' names no module.*nearest: \['p6'.*aliases \['p2'"):
        build_model(rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['p9', 'p9', 'lad', 1.0]]"))


def test_student_meta_architecture_must_match_and_the_report_names_the_model(tmp_path):
    import yaml

    from radkd_d2.engine.checks import validate_config
    from radkd_d2.evaluation.naming import model_name

    cfg = rcnn_cfg(tmp_path, "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", "RetinaNet")
    with pytest.raises(ConfigError, match=r"MODEL.DISTILL.STUDENT_META_ARCHITECTURE = 'RetinaNet' .*\['GeneralizedRCNN'\]"):
        validate_config(cfg)
    assert model_name(yaml.safe_load(rcnn_cfg(tmp_path).dump())) == "FasterRCNN-R18"
    assert model_name(yaml.safe_load(rcnn_cfg(tmp_path, mask=True).dump())) == "MaskRCNN-R18"


# ---- end to end through tools/train_net.py ------------------------------------------------
MASK_DISTILL = "configs/synthetic/distill/lad_fpn_mrcnnx50_mrcnnr18_tiny_synthetic.yaml"
MASK_TEACHER_CFG = str(REPO / "configs/synthetic/mask_rcnn_x50_tiny.yaml")
SMALL = ["DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64]


def _opts(data_root, out, teacher, iters=4):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL, *SIZE_64,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.CHECKPOINT_PERIOD", 2, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 2,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mask_teacher_ckpt(tmp_path_factory):
    """An (untrained) tiny X50 Mask R-CNN checkpoint: the tests check plumbing, not accuracy."""
    from radkd_d2.modeling.teacher import load_teacher_cfg

    path = tmp_path_factory.mktemp("rcnn_teacher") / "teacher.pth"
    torch.save({"model": build_model(load_teacher_cfg(MASK_TEACHER_CFG, "cpu")).state_dict()}, path)
    return path


@pytest.mark.slow
def test_train_net_mask_rcnn_distillation_scores_boxes_and_masks_and_resumes(data_root, mask_teacher_ckpt, tmp_path):
    from conftest import read_metrics, run_train_net

    out = tmp_path / "run"
    # a run killed after its checkpoint at iteration 2 of 4: the first 2 iterations, then the
    # folder as the kill leaves it (last_checkpoint naming model_0000001.pth, no final weights)
    run_train_net("--config-file", REPO / MASK_DISTILL, *_opts(data_root, out, mask_teacher_ckpt), "SOLVER.MAX_ITER", 2, "DATASETS.TEST", "()")
    assert (out / "model_0000001.pth").is_file()
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    proc = run_train_net("--config-file", REPO / MASK_DISTILL, "--resume", "--replace-run", *_opts(data_root, out, mask_teacher_ckpt))
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 2" in log
    rows = read_metrics(out)
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 3
    assert any("loss_mask" in r for r in rows) and any("loss_distill_lad_p2" in r for r in rows)
    final = [r for r in rows if "bbox/AP" in r][-1]
    assert "segm/AP" in final  # COCOEvaluator scores the masks too
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith(("teacher.", "teachers.", "distiller.")) for k in ckpt["model"])


@pytest.mark.slow
def test_train_net_rcnn_distillation_two_processes(data_root, mask_teacher_ckpt, tmp_path):
    from conftest import read_metrics, run_train_net

    proc = run_train_net(
        "--config-file", REPO / MASK_DISTILL, "--num-gpus", 2, *_opts(data_root, tmp_path, mask_teacher_ckpt, iters=2),
        "DATASETS.TEST", "()",
    )  # fmt: skip
    assert "World size: 2" in proc.stdout + proc.stderr
    assert any("loss_distill_lad_p6" in r for r in read_metrics(tmp_path))


# ---- tiny_coco (real COCO images, polygon masks) -------------------------------------------
TINY_COCO_MASK = "configs/tiny_coco/distill/lad_fpn_mrcnnx50_mrcnnr18_tiny_tiny_coco.yaml"


@pytest.mark.slow
@needs_tiny_coco
def test_train_net_mask_rcnn_distillation_on_tiny_coco_polygons(tmp_path):
    """Mask R-CNN distillation on real COCO images through tools/train_net.py: COCO's polygon
    masks train the mask head (an image without boxes included), and COCOEvaluator scores boxes
    and masks on tiny_coco val."""
    from conftest import SHARED_DATA, read_metrics, run_train_net
    from radkd_d2.modeling.teacher import load_teacher_cfg

    cfg = load_cfg(TINY_COCO_MASK, "DATASETS.ROOT", SHARED_DATA, validate=True)
    assert cfg.INPUT.MASK_FORMAT == "polygon" and cfg.MODEL.MASK_ON and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    teacher = tmp_path / "teacher.pth"
    tcfg = load_teacher_cfg(str(REPO / cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE), "cpu")
    torch.save({"model": build_model(tcfg).state_dict()}, teacher)
    out = tmp_path / "run"
    run_train_net(
        "--config-file", REPO / TINY_COCO_MASK, "MODEL.DEVICE", "cpu", "DATASETS.ROOT", SHARED_DATA,
        "OUTPUT_DIR", out, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher, "SOLVER.MAX_ITER", 3,
        "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 1, "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.CHECKPOINT_PERIOD", 3, "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1,
    )  # fmt: skip
    rows = read_metrics(out)
    assert any("loss_mask" in r and "loss_distill_lad_p6" in r for r in rows)
    final = [r for r in rows if "bbox/AP" in r][-1]
    assert "segm/AP" in final and "bbox/AP50" in final
