"""The trainer's few collectives over processes (accelerate / torch.distributed), in one place.

Every process runs the same loop on its share of the global batch (Algorithm.split_over); these
helpers gather statistics, average gradients, sum the compute counters and check at the end
that the processes agree. With one process each is a no-op (no collective is issued).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def gather(accelerator, values: torch.Tensor, prompts: list[str]):
    """All processes' values/prompts (concatenated by rank) and this process's slice."""
    n = values.shape[0]
    if accelerator.num_processes == 1:
        return values.detach().cpu(), list(prompts), slice(0, n)
    from accelerate.utils import gather_object

    rank = accelerator.process_index
    all_values = accelerator.gather(values.detach().to(accelerator.device).contiguous()).cpu()
    return all_values, gather_object(list(prompts)), slice(rank * n, (rank + 1) * n)


def average_gradients(accelerator, params) -> None:
    """Replaces each parameter's gradient by its mean over processes (one flat all-reduce);
    a parameter without a gradient on some process counts as zero there."""
    if accelerator.num_processes == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = accelerator.reduce(torch.cat([p.grad.reshape(-1) for p in params]), reduction="mean")
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def sum_counts(accelerator, counts: dict[str, float]) -> dict[str, float]:
    """The per-process counters summed over processes (one all-reduce, float64: exact for counts)."""
    if accelerator.num_processes == 1 or not counts:
        return dict(counts)
    keys = sorted(counts)
    vec = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(vec, reduction="sum").cpu().tolist()
    return {k: (int(v) if float(v).is_integer() else v) for k, v in zip(keys, total)}


def max_over_processes(accelerator, value: float | None) -> float | None:
    """max over processes of a float that is None on none or all of them (e.g. the first
    update's |log-ratio|; algorithms without log-probs have None everywhere)."""
    if accelerator.num_processes == 1 or value is None:
        return value
    every = accelerator.gather(torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)).cpu()
    return float(every.max())


def check_processes_agree(trainer) -> None:
    """Every process must end with the same LoRA weights (and the algorithm's other replicated
    tensors, e.g. LaSRO's surrogate); writes what each one did to ``final/processes.json``."""

    def checksums(tensors):
        flat = torch.cat([p.detach().double().reshape(-1) for p in tensors]) if tensors else torch.zeros(1, dtype=torch.float64)
        return [float(flat.sum()), float((flat**2).sum())]

    acc = trainer.accelerator
    mine = torch.tensor(
        checksums(list(trainer.model.trainable_parameters())) + checksums(trainer.algo.replicated_parameters()) + [float(trainer.prompts_per_process)],
        dtype=torch.float64,
        device=trainer.device,
    )
    every = acc.gather(mine[None]).cpu() if acc.num_processes > 1 else mine[None].cpu()
    if acc.is_main_process:
        info = {
            "processes": acc.num_processes,
            "lora_checksums": every[:, :2].tolist(),
            "algo_checksums": every[:, 2:4].tolist(),
            "prompts_per_process_per_epoch": every[:, 4].tolist(),
        }
        path = Path(trainer.out) / "final" / "processes.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(path)
    for name, cols in (("LoRA weights", slice(0, 2)), ("algorithm state (replicated_parameters)", slice(2, 4))):
        if not torch.equal(every[:, cols], every[:1, cols].expand_as(every[:, cols])):
            raise RuntimeError(f"processes ended with different {name}: {every[:, cols].tolist()}")
