"""Training stages of the compositional tiny world, run by ``alignzoo tinyworld train --stage NAME``.

Each entry maps a stage name to ``"module:function"``; the function takes
``(out: Path, seed: int, scale: float)`` (``out`` = the weights folder, default
``alignzoo/tinyworld/weights``) and returns a dict of figures (``wall_seconds`` is added).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

COMPOSE_STAGES: dict[str, str] = {
    "geneval": "alignzoo.tinyworld.training.compose.train_geneval:train_geneval",
    "preference": "alignzoo.tinyworld.training.compose.train_preference:stage",
    "vae2": "alignzoo.tinyworld.training.compose.base_models:train_vae2",
    "sd2": "alignzoo.tinyworld.training.compose.base_models:train_sd2",
    "turbo": "alignzoo.tinyworld.training.compose.distill:train_turbo",
    "lcm2": "alignzoo.tinyworld.training.compose.distill:train_lcm2",
}
# ``--stage compose-models`` runs these in order (each reads what the one before wrote)
MODEL_STAGES = ("vae2", "sd2", "turbo", "lcm2")
# ``--stage all``: the whole compositional world, the judges and the preference reward first (they
# read renders only), then the models; the first world's stages are ``--stage first-world``
ALL_STAGES = ("geneval", "preference", *MODEL_STAGES)


def run_stage(stage: str, out: str | Path | None = None, seed: int = 0, threads: int = 1, scale: float = 1.0) -> dict:
    import torch

    from alignzoo.hf import quiet_from_now
    from alignzoo.tinyworld import weights_dir

    quiet_from_now()
    if stage not in COMPOSE_STAGES:
        raise ValueError(f"unknown compose stage {stage!r}; known: {', '.join(COMPOSE_STAGES)}")
    torch.set_num_threads(threads)
    mod, fn = COMPOSE_STAGES[stage].split(":")
    out = Path(out) if out is not None else weights_dir()
    t0 = time.perf_counter()
    res = getattr(importlib.import_module(mod), fn)(out, seed=seed, scale=scale)
    res["wall_seconds"] = time.perf_counter() - t0
    return res
