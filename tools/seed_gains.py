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
import json
import statistics
from pathlib import Path


def last_evaluation(cell: Path) -> list[dict]:
    rows = [json.loads(line) for line in (cell / "eval.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return []
    last = max(r["samples"] for r in rows)
    return [r for r in rows if r["samples"] == last]


def gains(run_dir: Path, reward: str | None, steps: int | None) -> dict[tuple, dict[int, float]]:
    """(algo, train_reward, eval_reward, prompt_set, steps) -> {seed: paired gain}."""
    out: dict[tuple, dict[int, float]] = {}
    for cell in sorted(p for p in run_dir.glob("*__seed*") if (p / "DONE").exists()):
        for r in last_evaluation(cell):
            if (reward is None or r["eval_reward"] == reward) and (steps is None or r["steps"] == steps):
                key = (r["algo"], r["train_reward"], r["eval_reward"], r["prompt_set"], r["steps"])
                out.setdefault(key, {})[r["seed"]] = r["diff_mean"]
    return out


def agreement(run_dir: Path, a: str, b: str, steps: int | None) -> list[str]:
    lines = []
    for cell in sorted(p for p in run_dir.glob("*__seed*") if (p / "DONE").exists()):
        scores = json.loads((cell / "scores.json").read_text())
        for key, left in scores.items():
            prompt_set, reward, n = key.split("|")
            if reward != a or (steps is not None and int(n) != steps) or f"{prompt_set}|{b}|{n}" not in scores:
                continue
            right = scores[f"{prompt_set}|{b}|{n}"]
            same = sum((x > 0.5) == (y > 0.5) for x, y in zip(left, right)) / len(left)
            lines.append(f"{cell.name}, {prompt_set}, {n} steps: {a} and {b} agree on {same:.1%} of {len(left)} images")
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
