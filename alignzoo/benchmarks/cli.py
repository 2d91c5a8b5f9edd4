"""``alignzoo bench [SUITE]``: run a suite's cells and evaluations (then ``alignzoo report``)."""
from __future__ import annotations


def add_bench_arguments(p) -> None:
    p.add_argument("suite", nargs="?", default="quick", help="suite name (alignzoo list suites) or a .toml file")
    p.add_argument("--runs", default="runs", help="root folder for results (runs/<suite>/)")
    p.add_argument("--only", default=None, help="filter cells, e.g. algo=sdpo,reward=tiny_alignment")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--estimate", action="store_true", help="print the estimated cost and exit")
    p.add_argument("--no-progress", action="store_true")


def run_bench(args) -> int:
    from alignzoo.benchmarks.runner import BenchmarkRunner, parse_only
    from alignzoo.benchmarks.suites import load_suite

    suite = load_suite(args.suite)
    only = parse_only(args.only)
    if args.estimate:
        for k, v in suite.estimated_cost().items():
            print(f"{k}: {v:,}")
        return 0
    runner = BenchmarkRunner(suite, args.runs, device=args.device, progress=not args.no_progress)
    out = runner.run(only)
    print(f"results: {out}  (report: alignzoo report {out})")
    return 0
