"""The guides' commands run as written (docs/guides/*.md), so the guides cannot rot.

Each guide is read in document order: a ``{code-block}`` with a ``:caption:`` is a file the
reader writes (written at that path, as a heredoc at that point of the script), every ``bash``
block is run as it stands, all in one ``bash -euo pipefail`` session from a working folder that
holds a copy of ``configs/`` and ``tools/`` -- the repository root as the reader sees it -- with
the venv's ``python`` first on PATH. Before the script runs, the test fabricates only what a
reader brings (images and labels in the layout the guide names, a checkpoint of another code
base); everything else (configs, registration, training, evaluation, export) is the guide's.
The sizes are the guides' own (tiny models, 64-pixel crops, tens of iterations).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

pytestmark = pytest.mark.slow

GUIDES = REPO / "docs" / "guides"
_FENCE = re.compile(r"^(`{3,})([^\n]*)\n(.*?)^\1[ \t]*$", re.S | re.M)


def guide_steps(text: str) -> list[tuple[str, str, str]]:
    """("file", path, content) and ("shell", "", commands) in document order."""
    steps = []
    for m in _FENCE.finditer(text):
        info, body = m.group(2).strip(), m.group(3)
        if info in ("bash", "sh", "shell"):
            steps.append(("shell", "", body))
        elif info.startswith("{code-block}"):
            lines = body.splitlines(keepends=True)
            options = {}
            while lines and lines[0].startswith(":"):
                key, _, value = lines.pop(0)[1:].partition(":")
                options[key.strip()] = value.strip()
            if lines and not lines[0].strip():
                lines.pop(0)
            if "caption" in options:
                steps.append(("file", options["caption"], "".join(lines)))
    return steps


def guide_script(text: str) -> str:
    parts = ["set -euo pipefail"]
    for kind, path, body in guide_steps(text):
        if kind == "file":
            parts.append(f"mkdir -p \"$(dirname '{path}')\"\ncat > '{path}' <<'RADKD_GUIDE_FILE'\n{body}RADKD_GUIDE_FILE")
        else:
            parts.append(body)
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ what a reader brings


def _scene(rng, h, w, classes):
    """An image of a few flat rectangles on noise, and its label map (255 on a border strip)."""
    label = np.zeros((h, w), np.uint8)
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for cls in range(1, classes):
        y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
        dy, dx = rng.integers(8, 24), rng.integers(8, 24)
        label[y : y + dy, x : x + dx] = cls
        image[y : y + dy, x : x + dx] = (60 * cls) % 256, (255 - 50 * cls) % 256, (40 * cls) % 256
    return image, label


def fabricate_own_data(work: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for i in range(count):
            image, label = _scene(rng, 64, 80, 3)
            label[:, :2] = 255
            for sub, arr in (("images", image), ("labels", label)):
                path = work / "datasets" / "my_data" / sub / split / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)


def fabricate_own_teacher(work: Path) -> None:
    """CamVid's layout (11 classes, 11 = ignore) and an mmsegmentation PSPNet checkpoint: the
    model of the guide's teacher config with random weights, saved in mmseg's key names."""
    rng = np.random.default_rng(1)
    root = work / "datasets" / "camvid"
    for split, count in (("train", 6), ("val", 3)):
        for i in range(count):
            image, label = _scene(rng, 72, 96, 11)
            label[label == 255] = 11
            Image.fromarray(image).save(_mk(root / split / f"frame{i:03d}.png"))
            Image.fromarray(label).save(_mk(root / f"{split}annot" / f"frame{i:03d}.png"))
    _mmlab_checkpoint(work, "own_teacher", "my_camvid/teacher_pspnet_r101_mmseg.yaml", "mmseg_pspnet",
                      work / "downloads" / "pspnet_r101_camvid_mmseg.pth")


def fabricate_own_detector(work: Path) -> None:
    """A COCO-format folder (boxes of flat rectangles) and an mmdetection RetinaNet checkpoint
    of the guide's teacher config."""
    rng = np.random.default_rng(2)
    root = work / "datasets" / "my_boxes"
    categories = [{"id": 1, "name": "box"}, {"id": 2, "name": "plate"}]
    for split, count in (("train", 8), ("val", 4)):
        images, annotations = [], []
        for i in range(count):
            image, label = _scene(rng, 96, 128, 3)
            Image.fromarray(image).save(_mk(root / split / f"{i:04d}.jpg"))
            images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "height": 96, "width": 128})
            for cls in (1, 2):
                ys, xs = np.nonzero(label == cls)
                if len(ys):
                    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                    })
        coco = {"images": images, "annotations": annotations, "categories": categories}
        _mk(root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    _mmlab_checkpoint(work, "own_detector", "my_boxes/teacher_retinanet_x101_mmdet.yaml", "mmdet_retinanet",
                      work / "downloads" / "retinanet_x101_mmdet.pth")


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _mmlab_checkpoint(work: Path, guide: str, config_path: str, source: str, out: Path) -> None:
    """The model the guide's config builds, random weights, in ``source``'s key names, saved the
    way OpenMMLab saves a checkpoint (``{"meta": ..., "state_dict": ...}``)."""
    import torch
    from detectron2.modeling import build_model

    from radkd_d2.checkpoint import to_source_naming
    from radkd_d2.engine.setup import load_config

    files = [(work / p, c) for k, p, c in guide_steps((GUIDES / f"{guide}.md").read_text()) if k == "file"]
    assert config_path in [str(p.relative_to(work)) for p, _ in files], f"{guide} writes no {config_path}"
    for path, content in files:  # the config and its _BASE_ files, as the guide will write them
        _mk(path).write_text(content)
    cwd = os.getcwd()
    os.chdir(work)  # _BASE_ chains and relative paths as the guide's commands see them
    try:
        torch.manual_seed(0)
        model = build_model(load_config(config_path, ["MODEL.DEVICE", "cpu"], validate=False))
    finally:
        os.chdir(cwd)
    for path, _ in files:
        path.unlink()  # the guide writes them itself
    state, unexpressed = to_source_naming(source, model.state_dict())
    assert not unexpressed, unexpressed
    torch.save({"meta": {"fabricated": "tests/test_guides.py"}, "state_dict": state}, _mk(out))


FABRICATE = {"own_data": fabricate_own_data, "own_teacher": fabricate_own_teacher, "own_detector": fabricate_own_detector}
# what each guide's last steps must have left behind
PRODUCTS = {
    "own_data": ["output/my_data/student/model_student.onnx", "output/my_data/student/model_student.pth",
                 "output/my_data/report/report.md"],
    "own_teacher": ["weights/teacher_pspnet_r101_camvid.pth", "output/camvid_mmseg/exported/model_student.ts"],
    "own_detector": ["weights/teacher_retinanet_x101.pth", "output/my_boxes/exported/model_student.onnx"],
}

# what each guide's output must say (the conversions map every key; the evaluations ran)
EXPECTED_OUTPUT = {
    "own_data": ["mIoU", "model_student.onnx"],
    "own_teacher": ["mmseg_pspnet: ", " 0 unused source keys, 0 missing target keys, 0 shape mismatches", "mIoU"],
    "own_detector": ["mmdet_retinanet: ", " 0 unused source keys, 0 missing target keys, 0 shape mismatches", "AP50"],
}


def test_every_guide_is_tested():
    assert sorted(p.stem for p in GUIDES.glob("*.md")) == sorted(FABRICATE)


@pytest.mark.parametrize("name", sorted(FABRICATE))
def test_guide_runs_as_written(name, tmp_path):
    text = (GUIDES / f"{name}.md").read_text()
    steps = guide_steps(text)
    assert any(k == "shell" for k, _, _ in steps) and any(k == "file" for k, _, _ in steps)
    work = tmp_path / "repo"
    for folder in ("configs", "tools"):
        shutil.copytree(REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    FABRICATE[name](work)
    script = work / f"{name}.sh"
    script.write_text(guide_script(text))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("DETECTRON2_DATASETS", None)
    proc = subprocess.run(["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"guide {name}: the script failed (exit {proc.returncode}):\n{out[-6000:]}"
    for text in EXPECTED_OUTPUT[name]:
        assert text in out, f"guide {name}: {text!r} is not in its output:\n{out[-3000:]}"
    for product in PRODUCTS[name]:
        assert (work / product).is_file(), f"guide {name} did not produce {product}:\n{out[-3000:]}"
