"""What every tiny-world training stage shares: seeding, timestamped logging, the warmup-cosine
learning rate, one optimiser step, an EMA copy, tokenizing, rendering random scenes, and the files
written next to a trained pipeline (``alignzoo.json``, the tokenizer's sources).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alignzoo.tinyworld.grammar import all_scenes
from alignzoo.tinyworld.render import render


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def log_every(steps: int) -> int:
    """Log ten times a run."""
    return max(1, steps // 10)


def seed_all(seed: int) -> np.random.Generator:
    """Seeds torch's global RNG and returns a numpy generator with the same seed."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def render_scenes(scenes, rng: np.random.Generator) -> torch.Tensor:
    arr = np.stack([render(s, rng) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


def random_scenes(rng: np.random.Generator, n: int):
    scenes = all_scenes()
    return [scenes[i] for i in rng.integers(0, len(scenes), size=n)]


def warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then a cosine decay to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return factor


def optimizer_step(loss: torch.Tensor, opt, sched, max_grad_norm: float | None = None) -> None:
    """Backpropagates ``loss`` and steps ``opt`` and its LR schedule, clipping the gradient norm of
    all of ``opt``'s parameters first when ``max_grad_norm`` is given."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], max_grad_norm)
    opt.step()
    sched.step()


class EMA:
    """An exponential moving average of a module's parameters, kept in a frozen copy (``shadow``)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1 - d)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def write_alignzoo_json(folder: Path, data: dict) -> None:
    (folder / "alignzoo.json").write_text(json.dumps(data, indent=2) + "\n")


def save_tokenizer_sources(folder: Path) -> None:
    from alignzoo.tinyworld.tokenizer import write_tokenizer_files

    write_tokenizer_files(folder / "tokenizer")
