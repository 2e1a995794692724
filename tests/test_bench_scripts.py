"""The benchmark scripts run end to end at their smallest size and print every figure (their
timings are not checked here: they belong to the benchmarks)."""
import re
import subprocess
import sys

import pytest

from conftest import REPO


def run(script, *args):
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True,
                         text=True, timeout=1800, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seg", "det"])
def test_bench_distill_step_prints_ratios(task):
    out = run("bench_distill_step.py", "--task", task, "--size", "smoke", "--reps", "1", "--warmup", "0")
    assert f"task={task} size=smoke" in out
    for label in ("student train step", "teacher inference step", "distillation train step",
                  "of which connectors", "diagnostics iteration", "student inference"):
        assert re.search(rf"{label}\s+[0-9.]+ ", out), (label, out)
    assert re.search(r"ratio to floor [0-9.]+", out) and re.search(r"share of step\s+[0-9.]+%", out)
    assert re.search(r"multiply-adds [0-9.]+%", out)
    assert re.search(r"host reads in loss path\s+0 ", out), out  # the loss path never waits for a GPU
    assert re.search(r"page faults / floor's [0-9.]+", out) and re.search(r"min\.\.max [0-9.]+\.\.[0-9.]+ ms", out)


@pytest.mark.slow
def test_bench_angular_compares_both_implementations():
    # one loss (three processes); tests/losses/test_angular_losses.py checks all three numerically
    out = run("bench_angular.py", "--losses", "pad", "--shape", "2", "4", "6", "5", "--repeats", "2", "--warmup", "0")
    for impl in ("fused", "unchunked", "plain"):
        assert re.search(rf"^pad\s+{impl}\s+[0-9.]+\s+[0-9.]+\.\.[0-9.]+", out, re.M), (impl, out)


@pytest.mark.slow
def test_bench_eval_prints_throughput(tmp_path):
    out = run("bench_eval.py", "--data-root", str(tmp_path), "DATASETS.SYNTHETIC.NUM_TEST", "4",
              "DATASETS.SYNTHETIC.NUM_TRAIN", "4")
    assert "synthetic_sem_seg_test (4 images, 96x96)" in out
    assert re.search(r"model only\s+[0-9.]+ images/s", out)
    assert re.search(r"inference_on_dataset\s+[0-9.]+ images/s", out)
    assert re.search(r"mIoU of these weights\s+[0-9.]+", out)


@pytest.mark.slow
def test_bench_export_times_every_model_and_backend_and_feeds_the_report(tmp_path):
    speed = tmp_path / "speed.json"
    out = run("bench_export.py", "--size", "48", "64", "--batch", "1", "2", "--rounds", "1", "--warmup", "0",
              "--json", str(speed))
    for model in ("teacher", "student"):
        for backend in ("pytorch", "torchscript", "onnx"):
            for batch in (1, 2):
                assert re.search(rf"\| {model} \| {backend} \| 48x64 \| {batch} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|", out), (model, backend, out)
    assert re.search(r"\| teacher \| onnx \| 48x64 \| 1 \| [0-9.]+ \| [0-9.]+ \| 1\.00x \|", out)
    report = subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), str(tmp_path / "no_run"),
                             "--out", str(tmp_path / "rep"), "--speed", str(speed)], capture_output=True, text=True, cwd=REPO)
    assert report.returncode == 0, report.stderr[-2000:]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Inference speed" in md
    assert len(re.findall(r"^\| .* \| (pytorch|torchscript|onnx) \| 48x64 \| [12] \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|$", md, re.M)) == 6
