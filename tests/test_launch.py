"""run_jobs: train_net runs side by side in lanes, each after the runs it needs, sharing the CPU
threads and one progress bar (train_net replaced by a fake that logs when it runs)."""

import io
import threading
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from radkd_d2.analysis import launch
from radkd_d2.analysis.launch import Job, PlannedRun, run_jobs


def _job(tmp_path, name, iters=10, needs=()):
    run = PlannedRun(name, name, Path("cfg.yaml"), [], tmp_path / name, label=name)
    return Job(run, iters, tuple(needs))


class _Proc:
    def __init__(self):
        self.terminated = threading.Event()

    def terminate(self):
        self.terminated.set()


@pytest.fixture
def fake_train(monkeypatch):
    """A fake run_training: each run sleeps ``delay[name]`` seconds in steps, reports its
    iterations, and exits with ``rc[name]`` (0 by default) or 143 when terminated."""
    events, delay, rc, env_of = [], {}, {}, {}
    lock = threading.Lock()

    def fake(cmd, log_path, *, max_iter=None, env=None, progress=None, started=None, **kw):
        name = Path(log_path).parent.name
        proc = _Proc()
        started(proc)
        with lock:
            events.append(("start", name))
            env_of[name] = dict(env)
        for k in range(5):
            if proc.terminated.wait(delay.get(name, 0.02) / 5):
                with lock:
                    events.append(("stopped", name))
                return 143
            progress((k + 1) * max_iter // 5, "training")
        with lock:
            events.append(("end", name))
        if rc.get(name, 0) == 0:
            progress(max_iter, "finished")
        return rc.get(name, 0)

    monkeypatch.setattr(launch, "run_training", fake)
    return events, delay, rc, env_of


def test_jobs_wait_for_what_they_need_and_share_the_threads(tmp_path, fake_train):
    events, delay, _, env_of = fake_train
    delay.update(teacher=0.4, start=0.05)
    jobs = [
        _job(tmp_path, "teacher", 30),
        _job(tmp_path, "start"),
        _job(tmp_path, "plain", needs=["start"]),
        _job(tmp_path, "distilled", needs=["start", "teacher"]),
    ]
    with tqdm(total=60, file=io.StringIO()) as bar:
        seconds, threads, failed = run_jobs(jobs, "log.txt", lanes=2, threads=2, bar=bar)
        assert bar.n == 60  # every job's iterations, counted once
    assert failed is None and set(seconds) == {"teacher", "start", "plain", "distilled"}
    order = [e for e in events]
    # the teacher and the start run side by side; the plain arm runs while the teacher trains
    assert order.index(("start", "start")) < order.index(("end", "teacher"))
    assert order.index(("start", "plain")) < order.index(("end", "teacher"))
    assert order.index(("start", "distilled")) > order.index(("end", "teacher"))
    # one thread each while two run; the last job, alone, gets both
    assert threads == {"teacher": 1, "start": 1, "plain": 1, "distilled": 2}
    assert env_of["distilled"] == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert seconds["teacher"] >= 0.4


def test_one_lane_runs_in_order(tmp_path, fake_train):
    events, *_ = fake_train
    jobs = [_job(tmp_path, "a"), _job(tmp_path, "b"), _job(tmp_path, "c", needs=["a"])]
    _, threads, failed = run_jobs(jobs, "log.txt", lanes=1, threads=4)
    assert failed is None
    assert [n for e, n in events if e == "start"] == ["a", "b", "c"]
    assert threads == {"a": 4, "b": 4, "c": 4}


def test_a_failure_stops_the_running_jobs_and_starts_no_new_one(tmp_path, fake_train):
    events, delay, rc, _ = fake_train
    delay.update(teacher=600.0)
    rc["start"] = 1
    jobs = [
        _job(tmp_path, "teacher"),
        _job(tmp_path, "start"),
        _job(tmp_path, "plain", needs=["start"]),
    ]
    t0 = time.time()
    _, _, failed = run_jobs(jobs, "log.txt", lanes=2, threads=2)
    assert failed is jobs[1]
    assert ("stopped", "teacher") in events  # stopped, not left to train its 600 s
    assert time.time() - t0 < 300  # a hang guard: a stop that works takes a second, however loaded
    assert ("start", "plain") not in events


def test_a_job_may_only_wait_for_earlier_jobs(tmp_path, fake_train):
    jobs = [_job(tmp_path, "plain", needs=["start"]), _job(tmp_path, "start")]
    with pytest.raises(ValueError, match="plain needs \\['start'\\], which are not earlier jobs"):
        run_jobs(jobs, "log.txt", lanes=2)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        run_jobs([_job(tmp_path, "a")], "log.txt", lanes=0)


def test_train_command_flags_come_before_the_overrides():
    """Detectron2's parser takes everything after the first override as overrides, so
    --resume/--eval-only must precede them (an --eval-only after them was an odd-length override
    list that stopped the CamVid study)."""
    from detectron2.engine import default_argument_parser

    from radkd_d2.analysis.launch import train_command

    cmd = train_command("c.yaml", ["MODEL.WEIGHTS", "w.pth", "OUTPUT_DIR", "o"], resume=True, eval_only=True)
    args = default_argument_parser().parse_args(cmd[3:])  # after python -m radkd_d2.train_net
    assert args.config_file == "c.yaml" and args.resume and args.eval_only
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "OUTPUT_DIR", "o"]
