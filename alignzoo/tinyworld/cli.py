"""``alignzoo tinyworld``: train the tiny world's models, render a prompt, or run the quality check.

alignzoo tinyworld train [--stage all|geneval|preference|compose-models|vae2|sd2|turbo|lcm2|first-world|rewards|vae|sd|lcm]
                         [--out DIR] [--seed N] [--threads N]
alignzoo tinyworld render --prompt "two red circles on the left" --out x.png [--seed N] [--zoom 8]
alignzoo tinyworld eval [--weights DIR] [--models tiny-sd-v2,tiny-turbo,tiny-lcm-v2] [--steps 1,2,4,8,16]
                        [--per-prompt 4]      (compositional world's models; --world first: tiny-sd/-lcm)
alignzoo tinyworld prompts [--unseen [CATEGORY]]
alignzoo tinyworld geneval [--per-prompt 4] [--degraded] [--split all|seen|unseen]   (compositional world)
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tinyworld_command", metavar="ACTION")
    t = sub.add_parser("train", help="train the tiny world's rewards and models (default: the whole compositional world)")
    from alignzoo.tinyworld.training.compose.stages import ALL_STAGES, COMPOSE_STAGES

    t.add_argument(
        "--stage",
        default="all",
        choices=["all", "compose-models", *COMPOSE_STAGES, "first-world", "rewards", "vae", "sd", "lcm"],
        help=f"which stage to train (default all: the compositional world's {', '.join(ALL_STAGES)} in that order; "
        "compose-models: its models only; first-world: the first world's rewards, vae, sd, lcm)",
    )
    t.add_argument("--out", default=None, help="output folder (default: the package's alignzoo/tinyworld/weights/)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    t.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (quick trials)")
    r = sub.add_parser("render", help="render a prompt procedurally (the ground-truth world) to a PNG")
    r.add_argument("--prompt", required=True)
    r.add_argument("--out", required=True, help="PNG path")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--zoom", type=int, default=1, help="nearest-neighbour upscaling factor (default 1: 32x32)")
    e = sub.add_parser(
        "eval", help="per-category strict GenEval scores of the compositional world's models (--world first: the first world's tiny-sd/tiny-lcm check)"
    )
    e.add_argument("--weights", default=None, help="weights folder (default: the package's)")
    e.add_argument("--world", default="compose", choices=["compose", "first"])
    e.add_argument("--models", default="tiny-sd-v2,tiny-turbo,tiny-lcm-v2")
    e.add_argument("--steps", default="1,2,4,8,16")
    e.add_argument("--per-prompt", type=int, default=4)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("prompts", help="print the seen (default) or unseen prompt list")
    p.add_argument("--unseen", nargs="?", const="all", default=None, metavar="CATEGORY")
    ge = sub.add_parser("geneval", help="compositional world: per-category strict GenEval scores of renders")
    ge.add_argument("--per-prompt", type=int, default=4)
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--split", default="all", choices=["all", "seen", "unseen"])
    ge.add_argument("--degraded", action="store_true", help="one random blur/noise/colour shift per render")
    ge.add_argument("--judges", default="tiny_geneval,tiny_geneval_judge2")
    ge.add_argument("--threads", type=int, default=1)


def _compose_stages() -> dict:
    from alignzoo.tinyworld.training.compose.stages import COMPOSE_STAGES

    return COMPOSE_STAGES


def _train(args: argparse.Namespace) -> int:
    from alignzoo.tinyworld.training.compose.stages import ALL_STAGES, MODEL_STAGES, run_stage

    groups = {"all": ALL_STAGES, "compose-models": MODEL_STAGES}
    if args.stage in _compose_stages() or args.stage in groups:
        for stage in groups.get(args.stage, (args.stage,)):
            res = run_stage(stage, out=args.out, seed=args.seed, threads=args.threads, scale=args.scale)
            print(json.dumps({stage: res}, indent=2, default=str), flush=True)
        return 0
    from alignzoo.tinyworld.training import train

    stage = "all" if args.stage == "first-world" else args.stage  # the first world's train() runs its four stages as "all"
    results = train(stage=stage, out=args.out, seed=args.seed, threads=args.threads, scale=args.scale)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("wall_seconds", "seconds")} for k, v in results.items()}, indent=2))
    return 0


def _render(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from alignzoo.tinyworld.grammar import parse_prompt
    from alignzoo.tinyworld.render import render

    img = Image.fromarray(render(parse_prompt(args.prompt), np.random.default_rng(args.seed)))
    if args.zoom > 1:
        img = img.resize((img.width * args.zoom, img.height * args.zoom), Image.NEAREST)
    img.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from alignzoo.hf import quiet_from_now
    from alignzoo.tinyworld import weights_dir
    from alignzoo.tinyworld.training.quality import quality_check

    torch.set_num_threads(args.threads)
    quiet_from_now()
    w = Path(args.weights) if args.weights else weights_dir()
    if args.world == "compose":
        from alignzoo.tinyworld.training.compose.model_eval import MODELS, main

        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
        main(w, models, [int(s) for s in args.steps.split(",")], args.per_prompt, args.seed)
        return 0
    for sub in ("tiny-sd", "tiny-lcm", "rewards"):
        if not (w / sub).is_dir():
            raise FileNotFoundError(f"{w / sub} does not exist; train it with `alignzoo tinyworld train`")
    res = quality_check(w / "tiny-sd", w / "tiny-lcm", seed=args.seed)
    print(json.dumps(res, indent=2))
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from alignzoo.tinyworld.grammar import seen_prompts, unseen_prompts

    if args.unseen is None:
        prompts = seen_prompts()
    else:
        prompts = unseen_prompts(None if args.unseen == "all" else args.unseen)
    print("\n".join(prompts))
    return 0


def _geneval(args: argparse.Namespace) -> int:
    import torch

    from alignzoo.tinyworld.training.compose.evaluate import main

    torch.set_num_threads(args.threads)
    main(args.per_prompt, args.seed, args.degraded, args.split, args.judges.split(","))
    return 0


COMMANDS = {"train": _train, "render": _render, "eval": _eval, "prompts": _prompts, "geneval": _geneval}


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = COMMANDS.get(getattr(args, "tinyworld_command", None))
    if command is None:
        print("usage: alignzoo tinyworld {train,render,eval,prompts,geneval} ... (see --help)")
        return 1
    return command(args)
