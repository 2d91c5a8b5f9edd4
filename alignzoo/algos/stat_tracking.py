"""Running reward statistics for advantage normalisation (DDPO §4.3; SDPO §3.3).

* per-prompt (DDPO): one buffer per prompt, one entry per trajectory. Values (N,) give one
  value per trajectory (DDPO); values (N, T) (SDPO's per-prompt ablation, §4.3) give each
  trajectory's T returns as one entry, normalised by the mean/std over all steps of the buffered
  trajectories.
* per-step-prompt (SDPO): one buffer per (prompt, step index), values of shape (N, T).
* global: (r − mean)/(std + 1e-8) over the batch (all steps too), no buffers.

``buffer_size`` and ``min_count`` count trajectories in every mode: below ``min_count`` buffered
trajectories a key is normalised with the *whole batch's* mean/std (at that step for per-step
tracking, over all steps for per-prompt), as the reference code does; std gets +1e-6.
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
        for p in dict.fromkeys(prompts.tolist()):
            idx = prompts == p
            if self.mode == "per_step_prompt":
                for j in range(v.shape[1]):
                    buf = self.buffers.setdefault((p, j), deque(maxlen=self.buffer_size))
                    buf.extend(v[idx, j].tolist())
                    ref = v[:, j] if len(buf) < self.min_count else np.asarray(buf)
                    out[idx, j] = (v[idx, j] - ref.mean()) / (ref.std() + 1e-6)
                continue
            # per prompt: one buffer entry per trajectory (a float, or its T values as a list), so
            # eviction and min_count count trajectories, not trajectories × steps
            buf = self.buffers.setdefault((p,), deque(maxlen=self.buffer_size))
            held = len(buf[-1]) if buf and isinstance(buf[-1], list) else (None if not buf else 0)
            if held is not None and held != (0 if squeeze else v.shape[1]):  # 0: one value per trajectory
                raise ValueError(
                    f"prompt {p!r}: the tracker holds entries of {held or 1} value(s) per trajectory, "
                    f"got {1 if squeeze else v.shape[1]}; use one trajectory length per run"
                )
            buf.extend(v[idx, 0].tolist() if squeeze else v[idx].tolist())
            ref = v if len(buf) < self.min_count else np.asarray(buf)
            out[idx] = (v[idx] - ref.mean()) / (ref.std() + 1e-6)
        return out[:, 0] if squeeze else out

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": [[list(k), list(b)] for k, b in self.buffers.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        self.mode, self.buffer_size, self.min_count = state["mode"], state["buffer_size"], state["min_count"]
        self.buffers = {tuple(k): deque(b, maxlen=self.buffer_size) for k, b in state["buffers"]}
