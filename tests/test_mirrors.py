"""The Detectron2 code radkd-d2 copies (radkd_d2/engine/mirrors.py) is unchanged, and the
copies behave: AMP steps on the CPU, the CPU-DDP trainer builds."""
import itertools
import logging

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from radkd_d2.engine import mirrors
from radkd_d2.engine.train_loop import MixedPrecisionTrainer


def test_the_mirrored_detectron2_code_is_unchanged():
    """Fails when a Detectron2 upgrade changes DefaultTrainer.__init__ or AMPTrainer.run_step:
    compare the copies in radkd_d2/engine/ with the new code, then update the fingerprints."""
    assert mirrors.changed_mirrors() == [], (
        f"changed since detectron2 {mirrors.DETECTRON2_VERSION}: {mirrors.changed_mirrors()}; "
        "new fingerprints: "
        + str({n: mirrors.fingerprint(fn) for n, (fn, _) in mirrors.FINGERPRINTS.items()})
    )


def test_the_distillation_models_copy_no_forward():
    """The distillation models call their student's stock forward (nothing to watch): their
    training forward is the one DistillMixin method, and no family class defines its own."""
    from radkd_d2.modeling.meta_arch import (
        DistillGeneralizedRCNN, DistillMixin, DistillRetinaNet, DistillSemanticSegmentor,
    )

    for cls in (DistillSemanticSegmentor, DistillRetinaNet, DistillGeneralizedRCNN):
        assert "forward" not in vars(cls) and cls.forward is DistillMixin.forward
    assert not any("forward" in name for name in mirrors.FINGERPRINTS)


def test_fingerprint_sees_code_not_docstrings_or_comments():
    fp = mirrors.fingerprint_source
    base = "def f(a):\n    x = a + 1\n    return x\n"
    assert fp(base) == fp('def f(a):\n    """Doc."""\n    x = a + 1  # note\n\n    return (x)\n')
    assert fp(base) == fp("    " + base.replace("\n    ", "\n        "))  # indented (a method)
    assert fp(base) != fp(base.replace("a + 1", "a + 2"))


def test_a_changed_original_is_named_in_a_warning(monkeypatch, caplog):
    name = "detectron2.engine.AMPTrainer.run_step"
    fn, _ = mirrors.FINGERPRINTS[name]
    monkeypatch.setitem(mirrors.FINGERPRINTS, name, (fn, "0" * 16))
    assert mirrors.changed_mirrors() == [name]
    with caplog.at_level(logging.WARNING):
        mirrors.warn_if_changed(logging.getLogger("test_mirrors"))
    assert name in caplog.text and mirrors.DETECTRON2_VERSION in caplog.text


class _Model(nn.Module):
    def __init__(self, as_tensor=False):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.as_tensor = as_tensor
        self.dtypes = []

    def forward(self, x):
        y = self.fc(x)
        self.dtypes.append(y.dtype)
        loss = y.float().pow(2).mean()
        return loss if self.as_tensor else {"loss_a": loss, "loss_b": 0.5 * loss}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_mixed_precision_steps_on_cpu(as_tensor):
    torch.manual_seed(0)
    model = _Model(as_tensor)
    before = model.fc.weight.detach().clone()
    data = itertools.repeat(torch.randn(3, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MixedPrecisionTrainer(model, data, opt, torch.bfloat16, "cpu")
    assert not trainer.grad_scaler.is_enabled()  # bf16 needs no scaler
    with EventStorage(0) as storage:
        for it in range(2):
            trainer.iter = it
            storage.iter = it
            trainer.run_step()
    assert model.dtypes == [torch.bfloat16, torch.bfloat16]
    assert not torch.equal(before, model.fc.weight)
    assert "total_loss" in storage.histories()
