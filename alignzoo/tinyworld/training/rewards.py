"""``--stage rewards``: the two reward CNNs, trained on fresh renders every step.

``tiny_alignment`` has one softmax head per attribute (colour, shape, count, position) and sees
mildly blurred, noised or faded renders too, so it also reads VAE and diffusion outputs;
``tiny_aesthetic`` regresses 1 - severity of random degradations (a product over two of them).
Both are saved as safetensors + JSON config under ``weights/rewards/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.tinyworld.grammar import ATTRIBUTES, all_scenes
from alignzoo.tinyworld.nets import TinyConvNet, save_net
from alignzoo.tinyworld.render import DEGRADATIONS, degrade
from alignzoo.tinyworld.training.common import log, log_every, optimizer_step, random_scenes, render_scenes, seed_all, warmup_cosine

ALIGN_HEADS = {k: len(v) for k, v in ATTRIBUTES.items()}
TRAINED_BY = "alignzoo tinyworld train --stage rewards"


def _scene_labels(scenes) -> torch.Tensor:
    return torch.tensor([[s.labels()[k] for k in ALIGN_HEADS] for s in scenes])


def _augment_for_alignment(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
    """Mild blur / noise / fading so the classifier also reads VAE and diffusion outputs."""
    b = x.shape[0]
    kind = rng.integers(0, 5, size=b)  # 0, 1: clean
    for k, name, smax in ((2, "blur", 0.6), (3, "noise", 0.5), (4, "washed", 0.3)):
        sev = np.where(kind == k, rng.uniform(0, smax, size=b), 0.0)
        if sev.any():
            x = degrade(x, name, torch.tensor(sev, dtype=torch.float32), gen)
    return x


def _degrade_random(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """25% clean (target 1); else one (75%) or two (25%) random degradations with severity
    U(0, 1); target = prod(1 - severity)."""
    b = x.shape[0]
    target = np.ones(b)
    sev = np.zeros((len(DEGRADATIONS), b))
    n_deg = np.where(rng.random(b) < 0.25, 0, np.where(rng.random(b) < 0.75, 1, 2))
    for i in range(b):
        for k in rng.choice(len(DEGRADATIONS), size=n_deg[i], replace=False):
            sev[k, i] = rng.uniform(0, 1)
            target[i] *= 1 - sev[k, i]
    for k, name in enumerate(DEGRADATIONS):
        if sev[k].any():
            x = degrade(x, name, torch.tensor(sev[k], dtype=torch.float32), gen)
    return x, torch.tensor(target, dtype=torch.float32)


def evaluate_alignment_net(net, seed: int = 12345, per_scene: int = 4, degrade_blur: float = 0.0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    scenes = all_scenes() * per_scene
    x = render_scenes(scenes, rng)
    if degrade_blur:
        x = degrade(x, "blur", degrade_blur)
    labels = _scene_labels(scenes)
    with torch.no_grad():
        out = net(x)
    ok = torch.stack([out[k].argmax(-1) == labels[:, i] for i, k in enumerate(ALIGN_HEADS)], 1)
    res = {k: ok[:, i].float().mean().item() for i, k in enumerate(ALIGN_HEADS)}
    res["all"] = ok.all(1).float().mean().item()
    return res


def evaluate_aesthetic_net(net, seed: int = 12345, n: int = 512, smin: float = 0.3) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    x = render_scenes(random_scenes(rng, n), rng)
    with torch.no_grad():
        clean = torch.sigmoid(net(x)["score"][:, 0])
        res = {"clean_mean": clean.mean().item()}
        wins = []
        for name in DEGRADATIONS:
            sev = torch.tensor(rng.uniform(smin, 1.0, size=n), dtype=torch.float32)
            d = torch.sigmoid(net(degrade(x, name, sev, gen))["score"][:, 0])
            res[f"pairs_{name}"] = (clean > d).float().mean().item()
            res[f"corr_{name}"] = float(np.corrcoef(d.numpy(), 1 - sev.numpy())[0, 1])
            wins.append(clean > d)
        res["pairs_all"] = torch.cat(wins).float().mean().item()
    return res


def _fit(net: torch.nn.Module, steps: int, batch_loss: Callable[[], torch.Tensor], name: str) -> None:
    """AdamW at 2e-3 (100 warmup steps, cosine to 0.02x) on ``batch_loss()``, a fresh batch's loss
    per call; leaves ``net`` in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(100, steps, 0.02))
    for step in range(steps):
        loss = batch_loss()
        optimizer_step(loss, opt, sched)
        if (step + 1) % log_every(steps) == 0:
            log(f"{name} step {step + 1}/{steps} loss {loss.item():.4f}")
    net.eval()


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in figures.items()}


def train_alignment(out: Path, seed: int, steps: int, batch: int) -> dict:
    rng = seed_all(seed)
    gen = torch.Generator().manual_seed(seed)
    net = TinyConvNet(ALIGN_HEADS, width=24)
    t0 = time.perf_counter()

    def batch_loss() -> torch.Tensor:
        scenes = random_scenes(rng, batch)
        x = _augment_for_alignment(render_scenes(scenes, rng), rng, gen)
        y = _scene_labels(scenes)
        logits = net(x)
        return sum(F.cross_entropy(logits[k], y[:, i], label_smoothing=0.05) for i, k in enumerate(ALIGN_HEADS))

    _fit(net, steps, batch_loss, "tiny_alignment")
    acc = evaluate_alignment_net(net)
    acc_blur = evaluate_alignment_net(net, degrade_blur=0.4)
    log(f"tiny_alignment held-out accuracy {json.dumps(_rounded(acc))}; blurred {acc_blur['all']:.4f}")
    save_net(
        net,
        out / "rewards",
        "tiny_alignment",
        {"classes": {k: list(map(str, v)) for k, v in ATTRIBUTES.items()}, "image_size": 32, "trained_by": TRAINED_BY, "heldout_accuracy": _rounded(acc)},
    )
    return {"seconds": time.perf_counter() - t0, **acc}


def train_aesthetic(out: Path, seed: int, steps: int, batch: int) -> dict:
    rng = seed_all(seed)
    gen = torch.Generator().manual_seed(seed)
    net = TinyConvNet({"score": 1}, width=16)
    t0 = time.perf_counter()

    def batch_loss() -> torch.Tensor:
        x = render_scenes(random_scenes(rng, batch), rng)
        x, target = _degrade_random(x, rng, gen)
        return F.binary_cross_entropy_with_logits(net(x)["score"][:, 0], target)

    _fit(net, steps, batch_loss, "tiny_aesthetic")
    ev = evaluate_aesthetic_net(net)
    log(f"tiny_aesthetic held-out {json.dumps(_rounded(ev))}")
    save_net(
        net,
        out / "rewards",
        "tiny_aesthetic",
        {
            "degradations": list(DEGRADATIONS),
            "target": "prod(1 - severity); clean renders 1",
            "image_size": 32,
            "trained_by": TRAINED_BY,
            "heldout": _rounded(ev),
        },
    )
    return {"seconds": time.perf_counter() - t0, **ev}


def train_rewards(out: Path, seed: int = 0, align_steps: int = 600, aes_steps: int = 1000, batch: int = 96) -> dict:
    return {"tiny_alignment": train_alignment(out, seed, align_steps, batch), "tiny_aesthetic": train_aesthetic(out, seed + 1, aes_steps, batch)}
