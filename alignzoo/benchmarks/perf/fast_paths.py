"""Before/after micro-benchmarks of the trainer's fast paths (``--fast-paths``), on one batch of
trajectories sampled from the benchmark's model with a LoRA adapter attached, as in training:
batched log-prob recomputation vs one transition per forward, decoding only the requested steps
vs all T (and batched vs one image per call), batched vs per-image reward calls, and reference
log-probs through the LoRA toggle vs a second UNet copy. Each time is a median of a few calls.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from alignzoo.benchmarks.perf.probe import PeakMemory, free_memory, synchronize

if TYPE_CHECKING:
    from alignzoo.benchmarks.perf.measure import PerfRun


@dataclass
class SampledBatch:
    """One batch of trajectories and what every micro-benchmark on it shares."""

    model: Any
    traj: Any
    prompts: list[str]
    accelerator: Any
    rows: torch.Tensor  # with `steps`: every transition (trajectory row, step index), row-major
    steps: torch.Tensor
    repeats: int  # timed calls per measurement
    max_rows: int  # transitions per batched forward: the trainer's limit
    log: Callable[[str], None]

    def transitions(self, chunk: int):
        """Every transition as (rows, steps) pieces of ``chunk``."""
        return zip(self.rows.split(chunk), self.steps.split(chunk))

    def timed(self, fn: Callable[[], Any]) -> float:
        """Median seconds of ``fn()`` over the repeats, after one untimed call to warm it up."""
        fn()
        times = []
        for _ in range(self.repeats):
            synchronize(self.accelerator.device)
            t0 = time.perf_counter()
            fn()
            synchronize(self.accelerator.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def fast_paths(runner: PerfRun) -> dict:
    trainer = runner.trainer("ddpo")  # a model with the LoRA adapter attached, as in training
    batch = sample_batch(runner, trainer.model, trainer.num_steps)
    out = {
        "trajectories": batch.traj.batch_size,
        "num_steps": batch.traj.num_steps,
        "logprob_batching": logprob_batching(batch),
        "decode": decode_requested_steps(batch),
        "reward_batching": reward_batching(batch, runner.reward),
        "reference": reference_toggle_vs_copy(batch),
    }
    del trainer, batch
    free_memory(runner.device)
    return out


def sample_batch(runner: PerfRun, model, num_steps: int) -> SampledBatch:
    from alignzoo.models.sampling import sample
    from alignzoo.prompts import get_prompts

    cfg = runner.cfg
    pool = get_prompts(runner.prompts)
    prompts = [pool[i % len(pool)] for i in range(cfg.batch)]
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad(), runner.accelerator.autocast():
        traj = sample(model, prompts, num_steps, 1.0, gen)
    b, t = traj.batch_size, traj.num_steps
    return SampledBatch(
        model=model,
        traj=traj,
        prompts=prompts,
        accelerator=runner.accelerator,
        rows=torch.arange(b).repeat_interleave(t),
        steps=torch.arange(t).repeat(b),
        repeats=max(1, min(cfg.repeats, 3)),
        max_rows=min(b * t, cfg.max_transitions_per_forward),
        log=runner.log,
    )


def logprob_batching(batch: SampledBatch) -> dict:
    """Log-prob recomputation with backward: one transition per forward vs ``max_rows`` per forward."""
    from alignzoo.models.sampling import recompute_log_probs

    def recompute_all(chunk: int) -> Callable[[], None]:
        def run():
            batch.model.unet.zero_grad(set_to_none=True)
            for rows, steps in batch.transitions(chunk):
                with batch.accelerator.autocast():
                    lp = recompute_log_probs(batch.model, batch.traj, steps, rows).float()
                lp.sum().backward()

        return run

    n, big = len(batch.rows), batch.max_rows
    one, batched = batch.timed(recompute_all(1)), batch.timed(recompute_all(big))
    batch.log(f"  fast paths: log-prob recomputation {n / one:.0f} -> {n / batched:.0f} transitions/s")
    return {"transitions": n, "one_per_forward_per_s": n / one, f"batched_{big}_per_s": n / batched, "batch": big, "speedup": one / batched}


def decode_requested_steps(batch: SampledBatch) -> dict:
    """Decoding only the requested steps (SDPO's 3) vs every step, and batched vs one image per call."""
    from alignzoo.models.sampling import decode_steps

    model, traj = batch.model, batch.traj
    b, t = traj.batch_size, traj.num_steps
    query = [0, t // 2, -1] if t >= 3 else list(range(t))
    every = batch.timed(lambda: decode_steps(model, traj, list(range(t))))
    requested = batch.timed(lambda: decode_steps(model, traj, query))
    one_per_call = batch.timed(lambda: decode_steps(model, traj, query, chunk=1))
    return {
        "all_steps_s_per_traj": every / b,
        "requested_s_per_traj": requested / b,
        "decodes_per_traj": [t, len(query)],
        "speedup": every / requested,
        "one_per_call_s_per_traj": one_per_call / b,
        "batching_speedup": one_per_call / requested,
    }


def reward_batching(batch: SampledBatch, reward) -> dict:
    """One batched reward call on the device vs one image per call."""
    from alignzoo.models.sampling import decode_steps

    with torch.no_grad():
        images = decode_steps(batch.model, batch.traj, [-1])[:, 0]
    prompts, b = batch.prompts, batch.traj.batch_size
    batched = batch.timed(lambda: reward(images, prompts))
    one_per_call = batch.timed(lambda: [reward(images[i : i + 1], prompts[i : i + 1]) for i in range(b)])
    return {"batched_s_per_image": batched / b, "one_per_call_s_per_image": one_per_call / b, "speedup": one_per_call / batched}


def reference_toggle_vs_copy(batch: SampledBatch) -> dict:
    """Reference log-probs with the LoRA adapter toggled off on the one UNet vs a second UNet."""
    model, device = batch.model, batch.accelerator.device

    def toggled():
        with model.reference():
            _reference_log_probs(batch)

    toggle_s = batch.timed(toggled)
    unet_bytes = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    mem = PeakMemory(device)
    free_memory(device)
    mem.reset()
    before = mem.peak_mb()
    second_copy_s = _second_unet_seconds(batch)
    after = mem.peak_mb()
    return {
        "toggle_s": toggle_s,
        "second_copy_s": second_copy_s,
        "second_copy_extra_mb": unet_bytes / 2**20,
        "measured_peak_increase_mb": (after - before) if (after is not None and before is not None) else None,
    }


def _second_unet_seconds(batch: SampledBatch) -> float | None:
    """The reference log-probs through a copy of the UNet with its adapter disabled: what a second
    reference UNet would cost. None where the UNet does not deep-copy."""
    model = batch.model
    try:
        ref_unet = copy.deepcopy(model.unet)
    except Exception as err:  # noqa: BLE001 - e.g. a compiled module that does not deep-copy
        batch.log(f"  fast paths: no second-UNet comparison ({type(err).__name__}: {err})")
        return None
    ref_unet.disable_adapters()
    live, model.unet = model.unet, ref_unet
    try:
        return batch.timed(lambda: _reference_log_probs(batch))
    finally:
        model.unet = live


def _reference_log_probs(batch: SampledBatch) -> None:
    from alignzoo.models.sampling import recompute_log_probs

    with torch.no_grad(), batch.accelerator.autocast():
        for rows, steps in batch.transitions(batch.max_rows):
            recompute_log_probs(batch.model, batch.traj, steps, rows)
