"""What several test modules build the same way: the arguments of a tiny ``alignzoo train`` run,
the environment and launcher of ``alignzoo`` subprocesses, a tiny suite file, a tiny random CLIP
configuration, smooth test images for the reward models and a machine without their weights.
(pytest puts this folder on ``sys.path``: ``from helpers import ...``.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def train_args(algo: str, model, prompts, out=None, *, samples: int | None = None, sets=(), reward: str = "jpeg_compressibility") -> list[str]:
    """``alignzoo train`` arguments, the command's name first: ``algo`` on ``model`` with the prompt
    file ``prompts``, no progress bar, one ``--set`` per ``key=value`` of ``sets``."""
    args = ["train", "--algo", algo, "--reward", reward, "--model", str(model), "--prompts", str(prompts), "--no-progress"]
    if samples is not None:
        args += ["--samples", str(samples)]
    if out is not None:
        args += ["--out", str(out)]
    return args + [a for kv in sets for a in ("--set", kv)]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of an ``alignzoo`` subprocess: offline, one thread (the cores are shared)."""
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)


def alignzoo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignzoo", *args]


def launch_command(*args: str, processes: int = 2) -> list[str]:
    """``alignzoo ARGS`` on ``processes`` CPU processes through accelerate's launcher (add ``--cpu``)."""
    launcher = ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "-m", "alignzoo", *args]


def launch_env() -> dict[str, str]:
    """:func:`subprocess_env` for the launcher: this checkout importable by every process, and no
    GPU selection inherited (the processes run on the CPU)."""
    env = subprocess_env(PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def write_suite(path: Path, *, model, prompts, algorithms, rewards, samples: int, eval_interval: int, train: dict, evaluation: dict, seeds=None) -> Path:
    """A suite file named after ``path``: ``algorithms`` × ``rewards`` on ``model``, trained and
    evaluated on the prompt file ``prompts``, with the ``[train]`` and ``[eval]`` tables given."""
    top = {"name": path.stem, "model": str(model), "algorithms": list(algorithms), "rewards": list(rewards)}
    if seeds is not None:
        top["seeds"] = list(seeds)
    top.update(samples=samples, eval_interval=eval_interval, train_prompts=str(prompts))
    tables = {"train": train, "eval": {**evaluation, "prompt_sets": [str(prompts)]}}
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_clip_config(*, vocab_size: int, bos: int, eos: int, text_layers: int, max_positions: int, projection_dim: int):
    """A random-weights-sized CLIPConfig: 32-wide towers, a 224 px ViT with 32 px patches; the text
    tower fitted to the test's tokenizer (its vocabulary, special ids, sequence length)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers, num_attention_heads=2, max_position_embeddings=max_positions)
    text.update(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=32)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def smooth_images(b: int, h: int, w: int, grid: tuple[int, int], seed: int = 0):
    """(b, 3, h, w) images in [0, 1] on the uint8 grid: a random ``grid`` of colours, bilinearly
    upsampled (smooth, like photos; the grid's shape keeps each test's images its own)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(b, 3, *grid, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    return torch.round(x.clamp(0, 1) * 255) / 255


def without_weights(monkeypatch, folder: Path, *env_vars: str) -> None:
    """No reward weights anywhere: an empty hub cache, offline, ``env_vars`` (the weights' variables)
    unset, and ``folder`` the working directory (no relative default folder holds them)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(folder / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in env_vars:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(folder)
