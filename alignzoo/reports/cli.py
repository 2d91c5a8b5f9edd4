"""``alignzoo report RUN_DIR [--out DIR]``: tables, plots, grids and report.md from stored results."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a benchmark folder written by `alignzoo bench` (runs/<suite>)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR)")
    p.add_argument("--grid-images", type=int, default=4, metavar="K", help="images per cell of the image grids, from each stored strip (default: 4)")
    p.add_argument(
        "--x",
        default="images",
        choices=["images", "unet", "seconds"],
        help="x axis of the learning and step-generalisation curves: training images, UNet evaluations (forward + backward) or wall seconds (default: images)",
    )


def run(args) -> int:
    from alignzoo.reports.report import write_report

    if args.grid_images < 1:
        raise ValueError(f"--grid-images must be at least 1, not {args.grid_images}")
    path = write_report(args.run_dir, args.out, grid_images=args.grid_images, x=args.x)
    files = sorted(p.name for p in path.parent.iterdir() if p.is_file() and p.suffix in {".md", ".tex", ".csv", ".png", ".jpg"})
    print(f"report: {path} ({len(files)} files in {path.parent})")
    return 0
