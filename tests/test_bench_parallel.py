"""Cells in parallel: ``--workers 2`` and the Ray executor give a one-thread sequential run's
numbers, skip finished cells, and a failing cell names itself without stopping the others."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from alignzoo.benchmarks.executors import CellsFailed
from alignzoo.benchmarks.runner import BenchmarkRunner
from alignzoo.benchmarks.suites import load_suite, parse_suite
from alignzoo.runlog import read_lines

from helpers import alignzoo_command, subprocess_env, write_suite

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bench-parallel")]  # one module-scoped sequential run, shared
CELLS = ("ddpo__jpeg_compressibility__seed0", "sdpo__jpeg_compressibility__seed0")


@pytest.fixture(scope="module")
def two_cell_suite(tiny_random_folders, prompt_file, tmp_path_factory):
    return write_suite(
        tmp_path_factory.mktemp("suite") / "duo.toml",
        model=tiny_random_folders["sd"],
        prompts=prompt_file,
        algorithms=["ddpo", "sdpo"],
        rewards=["jpeg_compressibility"],
        samples=16,
        eval_interval=8,
        train=dict(num_steps=2, samples_per_epoch=8, learning_rate=0.01, train_batch_size=2),
        evaluation=dict(steps=[1, 2], images_per_prompt=1, grid_images=1),
    )


def _bench(suite_file, root, *extra):
    cmd = alignzoo_command("bench", str(suite_file), "--runs", str(root), "--no-progress", *extra)
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def _numbers(folder):
    """Every evaluation line of the suite, less its wall time."""
    out = {}
    for cell in ("pretrained",) + CELLS:
        out[cell] = [{k: v for k, v in r.items() if k != "eval_seconds"} for r in read_lines(folder / cell / "eval.jsonl")]
    return out


@pytest.fixture(scope="module")
def sequential(two_cell_suite, tmp_path_factory):
    """The reference: one cell after the other in this process, on one thread like a worker
    (in-process saves a second interpreter's imports)."""
    root = tmp_path_factory.mktemp("seq")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        BenchmarkRunner(load_suite(str(two_cell_suite)), root, device="cpu", progress=False, log=lambda *_: None).run(workers=1)
    finally:
        torch.set_num_threads(threads)
    numbers = _numbers(root / "duo")
    assert all(numbers.values()) and sorted({r["samples"] for r in numbers[CELLS[1]]}) == [8, 16]
    return numbers


def _pool_workers(pid):
    """The spawned pool workers among a process's children (not multiprocessing's resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(c) for c in f.read().split()]
    return [k for k in kids if b"spawn_main" in open(f"/proc/{k}/cmdline", "rb").read()]


def test_two_workers_equal_one_and_a_killed_worker_resumes(two_cell_suite, sequential, tmp_path):
    cmd = [sys.executable, "-m", "alignzoo", "bench", str(two_cell_suite), "--runs", str(tmp_path), "--no-progress", "--workers", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cells = [tmp_path / "duo" / c for c in CELLS]
    deadline = time.time() + 300
    while not any((c / "checkpoints" / "epoch_00001").exists() for c in cells) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the suite finished before a worker could be killed"
    os.kill(_pool_workers(proc.pid)[0], signal.SIGKILL)  # as the out-of-memory killer would
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "a worker process died" in err, err
    assert not all((c / "DONE").exists() for c in cells)
    res = _bench(two_cell_suite, tmp_path, "--workers", "2")  # the same command resumes the killed cells
    assert res.returncode == 0, res.stderr
    assert "worker processes, one thread each" in res.stdout and "[1/" in res.stdout
    assert _numbers(tmp_path / "duo") == sequential


def test_ray_executor_equals_sequential_and_skips_done(two_cell_suite, sequential, tmp_path):
    ray = pytest.importorskip("ray")
    suite = load_suite(str(two_cell_suite))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        logs = []
        BenchmarkRunner(suite, tmp_path, device="cpu", progress=False, log=logs.append).run({"algo": {"ddpo"}}, executor="ray")
        first = tmp_path / "duo" / CELLS[0]
        stamp = [(first / f).stat().st_mtime_ns for f in ("DONE", "eval.jsonl")]
        assert not (tmp_path / "duo" / CELLS[1]).exists()
        BenchmarkRunner(suite, tmp_path, device="cpu", progress=False, log=logs.append).run(executor="ray")
    finally:
        ray.shutdown()
    assert "1 of 2 cells finished before (DONE): not rerun" in logs
    assert [(first / f).stat().st_mtime_ns for f in ("DONE", "eval.jsonl")] == stamp  # the finished cell was not rerun
    assert _numbers(tmp_path / "duo") == sequential


def test_failing_cell_names_itself_and_the_others_finish(tmp_path, monkeypatch):
    suite = parse_suite({"name": "f", "model": "tiny-sd", "algorithms": ["ddpo", "sdpo"], "rewards": ["jpeg_compressibility"]})
    ran = []

    def fake_cell(self, algo, reward, seed, baseline):
        ran.append(algo)
        if algo == "ddpo":
            raise RuntimeError("CUDA out of memory\nmore detail")
        d = self.dir / f"{algo}__{reward}__seed{seed}"
        d.mkdir(parents=True)
        (d / "DONE").write_text("ok")

    monkeypatch.setattr(BenchmarkRunner, "pretrained", lambda self: {})
    monkeypatch.setattr(BenchmarkRunner, "run_cell", fake_cell)
    logs = []
    runner = BenchmarkRunner(suite, tmp_path, device="cpu", progress=False, log=logs.append)
    with pytest.raises(CellsFailed, match=r"1 of 2 cells failed: ddpo__jpeg_compressibility__seed0 \(RuntimeError: CUDA out of memory\)"):
        runner.run()
    assert ran == ["ddpo", "sdpo"] and (tmp_path / "f" / "sdpo__jpeg_compressibility__seed0" / "DONE").exists()
    assert any("[1/2] ddpo__jpeg_compressibility__seed0 FAILED" in line for line in logs)
    assert "more detail" in (tmp_path / "f" / "ddpo__jpeg_compressibility__seed0" / "error.txt").read_text()
    ran.clear()
    with pytest.raises(CellsFailed, match="1 of 1 cells failed"):  # a rerun retries only the unfinished cell
        runner.run()
    assert ran == ["ddpo"]


def test_bad_executor_options_are_one_line_errors(tmp_path, monkeypatch):
    suite = parse_suite({"name": "e", "model": "tiny-sd", "algorithms": ["ddpo"], "rewards": ["jpeg_compressibility"]})
    runner = BenchmarkRunner(suite, tmp_path, device="cpu", progress=False, log=lambda *_: None)
    for kw, needle in (
        ({"workers": 0}, "--workers must be >= 1"),
        ({"executor": "ray", "workers": 2}, "applies to the local executor"),
        ({"ray_address": "auto"}, "--ray-address needs --executor ray"),
        ({"executor": "dask"}, "unknown executor 'dask'"),
    ):
        with pytest.raises(ValueError, match=needle):
            runner.run(**kw)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ValueError, match=r"pip install 'alignzoo\[ray\]'"):
        runner.run(executor="ray")
    with pytest.raises(ValueError, match="gpus_per_cell must be a number >= 0"):
        parse_suite({"name": "g", "model": "tiny-sd", "algorithms": ["ddpo"], "rewards": ["jpeg_compressibility"], "gpus_per_cell": -1})
    assert (
        parse_suite({"name": "g", "model": "tiny-sd", "algorithms": ["ddpo"], "rewards": ["jpeg_compressibility"], "gpus_per_cell": 0.5}).gpus_per_cell == 0.5
    )
