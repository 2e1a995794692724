"""MODEL.WEIGHTS given as a URL (every COCO config has a ``detectron2://`` one): fetched, or
found in Detectron2's download cache, in the start-up checks; without network one line names
the URL and the cache file a user can place by hand, and nothing is written to OUTPUT_DIR."""
import os
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from conftest import REPO, load_cfg
from radkd_d2.modeling.teacher import url_cache_path

SEG = REPO / "configs/synthetic/pspnet_r18_tiny.yaml"
# a host name that never resolves (RFC 2606): no request leaves the machine
URL = "https://weights.invalid/releases/student/model_final_0123.pth"


def test_cache_path_follows_detectron2s_handlers(monkeypatch, tmp_path):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    assert url_cache_path(URL) == tmp_path / "releases/student/model_final_0123.pth"
    zoo = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert url_cache_path(zoo) == tmp_path / "detectron2/ImageNetPretrained/MSRA/R-50.pkl"


def _train(tmp_path, cache, *opts):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", FVCORE_CACHE=str(cache))
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(SEG), "MODEL.DEVICE", "cpu",
           "DATASETS.ROOT", str(tmp_path / "data"), "MODEL.WEIGHTS", URL, "SOLVER.MAX_ITER", "1",
           "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path / "out"), *map(str, opts)]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_unreachable_student_url_fails_before_writing_then_a_cached_file_is_used(tmp_path):
    cache = tmp_path / "cache"
    proc = _train(tmp_path, cache)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net: error: could not fetch the model's weights MODEL.WEIGHTS = ")
    assert URL in last and str(cache / "releases/student/model_final_0123.pth") in last, last
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    # the file put there by hand is used as it is, without the network
    cfg = load_cfg(SEG, "MODEL.WEIGHTS", "", data_root=tmp_path / "data", validate=False)
    target = cache / "releases/student/model_final_0123.pth"
    target.parent.mkdir(parents=True, exist_ok=True)  # the failed download made the folder
    torch.save({"model": build_model(cfg).state_dict()}, target)
    proc = _train(tmp_path, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()
