"""Distillation of any registered Detectron2 meta-architecture, from one teacher or several.

The student is built from its own config by its own class, unchanged, and trains through its
stock ``forward``: its losses are its own. Features are read at named positions
(:mod:`radkd_d2.modeling.capture`) while that forward runs, and the frozen teachers' features
while theirs runs (each stops after its last tapped module); a
:class:`~radkd_d2.modeling.distill.FeatureDistiller` adds the distillation terms on top.

Total loss: the student's own losses + sum over teachers, taps and losses of
lambda * L(align(F_s), F_t) [+ lambda_kd * KD(student logits, the teachers' mixed probabilities)].

``MODEL.META_ARCHITECTURE: "Distill"`` with ``MODEL.DISTILL.STUDENT_META_ARCHITECTURE`` naming the
student's (PanopticFPN, FCOS, a user's own) builds :func:`distill_class` of it. The family names
``DistillSemanticSegmentor``, ``DistillRetinaNet`` and ``DistillGeneralizedRCNN`` are the same
class for their stock models, with their checks (the teacher's type, no logit KD for detectors).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet, SemanticSegmentor
from torch import nn
from torch.nn import functional as F

from radkd_d2.errors import ConfigError
from radkd_d2.losses import mix_teacher_logits

from ..capture import FeatureCapture, Position, resolve_position
from ..distill import FeatureDistiller, Tap, current_iteration, parse_taps
from ..pair import TeacherMixin, init_student_from_teacher, input_frame
from ..teacher import TeacherSpec, build_teacher, teacher_specs

__all__ = [
    "Distill",
    "DistillGeneralizedRCNN",
    "DistillMixin",
    "DistillRetinaNet",
    "DistillSemanticSegmentor",
    "distill_class",
    "model_classes",
]

logger = logging.getLogger(__name__)

INPUT = "backbone:input"  # the captured backbone input: the normalised, padded batch
PROBE_SIDE = 256  # side of the blank image the shapes of tapped features are read from


def model_classes(model: nn.Module) -> Optional[Tuple[str, int]]:
    """``(config key, class count)`` of a model's predictions, for the models whose count is
    known: a segmentation head's, R-CNN ROI heads', a dense detector's; None otherwise."""
    head = getattr(model, "sem_seg_head", None)
    roi = getattr(model, "roi_heads", None)
    if roi is not None and hasattr(roi, "num_classes"):
        return "MODEL.ROI_HEADS.NUM_CLASSES", int(roi.num_classes)
    if head is not None and hasattr(head, "num_classes"):
        return "MODEL.SEM_SEG_HEAD.NUM_CLASSES", int(head.num_classes)
    if hasattr(model, "num_classes"):
        key = {"RetinaNet": "MODEL.RETINANET.NUM_CLASSES", "FCOS": "MODEL.FCOS.NUM_CLASSES"}.get(type(model).__name__, "NUM_CLASSES")
        return key, int(model.num_classes)
    return None


def _float_images(batched_inputs: List[dict]) -> List[torch.Tensor]:
    return [x["image"].float() for x in batched_inputs]


def _pad_to(x: torch.Tensor, divisor: int, fill) -> torch.Tensor:
    """``x`` (C x H x W or H x W) padded at the bottom and right to multiples of ``divisor``,
    with ``fill`` (a per-channel C-vector, or a scalar)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if not (ph or pw):
        return x
    if torch.is_tensor(fill) and fill.numel() > 1:
        out = fill.to(x).reshape(-1, 1, 1).expand(x.shape[0], h + ph, w + pw).clone()
        out[:, :h, :w] = x
        return out
    return F.pad(x, (0, pw, 0, ph), value=float(fill))


class DistillMixin(TeacherMixin):
    """What distillation adds to a stock meta-architecture ``X``, as ``class DistillX(DistillMixin,
    X)``: the frozen ``teachers``, the ``distiller``, and a training ``forward`` that runs ``X``'s
    own forward with its tapped features recorded. Inference is ``X``'s.

    Losses get the context ``image_size`` (the padded batch's (H, W)), ``boxes`` (per image, the
    ground-truth xyxy boxes in that frame) when inputs carry ``instances``, and ``labels``,
    ``ignore_value``, ``num_classes`` when they carry ``sem_seg``.
    """

    student_class: type = nn.Module  # the stock meta-architecture (set by distill_class)
    teacher_class: Optional[type] = None  # family wrappers: the class each teacher must be
    family: str = "model"  # for messages: "segmentation", "detection"
    logit_kd: bool = True  # False: MODEL.DISTILL.KD_WEIGHT must be 0 (detectors distil features)

    # the holistic term the trainer attached (radkd_d2.engine.adversarial.HolisticCritic), or None
    _holistic: Optional[Callable[..., Dict[str, torch.Tensor]]] = None

    def __init__(self, cfg):
        self.student_class.__init__(self, cfg)  # the student, exactly as its own class builds it
        self.check_student(cfg)
        dcfg = cfg.MODEL.DISTILL
        specs = teacher_specs(cfg)
        if not self.logit_kd and dcfg.KD_WEIGHT > 0:
            raise ConfigError(
                f"MODEL.DISTILL.KD_WEIGHT = {dcfg.KD_WEIGHT}: the pixel-wise logit KD term is for "
                f"segmentation; set it to 0.0 for {type(self).__name__} and distil features via TAPS"
            )
        teachers: "OrderedDict[str, nn.Module]" = OrderedDict()
        formats: Dict[str, str] = {}
        for spec in specs:
            teacher, tcfg = build_teacher(spec.config_file, spec.weights, device=cfg.MODEL.DEVICE,
                                          strict=spec.strict, opts=spec.opts)
            self.check_teacher(teacher, spec)
            teachers[spec.name or "teacher"] = teacher
            formats[spec.name or "teacher"] = tcfg.INPUT.FORMAT
        self.input_format = cfg.INPUT.FORMAT
        self.distill_specs = OrderedDict((s.name or "teacher", s) for s in specs)
        self.teacher_formats = formats
        self.teacher_dtypes = {n: getattr(torch, s.dtype) for n, s in self.distill_specs.items()}
        self.distill_taps = self._taps(dcfg, specs)
        self.kd_temperature = float(dcfg.KD_TEMPERATURE)
        self.mixed_kd = len(specs) > 1 and dcfg.KD_WEIGHT > 0
        self._frames(teachers, shared=dcfg.SHARED_PADDING)
        self.student_positions = self._resolve_student(self.distill_taps)
        self.teacher_positions = {n: self._resolve_teacher(n, t) for n, t in teachers.items()}
        s_shapes, t_shapes = self._probe_shapes(teachers)
        classes = model_classes(self)
        distiller = FeatureDistiller.from_config(
            cfg, self.distill_taps, s_shapes, t_shapes, num_classes=classes[1] if classes else None
        )
        if dcfg.INIT_STUDENT_FROM_TEACHER:
            init_student_from_teacher(self, next(iter(teachers.values())), dcfg.INIT_STUDENT_FROM_TEACHER)
        self.teachers = nn.ModuleDict(teachers)
        self.distiller = distiller
        for teacher in self.teachers.values():
            teacher.eval()

    # ----------------------------------------------------------------------------- checks
    def check_student(self, cfg) -> None:
        """Family-specific checks of the built student (none by default)."""

    def check_teacher(self, teacher: nn.Module, spec: TeacherSpec) -> None:
        """The teacher is of the family's class (family wrappers) and predicts the student's
        classes (where both counts are known)."""
        if self.teacher_class is not None and not isinstance(teacher, self.teacher_class):
            raise ConfigError(
                f"{spec.key}.CONFIG_FILE builds a {type(teacher).__name__}; a {self.family} "
                f"teacher must be a {self.teacher_class.__name__}"
            )
        s, t = model_classes(self), model_classes(teacher)
        if s is not None and t is not None and s[1] != t[1]:
            raise ConfigError(
                f"teacher predicts {t[1]} classes but the student {s[1]} ({s[0]}): teacher and "
                "student must be for the same data set"
            )

    # ----------------------------------------------------------------------- construction
    def _taps(self, dcfg, specs: List[TeacherSpec]) -> List[Tap]:
        if len(specs) == 1:  # loss names as with MODEL.DISTILL.TEACHER, whichever key gave it
            return parse_taps(specs[0].taps, dcfg.KD_WEIGHT, key=specs[0].taps_key)
        taps: List[Tap] = []
        for spec in specs:
            taps += parse_taps(spec.taps, teacher_name=spec.name, key=spec.taps_key)
        if dcfg.KD_WEIGHT > 0:  # one KD term against the teachers' mixed probabilities
            taps.append(Tap("logits", "logits", [("kd", float(dcfg.KD_WEIGHT))], "MODEL.DISTILL.KD_WEIGHT"))
        if not taps:
            raise ConfigError("MODEL.DISTILL.TEACHERS: no teacher has TAPS and MODEL.DISTILL.KD_WEIGHT is 0: nothing to distil")
        return taps

    def _frames(self, teachers: Dict[str, nn.Module], shared: bool) -> None:
        """The size divisibility each model's batch is padded to before its own forward, so that
        their maps cover the same image area (:func:`~radkd_d2.modeling.pair.input_frame`):
        ``self.frame`` (0: no padding beyond the model's own)."""
        s_bb = getattr(self, "backbone", None)
        frames = [
            input_frame(s_bb, t.backbone, shared=shared)
            for n, t in teachers.items()
            # a resized teacher sees another frame by design; a model without a backbone pads as it does
            if self.distill_specs[n].input_scale == 1.0 and hasattr(s_bb, "size_divisibility")
            and hasattr(getattr(t, "backbone", None), "size_divisibility")
        ]
        frame = math.lcm(*[max(1, f) for f in frames]) if frames else 0
        self.frame = frame
        self.student_pad = bool(frame) and frame != getattr(s_bb, "size_divisibility", 0)
        self.teacher_pads = {
            n: bool(frame) and self.distill_specs[n].input_scale == 1.0
            and frame != getattr(getattr(t, "backbone", None), "size_divisibility", 0)
            for n, t in teachers.items()
        }

    def _resolve_student(self, taps: List[Tap]) -> Dict[str, Position]:
        return {t.student: resolve_position(self, t.student, what="student", key=t.weight_key) for t in taps}

    def _teacher_refs(self, name: str) -> Dict[str, str]:
        """ref -> position text of teacher ``name``'s features (its taps', and its logits when
        several teachers' logits are mixed into the KD target)."""
        spec = self.distill_specs[name]
        single = len(self.distill_specs) == 1  # its taps carry no teacher name
        refs = {t.teacher_ref: (t.teacher, t.weight_key) for t in self.distill_taps if single or t.teacher_name == spec.name}
        if self.mixed_kd and spec.kd_mix > 0:  # its share of the mixed KD target
            refs.setdefault(f"{spec.name}/logits", ("logits", "MODEL.DISTILL.KD_WEIGHT"))
        return refs

    def _resolve_teacher(self, name: str, teacher: nn.Module) -> Dict[str, Position]:
        spec = self.distill_specs[name]
        what = f"teacher {spec.name!r}" if spec.name else "teacher"
        return {
            ref: resolve_position(teacher, text, what=what, key=key)
            for ref, (text, key) in self._teacher_refs(name).items()
        }

    def _probe_shapes(self, teachers: Dict[str, nn.Module]) -> Tuple[Dict[str, ShapeSpec], Dict[str, ShapeSpec]]:
        """Channels and sizes of every tapped feature, read from one whole forward of each model
        (in eval mode, no gradient) on a blank image: any module path works without declaring
        its shape, and a module called more than once is found here (later forwards stop after
        the last tapped module)."""
        side = PROBE_SIDE + (-PROBE_SIDE) % max(1, self.frame or getattr(getattr(self, "backbone", None), "size_divisibility", 1) or 1)
        probe = [{"image": torch.full((3, side, side), 128.0), "height": side, "width": side}]
        was = self.training
        nn.Module.train(self, False)
        try:
            student = self._capture_student(probe, self.student_positions, grad=False, stop_early=False)
        finally:
            nn.Module.train(self, was)
        t_feats: Dict[str, torch.Tensor] = {}
        for name, teacher in teachers.items():
            t_feats.update(self._capture_teacher(name, teacher, probe, self.teacher_positions[name], stop_early=False))
        if self.mixed_kd:
            t_feats["logits"] = self._mix(t_feats)
        return _shapes(student), _shapes(t_feats)

    # --------------------------------------------------------------------------- forwards
    def _student_inputs(self, batched_inputs: List[dict]) -> List[dict]:
        if not self.student_pad:
            return batched_inputs
        ignore = getattr(getattr(self, "sem_seg_head", None), "ignore_value", 255)
        out = []
        for x in batched_inputs:
            y = dict(x, image=_pad_to(x["image"].float(), self.frame, self.pixel_mean.detach().cpu()))
            if "sem_seg" in x:
                y["sem_seg"] = _pad_to(x["sem_seg"], self.frame, ignore)
            out.append(y)
        return out

    def _teacher_inputs(self, name: str, teacher: nn.Module, batched_inputs: List[dict]) -> List[dict]:
        """The batch as teacher ``name`` takes it: its channel order, its resize
        (INPUT_SCALE) and the pair's frame; images only (its eval forward needs nothing else)."""
        flip = {self.input_format, self.teacher_formats[name]} == {"RGB", "BGR"}
        scale = self.distill_specs[name].input_scale
        out = []
        for x in batched_inputs:
            image = x["image"]
            if flip:
                image = image.flip(0)
            if scale != 1.0:
                image = F.interpolate(image.float()[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]
            if self.teacher_pads[name]:
                image = _pad_to(image.float(), self.frame, teacher.pixel_mean.detach().cpu())
            out.append({"image": image, "height": image.shape[-2], "width": image.shape[-1]})
        return out

    def _capture_student(self, inputs: List[dict], positions: Dict[str, Position], grad: bool = True,
                         stop_early: bool = True):
        """Runs the student's own forward on ``inputs`` recording ``positions``; returns
        ``(features, its result)`` in training, the features only otherwise (``stop_early``: the
        forward ends after the last position)."""
        backbone = [INPUT.split(":")[0]] if hasattr(self, "backbone") else []
        cap = FeatureCapture(self, positions, stop_early=stop_early and not grad, pre_hooks=backbone)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()), cap:
            result = self.student_class.forward(self, inputs)
        _check_complete(cap, "the student's", type(self).__name__)
        return (cap.features, result) if grad else cap.features

    def _capture_teacher(self, name: str, teacher: nn.Module, batched_inputs: List[dict],
                         positions: Optional[Dict[str, Position]] = None, stop_early: bool = True) -> Dict[str, torch.Tensor]:
        """Teacher ``name``'s features at ``positions`` (default: its taps'); its forward stops
        after the last of them unless not ``stop_early``. With ``positions`` given, also its
        backbone input (``INPUT``)."""
        extra = positions is not None
        positions = self.teacher_positions[name] if positions is None else positions
        if not positions:
            return {}
        inputs = self._teacher_inputs(name, teacher, batched_inputs)
        pre = [INPUT.split(":")[0]] if extra and hasattr(teacher, "backbone") else []
        cap = FeatureCapture(teacher, positions, stop_early=stop_early, pre_hooks=pre)
        with self.teacher_context(self.teacher_dtypes[name], teacher), cap:
            teacher(inputs)
        _check_complete(cap, f"teacher {name!r}'s", type(teacher).__name__)
        return {k: v.float() for k, v in cap.features.items()}

    @torch.no_grad()
    def read_features(self, batched_inputs: List[dict], student: List[str], teacher: List[str],
                      teacher_name: str = "") -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Student and teacher features at any positions (aliases or module paths, distilled or
        not) for a batch, both in inference mode, each with its backbone input under
        ``"backbone:input"``: for analysis (heatmaps). ``teacher_name``: which teacher (default
        the first)."""
        name = teacher_name or next(iter(self.teachers))
        t_model = self.teachers[name]
        exclude = ("teachers", "distiller")
        s_pos = {p: resolve_position(self, p, what="student", key="--tap", exclude=exclude) for p in student}
        t_pos = {p: resolve_position(t_model, p, what="teacher", key="--tap") for p in teacher}
        was = self.training
        nn.Module.train(self, False)
        try:
            s_feats = self._capture_student(self._student_inputs(batched_inputs), s_pos, grad=False)
        finally:
            self.train(was)
        return s_feats, self._capture_teacher(name, t_model, batched_inputs, t_pos)

    def _mix(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        mixing = [s for s in self.distill_specs.values() if s.kd_mix > 0]
        return mix_teacher_logits([feats[f"{s.name}/logits"] for s in mixing], [s.kd_mix for s in mixing], self.kd_temperature)

    def teacher_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """Every teacher's tapped features (float32) for a batch, keyed by
        :attr:`~radkd_d2.modeling.distill.Tap.teacher_ref`; with several teachers and KD, also
        ``logits``: their mixed KD target."""
        feats: Dict[str, torch.Tensor] = {}
        for name, teacher in self.teachers.items():
            feats.update(self._capture_teacher(name, teacher, batched_inputs))
        if self.mixed_kd:
            feats["logits"] = self._mix(feats)
        return feats

    def attach_holistic(self, term: Optional[Callable[..., Dict[str, torch.Tensor]]]) -> None:
        """Attach SKD's holistic term (None detaches it): a callable ``term(student_logits,
        teacher_logits, images, factor)`` returning ``{"loss_distill_holistic": scalar}``; the
        training forward then adds it to the losses, with the teacher's logits (None once
        distillation has stopped), the normalised images and the schedule's factor. Kept as a plain
        attribute, not a submodule: its critic stays out of this model's parameters, state dict,
        optimizer and DDP wrapper (the trainer owns and checkpoints it)."""
        if term is not None:
            if len(self.teachers) > 1:
                raise ConfigError("MODEL.DISTILL.HOLISTIC needs one teacher; MODEL.DISTILL.TEACHERS has several")
            self.student_positions.setdefault("logits", resolve_position(self, "logits", what="student", key="MODEL.DISTILL.HOLISTIC"))
            next(iter(self.teacher_positions.values())).setdefault("logits", resolve_position(self.teacher, "logits", what="teacher", key="MODEL.DISTILL.HOLISTIC"))
        self.__dict__["_holistic"] = term

    def loss_context(self, inputs: List[dict], student: Dict[str, torch.Tensor]) -> dict:
        """What the losses may use besides the features (see the class docstring)."""
        context: dict = {}
        images = student.get(INPUT)
        if images is not None:
            context["image_size"] = tuple(images.shape[-2:])
        first = inputs[0]
        if "instances" in first:
            context["boxes"] = [x["instances"].gt_boxes.tensor.to(self.device) for x in inputs]
        head = getattr(self, "sem_seg_head", None)
        if "sem_seg" in first and hasattr(head, "ignore_value") and images is not None:
            h, w = images.shape[-2:]
            ignore = head.ignore_value
            context["labels"] = torch.stack([
                F.pad(x["sem_seg"].to(self.device), (0, w - x["sem_seg"].shape[-1], 0, h - x["sem_seg"].shape[-2]), value=ignore)
                for x in inputs
            ])
            context["ignore_value"] = ignore
            if hasattr(head, "num_classes"):
                context["num_classes"] = head.num_classes
        return context

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.student_class.forward(self, batched_inputs)
        inputs = self._student_inputs(batched_inputs)
        student, task_losses = self._capture_student(inputs, self.student_positions)
        teacher: Dict[str, torch.Tensor] = {}

        def teacher_fn():  # the distiller calls it at most once, not at all once it has stopped
            teacher.update(self.teacher_features(batched_inputs))
            return teacher

        context = self.loss_context(inputs, student)
        losses = self.distiller.step(student, teacher_fn, task_losses, **context)
        if self.mixed_kd and teacher and self.distiller._should_log():
            self._log_teacher_kd(student, teacher, context)
        if self._holistic is not None:
            factor = self.distiller.schedule.factor(current_iteration())
            losses.update(self._holistic(student["logits"], teacher.get("logits"), student[INPUT], factor))
        return losses

    @torch.no_grad()
    def _log_teacher_kd(self, student, teacher, context) -> None:
        """Diagnostics of a mixed KD target: each teacher's own KD term against the student
        (``distill/kd_teacher/<name>``, weighted as the KD term), not optimised."""
        from detectron2.utils.events import get_event_storage

        tap = next(t for t in self.distill_taps if t.teacher_ref == "logits" and not t.teacher_name)
        kd = self.distiller.losses[f"{tap.key}__kd"]
        storage = get_event_storage()
        for spec in self.distill_specs.values():
            t = teacher.get(f"{spec.name}/logits")
            if t is not None:
                s = self.distiller.align(tap, student["logits"].float(), t)
                storage.put_scalar(f"distill/kd_teacher/{spec.name}", float(kd(s, t, **context)), smoothing_hint=False)


def _shapes(feats: Dict[str, torch.Tensor]) -> Dict[str, ShapeSpec]:
    out = {}
    for name, x in feats.items():
        if name == INPUT or not torch.is_tensor(x):
            continue
        if x.dim() == 2:
            out[name] = ShapeSpec(channels=int(x.shape[1]), height=1, width=1)
        elif x.dim() == 4:
            out[name] = ShapeSpec(channels=int(x.shape[1]), height=int(x.shape[2]), width=int(x.shape[3]))
        else:
            raise ConfigError(
                f"position {name!r} outputs a tensor of shape {tuple(x.shape)}: a distilled feature "
                "must be B x C x h x w or N x C"
            )
    return out


def _check_complete(cap: FeatureCapture, whose: str, model: str) -> None:
    missing = cap.missing()
    if missing:
        detail = ", ".join(
            f"{n!r} ({cap.positions[n].path} ran {cap.calls.get(cap.positions[n].path, 0)} times)" for n in missing
        )
        raise ConfigError(
            f"{whose} forward ({model}) did not produce position(s) {detail}: tap modules its "
            "forward runs (a teacher runs in inference mode, and so does the student when the "
            "shapes are read at construction)"
        )


_CLASSES: Dict[type, type] = {}


def distill_class(student_class: type) -> type:
    """``Distill<student_class>``: the distillation model of a stock meta-architecture (one class
    per student class, made once)."""
    if not (isinstance(student_class, type) and issubclass(student_class, nn.Module)):
        raise ConfigError(f"MODEL.DISTILL.STUDENT_META_ARCHITECTURE: {student_class!r} is not a model class")
    if issubclass(student_class, DistillMixin):
        raise ConfigError(
            f"MODEL.DISTILL.STUDENT_META_ARCHITECTURE = {student_class.__name__!r} is itself a "
            "distillation model; name the student's own meta-architecture"
        )
    cls = _CLASSES.get(student_class)
    if cls is None:
        cls = type(f"Distill{student_class.__name__}", (DistillMixin, student_class), {
            "student_class": student_class,
            "__module__": __name__,
            "__doc__": f"{student_class.__name__} student under frozen teachers (see DistillMixin).",
        })
        _CLASSES[student_class] = cls
    return cls


@META_ARCH_REGISTRY.register()
def Distill(cfg):  # noqa: N802  (a registered meta-architecture name)
    """``MODEL.META_ARCHITECTURE: "Distill"``: the distillation model of the student named by
    ``MODEL.DISTILL.STUDENT_META_ARCHITECTURE`` (any registered meta-architecture)."""
    name = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    try:
        student_class = META_ARCH_REGISTRY.get(name)
    except KeyError:
        near = sorted(k for k, _ in META_ARCH_REGISTRY if not k.startswith("Distill"))
        raise ConfigError(
            f"MODEL.DISTILL.STUDENT_META_ARCHITECTURE = {name!r} is not a registered "
            f"meta-architecture; registered: {near}"
        ) from None
    return distill_class(student_class)(cfg)


@META_ARCH_REGISTRY.register()
class DistillSemanticSegmentor(DistillMixin, SemanticSegmentor):
    """A stock ``SemanticSegmentor`` student (same parameter names, same config keys) under a
    frozen ``SemanticSegmentor`` teacher; adds SKD's holistic term when the trainer attaches it."""

    student_class = SemanticSegmentor
    teacher_class = SemanticSegmentor
    family = "segmentation"


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillMixin, RetinaNet):
    """A stock ``RetinaNet`` student under a frozen ``RetinaNet`` teacher; features only (no
    logit KD). Losses get ``boxes`` and ``image_size`` (FGD, FKD)."""

    student_class = RetinaNet
    teacher_class = RetinaNet
    family = "detection"
    logit_kd = False


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillMixin, GeneralizedRCNN):
    """A stock ``GeneralizedRCNN`` student (Faster or Mask R-CNN) under a frozen R-CNN teacher;
    features only. Losses get ``boxes`` and ``image_size`` (FGD, FKD)."""

    student_class = GeneralizedRCNN
    teacher_class = GeneralizedRCNN
    family = "detection"
    logit_kd = False

    def check_student(self, cfg) -> None:
        if self.proposal_generator is None:
            raise ConfigError(
                "MODEL.PROPOSAL_GENERATOR.NAME builds no proposal generator: DistillGeneralizedRCNN "
                "trains a student with an RPN (Faster or Mask R-CNN); choose one of ['RPN']"
            )


_CLASSES.update({SemanticSegmentor: DistillSemanticSegmentor, RetinaNet: DistillRetinaNet,
                 GeneralizedRCNN: DistillGeneralizedRCNN})
