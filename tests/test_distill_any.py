"""Distillation of any registered meta-architecture (``MODEL.META_ARCHITECTURE: "Distill"``):
PanopticFPN and FCOS students at a tiny size on CPU, taps at module paths, the guarantees every
distillation model keeps (teacher frozen, in eval mode, out of the optimizer and the checkpoint;
no hook left behind; the student a plain Detectron2 model), and the aliases older configs use.
"""
from __future__ import annotations

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg
from radkd_d2.engine import ConfigError, Trainer
from radkd_d2.modeling.capture import Position, position_aliases, resolve_position
from test_distill_det import SIZE_64, batch, sgd, teacher_state
from test_distill_rcnn import masked_batch

RCNN_S, RCNN_T = "configs/synthetic/mask_rcnn_r18_tiny.yaml", REPO / "configs/synthetic/mask_rcnn_x50_tiny.yaml"
RET_S, RET_T = "configs/synthetic/retinanet_r18_tiny.yaml", REPO / "configs/synthetic/retinanet_x50_tiny.yaml"
PANOPTIC = ["MODEL.META_ARCHITECTURE", "PanopticFPN", "MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 4,
            "MODEL.SEM_SEG_HEAD.NORM", "BN"]  # fmt: skip
FCOS = ["MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FCOS.NUM_CLASSES", 5, "MODEL.FCOS.NUM_CONVS", 2]
PANOPTIC_TAPS = [["p2", "p2", "lad", 10.0], ["backbone.bottom_up.res4", "backbone.bottom_up.res4", "cad", 1.0],
                 ["sem_seg_head.predictor", "sem_seg_head.predictor", "kd", 1.0]]  # fmt: skip
FCOS_TAPS = [["p3", "p3", "lad", 10.0], ["head.cls_subnet@0", "head.cls_subnet@0", "pad", 1.0],
             ["backbone.bottom_up:res5", "backbone.bottom_up:res5", "lad", 1.0]]  # fmt: skip


def any_cfg(tmp_path, student, teacher, arch_opts, taps, *opts):
    """A "Distill" config: ``student``'s own config with ``arch_opts`` (its meta-architecture)
    under a random ``teacher`` config with the same ``arch_opts``."""
    teacher_yaml = tmp_path / "teacher.yaml"
    teacher_yaml.write_text(f'_BASE_: "{teacher}"\n')
    arch = arch_opts[arch_opts.index("MODEL.META_ARCHITECTURE") + 1]
    return load_cfg(
        student, *SIZE_64, *arch_opts, "MODEL.META_ARCHITECTURE", "Distill",
        "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", arch,
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_yaml, "MODEL.DISTILL.TEACHER.WEIGHTS", "",
        "MODEL.DISTILL.TEACHER.OPTS", str([str(x) for x in arch_opts]), "MODEL.DISTILL.KD_WEIGHT", 0.0,
        "MODEL.DISTILL.CONNECTOR", "conv", "MODEL.DISTILL.TAPS", str(taps), "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 1,
        *opts, data_root=tmp_path, validate=False,
    )  # fmt: skip


def panoptic_batch(seed=0):
    out = masked_batch(seed)
    g = torch.Generator().manual_seed(seed)
    for x in out:
        x["sem_seg"] = torch.randint(0, 4, x["image"].shape[-2:], generator=g)
    return out


def hooks(model):
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


STUDENTS = {
    "PanopticFPN": (RCNN_S, RCNN_T, PANOPTIC, PANOPTIC_TAPS, panoptic_batch,
                    {"loss_sem_seg", "loss_rpn_cls", "loss_cls", "loss_mask"}),
    "FCOS": (RET_S, RET_T, FCOS, FCOS_TAPS, lambda seed=0: batch(seed), {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(STUDENTS))
def trained(request, tmp_path_factory):
    """A distillation model of each meta-architecture after two SGD steps, with what changed."""
    name = request.param
    student, teacher, arch, taps, make_batch, task_losses = STUDENTS[name]
    tmp_path = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    cfg = any_cfg(tmp_path, student, teacher, arch, taps)
    model = build_model(cfg)
    before = teacher_state(model)
    optimizer = Trainer.build_optimizer(cfg, model)
    model.train()
    with EventStorage(0) as storage:
        for i in range(2):
            storage.iter = i
            losses = model(make_batch(i))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        logged = {k: v for k, (v, _) in storage.latest().items()}
    return dict(name=name, cfg=cfg, model=model, before=before, optimizer=optimizer, losses=losses,
                logged=logged, taps=taps, task_losses=task_losses, arch=arch, tmp=tmp_path, make_batch=make_batch)


def test_the_student_is_its_own_class_with_its_own_losses(trained):
    model, name = trained["model"], trained["name"]
    assert isinstance(model, META_ARCH_REGISTRY.get(name)) and type(model).__name__ == f"Distill{name}"
    assert isinstance(model.teacher, META_ARCH_REGISTRY.get(name))
    losses = trained["losses"]
    assert trained["task_losses"] <= set(losses), sorted(losses)
    distill = {k for k in losses if k.startswith("loss_distill_")}
    assert len(distill) == len(trained["taps"]), distill
    assert all(torch.isfinite(v) for v in losses.values())
    for key in distill:  # the gradient diagnostics see every term at its tap
        assert f"grad_ratio/{key}" in trained["logged"], key


def test_teacher_frozen_in_eval_mode_out_of_optimizer_and_checkpoint(trained):
    model = trained["model"]
    after = teacher_state(model)
    assert all(torch.equal(trained["before"][k], after[k]) for k in after), "the teacher changed"
    assert model.training and all(not m.training for m in model.teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    opt_ids = {id(p) for g in trained["optimizer"].param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in model.teacher.parameters()}
    assert {id(p) for p in model.distiller.parameters()} <= opt_ids
    assert not any(k.startswith("teachers.") for k in model.state_dict())


def test_no_hook_is_left_behind_after_training_and_inference(trained):
    model = trained["model"]
    assert hooks(model) == []
    model.eval()
    with torch.no_grad():
        model([{"image": torch.randint(0, 255, (3, 64, 64)).float(), "height": 64, "width": 64}])
    model.train()
    assert hooks(model) == []


def test_the_student_checkpoint_is_a_plain_detectron2_model(trained):
    """The student's weights load strictly into the stock model built from the student's own
    config, which then predicts exactly what the distillation model predicts."""
    model = trained["model"]
    cfg = trained["cfg"].clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    plain = build_model(cfg)
    plain.load_state_dict(model.student_state_dict())  # strict
    image = [{"image": torch.randint(0, 255, (3, 64, 64), generator=torch.Generator().manual_seed(3)).float(),
              "height": 64, "width": 64}]  # fmt: skip
    model.eval(), plain.eval()
    with torch.no_grad():
        a, b = model(image)[0], plain(image)[0]
    model.train()
    assert set(a) == set(b)
    if "instances" in a:
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    if "sem_seg" in a:
        assert torch.equal(a["sem_seg"], b["sem_seg"])


def test_each_path_reads_the_module_output_it_names(trained):
    """What a path tap reads is the named module's output on the same batch: recomputed here
    from the stock modules, without the capture machinery."""
    model = trained["model"]
    inputs = trained["make_batch"](5)
    model.eval()
    s, t = model.read_features(inputs, ["backbone.bottom_up.res4", "p3"], ["backbone.bottom_up.res4", "p3"])
    for side, detector, feats in (("student", model, s), ("teacher", model.teacher, t)):
        with torch.no_grad():
            x = detector.preprocess_image(inputs).tensor
            stages, levels = detector.backbone.bottom_up(x), detector.backbone(x)
        assert torch.equal(feats["backbone.bottom_up.res4"], stages["res4"]), side
        assert torch.equal(feats["p3"], levels["p3"]), side
    model.train()


def test_fcos_k_th_call_and_calls_named(tmp_path):
    """``head.cls_subnet`` runs once per FPN level: ``@0`` reads the first (p3's), a bare path
    is refused naming the fix."""
    cfg = any_cfg(tmp_path, RET_S, RET_T, FCOS, [["head.cls_subnet@0", "head.cls_subnet@4", "lad", 1.0]])
    model = build_model(cfg)
    assert isinstance(model, D2FCOS)
    s, t = model.read_features(batch(0), ["head.cls_subnet@0"], ["head.cls_subnet@4"])
    assert s["head.cls_subnet@0"].shape[-2:] == (8, 8) and t["head.cls_subnet@4"].shape[-2:] == (1, 1)  # p3, p7 of 64 px
    with pytest.raises(ConfigError, match=r"'head.cls_subnet' is called more than once.*'head.cls_subnet@0'"):
        build_model(any_cfg(tmp_path, RET_S, RET_T, FCOS, [["head.cls_subnet", "head.cls_subnet", "lad", 1.0]]))


def test_a_bad_path_lists_the_nearest_module_names(tmp_path):
    with pytest.raises(ConfigError, match=r"student position 'head.cls_subnett' names no module.*nearest: \['head.cls_subnet'"):
        build_model(any_cfg(tmp_path, RET_S, RET_T, FCOS, [["head.cls_subnett", "p3", "lad", 1.0]]))
    with pytest.raises(ConfigError, match=r"teacher position 'backbone.bottom_up.res9'.*nearest: \[.*'backbone.bottom_up.res5'"):
        build_model(any_cfg(tmp_path, RET_S, RET_T, FCOS, [["p3", "backbone.bottom_up.res9", "lad", 1.0]]))
    with pytest.raises(ConfigError, match=r"the output of 'backbone' has no 'p9' \(it has \['p3'"):
        build_model(any_cfg(tmp_path, RET_S, RET_T, FCOS, [["backbone:p9", "p3", "lad", 1.0]]))
    with pytest.raises(ConfigError, match=r"STUDENT_META_ARCHITECTURE = 'FCOSS' is not a registered meta-architecture; registered: \[.*'FCOS'"):
        cfg = any_cfg(tmp_path, RET_S, RET_T, FCOS, FCOS_TAPS)
        cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "FCOSS"
        build_model(cfg)


def test_aliases_name_what_older_configs_named(tmp_path):
    """res5/decoder/logits of a segmentor, p3 and res4 of an FPN detector resolve to the module
    outputs the family wrappers used to read; an alias tap and its path give identical losses."""
    from test_distill_seg import batch as seg_batch
    from test_distill_seg import distill_cfg

    seg = build_model(distill_cfg(tmp_path, "MODEL.DISTILL.KD_WEIGHT", 0.0))
    aliases = position_aliases(seg)
    assert aliases["res5"] == "backbone:res5" and aliases["decoder"] == "sem_seg_head.decoder"
    assert resolve_position(seg, "logits") == Position("sem_seg_head.logits")
    det = build_model(any_cfg(tmp_path, RET_S, RET_T, FCOS, FCOS_TAPS))
    assert position_aliases(det)["p3"] == "backbone:p3" and position_aliases(det)["res4"] == "backbone.bottom_up:res4"
    losses = []
    for tap in ("res5", "backbone:res5"):
        torch.manual_seed(0)
        model = build_model(distill_cfg(tmp_path, "MODEL.DISTILL.TAPS", str([[tap, tap, "lad", 10.0]]),
                                        "MODEL.DISTILL.KD_WEIGHT", 0.0)).train()  # fmt: skip
        with EventStorage(0):
            out = model(seg_batch())
        losses.append({k.replace("backbone_res5", "res5"): v.item() for k, v in out.items()})
    assert losses[0] == losses[1] and "loss_distill_lad_res5" in losses[0]


# ---- end to end through tools/train_net.py ------------------------------------------------
FCOS_DISTILL = "configs/synthetic/distill/lad_fpn_fcosx50_fcosr18_tiny_synthetic.yaml"


@pytest.mark.slow
def test_train_net_distils_fcos_and_exports_a_plain_student(data_root, tmp_path):
    """The shipped "Distill" config with an FCOS student, through tools/train_net.py (the real
    trainer, COCOEvaluator, checkpointer): every tap's term is logged, the checkpoint holds no
    teacher, and the exported student is a plain FCOS that train_net evaluates."""
    from conftest import read_metrics, run_train_net
    from radkd_d2.engine.setup import load_config
    from radkd_d2.export import export_student
    from test_distill_det import SMALL

    out = tmp_path / "run"
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL, *SIZE_64,
            "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 4, "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", 2,
            "SOLVER.CHECKPOINT_PERIOD", 4, "MODEL.DISTILL.TEACHER.WEIGHTS", "", "MODEL.DISTILL.DIAGNOSTICS_PERIOD", 2,
            "MODEL.FCOS.SCORE_THRESH_TEST", 0.0]  # fmt: skip
    run_train_net("--config-file", REPO / FCOS_DISTILL, *opts)
    rows = read_metrics(out)
    for key in [f"loss_distill_lad_p{i}" for i in range(3, 8)] + ["loss_distill_lad_head_cls_subnet_0"]:
        assert any(key in r for r in rows), key
    assert any("bbox/AP" in r for r in rows)
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith("teachers.") for k in ckpt["model"])
    cfg = load_config(str(REPO / FCOS_DISTILL), [str(x) for x in opts], validate=False)
    weights, student_cfg = export_student(cfg, str(out / "model_final.pth"), str(tmp_path / "student"))
    proc = run_train_net("--config-file", student_cfg, "--eval-only", "MODEL.WEIGHTS", weights,
                         "OUTPUT_DIR", tmp_path / "eval", "DATASETS.ROOT", data_root, *SMALL, *SIZE_64)  # fmt: skip
    assert "copypaste" in proc.stdout + proc.stderr


def test_per_proposal_features_are_refused_with_the_reason(tmp_path):
    """An R-CNN box head runs on sampled proposals in the student's training forward and on the
    post-NMS proposals in the teacher's inference forward: their rows do not pair up."""
    from test_distill_rcnn import rcnn_cfg

    cfg = rcnn_cfg(tmp_path, "MODEL.DISTILL.TAPS", "[['roi_heads.box_head', 'roi_heads.box_head', 'lad', 1.0]]")
    model = build_model(cfg).train()
    with EventStorage(0), pytest.raises(ConfigError, match=r"tap roi_heads_box_head: the student feature .* rows but the teacher's .*per-proposal outputs"):
        model(batch(0))
