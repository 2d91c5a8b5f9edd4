"""Running reward statistics for advantage normalisation (DDPO §4.3; SDPO §3.3).

* per-prompt (DDPO): one buffer per prompt, one value per trajectory.
* per-step-prompt (SDPO): one buffer per (prompt, step index), values of shape (N, T).
* global: (r − mean)/(std + 1e-8) over the batch, no buffers.

Below ``min_count`` buffered values a key is normalised with the *whole batch's* mean/std (at
that step for per-step tracking), as the reference code does; std gets +1e-6.
The state is a plain dict so that checkpoints can save it and resume exactly.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np


class StatTracker:
    def __init__(self, mode: str = "per_prompt", buffer_size: int = 16, min_count: int = 16):
        if mode not in ("per_prompt", "per_step_prompt", "global"):
            raise ValueError(f"unknown normalisation {mode!r}: choose per_prompt, per_step_prompt or global")
        self.mode, self.buffer_size, self.min_count = mode, int(buffer_size), int(min_count)
        self.buffers: dict[tuple, deque] = {}

    def update(self, prompts: Sequence[str], values: np.ndarray) -> np.ndarray:
        """Adds ``values`` ((N,) or (N, T)) to the buffers and returns them normalised."""
        values = np.asarray(values, dtype=np.float64)
        squeeze = values.ndim == 1
        v = values[:, None] if squeeze else values
        if len(prompts) != v.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {v.shape[0]} values")
        out = np.empty_like(v)
        if self.mode == "global":
            out = (v - v.mean()) / (v.std() + 1e-8)
            return out[:, 0] if squeeze else out
        prompts = np.asarray(prompts, dtype=object)
        per_step = self.mode == "per_step_prompt"
        for p in dict.fromkeys(prompts.tolist()):
            idx = prompts == p
            for j in range(v.shape[1]):
                key = (p, j) if per_step else (p,)
                if not per_step and j > 0:
                    break
                buf = self.buffers.setdefault(key, deque(maxlen=self.buffer_size))
                col = v[idx, j] if per_step else v[idx].reshape(-1)
                buf.extend(col.tolist())
                if len(buf) < self.min_count:
                    ref = v[:, j] if per_step else v.reshape(-1)
                else:
                    ref = np.asarray(buf)
                if per_step:
                    out[idx, j] = (v[idx, j] - ref.mean()) / (ref.std() + 1e-6)
                else:
                    out[idx] = (v[idx] - ref.mean()) / (ref.std() + 1e-6)
        return out[:, 0] if squeeze else out

    def state_dict(self) -> dict:
        return {"mode": self.mode, "buffer_size": self.buffer_size, "min_count": self.min_count,
                "buffers": [[list(k), list(b)] for k, b in self.buffers.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.mode, self.buffer_size, self.min_count = state["mode"], state["buffer_size"], state["min_count"]
        self.buffers = {tuple(k): deque(b, maxlen=self.buffer_size) for k, b in state["buffers"]}
