"""Per-seed paired gains of a suite's cells, and how often two judges agree on their images.

    python tools/seed_gains.py runs/tiny-calibrate --reward tiny_geneval_strict --steps 4
    python tools/seed_gains.py runs/tiny-calibrate --agree tiny_geneval_strict tiny_geneval_judge2 --steps 4

Reads each finished cell's eval.jsonl (its last evaluation) and prints, per algorithm, trained
reward, evaluated reward, prompt set and step count, the paired gain over the pretrained model as
mean ± SE across seeds with the seeds' values in brackets (the report's tables give the mean and
SE; the per-seed values are these). ``--agree A B`` reads the cells' scores.json instead and
prints the share of images on which the two 0/1 judges decide alike (score > 0.5).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from alignzoo.reports.results import Results, load_results, score_key


def _finished(results: Results) -> list[str]:
    return list(results.cells.loc[results.cells["done"], "cell"])


def gains(run_dir: Path, reward: str | None, steps: int | None) -> dict[tuple, dict[int, float]]:
    """(algo, train_reward, eval_reward, prompt_set, steps) -> {seed: paired gain} of each finished
    cell's last evaluation."""
    results = load_results(run_dir)
    final = results.final()
    final = final[final["cell"].isin(_finished(results))]
    if reward is not None:
        final = final[final["eval_reward"] == reward]
    if steps is not None:
        final = final[final["steps"] == steps]
    out: dict[tuple, dict[int, float]] = {}
    for r in final.itertuples():
        out.setdefault((r.algo, r.train_reward, r.eval_reward, r.prompt_set, r.steps), {})[int(r.seed)] = r.diff_mean
    return out


def agreement(run_dir: Path, a: str, b: str, steps: int | None) -> list[str]:
    results = load_results(run_dir)
    lines = []
    for cell in _finished(results):
        scores = results.scores.get(cell, {})
        for key, left in scores.items():
            prompt_set, reward, n = key.split("|")
            right = scores.get(score_key(prompt_set, b, int(n)))
            if reward != a or (steps is not None and int(n) != steps) or right is None:
                continue
            same = float(((left > 0.5) == (right > 0.5)).mean())
            lines.append(f"{cell}, {prompt_set}, {n} steps: {a} and {b} agree on {same:.1%} of {len(left)} images")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="a suite's run folder (alignzoo bench --runs)")
    ap.add_argument("--reward", help="only this evaluated reward")
    ap.add_argument("--steps", type=int, help="only this step count")
    ap.add_argument("--agree", nargs=2, metavar=("A", "B"), help="two 0/1 judges: the share of images they decide alike")
    args = ap.parse_args()
    if args.agree:
        print("\n".join(agreement(args.runs, *args.agree, args.steps)))
        return
    for (algo, trained, evaluated, prompt_set, n), by_seed in gains(args.runs, args.reward, args.steps).items():
        v = [by_seed[s] for s in sorted(by_seed)]
        se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else float("nan")
        seeds = ", ".join(f"{x:+.3f}" for x in v)
        print(f"{algo} on {trained}, {evaluated}, {prompt_set}, {n} steps: {statistics.mean(v):+.3f} ± {se:.3f} [{seeds}]")


if __name__ == "__main__":
    main()
