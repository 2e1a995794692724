"""Every path argument of the tools is checked before any work, and each bad one gets one
message naming the flag and the file (radkd_d2/engine/inputs.py); config mistakes get one
message naming the key or the file and line (radkd_d2/engine/setup.py merge_checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, load_cfg
from radkd_d2.engine.inputs import ToolInputError, readable_checkpoint, run_tool, writable_output
from radkd_d2.errors import ConfigError, ExportError, WeightConversionError
from test_reports import _tool

SEG = "configs/synthetic/pspnet_r18_tiny.yaml"


@pytest.fixture
def files(tmp_path):
    """A good checkpoint, a truncated one, a text file, and a file where a folder is wanted."""
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return {"good": good, "truncated": truncated, "text": text, "blocker": blocker}


def test_checkpoint_and_output_checks(files, tmp_path):
    assert readable_checkpoint(files["good"], "--weights") == files["good"]
    for bad in ("truncated", "text"):
        with pytest.raises(ToolInputError, match=rf"--weights {files[bad]}: not a checkpoint"):
            readable_checkpoint(files[bad], "--weights")
    with pytest.raises(ToolInputError, match=rf"--weights {tmp_path / 'nope.pth'}: no such checkpoint"):
        readable_checkpoint(tmp_path / "nope.pth", "--weights")
    with pytest.raises(ToolInputError, match="is a folder, not a checkpoint"):
        readable_checkpoint(tmp_path, "--weights")
    with pytest.raises(ToolInputError, match=rf"{files['blocker']} is a file, so .* cannot be created"):
        writable_output(files["blocker"] / "sub" / "out.json", "--output", folder=False)
    with pytest.raises(ToolInputError, match="is a file, not a folder"):
        writable_output(files["blocker"], "--output", folder=True)
    assert writable_output(tmp_path / "new" / "deeper", "--output", folder=True) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_is_named(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ToolInputError, match=rf"--output {ro / 'x.json'}: {ro} is not writable"):
        writable_output(ro / "x.json", "--output", folder=False)


def test_run_tool_prints_one_line_and_exits_2(capsys):
    def main(argv):
        raise ToolInputError("--weights w.pth: no such checkpoint")

    with pytest.raises(SystemExit) as e:
        run_tool(main, name="export_student.py")
    assert e.value.code == 2
    assert capsys.readouterr().err == "export_student.py: error: --weights w.pth: no such checkpoint\n"


def test_export_student_names_its_inputs(files, tmp_path):
    tool = _tool("export_student")
    cfg = str(REPO / SEG)
    with pytest.raises(ToolInputError, match=rf"--weights {files['truncated']}: not a checkpoint"):
        tool.main(["--config-file", cfg, "--weights", str(files["truncated"]), "--output", str(tmp_path / "o")])
    with pytest.raises(ToolInputError, match=r"--config-file .*nope.yaml: no such config file"):
        tool.main(["--config-file", str(tmp_path / "nope.yaml"), "--weights", str(files["good"]), "--output", "o"])
    with pytest.raises(ToolInputError, match="a_file is a file, so"):
        tool.main(["--config-file", cfg, "--weights", str(files["good"]), "--output", str(files["blocker"] / "o")])


def test_eval_exported_checks_model_dataset_and_output_first(files, tmp_path):
    tool = _tool("eval_exported")
    with pytest.raises(ToolInputError, match=rf"--model {tmp_path / 'm.onnx'}: no such exported model"):
        tool.main(["--model", str(tmp_path / "m.onnx")])
    # a garbage .onnx with a valid sidecar: named, with what it is not
    model = tmp_path / "m.onnx"
    model.write_bytes(b"garbage")
    sidecar = {"format": "onnx", "task": "sem_seg", "input_format": "RGB", "num_classes": 6,
               "size_divisibility": 8, "fixed_size": None, "batch": None, "input_names": ["images"],
               "output_names": ["logits"], "config": "c.yaml"}  # fmt: skip
    (tmp_path / "m.onnx.json").write_text(json.dumps(sidecar))
    with pytest.raises(ExportError, match=rf"exported model {model} cannot be loaded as onnx"):
        tool.main(["--model", str(model)])
    # an unwritable --output fails before the evaluation
    with pytest.raises(ToolInputError, match="a_file is a file"):
        tool.main(["--model", str(model), "--output", str(files["blocker"] / "m.json")])


def test_eval_exported_output_into_a_missing_folder_is_written(tmp_path, monkeypatch):
    """--output naming a folder that does not exist yet: the metrics are written there (it was
    an error only after the whole evaluation)."""
    tool = _tool("eval_exported")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    monkeypatch.setattr(tool, "evaluate_exported", lambda *a: ({"sem_seg": {"mIoU": 12.5}}, None))
    out = tmp_path / "new" / "deeper" / "metrics.json"
    tool.main(["--model", str(model), "--output", str(out)])
    assert json.loads(out.read_text()) == {"sem_seg": {"mIoU": 12.5}}


def test_unknown_dataset_suggests_close_names():
    from radkd_d2.engine.exported import check_dataset_name

    load_cfg(SEG, validate=False)  # registers the data sets
    with pytest.raises(ExportError, match=r"--dataset 'camvid_vall' is not a registered data set; did you mean camvid_val"):
        check_dataset_name("camvid_vall", "--dataset")


def test_convert_weights_text_file_is_not_a_pickle_problem(files, tmp_path):
    from radkd_d2.checkpoint.convert import load_source_state_dict

    for trust in (False, True):
        with pytest.raises(WeightConversionError, match="is not a PyTorch checkpoint.*--trust-pickle would not help"):
            load_source_state_dict(str(files["text"]), trust_pickle=trust)
    tool = _tool("convert_weights")
    with pytest.raises(ToolInputError, match="--input .*nope.pth: no such checkpoint"):
        tool.main(["--source", "torchvision_resnet", "--input", str(tmp_path / "nope.pth"), "--output", "o.pth"])
    with pytest.raises(ToolInputError, match="--output .*a_file/o.pth: .*a_file is a file"):
        tool.main(["--source", "torchvision_resnet", "--input", str(files["good"]), "--output",
                   str(files["blocker"] / "o.pth")])  # fmt: skip


def test_report_heatmaps_and_plots_name_missing_inputs(files, tmp_path):
    with pytest.raises(ToolInputError, match=r"--speed .*none.json: no such JSON file"):
        _tool("report").main([str(tmp_path), "--speed", str(tmp_path / "none.json")])
    with pytest.raises(ToolInputError, match="a_file: is a file, not a folder"):
        _tool("report").main([str(tmp_path), "--out", str(files["blocker"])])
    with pytest.raises(ToolInputError, match="no metrics.json"):
        _tool("plot_magnitudes").main([str(tmp_path)])
    with pytest.raises(ToolInputError, match=rf"--weights {files['text']}: not a checkpoint"):
        _tool("heatmaps").main(["--config", str(REPO / SEG), "--weights", str(files["text"])])
    with pytest.raises(ToolInputError, match=r"--images .*nope.png: no such image"):
        _tool("heatmaps").main(["--config", str(REPO / SEG), "--images", str(tmp_path / "nope.png")])


# ---------------------------------------------------------------------------- config mistakes


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.DISTILL.TAPZ", "[]"], "MODEL.DISTILL.TAPZ is not a config key (command-line override); did you mean MODEL.DISTILL.TAPS?"),
        (["SOLVER.BASE_LR"], "the KEY VALUE overrides have an odd number of items (3): every key needs a value"),
        (["DATASETS.TEST", "camvid_val"], "DATASETS.TEST takes a tuple, e.g. ('synthetic_sem_seg_val',); 'camvid_val' is a single string: write \"('camvid_val',)\""),
        (["SOLVER.MAX_ITER", "1.5"], "SOLVER.MAX_ITER takes a int (default"),
        (["SOLVER.BASE_LR", "-0.01"], "SOLVER.BASE_LR = -0.01 is out of range; it must be > 0"),
        (["SOLVER.MOMENTUM", "1.5"], "SOLVER.MOMENTUM = 1.5 is out of range; it must be >= 0 and <= 1"),
        (["SOLVER.WEIGHT_DECAY", "-1.0"], "SOLVER.WEIGHT_DECAY = -1.0 is out of range"),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD = 0 is out of range; it must be >= 1"),
        (["MODEL.DISTILL.KD_TEMPERATURE", "0"], "MODEL.DISTILL.KD_TEMPERATURE = 0.0 is out of range; it must be > 0"),
        (["--resume"], "--resume came after the config overrides"),
    ],
    ids=lambda x: x if isinstance(x, str) else x[0],
)
def test_config_mistakes_are_one_message(opts, message):
    from radkd_d2.engine.setup import _explain_misplaced_flags

    with pytest.raises(ConfigError) as e:
        _explain_misplaced_flags(opts)
        load_cfg(SEG, *opts)
    assert message in str(e.value)


def test_an_integer_for_a_float_key_is_that_float():
    cfg = load_cfg(SEG, "MODEL.DISTILL.KD_TEMPERATURE", "2")
    assert cfg.MODEL.DISTILL.KD_TEMPERATURE == 2.0 and isinstance(cfg.MODEL.DISTILL.KD_TEMPERATURE, float)


def test_config_file_mistakes_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  WEIGHTS: [\n")
    with pytest.raises(ConfigError, match=rf"config file {bad}: YAML syntax error at line 3, column 1"):
        load_cfg(bad)
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "missing/Base.yaml"\nSEED: 1\n')
    with pytest.raises(ConfigError, match=rf"config file {child} asks for _BASE_ '{tmp_path}/missing/Base.yaml', which does not exist"):
        load_cfg(child)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f'_BASE_: "{REPO / SEG}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    with pytest.raises(ConfigError, match=rf"SOLVER.BASE_LRR is not a config key \(in {typo}\); did you mean SOLVER.BASE_LR"):
        load_cfg(typo)


@pytest.mark.slow
def test_train_net_config_mistake_is_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(REPO / SEG),
                           "SOLVER.BASE_LR", "0.1", "--eval-only", "OUTPUT_DIR", str(tmp_path / "o")],
                          env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_net: error: --eval-only came after the config overrides" in proc.stderr
    assert not (tmp_path / "o").exists()
