"""The installed package works without the repository: a wheel built from the project,
installed into a fresh folder outside the repo, imports, trains through its own
``python -m radkd_d2.train_net`` and builds a distillation model from a config file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_installed_outside_the_repo_builds_a_distillation_model(tmp_path):
    # build from a copy of what the wheel is made of: setuptools writes build/ next to setup.py
    src = tmp_path / "src"
    shutil.copytree(REPO / "radkd_d2", src / "radkd_d2", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "requirements.txt", "requirements-docs.txt", "README.md"):
        shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, text=True, timeout=1800,
    )
    (wheel,) = wheels.glob("radkd_d2-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=1800,
    )
    # a user's working folder: their own copy of the config files, no repository anywhere
    work = tmp_path / "work"
    shutil.copytree(REPO / "configs", work / "configs")
    script = textwrap.dedent(
        """
        import sys, radkd_d2
        from pathlib import Path
        assert Path(radkd_d2.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), radkd_d2.__file__
        from radkd_d2.engine.setup import load_config
        from radkd_d2.engine import Trainer
        cfg = load_config(
            "configs/synthetic/distill/lad_res5_pspr101_pspr18_tiny_synthetic.yaml",
            ["MODEL.DEVICE", "cpu", "MODEL.DISTILL.TEACHER.WEIGHTS", "", "MODEL.DRN.WIDTH_MULT", "0.125",
             "MODEL.DISTILL.TEACHER.OPTS", "['MODEL.DRN.WIDTH_MULT', 0.125, 'MODEL.DRN.DEPTH', 18]"],
            validate=False,
        )
        model = Trainer.build_model(cfg)
        print(type(model).__name__, type(model.teacher).__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    # -I would drop the venv's site-packages too; a plain run from outside the repo must not see
    # the editable install's source tree, which the assertion on radkd_d2.__file__ checks
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["DistillSemanticSegmentor", "SemanticSegmentor"]
    # the package's own train_net answers, from outside the repository
    help_ = subprocess.run(
        [sys.executable, "-m", "radkd_d2.train_net", "--help"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert help_.returncode == 0 and "--config-file" in help_.stdout
