"""Which algorithm pairs a report separates, per prompt set and step count.

    python tools/pairwise_summary.py docs/tiny-all-geneval [--min-seeds 3]

Reads the report's pairwise_<prompt set>.csv files (``alignzoo report``) and prints, per step
count, how many pairs' 95% paired-bootstrap intervals exclude zero and the winner of each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="a report folder with pairwise_*.csv")
    ap.add_argument("--min-seeds", type=int, default=3, help="only pairs with at least this many seeds on each side")
    args = ap.parse_args()
    for path in sorted(Path(args.report).glob("pairwise_*.csv")):
        df = pd.read_csv(path)
        df = df[df.seeds_a.ge(args.min_seeds) & df.seeds_b.ge(args.min_seeds)]
        for (prompt_set, reward, steps), g in df.groupby(["prompt_set", "reward", "steps"]):
            sep = g[g.separated]
            wins = ", ".join(f"{r.a} > {r.b}" if r.diff > 0 else f"{r.b} > {r.a}" for r in sep.itertuples())
            print(f"{prompt_set}, {reward}, {steps} steps: {len(sep)} of {len(g)} pairs separate{': ' + wins if wins else ''}")


if __name__ == "__main__":
    main()
