"""The host-synchronisation counter finds each kind of read that would make a GPU wait."""
import pytest
import torch

from radkd_d2.analysis.profiling import count_sync_ops
from radkd_d2.losses import ifv_map, ifvd_loss

X = torch.randn(4, 5)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda: X.sum().item(), "aten::_local_scalar_dense"),
        (lambda: float(X.sum()), "Tensor.__float__"),
        (lambda: bool((X > 0).any()), "Tensor.__bool__"),
        (lambda: X.tolist(), "Tensor.tolist"),
        (lambda: X.cpu(), "Tensor.cpu"),
        (lambda: X[X > 0], "aten::nonzero"),
        (lambda: torch.unique(X.round()), "aten::_unique2"),
        (lambda: X.masked_select(X > 0), "aten::masked_select"),
    ],
)
def test_each_kind_of_sync_is_counted(fn, expected):
    assert expected in count_sync_ops(fn)


def test_pure_device_math_counts_nothing():
    assert count_sync_ops(lambda: (X.softmax(1) * X).sum(dim=1).clamp_min(0).mean(), repeats=3) == {}


def test_ifvd_with_class_count_matches_and_needs_no_host_read():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, :2] = 255
    labels[1, 0, 0] = 7  # beyond the class count: treated like an ignored pixel
    inferred = ifvd_loss(s, t, labels.clamp_max(2).masked_fill(labels == 255, 255))
    given = ifvd_loss(s, t, labels.clamp_max(2).masked_fill(labels == 255, 255), num_classes=3)
    assert given.item() == pytest.approx(inferred.item(), rel=1e-6)
    assert count_sync_ops(lambda: ifvd_loss(s, t, labels, num_classes=3)) == {}
    assert "Tensor.__int__" in count_sync_ops(lambda: ifvd_loss(s, t, labels))
    own = ifv_map(s, labels, num_classes=3)[1, 0, 0]
    assert own.item() == pytest.approx(1.0, rel=1e-6)  # out-of-range label: compared with itself


@pytest.mark.slow
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_temporaries():
    """After keep_freed_memory(), a step that allocates and frees 64 MiB takes no fresh pages
    from the OS in the steady state (the median of five steps) (glibc; in a subprocess, so this process keeps its allocator)."""
    import subprocess
    import sys

    code = """
import resource, torch
from radkd_d2.engine.setup import keep_freed_memory
def faults_of_step():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)  # 64 MiB, written: every page touched
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
faults_of_step()
default = faults_of_step()
assert keep_freed_memory()
faults_of_step()  # the heap grows once to hold the block
# steady state: the median step (a step may still grow the heap once more when a small block
# has taken the freed space meanwhile)
print(default, sorted(faults_of_step() for _ in range(5))[2])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    default, kept = map(int, out.stdout.split())
    assert default > 10000  # 64 MiB of 4 KiB pages re-faulted each time by default
    assert kept < 100, (default, kept)


@pytest.mark.parametrize("keep", [True, False])
def test_training_setup_keeps_freed_memory_only_when_asked(monkeypatch, tmp_path, keep):
    """start_run (what train_net runs once its checks passed) applies MODEL.CPU_KEEP_FREED_MEMORY
    on CPU; loading a config elsewhere, or checking it, does not touch the allocator."""
    from argparse import Namespace

    from conftest import REPO
    from radkd_d2.engine import setup

    calls = []
    monkeypatch.setattr(setup, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(setup, "default_setup", lambda cfg, args: None)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.CPU_KEEP_FREED_MEMORY", keep, "OUTPUT_DIR", str(tmp_path),
            "DATASETS.ROOT", str(tmp_path)]
    config = str(REPO / "configs/synthetic/pspnet_r18_tiny.yaml")
    setup.load_config(config, opts, validate=False)
    assert calls == []
    load = setup.load_config
    monkeypatch.setattr(setup, "load_config", lambda f, o: load(f, o, validate=False))
    args = Namespace(config_file=config, opts=opts)
    cfg = setup.setup_cfg(args)
    assert calls == []
    setup.start_run(cfg, args, setup._Preflight(cfg))
    assert calls == ([1] if keep else [])

