"""Shared test helpers: seeded CPU runs, config loading, and train_net in a subprocess."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADKD_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root shared by the session (synthetic data is generated there once)."""
    return tmp_path_factory.mktemp("datasets")


def load_cfg(config: str | Path, *opts, data_root: Path | None = None, validate: bool = True):
    """Project config from ``configs/...`` with opts; CPU; data sets rooted at ``data_root``."""
    from radkd_d2.engine.setup import load_config

    extra = ["MODEL.DEVICE", "cpu"]
    if data_root is not None:
        extra += ["DATASETS.ROOT", str(data_root)]
    return load_config(str(REPO / config), [*extra, *map(str, opts)], validate=validate)


# a CPU-sized LAD distillation (teacher PSPNet-R50 x1/8 -> student PSPNet-R18 x1/8, 64 px) for
# the runs that compare with each other (reliability, holistic term)
TINY_DISTILL = REPO / "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml"
TINY_DISTILL_OPTS = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64,
    "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "MODEL.DRN.WIDTH_MULT", 0.125, "DATALOADER.NUM_WORKERS", 0,
    "MODEL.DISTILL.TEACHER.CONFIG_FILE", REPO / "configs/synthetic/pspnet_r101_tiny.yaml",
    "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.DRN.WIDTH_MULT', 0.125, 'MODEL.DRN.DEPTH', 50]",
]  # fmt: skip


def random_teacher_checkpoint(path: Path, config: str | Path, *opts, data_root: Path) -> Path:
    """Save the (randomly initialised, seed 1) teacher of distillation ``config`` to ``path``: a
    fixed teacher for runs that compare with each other."""
    cfg = load_cfg(config, *opts, "MODEL.DISTILL.TEACHER.WEIGHTS", "", data_root=data_root, validate=False)
    torch.manual_seed(1)
    torch.save({"model": build_model(cfg).teacher.state_dict()}, path)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train_net(*args, cwd: Path | None = None, timeout: int = 1800, check: bool = True):
    """Run tools/train_net.py in a subprocess (as a user would); returns CompletedProcess.
    ``timeout`` is a hang guard only (no test depends on how fast the machine is)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [str(a) for a in args]
    if "--num-gpus" in args and "--dist-url" not in args:
        # Detectron2's default URL has one port per user: two multi-process runs at once (pytest
        # workers) would collide. A port free now; the flag goes before the KEY VALUE overrides.
        args = ["--dist-url", f"tcp://127.0.0.1:{free_port()}", *args]
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(output_dir: Path) -> list[dict]:
    """Detectron2's metrics.json: one JSON object per line."""
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines() if line]


# module fixtures that train through tools/train_net.py in a subprocess: a test using one is slow
SUBPROCESS_FIXTURES = {"distill_run", "trained_seg", "demo_student"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
