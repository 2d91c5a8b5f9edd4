"""``alignzoo tinyworld train --stage preference``: the Bradley–Terry reward ``tiny_preference``.

1. A pool of renders of random seen prompts with ``Style.random`` (seed ``seed``) and their
   hidden utilities ``u`` (:mod:`alignzoo.tinyworld.compose.preference`).
2. A fixed set of synthetic preference pairs over the pool, labels drawn from
   ``sigmoid(BETA (u_a - u_b))`` (the "annotators").
3. A small CNN (:class:`alignzoo.tinyworld.nets.TinyConvNet`, one scalar head) trained with the
   Bradley–Terry loss ``-log sigmoid(r_a - r_b)`` on the preferred side, on 32 px inputs with
   random flips (u is flip-invariant) and light noise/blur.
4. Held-out evaluation on a fresh pool (other seed, seen and unseen prompts): pairwise accuracy
   against drawn labels and against the noiseless sign of ``u_a - u_b``, correlation with u, the
   score distribution of random-style renders, the neutral style and utility-maximising renders.
5. Standardisation: the raw score's mean and sd over the held-out random-style renders are
   stored in the json, so the reward is ~N(0, 1) on them (ImageReward-like scale).

Seeded and reproducible on one thread; a few minutes on a shared CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.tinyworld.compose import preference as pref

NAME = "tiny_preference"
TRAIN_CMD = "alignzoo tinyworld train --stage preference"
IMAGE_SIZE = 32


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_32(images: torch.Tensor) -> torch.Tensor:
    """To 32x32 as the reward sees it (area averaging when shrinking, bilinear when enlarging)."""
    from alignzoo.rewards.tiny import _resize

    return _resize(images)


def render_pool(scenes, seed: int, chunk: int = 512) -> torch.Tensor:
    """Renders scenes (deterministic in ``seed``) and resizes them to 32 px: (N, 3, 32, 32)."""
    from alignzoo.tinyworld.compose.render import render_batch

    out = []
    for i in range(0, len(scenes), chunk):
        out.append(to_32(render_batch(list(scenes[i : i + chunk]), seed=seed * 100003 + i)))
    return torch.cat(out)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal / vertical flips (u is invariant to both) and light Gaussian noise on a
    quarter of the images (generated images are not clean renders)."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(-2), x)
    noisy = (torch.rand(b, generator=gen) < 0.25).float().view(-1, 1, 1, 1)
    sigma = 0.04 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x + noisy * sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def raw_scores(net, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(images[i : i + batch])["score"][:, 0] for i in range(0, len(images), batch)])


def fit(net, images: torch.Tensor, pairs, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Bradley–Terry training on fixed (ia, ib, y) pairs; returns the loss every 10% of steps."""
    from alignzoo.tinyworld.training.common import warmup_cosine

    ia, ib, y, _ = (torch.as_tensor(a) for a in pairs)
    y = y.float()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps // 20), steps, 0.02))
    losses, every = [], max(1, steps // 10)
    net.train()
    for step in range(steps):
        k = torch.randint(0, len(ia), (batch,), generator=gen)
        x = _augment(torch.cat([images[ia[k]], images[ib[k]]]), gen)
        r = net(x)["score"][:, 0]
        loss = F.binary_cross_entropy_with_logits(r[:batch] - r[batch:], y[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0:
            losses.append(round(loss.item(), 4))
            _log(f"{NAME} step {step + 1}/{steps} BT loss {loss.item():.4f}")
    net.eval()
    return losses


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(net, seed: int, n: int = 2048, n_pairs: int = 8192, n_max: int = 256) -> dict:
    """Held-out figures (see the module docstring); raw scores, before standardisation."""
    from alignzoo.tinyworld.compose.grammar import Style, seen_prompts, unseen_prompts

    prompts = seen_prompts() + unseen_prompts()
    scenes = pref.random_scenes(n, seed, prompts)
    u = pref.utilities(scenes)
    r = raw_scores(net, render_pool(scenes, seed)).numpy().astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    ia, ib, y, _ = pref.sample_pairs(u, n_pairs, rng)
    pred = r[ia] > r[ib]
    decided = u[ia] != u[ib]
    mean, sd = float(r.mean()), float(r.std())
    rng = np.random.default_rng(seed + 2)
    top = [pref.maximising_scene(rng) for _ in range(n_max)]
    r_top = raw_scores(net, render_pool(top, seed + 2)).numpy()
    neutral = [pref.random_scene(rng, prompts, style=Style.neutral()) for _ in range(n_max)]
    r_neu = raw_scores(net, render_pool(neutral, seed + 3)).numpy()
    z = lambda v: (np.asarray(v) - mean) / sd  # noqa: E731
    return {
        "n_images": n,
        "n_pairs": n_pairs,
        "acc_vs_labels": float((pred == (y > 0.5)).mean()),
        "acc_vs_sign_u": float((pred == (u[ia] > u[ib]))[decided].mean()),
        "bayes_acc_vs_labels": float(((u[ia] > u[ib]) == (y > 0.5))[decided].mean()),
        "pearson_u": float(np.corrcoef(r, u)[0, 1]),
        "spearman_u": _rank_corr(r, u),
        "raw_mean": mean,
        "raw_sd": sd,
        "u_random_mean": float(u.mean()),
        "u_random_sd": float(u.std()),
        "u_max_scene_mean": float(pref.utilities(top).mean()),
        "max_z_mean": float(z(r_top).mean()),
        "max_z_min": float(z(r_top).min()),
        "max_percentile": float((r[None, :] < r_top[:, None]).mean()),
        "neutral_z_mean": float(z(r_neu).mean()),
        "neutral_u_mean": float(pref.utilities(neutral).mean()),
    }


MULTI = ("two_object", "counting", "position", "color_attr")


def _first_object_prompt(spec) -> str:
    from alignzoo.tinyworld.compose.grammar import ObjectSpec, PromptSpec

    o = spec.objects[0]
    cat = "colors" if o.colour else "single_object"
    return PromptSpec(cat, (ObjectSpec(o.shape, o.colour),)).text


def hack_figures(score, seed: int, per_category: int = 64, judge=None) -> dict:
    """The intended hack, seen by a scorer (images -> standardised scores): per multi-object
    category, correct scenes in the maximising style vs one object (the prompt's first) in the
    same style. Returns per category the mean score of both, how often the hack scores higher,
    and how often the hacked scene still passes GenEval's strict rule (it should not); with a
    ``judge`` (images, prompts -> scores, e.g. tiny_geneval_strict) also its mean on both."""
    from alignzoo.tinyworld.compose.grammar import parse_prompt, sample_scene, seen_prompts, strict

    rng = np.random.default_rng(seed)
    out = {}
    for cat in MULTI:
        specs = [parse_prompt(p) for p in seen_prompts(cat) if cat != "counting" or parse_prompt(p).objects[0].count > 1]
        specs = [specs[int(i)] for i in rng.integers(len(specs), size=per_category)]
        good = [sample_scene(sp, rng, style=pref.maximising_style()) for sp in specs]
        hack = [pref.maximising_scene(rng, _first_object_prompt(sp)) for sp in specs]
        s_good = np.asarray(score(render_pool(good, seed)), dtype=np.float64)
        s_hack = np.asarray(score(render_pool(hack, seed + 1)), dtype=np.float64)
        out[cat] = {
            "correct": float(s_good.mean()),
            "hacked": float(s_hack.mean()),
            "hack_wins": float((s_hack > s_good).mean()),
            "hacked_strict": float(np.mean([strict(sp, h) for sp, h in zip(specs, hack)])),
        }
        if judge is not None:
            texts = [sp.text for sp in specs]
            out[cat]["judge_correct"] = float(np.mean(judge(render_pool(good, seed), texts)))
            out[cat]["judge_hacked"] = float(np.mean(judge(render_pool(hack, seed + 1), texts)))
    return out


def train_preference(
    out: str | Path, seed: int = 0, n_images: int = 12288, n_pairs: int = 65536, steps: int = 1200, batch: int = 64, lr: float = 2e-3, width: int = 16
) -> dict:
    """Trains ``tiny_preference`` and writes ``rewards/tiny_preference.{safetensors,json}`` under ``out``."""
    from alignzoo.tinyworld.nets import TinyConvNet, save_net

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    scenes = pref.random_scenes(n_images, seed)
    u = pref.utilities(scenes)
    images = render_pool(scenes, seed)
    pairs = pref.sample_pairs(u, n_pairs, np.random.default_rng(seed + 7))
    _log(f"{NAME}: {n_images} renders, {n_pairs} pairs, u mean {u.mean():.3f} sd {u.std():.3f} ({time.perf_counter() - t0:.1f}s)")
    net = TinyConvNet({"score": 1}, width=width)
    losses = fit(net, images, pairs, steps, batch, lr, seed)
    ev = evaluate(net, seed=seed + 1000)
    _log(f"{NAME} held-out {json.dumps({k: round(v, 4) for k, v in ev.items()})}")
    hack = hack_figures(lambda x: (raw_scores(net, x).numpy() - ev["raw_mean"]) / ev["raw_sd"], seed=seed + 2000)
    _log(f"{NAME} hack (standardised) {json.dumps(hack)}")
    extra = {
        "image_size": IMAGE_SIZE,
        "standardise": {"mean": ev["raw_mean"], "sd": ev["raw_sd"]},
        "utility": {
            "weights": pref.WEIGHTS,
            "beta": pref.BETA,
            "big_fraction": pref.BIG_FRACTION,
            "centre_fraction": pref.CENTRE_FRACTION,
            "maximising_style": dataclasses.asdict(pref.maximising_style()),
        },
        "training": {"seed": seed, "n_images": n_images, "n_pairs": n_pairs, "steps": steps, "batch": batch, "lr": lr, "losses": losses},
        "trained_by": TRAIN_CMD,
        "heldout": {k: round(v, 4) for k, v in ev.items()},
        "hack": {c: {k: round(v, 3) for k, v in d.items()} for c, d in hack.items()},
    }
    path = save_net(net, Path(out) / "rewards", NAME, extra)
    wall = time.perf_counter() - t0
    _log(f"{NAME}: wrote {path} ({path.stat().st_size / 1e3:.0f} kB) in {wall:.1f}s")
    return {"seconds": wall, **ev}


STEPS = 1200


def stage(out: str | Path, seed: int = 0, scale: float = 1.0) -> dict:
    """The stage in ``compose.stages``' signature: ``(out, seed, scale) -> figures``; ``scale``
    multiplies the step count (quick trials)."""
    return train_preference(out, seed=seed, steps=max(1, int(round(STEPS * scale))))


def breakdown(score, seed: int, n: int = 64) -> dict:
    """Per category: the mean standardised score of random-style renders; per style field: the
    mean score change when only that field moves from its worst to its best value (same
    prompts, same layout seed: u's style terms seen through the network)."""
    from alignzoo.tinyworld.compose.grammar import CATEGORIES, Style, sample_scene, seen_prompts

    out: dict = {"category_mean": {}, "style_effect": {}}
    for cat in CATEGORIES:
        out["category_mean"][cat] = float(np.mean(score(render_pool(pref.random_scenes(n, seed, seen_prompts(cat)), seed))))
    swings = {"saturation": (0.0, 1.0), "outline": (0.0, 1.0), "background": (1.0, 0.0), "bg_tint": (1.0, 0.0), "size_scale": (0.7, 1.3), "offset": (7.0, 0.0)}
    rng = np.random.default_rng(seed)
    base = [Style.random(rng) for _ in range(n)]
    prompts = seen_prompts("single_object")
    for field, (lo, hi) in swings.items():
        sc = {}
        for v in (lo, hi):
            r = np.random.default_rng(seed + 1)
            scenes = [sample_scene(prompts[i % len(prompts)], r, style=dataclasses.replace(st, **{field: v})) for i, st in enumerate(base)]
            sc[v] = np.asarray(score(render_pool(scenes, seed)), dtype=np.float64)
        out["style_effect"][field] = float((sc[hi] - sc[lo]).mean())
    return out


def degraded_effects(score, seed: int, n: int = 256) -> dict:
    """Mean score change and correlation with the clean scores under each of the compose
    renderer's degradations at severity 0.3 and 0.7 (random-style renders)."""
    from alignzoo.tinyworld.compose.render import degrade

    x = render_pool(pref.random_scenes(n, seed), seed)
    clean = np.asarray(score(x), dtype=np.float64)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for kind in ("blur", "noise", "colour_shift"):
        for sev in (0.3, 0.7):
            d = np.asarray(score(degrade(x, kind, sev, gen)), dtype=np.float64)
            out[f"{kind}@{sev}"] = {"shift": float((d - clean).mean()), "corr": float(np.corrcoef(d, clean)[0, 1])}
    return out


def _strict_judge():
    """tiny_geneval_strict as (images, prompts) -> numpy scores, or None without its weights."""
    from alignzoo.hub import MissingWeightsError
    from alignzoo.rewards import get_reward

    try:
        j = get_reward("tiny_geneval_strict")
    except MissingWeightsError:
        return None
    return lambda x, prompts: j(x, prompts).numpy()


def measure(weights=None, seed: int = 1000) -> dict:
    """Re-measures committed (or ``weights=``) tiny_preference weights: the stage's held-out
    figures (same seed as the stage: the same numbers) and the hack figures, standardised."""
    from alignzoo.rewards.tiny_preference import TinyPreferenceReward

    r = TinyPreferenceReward(weights=weights)
    ev = evaluate(r.net, seed=seed)
    score = lambda x: r(x).numpy()  # noqa: E731
    hack = hack_figures(score, seed=seed + 1000, judge=_strict_judge())
    return {"heldout": ev, "hack": hack, **breakdown(score, seed=seed + 3000), "degraded": degraded_effects(score, seed=seed + 4000)}


if __name__ == "__main__":  # python -m alignzoo.tinyworld.training.compose.train_preference [WEIGHTS]
    import sys

    torch.set_num_threads(1)
    print(json.dumps(measure(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
