"""``alignzoo bench [SUITE]``: run a suite's cells and evaluations (then ``alignzoo report``)."""

from __future__ import annotations


def add_bench_arguments(p) -> None:
    p.add_argument("suite", nargs="?", default="quick", help="suite name (alignzoo list suites) or a .toml file")
    p.add_argument("--runs", default="runs", help="root folder for results (runs/<suite>/)")
    p.add_argument("--only", default=None, help="filter cells, e.g. algo=sdpo,reward=tiny_alignment")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--estimate", action="store_true", help="print the estimated cost and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run N cells at once on this machine, one process and one thread each (default: one at a time, in this process)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="ray: each cell a Ray task with one CPU and the suite's gpus_per_cell (pip install 'alignzoo[ray]')",
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (e.g. auto, or HOST:6379); default: a local Ray instance")


def run_bench(args) -> int:
    import sys

    from alignzoo.benchmarks.executors import CellsFailed
    from alignzoo.benchmarks.runner import BenchmarkRunner, parse_only
    from alignzoo.benchmarks.suites import load_suite

    suite = load_suite(args.suite)
    only = parse_only(args.only)
    if args.estimate:
        for k, v in suite.estimated_cost().items():
            print(f"{k}: {v:,}")
        return 0
    runner = BenchmarkRunner(suite, args.runs, device=args.device, progress=not args.no_progress)
    try:
        out = runner.run(only, workers=args.workers, executor=args.executor, ray_address=args.ray_address)
    except CellsFailed as err:
        print(f"alignzoo bench: {err}", file=sys.stderr)
        return 1
    print(f"results: {out}  (report: alignzoo report {out})")
    return 0


def add_eval_arguments(p) -> None:
    p.add_argument("lora", help="a LoRA folder written by training (RUN/final) or any diffusers-format UNet LoRA")
    p.add_argument("--model", required=True, help="the model it was trained on (alignzoo list models) or a diffusers folder")
    p.add_argument("--reward", action="append", required=True, help="reward to evaluate (repeat for several)")
    p.add_argument("--steps", default="1,2,4", help="comma-separated sampling step counts (default 1,2,4)")
    p.add_argument("--prompts", default="seen", help="prompt set name or a file with one prompt per line (default seen)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="held-out noises per prompt (default 2)")
    p.add_argument("--seed", type=int, default=4321, help="evaluation noise seed (default 4321, disjoint from training's noise)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")


def run_eval(args) -> int:
    """Paired gain of a fine-tuned LoRA over its pretrained model: the same UNet with the adapter
    disabled, on the same prompts and held-out initial noise (eta 0); one row per (reward, steps)."""
    import json

    import torch
    from tabulate import tabulate

    from alignzoo.benchmarks.evaluation import paired_gain
    from alignzoo.models import load_model
    from alignzoo.prompts import get_prompts
    from alignzoo.rewards import get_reward

    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps must be comma-separated integers, got {args.steps!r}") from None
    if not steps or min(steps) < 1 or args.images_per_prompt < 1:
        raise ValueError("--steps needs step counts >= 1 and --images-per-prompt must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = get_prompts(args.prompts)
    rewards = {name: get_reward(name, device=device) for name in args.reward}
    model = load_model(args.model, device=device)
    model.load_lora(args.lora)
    rows = []
    for name, reward in rewards.items():
        for n in steps:
            g = paired_gain(model, reward, prompts, n, images_per_prompt=args.images_per_prompt, seed=args.seed)
            rows.append({"reward": name, "steps": n, **g, "z": g["gain"] / g["se"] if g["se"] > 0 else float("nan")})
    print(
        tabulate(
            [[r["reward"], r["steps"], r["before"], r["after"], r["gain"], r["se"], r["z"], r["n"]] for r in rows],
            headers=["reward", "steps", "pretrained", "fine-tuned", "gain", "SE", "z", "images"],
            floatfmt=".4f",
            tablefmt="github",
        )
    )
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps({"lora": str(args.lora), "model": args.model, "prompts": args.prompts, "rows": rows}, indent=1))
    return 0
