"""tools/train_net.py end to end on the synthetic data: training, evaluation, checkpoints,
one process and two (gloo on CPU), segmentation and detection."""
import pytest
import torch

from conftest import REPO, read_metrics, run_train_net

SMALL_DATA = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", 16, "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64,
]
SEG = "configs/synthetic/pspnet_r18_tiny.yaml"
DET = "configs/synthetic/retinanet_r18_tiny.yaml"


def seg_opts(data_root, out, iters=20):
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root, "OUTPUT_DIR", out, *SMALL_DATA,
        "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)", "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", iters,
        "SOLVER.CHECKPOINT_PERIOD", iters,
    ]


@pytest.fixture(scope="module")
def trained_seg(data_root, tmp_path_factory):
    """A tiny PSPNet trained for 20 iterations (reused as a teacher by distillation tests)."""
    out = tmp_path_factory.mktemp("seg_run")
    run_train_net("--config-file", REPO / SEG, *seg_opts(data_root, out))
    return out


def test_seg_train_writes_metrics_and_checkpoint(trained_seg):
    rows = read_metrics(trained_seg)
    assert max(r["iteration"] for r in rows) >= 19
    assert any("total_loss" in r for r in rows)
    final = [r for r in rows if "sem_seg/mIoU" in r]
    assert final and 0.0 <= final[-1]["sem_seg/mIoU"] <= 100.0 and "sem_seg/pACC" in final[-1]
    ckpt = torch.load(trained_seg / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] >= 19 and "sem_seg_head.predictor.weight" in ckpt["model"]
    assert (trained_seg / "config.yaml").is_file()


@pytest.mark.slow
def test_best_checkpoint_keeps_the_best_evaluation(data_root, tmp_path):
    proc = run_train_net(
        "--config-file", REPO / SEG, *seg_opts(data_root, tmp_path, iters=12),
        "TEST.EVAL_PERIOD", 3, "TEST.BEST_CHECKPOINT_METRIC", "sem_seg/mIoU",
    )
    # every evaluation's mIoU, in order, from the copypaste lines (metrics.json keeps only the
    # last of those between two of its writes)
    lines = (proc.stdout + proc.stderr).splitlines()
    evals = [float(nxt.split("copypaste: ")[1].split(",")[0])
             for line, nxt in zip(lines, lines[1:]) if line.endswith("copypaste: mIoU,fwIoU,mACC,pACC")]
    assert len(evals) == 4, evals  # iterations 3, 6, 9, 12
    best = max(range(4), key=lambda k: (evals[k], -k))  # the first of equal bests is kept
    ckpt = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    # a periodic evaluation is stored at the iteration before its count, the final one at 12
    assert ckpt["iteration"] == [2, 5, 8, 12][best], (evals, ckpt["iteration"])


@pytest.mark.slow
def test_seg_eval_only_reproduces_final_miou(trained_seg, data_root, tmp_path):
    proc = run_train_net(
        "--config-file", REPO / SEG, "--eval-only", *seg_opts(data_root, tmp_path),
        "MODEL.WEIGHTS", trained_seg / "model_final.pth",
    )
    final = [r for r in read_metrics(trained_seg) if "sem_seg/mIoU" in r][-1]
    assert f"{final['sem_seg/mIoU']:.4f}"[:-1] in proc.stdout + proc.stderr


@pytest.mark.slow
def test_seg_train_two_processes_gloo(data_root, tmp_path):
    proc = run_train_net(
        "--config-file", REPO / SEG, "--num-gpus", 2, *seg_opts(data_root, tmp_path, iters=10)
    )
    rows = read_metrics(tmp_path)
    assert any("sem_seg/mIoU" in r for r in rows)
    assert (tmp_path / "model_final.pth").is_file()
    assert "world size: 2" in (proc.stdout + proc.stderr).lower() or "Rank of current process: 0. World size: 2" in (proc.stdout + proc.stderr)


@pytest.mark.slow
def test_detection_train_and_coco_eval(data_root, tmp_path):
    run_train_net(
        "--config-file", REPO / DET, "MODEL.DEVICE", "cpu", "DATASETS.ROOT", data_root,
        "OUTPUT_DIR", tmp_path, *SMALL_DATA, "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", 64,
        "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64, "SOLVER.IMS_PER_BATCH", 4,
        "SOLVER.MAX_ITER", 10, "SOLVER.STEPS", "(8,)", "SOLVER.WARMUP_ITERS", 2,
    )
    final = [r for r in read_metrics(tmp_path) if "bbox/AP" in r]
    assert final, "COCOEvaluator results missing from metrics.json"
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert f"bbox/{k}" in final[-1]
    assert list(tmp_path.rglob("coco_instances_results.json")), "COCOEvaluator wrote no results"
