"""Pairwise comparisons of algorithms: differences with 95% paired-bootstrap intervals.

For every pair of algorithms (A, B) in suite order, every trained reward R, prompt set and step
count n, the statistic is

    Δ = mean over A's seeds of A's mean on R − mean over B's seeds of B's mean on R,

each run trained on R and evaluated on R with n sampling steps (the final checkpoint).

Bootstrap (:func:`paired_bootstrap`, the default when every run of the pair has per-image scores
in its ``scores.json``). Each run's scores are first averaged over the K noises of each prompt
(row = prompt·K + k), so a prompt travels with all its noises. Each of :data:`N_BOOT` replicates
then

1. resamples A's seeds with replacement, and B's seeds with replacement (independently: two
   algorithms' runs of the same seed number share nothing but that number);
2. resamples the P prompts with replacement, once, and uses the same prompt indices for both
   algorithms and every resampled seed: all methods are evaluated on the same prompts with the
   same noises, so prompt difficulty is common to every run and cancels in Δ, while the
   prompt-by-algorithm interaction is resampled as it should be;
3. computes Δ* on the resampled seeds and prompts.

The interval is the 2.5th–97.5th percentile of Δ* (percentile bootstrap, Efron & Tibshirani
1993, ch. 13). The random generator is seeded from :data:`BOOT_SEED` and the comparison's name,
so a report is reproducible and one comparison does not depend on which others were computed.
With one seed per algorithm the interval covers the evaluation's prompts and noises only
(run-to-run drift is not in it; marked ‡). Without per-image scores the seed-level fallback
(:func:`seed_bootstrap`) resamples the runs' means (needs ≥ 2 seeds per algorithm; marked †);
otherwise the cell is "–". A ranking is stated only where the interval excludes zero.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from tabulate import tabulate

from alignzoo.reports.results import PRETRAINED, Results, score_key

N_BOOT = 4000
BOOT_SEED = 20240612
LEVEL = 0.95
DEFAULT_IMAGES_PER_PROMPT = 2  # the suites' evaluation default (benchmarks.suites.EvalConfig)
BASIS_FULL, BASIS_PROMPTS, BASIS_SEEDS, BASIS_NONE = "seeds × prompts", "prompts (one seed)", "seed means", "none"
MARKS = {BASIS_FULL: "", BASIS_PROMPTS: " ‡", BASIS_SEEDS: " †", BASIS_NONE: ""}
COLUMNS = ["prompt_set", "reward", "steps", "a", "b", "diff", "lo", "hi", "basis", "seeds_a", "seeds_b", "separated"]
DASH = "–"


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


def rng_for(name: str) -> np.random.Generator:
    """The generator of one comparison: fixed seed + the comparison's name (order independent)."""
    return np.random.default_rng([BOOT_SEED, zlib.crc32(name.encode())])


def prompt_means(scores: np.ndarray, images_per_prompt: int) -> np.ndarray:
    """(P·K,) per-image scores in evaluation row order → (P,) per-prompt means."""
    scores = np.asarray(scores, float)
    return scores.reshape(-1, images_per_prompt).mean(1)


def _seed_weights(k: int, n_boot: int, rng) -> np.ndarray:
    """(n_boot, k) weights of a with-replacement resample of k seeds (counts / k)."""
    return rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot) / k


def paired_bootstrap(
    scores_a: list, scores_b: list, images_per_prompt: int = 1, n_boot: int = N_BOOT, rng: np.random.Generator | None = None, level: float = LEVEL
) -> tuple[float, float, float]:
    """(Δ, lo, hi) for lists of per-seed per-image score vectors of A and B (all the same length,
    same prompts and noises). See the module docstring for the procedure."""
    rng = rng or np.random.default_rng(BOOT_SEED)
    ma = np.stack([prompt_means(s, images_per_prompt) for s in scores_a])  # (seeds_a, P)
    mb = np.stack([prompt_means(s, images_per_prompt) for s in scores_b])
    p = ma.shape[1]
    wa, wb = _seed_weights(len(ma), n_boot, rng), _seed_weights(len(mb), n_boot, rng)
    wp = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot) / p  # (n_boot, P), shared by A and B
    stats = np.einsum("bs,sp,bp->b", wa, ma, wp) - np.einsum("bs,sp,bp->b", wb, mb, wp)
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [q, 100 - q])
    return float(ma.mean() - mb.mean()), float(lo), float(hi)


def seed_bootstrap(means_a, means_b, n_boot: int = N_BOOT, rng: np.random.Generator | None = None, level: float = LEVEL) -> tuple[float, float, float]:
    """(Δ, lo, hi) from the runs' means alone: resample each algorithm's seeds with replacement."""
    rng = rng or np.random.default_rng(BOOT_SEED)
    a, b = np.asarray(means_a, float), np.asarray(means_b, float)
    stats = _seed_weights(len(a), n_boot, rng) @ a - _seed_weights(len(b), n_boot, rng) @ b
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [q, 100 - q])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def images_per_prompt(results: Results, lines: pd.DataFrame) -> int:
    """K of the evaluation: the lines' provenance, else the suite's eval section, else the default."""
    if "provenance" in lines.columns:
        for prov in lines["provenance"]:
            if isinstance(prov, dict) and isinstance(prov.get("images_per_prompt"), int) and prov["images_per_prompt"] > 0:
                return prov["images_per_prompt"]
    k = (results.suite.get("eval") or {}).get("images_per_prompt")
    return int(k) if isinstance(k, int) and k > 0 else DEFAULT_IMAGES_PER_PROMPT


def compare(results: Results, lines_a: pd.DataFrame, lines_b: pd.DataFrame, name: str) -> dict:
    """One comparison from the two algorithms' final lines (one per seed) of one column."""
    key = score_key(*lines_a.iloc[0][["prompt_set", "eval_reward", "steps"]])
    sa = [results.scores.get(c, {}).get(key) for c in lines_a["cell"]]
    sb = [results.scores.get(c, {}).get(key) for c in lines_b["cell"]]
    out = {"seeds_a": len(lines_a), "seeds_b": len(lines_b)}
    lengths = {len(s) for s in sa + sb if s is not None}
    k = images_per_prompt(results, pd.concat([lines_a, lines_b]))
    if all(s is not None for s in sa + sb) and len(lengths) == 1:
        n = lengths.pop()
        k = k if n % k == 0 else 1  # a layout the key does not match: fall back to images as units
        d, lo, hi = paired_bootstrap(sa, sb, k, rng=rng_for(name))
        basis = BASIS_FULL if len(sa) > 1 and len(sb) > 1 else BASIS_PROMPTS
    elif len(lines_a) > 1 and len(lines_b) > 1:
        d, lo, hi = seed_bootstrap(lines_a["mean"], lines_b["mean"], rng=rng_for(name))
        basis = BASIS_SEEDS
    else:
        d, lo, hi = float(lines_a["mean"].mean() - lines_b["mean"].mean()), np.nan, np.nan
        basis = BASIS_NONE
    return {**out, "diff": d, "lo": lo, "hi": hi, "basis": basis, "separated": bool(np.isfinite(lo) and (lo > 0 or hi < 0))}


def pairwise_frame(results: Results, prompt_set: str, algos: list[str], rewards: list[str]) -> pd.DataFrame:
    """Every (trained reward, steps, A, B) comparison on ``prompt_set``: A − B and its interval."""
    fin = results.final()
    fin = fin[(fin["prompt_set"] == prompt_set) & (fin["algo"] != PRETRAINED) & (fin["train_reward"] == fin["eval_reward"])]
    fin = fin.drop_duplicates(["cell", "eval_reward", "steps"], keep="last")
    records = []
    for reward in rewards:
        sub = fin[fin["eval_reward"] == reward]
        for n in sorted(int(s) for s in sub["steps"].unique()):
            col = sub[sub["steps"] == n]
            present = [a for a in algos if (col["algo"] == a).any()]
            for i, a in enumerate(present):
                for b in present[i + 1 :]:
                    la, lb = col[col["algo"] == a].sort_values("seed"), col[col["algo"] == b].sort_values("seed")
                    rec = compare(results, la, lb, f"{prompt_set}|{reward}|{n}|{a}|{b}")
                    records.append({"prompt_set": prompt_set, "reward": reward, "steps": n, "a": a, "b": b, **rec})
    return pd.DataFrame(records, columns=COLUMNS)


def format_ci(d: float, lo: float, hi: float, decimals: int = 3) -> str:
    """``+0.061 [+0.032, +0.090]``; the difference alone when there is no interval."""
    if not np.isfinite(lo):
        return DASH
    return f"{d:+.{decimals}f} [{lo:+.{decimals}f}, {hi:+.{decimals}f}]"


def pairwise_markdown(frame: pd.DataFrame, rewards: list[str]) -> str:
    """One pipe table per trained reward: rows ``A − B``, columns = step counts; ``*`` marks an
    interval that excludes zero, † a seed-means bootstrap, ‡ a one-seed (prompts only) interval."""
    if frame.empty:
        return "(fewer than two algorithms with results: no pairwise comparisons)"
    from alignzoo.reports.tables import decimals_for, step_label

    parts = []
    for reward in [r for r in rewards if (frame["reward"] == r).any()]:
        f = frame[frame["reward"] == reward]
        dec = decimals_for(f["diff"].abs().tolist() + [0.0])
        steps = sorted(int(s) for s in f["steps"].unique())
        cells = {(r.a, r.b, int(r.steps)): r for r in f.itertuples(index=False)}
        rows = []
        for a, b in dict.fromkeys(zip(f["a"], f["b"])):
            row = [f"{a} − {b}"]
            for n in steps:
                c = cells.get((a, b, n))
                text = DASH if c is None else format_ci(c.diff, c.lo, c.hi, dec)
                row.append(text if text == DASH else text + (" *" if c.separated else "") + MARKS[c.basis])
            rows.append(row)
        headers = [f"trained on {reward}"] + [step_label(n) for n in steps]
        parts.append(tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=["left"] + ["right"] * len(steps)))
    return "\n\n".join(parts)


PAIRWISE_NOTE = (
    f"Difference of the means over seeds (row: first − second algorithm, both trained and evaluated on the reward) with a "
    f"{LEVEL:.0%} paired-bootstrap interval over seeds and evaluation prompts × noises ({N_BOOT:,} replicates: seeds "
    f"resampled with replacement per algorithm, prompts with all their noises resampled once per replicate and shared by "
    f"both algorithms; fixed random seed); * = the interval excludes zero; † = no per-image scores, bootstrap of the "
    f"runs' means over seeds; ‡ = one seed, the interval covers the evaluation's prompts and noises only (not run-to-run "
    f"drift); – = not enough data for an interval."
)


def _steps_text(steps: list[int]) -> str:
    if len(steps) == 1:
        return f"{steps[0]} step" + ("" if steps[0] == 1 else "s")
    return ", ".join(str(s) for s in steps[:-1]) + f" and {steps[-1]} steps"


MIN_SEEDS_TO_RANK = 3  # the project's standard: "A beats B" needs >= 3 seeds and an interval excluding zero


def ranked(r) -> bool:
    """A row that may be stated as a ranking: its interval excludes zero and both sides have at
    least MIN_SEEDS_TO_RANK seeds (one seed's interval covers prompts and noises, not run-to-run drift)."""
    return bool(r.separated) and min(int(r.seeds_a), int(r.seeds_b)) >= MIN_SEEDS_TO_RANK


def ranking_lines(frame: pd.DataFrame) -> list[str]:
    """Observations: "sdpo > ddpo at 1 step: +0.061 [+0.032, +0.090]" where the interval excludes
    zero with >= 3 seeds a side; "apart on fewer than 3 seeds" where the interval excludes zero
    with fewer seeds (not a ranking); "not separated" for the rest; nothing else ranks."""
    lines = []
    for (ps, reward), f in frame.groupby(["prompt_set", "reward"], sort=False):
        parts = []
        for (a, b), g in f.groupby(["a", "b"], sort=False):
            said = []
            for r in g.sort_values("steps").itertuples(index=False):
                if r.separated:
                    hi_name, lo_name, d, lo, hi = (a, b, r.diff, r.lo, r.hi) if r.diff > 0 else (b, a, -r.diff, -r.hi, -r.lo)
                    if ranked(r):
                        said.append(f"{hi_name} > {lo_name} at {_steps_text([int(r.steps)])}: {format_ci(d, lo, hi)}")
                    else:
                        k = min(int(r.seeds_a), int(r.seeds_b))
                        said.append(
                            f"{hi_name} − {lo_name} at {_steps_text([int(r.steps)])}: {format_ci(d, lo, hi)}, from {k} seed"
                            f"{'' if k == 1 else 's'}: not a ranking (needs >= {MIN_SEEDS_TO_RANK} seeds)"
                        )
            rest = [int(r.steps) for r in g.itertuples(index=False) if not r.separated and r.basis != BASIS_NONE]
            if rest:
                said.append(f"{a} vs {b} not separated at {_steps_text(sorted(rest))}")
            bare = [int(r.steps) for r in g.itertuples(index=False) if r.basis == BASIS_NONE]
            if bare:
                said.append(f"{a} vs {b} without an interval at {_steps_text(sorted(bare))} (one seed, no per-image scores)")
            parts += said
        if parts:
            lines.append(f"Trained on **{reward}**, {ps} prompts (95% paired bootstrap): " + "; ".join(parts) + ".")
    return lines


def separated_best(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """Table-1 bold: True for the column's highest algorithm mean when the pairwise interval
    separates it from every other algorithm of that column (the pretrained row is never bold)."""
    best = pd.Series(False, index=table.index)
    algo = table[table["method"] != PRETRAINED]
    for (reward, n), col in algo.groupby(["reward", "steps"]):
        if len(col) < 2 or not col["mean"].notna().any():
            continue
        top = col.loc[col["mean"].idxmax(), "method"]
        p = pairs[(pairs["reward"] == reward) & (pairs["steps"] == n) & ((pairs["a"] == top) | (pairs["b"] == top))]
        others = set(col["method"]) - {top}
        beaten = {r.b if r.a == top else r.a for r in p.itertuples(index=False) if ranked(r) and (r.diff > 0) == (r.a == top)}
        if others and others <= beaten:
            best[col["mean"].idxmax()] = True
    return best
