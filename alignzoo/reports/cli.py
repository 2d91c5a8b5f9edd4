"""``alignzoo report RUN_DIR``: tables, plots, grids and report.md from stored results."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a benchmark folder written by `alignzoo bench` (runs/<suite>)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")


def run(args) -> int:
    from alignzoo.reports.build import write_report

    path = write_report(args.run_dir, args.out)
    print(f"report: {path}")
    return 0
