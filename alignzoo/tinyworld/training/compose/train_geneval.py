"""Stage ``geneval``: trains the two GenEval judges of the compositional tiny world.

    alignzoo tinyworld train --stage geneval [--seed 0] [--threads 1]

Each judge gets its own pool of renders (random Style): 40% prompt-free random scenes (0..4
objects), 30% scenes that satisfy a random prompt and 30% that break exactly one of its
criteria (near misses: a missing object, a count off by one, a wrong or swapped colour, the
wrong side). Every batch draws from the pool with a horizontal flip (the world is mirror
symmetric) and blur / noise / colour-shift degradations (65% of images, severity
U(0, MAX_SEVERITY)), so the judges hold on generated images. ``tiny_geneval``: width 16, seed ``seed``;
``tiny_geneval_judge2``: width 20, seed ``seed + 1``, its own pool.
Evaluation: :func:`evaluate_judges` on fresh renders of every prompt (seen and unseen).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose.judge import GRID, JudgeNet, detector_loss, judge_outputs, save_judge, scene_targets
from alignzoo.tinyworld.compose.render import DEGRADATIONS, degrade, random_degrade, render_batch
from alignzoo.tinyworld.compose.sampling import random_scene

TRAIN_CMD = "alignzoo tinyworld train --stage geneval"
JUDGES = {  # name -> (width, seed offset)
    "tiny_geneval": (16, 0),
    "tiny_geneval_judge2": (20, 1),
}
POOL, STEPS, BATCH, LR = 16000, 900, 128, 3e-3
MAX_SEVERITY = 0.6  # augmentation: blur sigma <= 1.3 px (more erases small shapes' corners)
EVAL_SEED = 424242  # never used for training pools (those use seed*1000 + judge offset)
EVAL_PER_CATEGORY = 400
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5)
DEGRADED_SEVERITY = (0.1, 0.5)  # evaluation: blur sigma <= 1.1 px, noise sd <= 0.15


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _spec_by_category(rng: np.random.Generator) -> g.PromptSpec:
    specs = g.all_specs(g.CATEGORIES[rng.integers(len(g.CATEGORIES))])
    return specs[rng.integers(len(specs))]


def training_scenes(n: int, rng: np.random.Generator) -> list[g.Scene]:
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.4:
            out.append(random_scene(rng))
        elif u < 0.7:
            out.append(g.sample_scene(_spec_by_category(rng), rng))
        else:
            out.append(g.sample_violating_scene(_spec_by_category(rng), rng))
    return out


def _flip(x: torch.Tensor, heat: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor):
    """Mirrors the images (and their target grids) where ``mask``."""
    m = mask.view(-1, 1, 1, 1)
    return (torch.where(m, x.flip(-1), x), torch.where(m, heat.flip(-1), heat), torch.where(m[:, 0], colour.flip(-1), colour))


def train_judge(name: str, seed: int, steps: int, pool: int) -> tuple[JudgeNet, dict]:
    width, off = JUDGES[name]
    rng = np.random.default_rng(seed * 1000 + off)
    torch.manual_seed(seed * 1000 + off)
    gen = torch.Generator().manual_seed(seed * 1000 + off)
    t0 = time.perf_counter()
    scenes = training_scenes(pool, rng)
    images = render_batch(scenes, seed=seed * 1000 + off)
    heat, colour = scene_targets(scenes)
    t_data = time.perf_counter() - t0
    _log(f"{name}: pool of {pool} renders in {t_data:.0f}s")
    net = JudgeNet(width=width)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, pool, size=BATCH))
        x, h, c = _flip(images[idx], heat[idx], colour[idx], torch.from_numpy(rng.random(BATCH) < 0.5))
        x = random_degrade(x, rng, gen, p_clean=0.35, max_severity=MAX_SEVERITY)
        loss = detector_loss(net(x), h, c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            _log(f"{name} step {step + 1}/{steps} loss {loss.item():.4f}")
    net.eval()
    return net, {"data_seconds": t_data, "train_seconds": time.perf_counter() - t0 - t_data}


def eval_set(seed: int = EVAL_SEED, per_category: int = EVAL_PER_CATEGORY):
    """Fresh renders per category, half satisfying a random prompt of the category (seen or
    unseen), half breaking one criterion: (images, prompts, categories, ground-truth strict),
    plus a degraded copy (one random degradation each, severity U(DEGRADED_SEVERITY))."""
    rng = np.random.default_rng(seed)
    scenes, prompts, cats = [], [], []
    for cat in g.CATEGORIES:
        specs = g.all_specs(cat)
        for i in range(per_category):
            spec = specs[rng.integers(len(specs))]
            sampler = g.sample_scene if i % 2 == 0 else g.sample_violating_scene
            scenes.append(sampler(spec, rng))
            prompts.append(spec.text)
            cats.append(cat)
    truth = torch.tensor([g.strict(g.parse_prompt(p), s) for p, s in zip(prompts, scenes)], dtype=torch.float32)
    clean = render_batch(scenes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    kind = rng.integers(0, len(DEGRADATIONS), size=len(scenes))
    sev = rng.uniform(*DEGRADED_SEVERITY, size=len(scenes))
    degraded = clean
    for k, name in enumerate(DEGRADATIONS):
        degraded = degrade(degraded, name, torch.tensor(np.where(kind == k, sev, 0.0), dtype=torch.float32), gen)
    return clean, degraded, prompts, cats, truth


@torch.no_grad()
def strict_scores(
    net: JudgeNet, images: torch.Tensor, prompts: list[str], batch: int = 500, thresholds: tuple[float, ...] | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(strict, soft) per threshold (default: the net's own)."""
    thresholds = (net.threshold,) if thresholds is None else thresholds
    logits = torch.cat([net(images[i : i + batch]) for i in range(0, len(prompts), batch)])
    out = []
    for t in thresholds:
        res = judge_outputs(logits, prompts, t)
        out.append((res["strict"], res["soft"]))
    return out


def calibrate_threshold(net: JudgeNet, seed: int) -> tuple[float, dict]:
    """The detection threshold (of THRESHOLDS) with the best strict accuracy on validation
    renders (clean and degraded, their own seed: neither training pool nor evaluation set);
    ties go to the threshold nearest 0.5."""
    clean, degraded, prompts, _, truth = eval_set(seed, per_category=100)
    hits = [strict_scores(net, x, prompts, thresholds=THRESHOLDS) for x in (clean, degraded)]
    acc = {t: round(float(sum((h[k][0] == truth).float().mean() for h in hits) / 2), 4) for k, t in enumerate(THRESHOLDS)}
    best = max(THRESHOLDS, key=lambda t: (acc[t], -abs(t - 0.5)))
    return best, acc


def evaluate_judges(nets: dict[str, JudgeNet], seed: int = EVAL_SEED, per_category: int = EVAL_PER_CATEGORY) -> dict:
    """Strict accuracy against ``grammar.strict`` (clean and degraded, overall and per
    category), false accepts of violating scenes, mean soft score of satisfying / violating
    scenes, and the judges' agreement on their strict decisions."""
    clean, degraded, prompts, cats, truth = eval_set(seed, per_category)
    cats_arr = np.array(cats)
    res: dict = {"n": len(prompts), "degraded_severity": list(DEGRADED_SEVERITY)}
    decisions = {}
    for name, net in nets.items():
        r = {}
        for cond, x in (("clean", clean), ("degraded", degraded)):
            s, soft = strict_scores(net, x, prompts)[0]
            decisions[(name, cond)] = s
            ok = (s == truth).numpy()
            r[f"{cond}_accuracy"] = round(float(ok.mean()), 4)
            r[f"{cond}_by_category"] = {c: round(float(ok[cats_arr == c].mean()), 4) for c in g.CATEGORIES}
            r[f"{cond}_false_accept"] = round(float(s[truth == 0].mean()), 4)
            r[f"{cond}_false_reject"] = round(float(1 - s[truth == 1].mean()), 4)
            r[f"{cond}_soft_satisfying"] = round(float(soft[truth == 1].mean()), 4)
            r[f"{cond}_soft_violating"] = round(float(soft[truth == 0].mean()), 4)
        res[name] = r
    names = list(nets)
    if len(names) == 2:
        for cond in ("clean", "degraded"):
            a, b = decisions[(names[0], cond)], decisions[(names[1], cond)]
            res[f"agreement_{cond}"] = round(float((a == b).float().mean()), 4)
    return res


def _extra(name: str, seed: int, steps: int, pool: int, ev: dict | None = None) -> dict:
    width, off = JUDGES[name]
    extra = {
        "grid": GRID,
        "image_size": g.IMAGE_SIZE,
        "shapes": list(g.SHAPES),
        "colours": list(g.COLOURS),
        "max_count": g.MAX_COUNT,
        "trained_by": TRAIN_CMD,
        "seed": seed * 1000 + off,
        "steps": steps,
        "batch": BATCH,
        "pool": pool,
    }
    if ev is not None:
        extra["heldout"] = ev[name]
        extra["agreement"] = {k: v for k, v in ev.items() if k.startswith("agreement")}
    return extra


def _train_one(name: str, out: Path, seed: int, steps: int, pool: int) -> tuple[JudgeNet, dict]:
    net, timing = train_judge(name, seed, steps, pool)
    net.threshold, val = calibrate_threshold(net, seed * 1000 + JUDGES[name][1] + 500)
    net.config["threshold"] = net.threshold
    _log(f"{name}: detection threshold {net.threshold} (validation accuracy {val})")
    save_judge(net, out / f"{name}.safetensors", _extra(name, seed, steps, pool))
    return net, timing


def _evaluate_and_save(nets: dict, out: Path, seed: int, steps: int, pool: int) -> dict:
    t0 = time.perf_counter()
    ev = evaluate_judges(nets)
    _log(f"evaluation ({time.perf_counter() - t0:.0f}s): {json.dumps(ev)}")
    for name, net in nets.items():
        save_judge(net, out / f"{name}.safetensors", _extra(name, seed, steps, pool, ev))
    return ev


def train_geneval(out: Path, seed: int = 0, scale: float = 1.0) -> dict:
    """Trains, calibrates and saves each judge (as soon as it is trained), then evaluates both
    and writes the figures into their .json files."""
    out = Path(out) / "rewards"
    steps, pool = max(1, int(STEPS * scale)), max(BATCH, int(POOL * scale))
    nets, timing = {}, {}
    for name in JUDGES:
        nets[name], timing[name] = _train_one(name, out, seed, steps, pool)
    return {"evaluation": _evaluate_and_save(nets, out, seed, steps, pool), "timing": timing}


def main(argv=None) -> None:
    """Piecewise runs of the stage (same seeds, same results): one judge, or the evaluation.

    python -m alignzoo.tinyworld.training.compose.train_geneval --judge tiny_geneval_judge2 --out DIR
    python -m alignzoo.tinyworld.training.compose.train_geneval --evaluate --out DIR
    """
    import argparse

    from alignzoo.tinyworld.compose.judge import load_judge

    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", choices=list(JUDGES))
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--out", required=True, help="weights folder (holds rewards/)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out) / "rewards"
    if a.judge:
        _train_one(a.judge, out, a.seed, STEPS, POOL)
    if a.evaluate:
        nets = {n: load_judge(out / f"{n}.safetensors")[0] for n in JUDGES}
        _evaluate_and_save(nets, out, a.seed, STEPS, POOL)


if __name__ == "__main__":
    main()
