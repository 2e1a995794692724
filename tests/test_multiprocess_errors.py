"""``--num-gpus N`` (gloo on the CPU): a bad input fails as in a single-process run, one line and
exit status 2 before any process is spawned, not one traceback per process."""
import pytest

from conftest import REPO, run_train_net

SEG = REPO / "configs/synthetic/pspnet_r18_tiny.yaml"


def _one_line(proc, text):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ProcessRaisedException" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train_net: error:")]
    assert len(errors) == 1 and text in errors[0], proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts, text",
    [
        (["DATASETS.TRAIN", "('nope_train',)"], "unknown data set 'nope_train'"),
        (["SOLVER.IMS_PER_BATCH", 3], "SOLVER.IMS_PER_BATCH = 3 is not divisible by the 2 processes"),
        (["MODEL.DISTILL.CONNECTOR", "mlp"], "MODEL.DISTILL.CONNECTOR"),
    ],
)
def test_config_errors_are_one_line_before_spawning(tmp_path, opts, text):
    out = tmp_path / "out"
    proc = run_train_net("--num-gpus", 2, "--config-file", SEG, "MODEL.DEVICE", "cpu", "DATASETS.ROOT", tmp_path,
                         "OUTPUT_DIR", out, *opts, check=False)  # fmt: skip
    _one_line(proc, text)
    assert not out.exists()


@pytest.mark.slow
def test_run_folder_errors_are_one_line_before_spawning(tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 5\n")  # a run of another config
    (out / "last_checkpoint").write_text("model_final.pth")
    proc = run_train_net("--num-gpus", 2, "--resume", "--config-file", SEG, "MODEL.DEVICE", "cpu", "DATASETS.ROOT",
                         tmp_path, "OUTPUT_DIR", out, check=False)  # fmt: skip
    _one_line(proc, f"{out}")
    assert "SOLVER.MAX_ITER" in proc.stderr  # the changed key is listed
