"""A run folder belongs to one run; a failing process ends the whole job; --eval-only scores
what the user meant; every start-up refusal is one message with nothing written
(radkd_d2/engine/guard.py, radkd_d2/engine/setup.py, radkd_d2/train_net.py)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, free_port, load_cfg, read_metrics, run_train_net
from radkd_d2.engine.guard import RunLock, config_changes, weights_problems
from radkd_d2.errors import RunFolderError

SEG = REPO / "configs/synthetic/pspnet_r18_tiny.yaml"


def _small(root, out, iters=3, *extra):
    return ["MODEL.DEVICE", "cpu", "DATASETS.ROOT", root, "DATASETS.SYNTHETIC.NUM_TRAIN", 8,
            "DATASETS.SYNTHETIC.NUM_VAL", 4, "DATASETS.SYNTHETIC.SIZE", 64, "INPUT.SEM_SEG.CROP_SIZE", "(64, 64)",
            "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "SOLVER.MAX_ITER", iters,
            "SOLVER.CHECKPOINT_PERIOD", iters, "TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", out, *extra]  # fmt: skip


def _popen(*args):
    """train_net as a user starts it from a terminal: Ctrl-C (SIGINT) reaches it even when this
    test runs where SIGINT is ignored (a background shell, CI)."""
    from radkd_d2.analysis.launch import default_sigint

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(REPO / "tools/train_net.py"), *map(str, args)]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


def _refused(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr[-3000:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A finished 3-iteration run, for the relaunch and --eval-only cases."""
    out = tmp_path_factory.mktemp("guard") / "run"
    run_train_net("--config-file", SEG, *_small(data_root, out), timeout=1800)
    return out


# ------------------------------------------------------------------------- one folder, one run


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    """flock semantics: a second holder is refused with the first's pid and command; a killed
    holder leaves the file but not the lock."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from radkd_d2.engine.guard import RunLock; "
        "RunLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (str(REPO), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    lock = RunLock(tmp_path)
    assert lock.held_by_another()
    with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by another run \(pid {holder.pid} on "):
        lock.acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".run.lock").is_file() and not lock.held_by_another()
    lock.acquire()  # a killed run's lock never blocks the next one


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_refuses(tmp_path, data_root):
    out = tmp_path / "run"
    t0 = time.monotonic()
    first = _popen("--config-file", SEG, *_small(data_root, out, 100000))
    # the second starts once the first holds the folder
    while not (out / ".run.lock").is_file() and first.poll() is None:
        time.sleep(0.2)
    second = _popen("--config-file", SEG, *_small(data_root, out, 100000))
    _, err2 = second.communicate(timeout=1800)
    took = time.monotonic() - t0
    alive = first.poll() is None
    first.send_signal(signal.SIGINT)  # Ctrl-C: the first run stops cleanly
    first.communicate(timeout=1800)
    assert alive, "the first run ended before the second was refused"
    _refused(subprocess.CompletedProcess([], second.returncode, "", err2), f"OUTPUT_DIR {out} is in use by another run",
             f"pid {first.pid}")  # fmt: skip
    # one run's rows only: every iteration once
    its = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert its == sorted(set(its))
    print(f"two-run lock: the second run refused {took:.1f} s after the first started")


@pytest.mark.slow
def test_killed_run_resumes_despite_its_lock_file(tmp_path, data_root):
    out = tmp_path / "run"
    opts = _small(data_root, out, 30, "SOLVER.CHECKPOINT_PERIOD", 2)
    run = _popen("--config-file", SEG, *opts)
    while not (out / "last_checkpoint").is_file() and run.poll() is None:
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert (out / ".run.lock").is_file() and not (out / "model_final.pth").exists()
    proc = run_train_net("--config-file", SEG, "--resume", *opts, timeout=1800)
    assert "Resuming from" in proc.stdout + proc.stderr or "resume" in (out / "log.txt").read_text().lower()
    assert (out / "model_final.pth").is_file()


@pytest.mark.slow
def test_relaunch_with_another_config_refuses_and_keeps_the_run(trained, data_root):
    before = (trained / "config.yaml").read_text()
    proc = run_train_net("--config-file", SEG, *_small(data_root, trained, 3, "MODEL.DRN.WIDTH_MULT", 0.5),
                         check=False, timeout=1800)
    _refused(proc, f"OUTPUT_DIR {trained} holds a run with another config", "MODEL.DRN.WIDTH_MULT: 0.25 -> 0.5",
             "--replace-run")
    assert (trained / "config.yaml").read_text() == before
    # the same config again, without --resume: a second run would mix into the first's files
    proc = run_train_net("--config-file", SEG, *_small(data_root, trained, 3), check=False, timeout=1800)
    _refused(proc, f"OUTPUT_DIR {trained} already holds a run", "--resume continues it")


@pytest.mark.slow
def test_replace_run_moves_the_old_run_aside(tmp_path, data_root):
    out = tmp_path / "run"
    run_train_net("--config-file", SEG, *_small(data_root, out, 2), timeout=1800)
    old_metrics = (out / "metrics.json").read_text()
    run_train_net("--config-file", SEG, "--replace-run", *_small(data_root, out, 3), timeout=1800)
    (aside,) = out.glob("replaced-*")
    assert (aside / "metrics.json").read_text() == old_metrics and (aside / "model_final.pth").is_file()
    assert "MAX_ITER: 2" in (aside / "config.yaml").read_text() and "MAX_ITER: 3" in (out / "config.yaml").read_text()
    assert [r["iteration"] for r in read_metrics(out) if "total_loss" in r][-1] == 2


def test_config_changes_ignore_where_a_run_runs():
    old = {"MODEL": {"DEVICE": "cpu", "WEIGHTS": ""}, "SOLVER": {"STEPS": [1, 2]}, "DATALOADER": {"NUM_WORKERS": 2}}
    new = {"MODEL": {"DEVICE": "cuda", "WEIGHTS": "a.pth"}, "SOLVER": {"STEPS": (1, 2)}, "DATALOADER": {"NUM_WORKERS": 0}}
    assert config_changes(old, new) == [("MODEL.WEIGHTS", "", "a.pth")]
    # a key added by a later version of the code, at its default, is no change; otherwise it is
    newer = {**new, "SOLVER": {"STEPS": [1, 2], "NEW_KEY": 0.5}}
    assert config_changes(new, newer, defaults={"SOLVER": {"NEW_KEY": 0.5}}) == []
    assert config_changes(new, newer, defaults={"SOLVER": {"NEW_KEY": 1.0}}) == [("SOLVER.NEW_KEY", "<absent>", 0.5)]


# ------------------------------------------------------------------------ a failing process


@pytest.mark.slow
def test_a_failing_process_ends_the_whole_job(tmp_path, data_root):
    """--num-gpus 2 on CPU, one damaged training image: whichever process reads it fails, the
    other is ended, and the console shows the failing process's error, within seconds (the
    barrier after a failure used to block both until gloo's 30-minute timeout)."""
    from detectron2.data import DatasetCatalog

    root = tmp_path / "data"
    # 2 images per process: the PSP head's pooled BatchNorm needs more than one
    small = _small(root, tmp_path / "out", 20, "SOLVER.IMS_PER_BATCH", 4)
    load_cfg(SEG, *small[2:-2], data_root=root)
    files = [d["file_name"] for d in DatasetCatalog.get("synthetic_sem_seg_train")]
    Path(files[3]).write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    t0 = time.monotonic()
    proc = run_train_net("--config-file", SEG, "--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                         *small, check=False, timeout=900)  # fmt: skip (a hang guard, below gloo's 30 min)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert f"cannot read {files[3]}" in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]  # the failing process and the cause, on one line
    assert re.match(rf"train_net: error: process \d: DataError: cannot read {re.escape(files[3])}", last), last
    print(f"failing rank: job ended in {took:.1f} s")
    # one process: the same cause on the last line (Detectron2 has logged where it happened)
    proc = run_train_net("--config-file", SEG, *_small(root, tmp_path / "out1", 20, "SOLVER.IMS_PER_BATCH", 4), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"train_net: error: cannot read {files[3]}")


# --------------------------------------------------------------------------------- --eval-only


@pytest.mark.slow
def test_eval_only_refuses_without_weights_or_test_set(tmp_path, data_root, trained):
    out = tmp_path / "eval"
    proc = run_train_net("--config-file", SEG, "--eval-only", *_small(data_root, out), check=False, timeout=1800)
    _refused(proc, "--eval-only needs trained weights: MODEL.WEIGHTS is empty")
    weights = ["MODEL.WEIGHTS", trained / "model_final.pth"]
    proc = run_train_net("--config-file", SEG, "--eval-only", *_small(data_root, out, 3, *weights, "DATASETS.TEST", "()"),
                         check=False, timeout=1800)  # fmt: skip
    _refused(proc, "--eval-only with DATASETS.TEST () has nothing to evaluate")
    assert not out.exists()


@pytest.mark.slow
def test_eval_only_refuses_weights_of_another_model(tmp_path, data_root, trained):
    out = tmp_path / "eval"
    proc = run_train_net("--config-file", SEG, "--eval-only", *_small(data_root, out, 3, "MODEL.DRN.WIDTH_MULT", 0.5,
                         "MODEL.WEIGHTS", trained / "model_final.pth"), check=False, timeout=1800)  # fmt: skip
    _refused(proc, "does not match the model", "keys with a different shape", "sem_seg_head.bottleneck.weight",
             "MODEL.WEIGHTS_PARTIAL True")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "truncated", "text"])
def test_eval_only_names_an_unusable_weights_file(tmp_path, data_root, trained, damage):
    bad = tmp_path / "weights.pth"
    if damage == "truncated":
        bad.write_bytes((trained / "model_final.pth").read_bytes()[:5000])
    elif damage == "text":
        bad.write_text("not a checkpoint\n")
    out = tmp_path / "eval"
    proc = run_train_net("--config-file", SEG, "--eval-only", *_small(data_root, out, 3, "MODEL.WEIGHTS", bad),
                         check=False, timeout=1800)
    why = "does not exist" if damage == "missing" else "cannot be read (truncated, damaged or not a checkpoint)"
    _refused(proc, f"checkpoint '{bad}' {why}")
    assert not out.exists()


@pytest.mark.slow
def test_eval_only_in_the_run_folder_keeps_its_config(data_root, trained):
    before = (trained / "config.yaml").read_text()
    proc = run_train_net("--config-file", SEG, "--eval-only",
                         *_small(data_root, trained, 3, "MODEL.WEIGHTS", trained / "model_final.pth"), timeout=1800)
    assert "mIoU" in proc.stdout + proc.stderr
    assert (trained / "config.yaml").read_text() == before
    assert "model_final.pth" in (trained / "config_eval.yaml").read_text()


@pytest.mark.slow
def test_empty_training_set_and_uneven_batch_are_named(tmp_path, data_root):
    out = tmp_path / "out"
    proc = run_train_net("--config-file", SEG, *_small(data_root, out, 3, "DATASETS.TRAIN", "()"), check=False,
                         timeout=1800)  # fmt: skip
    _refused(proc, "DATASETS.TRAIN is empty: name a training set")
    proc = run_train_net("--config-file", SEG, "--num-gpus", 2, "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                         *_small(data_root, out, 3, "SOLVER.IMS_PER_BATCH", 3), check=False, timeout=1800)  # fmt: skip
    assert proc.returncode != 0 and "SOLVER.IMS_PER_BATCH = 3 is not divisible by the 2 processes" in proc.stderr
    assert not out.exists()


def test_weights_folder_is_named(tmp_path):
    from radkd_d2.engine.guard import read_checkpoint
    from radkd_d2.errors import WeightsLoadError

    with pytest.raises(WeightsLoadError, match="is a folder: name the .pth file in it"):
        read_checkpoint(None, str(tmp_path))


# ------------------------------------------------------------------------------------ weights


def test_weights_problems_scope_and_distillation_keys():
    model = {"backbone.body.a": (2,), "backbone.body.b": (3,), "sem_seg_head.w": (4,), "distiller.c": (1,),
             "teachers.teacher.x": (5,)}  # fmt: skip
    # a backbone file fills its scope; the head, the connectors and the teacher are not missing
    assert weights_problems(model, {"backbone.body.a": (2,), "backbone.body.b": (3,)}) == ([], [], [], "backbone.body.")
    # a key of the scope absent, one of another shape, one the model lacks
    missing, unexpected, shapes, _ = weights_problems(model, {"backbone.body.a": (9,), "backbone.body.z": (1,)})
    assert (missing, unexpected, shapes) == (["backbone.body.b"], ["backbone.body.z"], [("backbone.body.a", (9,), (2,))])
    # a plain student's checkpoint into a distillation: connectors start afresh
    full = {"backbone.body.a": (2,), "backbone.body.b": (3,), "sem_seg_head.w": (4,)}
    assert weights_problems(model, full)[:3] == ([], [], [])
    # a distillation's checkpoint into the plain student: its connectors are dropped
    plain = {k: v for k, v in full.items()}
    assert weights_problems(plain, {**full, "distiller.c": (1,)})[:3] == ([], [], [])
    # module. prefixes (DDP) are stripped
    assert weights_problems(plain, {f"module.{k}": v for k, v in full.items()})[:3] == ([], [], [])


def test_training_start_checks_weights_before_writing(tmp_path, data_root):
    """A training run whose MODEL.WEIGHTS do not fit refuses before OUTPUT_DIR exists; with
    MODEL.WEIGHTS_PARTIAL it loads the matching part."""
    from detectron2.modeling import build_model

    from radkd_d2.engine.guard import check_model_weights
    from radkd_d2.engine.train_loop import AtomicCheckpointer
    from radkd_d2.errors import WeightsLoadError

    cfg = load_cfg(SEG, data_root=data_root)
    model = build_model(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("sem_seg_head.bottleneck")}
    path = tmp_path / "part.pth"
    torch.save({"model": state}, path)
    ckpt = AtomicCheckpointer(model)
    with pytest.raises(WeightsLoadError, match=r"6 missing keys:\n  sem_seg_head.bottleneck.norm.bias\n(.|\n)*  sem_seg_head.bottleneck.weight"):
        check_model_weights(model, ckpt, str(path), partial=False)
    check_model_weights(model, ckpt, str(path), partial=True)  # logged, not raised
    with pytest.raises(WeightsLoadError, match="sem_seg_head.bottleneck.weight"):
        ckpt.load(str(path), checkpointables=[])  # the loader itself is strict too
    ckpt.partial = True
    ckpt.load(str(path), checkpointables=[])


def _no_flock(monkeypatch):
    import errno

    import radkd_d2.engine.guard as guard

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(guard.fcntl, "flock", flock)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_without_flock_an_owner_file_stands_in(tmp_path, monkeypatch):
    """A file system without flock (Lustre without -o flock): no raw OSError, no leaked
    descriptor; the exclusive owner file guards the folder, a live holder is refused with what
    to do, a dead one (killed on this host) is taken over."""
    _no_flock(monkeypatch)
    before = _open_fds()
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    assert _open_fds() == before  # nothing held open, nothing leaked
    owner = tmp_path / "run" / ".run.owner"
    assert str(os.getpid()) in owner.read_text()
    assert RunLock(tmp_path / "run").held_by_another()
    with pytest.raises(RunFolderError, match=r"in use by another run \(pid %d.*delete .*\.run\.owner" % os.getpid()):
        RunLock(tmp_path / "run").acquire()
    assert _open_fds() == before
    # a holder that was killed: its pid is gone, the next run takes the folder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner.write_text(owner.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {dead.pid}'))
    assert not RunLock(tmp_path / "run").held_by_another()
    RunLock(tmp_path / "run").acquire()
    assert str(os.getpid()) in owner.read_text()
    # a holder on another host cannot be checked: refused, with the file to delete named
    owner.write_text('{"pid": 1, "host": "elsewhere", "started": 0, "command": "x"}')
    with pytest.raises(RunFolderError, match="on elsewhere.*no file locks"):
        RunLock(tmp_path / "run").acquire()


@pytest.mark.slow
def test_resume_of_a_finished_run_writes_nothing_and_cannot_go_backwards(trained, data_root):
    """--resume of a finished run: nothing trained, no second evaluation row, no new config.yaml;
    --resume --replace-run with a MAX_ITER below the iterations reached is refused (it would
    leave a config of fewer iterations beside later weights)."""
    files = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != ".run.lock"}
    proc = run_train_net("--config-file", SEG, "--resume", *_small(data_root, trained), timeout=1800)
    assert f"the run in {trained} has finished (SOLVER.MAX_ITER = 3 reached): nothing to train" in proc.stderr
    proc = run_train_net("--config-file", SEG, "--resume", "--replace-run", *_small(data_root, trained, 2),
                         check=False, timeout=1800)  # fmt: skip
    _refused(proc, f"has reached iteration 3", "past SOLVER.MAX_ITER = 2; a run cannot resume backwards")
    after = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file() and p.name != ".run.lock"}
    assert after == files
