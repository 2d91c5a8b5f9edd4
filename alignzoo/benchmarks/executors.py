"""Running a suite's cells in parallel: one machine (a process pool) or a Ray cluster.

Each cell is independent given the pretrained model's per-image scores (its paired baseline),
so the runner evaluates the pretrained model once, then hands cells to an existing engine
rather than a scheduler of our own:

- ``local`` with ``workers > 1``: :class:`concurrent.futures.ProcessPoolExecutor` over the
  ``spawn`` context (no fork of a process that holds torch's thread pools);
- ``ray``: each cell a Ray task asking for one CPU and the suite's ``gpus_per_cell`` GPUs, on a
  local instance or the cluster at ``--ray-address`` (whose nodes must share the results folder).

Every worker computes with one thread (``torch.set_num_threads(1)`` and the OMP/MKL/OpenBLAS
variables), which is what makes its numbers equal a one-thread sequential run's (a different
thread count changes the order of float sums) and keeps N workers from oversubscribing N cores.

Failures: a failing cell does not stop the others. Its one-line error is printed as it happens
and its traceback written to ``<cell>/error.txt``; when every other cell has finished the run
ends with :class:`CellsFailed`, naming each failed cell. A rerun retries only the unfinished
cells (finished ones have DONE and are skipped; a killed or failed one resumes from its last
checkpoint), so the same command is also the recovery.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
EXECUTORS = ("local", "ray")


class CellsFailed(RuntimeError):
    """Some cells raised; the others finished. The message names each failed cell."""


def pin_one_thread() -> None:
    """One compute thread in this process (a pool's initializer; the first thing a Ray task does)."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)


@contextlib.contextmanager
def one_thread_env():
    """Spawned children read the thread variables at start-up, before torch is imported."""
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


_RUNNERS: dict = {}


def _runner(suite, root: str, device: str):
    """One runner per worker process and suite, so rewards load once per process (as in a
    sequential run, where all cells share the runner's rewards)."""
    from alignzoo.benchmarks.runner import BenchmarkRunner

    key = (suite.name, root, device, repr(suite))
    if key not in _RUNNERS:
        _RUNNERS.clear()
        _RUNNERS[key] = BenchmarkRunner(suite, Path(root).parent, device=device, progress=False, log=lambda *_: None)
    return _RUNNERS[key]


def pretrained_job(suite, root: str, device: str) -> dict:
    """The pretrained evaluation in a worker (one thread, like the cells); returns the cells' baseline."""
    pin_one_thread()
    return _runner(suite, root, device).pretrained()


def attempt_cell(runner, cell: tuple[str, str, int], baseline: dict) -> dict:
    """Trains and evaluates one cell; never raises an ``Exception``, so one cell's error cannot
    end the run. Returns ``{"cell", "ok", "seconds"}`` plus ``"error"`` (one line) on failure."""
    from alignzoo.runlog import cell_name

    name = cell_name(*cell)
    err_file = runner.dir / name / "error.txt"
    t0 = time.perf_counter()
    try:
        runner.run_cell(*cell, baseline)
    except Exception as err:  # noqa: BLE001 - reported by name, the run goes on
        err_file.parent.mkdir(parents=True, exist_ok=True)
        err_file.write_text(traceback.format_exc())
        line = (f"{type(err).__name__}: {err}".splitlines() or [type(err).__name__])[0]
        return {"cell": name, "ok": False, "seconds": time.perf_counter() - t0, "error": line}
    err_file.unlink(missing_ok=True)
    return {"cell": name, "ok": True, "seconds": time.perf_counter() - t0}


def cell_job(suite, root: str, device: str, cell: tuple[str, str, int], baseline: dict) -> dict:
    """One cell in a worker process (pool or Ray task), on one thread."""
    pin_one_thread()
    return attempt_cell(_runner(suite, root, device), cell, baseline)


def run_local_pool(suite, root: Path, device: str, cells: list, workers: int, on_result) -> None:
    """Pretrained evaluation, then the cells, on ``workers`` spawned one-thread processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from alignzoo.runlog import cell_name

    with one_thread_env(), ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=pin_one_thread) as pool:
        baseline = pool.submit(pretrained_job, suite, str(root), device).result()
        futures = {pool.submit(cell_job, suite, str(root), device, c, baseline): c for c in cells}
        try:
            for fut in as_completed(futures):
                on_result(fut.result())
        except BrokenProcessPool:  # a worker was killed (e.g. out of memory): the pool cannot go on
            left = [cell_name(*c) for f, c in futures.items() if f.cancelled() or not f.done() or f.exception() is not None]
            raise CellsFailed(
                f"a worker process died (killed or out of memory); unfinished cells: {', '.join(left)}. "
                "Rerun the same command: they resume from their last checkpoints"
            ) from None
        except BaseException:  # Ctrl-C: drop queued cells, keep finished work (killed cells resume later)
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'alignzoo[ray]'") from None
    return ray


def run_ray(suite, root: Path, device: str | None, cells: list, address: str | None, on_result) -> None:
    """Each cell a Ray task with one CPU and the suite's ``gpus_per_cell``; the pretrained
    evaluation a task of the same shape, first. Uses a Ray instance already started in this
    process (``ray.init(...)``), else connects to ``address`` or starts a local one."""
    from alignzoo.runlog import cell_name

    ray = _import_ray()
    gpus = float(suite.gpus_per_cell)
    # the driver may sit on a CPU-only head node: the device follows what the task is given
    device = device or ("cuda" if gpus > 0 else "cpu")
    started = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
        started = True
    try:
        opts = dict(num_cpus=1, num_gpus=gpus)
        pre = ray.remote(**opts)(pretrained_job)
        job = ray.remote(**opts)(cell_job)  # Ray retries a task whose worker died; it resumes from its checkpoint
        try:
            baseline = ray.get(pre.remote(suite, str(root), device))
        except ray.exceptions.RayTaskError as err:  # e.g. missing weights: the user's error, not Ray's traceback
            raise (err.cause if isinstance(err.cause, Exception) else err) from None
        base_ref = ray.put(baseline)
        pending = {job.remote(suite, str(root), device, c, base_ref): c for c in cells}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    res = ray.get(ready[0])
                except ray.exceptions.RayError as err:  # the worker or its node died more often than Ray retries
                    res = {"cell": cell_name(*cell), "ok": False, "seconds": 0.0, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
                on_result(res)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
