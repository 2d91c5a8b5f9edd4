"""The settings of ``alignzoo perf``: :class:`PerfConfig`, the command-line flags that fill it, the
options ``--ablate`` can compare (with the perf flags each one turns on), and the config every
measured algorithm gets: its defaults with the benchmark's batch and trajectory length, plus the
``--set`` overrides meant for every algorithm (``key=value``) or for one (``algo.key=value``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

# --ablate option -> the `alignzoo perf` flags that turn it on in the ablation's own process
ABLATION_FLAGS = {
    "channels_last": ["--channels-last"],
    "grad_checkpointing": ["--grad-checkpointing"],
    "bf16": ["--mixed-precision", "bf16"],
    "compile": ["--compile"],
}
ABLATIONS = tuple(ABLATION_FLAGS)


@dataclass
class PerfConfig:
    model: str = "tiny-sd"
    model_path: str | None = None
    algos: Sequence[str] | None = None  # None: every registered algorithm that runs on the model's kind
    reward: str | None = None  # None: tiny_alignment for tiny models, jpeg_compressibility otherwise
    prompts: str | None = None  # None: "seen" for tiny models, "simple_animals" otherwise
    steps: int | None = None  # trajectory length T; None: each algorithm's default (the model's train_steps)
    batch: int = 32  # images (trajectories) per epoch, the same for every algorithm
    repeats: int = 3
    warmup: int = 1
    resolution: int | None = None
    mixed_precision: str = "no"
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    max_transitions_per_forward: int = 256
    log_first_step_reward: bool = False  # the trainer's extra 1-step reward for logging (not an algorithm cost)
    overrides: dict = field(default_factory=dict)  # {"key": v} for every algorithm, {"algo.key": v} for one
    budgets: bool = True
    fast_paths: bool = False
    ablate: Sequence[str] = ()
    ablate_algo: str = "ddpo"
    out: str | None = None
    quiet: bool = False


def add_arguments(p) -> None:
    p.add_argument(
        "--model", default="tiny-sd", help="registered model (alignzoo list models) or a diffusers folder; sd-turbo-arch / lcm-arch: real size, random weights"
    )
    p.add_argument("--model-path", default=None, help="local folder with the model's weights")
    p.add_argument("--algos", default=None, help="comma-separated algorithms (default: all that run on the model's kind)")
    p.add_argument("--reward", default=None, help="reward (default: tiny_alignment on tiny models, jpeg_compressibility otherwise)")
    p.add_argument("--prompts", default=None, help="prompt set or file (default: seen on tiny models, simple_animals otherwise)")
    p.add_argument("--steps", type=int, default=None, help="trajectory length T (default: each algorithm's / the model's)")
    p.add_argument("--batch", type=int, default=32, help="images (trajectories) per epoch, for every algorithm")
    p.add_argument("--repeats", type=int, default=3, help="measured epochs per algorithm (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured epochs first (LaSRO's stage 1 falls here)")
    p.add_argument("--resolution", type=int, default=None, help="image size in pixels (default: the model's)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="autocast of the UNet/VAE calls (accelerate)")
    p.add_argument("--channels-last", action="store_true", help="UNet and VAE weights in channels_last layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing in the UNet")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-transitions-per-forward", type=int, default=256, help="the trainer's log-prob batching limit")
    p.add_argument("--log-first-step-reward", action="store_true", help="include the trainer's extra 1-step reward used only for logging")
    p.add_argument("--set", action="append", metavar="[ALGO.]KEY=VALUE", help="algorithm config override, for all algorithms or one (repeatable)")
    p.add_argument("--no-budgets", action="store_true", help="skip the budget checks (the SDPO all-queries run)")
    p.add_argument("--fast-paths", action="store_true", help="also run the before/after micro-benchmarks of the fast paths")
    p.add_argument("--ablate", default="", help=f"comma-separated options to measure against the baseline in fresh processes: {','.join(ABLATIONS)}")
    p.add_argument("--ablate-algo", default="ddpo", help="the algorithm the --ablate runs use")
    p.add_argument("--out", default=None, help="folder for perf.json and perf.md")


def config_from_args(args) -> PerfConfig:
    from alignzoo.algos.config_strings import parse_assignments

    ablate = [a.strip() for a in (args.ablate or "").split(",") if a.strip()]
    for a in ablate:
        if a not in ABLATIONS:
            raise ValueError(f"unknown --ablate option {a!r}; choose from {', '.join(ABLATIONS)}")
    for name, v in (("--batch", args.batch), ("--repeats", args.repeats)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    return PerfConfig(
        model=args.model,
        model_path=args.model_path,
        algos=[a.strip() for a in args.algos.split(",") if a.strip()] if args.algos else None,
        reward=args.reward,
        prompts=args.prompts,
        steps=args.steps,
        batch=args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        channels_last=args.channels_last,
        compile=args.compile,
        grad_checkpointing=args.grad_checkpointing,
        device=args.device,
        seed=args.seed,
        max_transitions_per_forward=args.max_transitions_per_forward,
        log_first_step_reward=args.log_first_step_reward,
        overrides=parse_assignments(args.set),
        budgets=not args.no_budgets,
        fast_paths=args.fast_paths,
        ablate=ablate,
        ablate_algo=args.ablate_algo,
        out=args.out,
    )


def overrides_for(algo_cls, overrides: dict) -> dict:
    """The overrides that apply to one algorithm, by field name: its own ``algo.key`` ones, and the
    plain ``key`` ones (meant for every algorithm) that it has a field for."""
    fields = {f.name for f in dataclasses.fields(algo_cls.Config)}
    applied = {}
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        if target == algo_cls.name or (not target and name in fields):
            applied[name] = value
    return applied


def algo_config(algo_cls, cfg: PerfConfig, extra: dict | None = None):
    """The algorithm's default config with the benchmark's settings and overrides applied; an
    ``algo.key`` override that names no field of the algorithm is an error, as with ``alignzoo
    train --set``."""
    from alignzoo.algos.config_strings import config_from_strings

    assignments: dict = {"samples_per_epoch": cfg.batch}
    if cfg.steps is not None:
        assignments["num_steps"] = cfg.steps
    assignments.update(overrides_for(algo_cls, {**cfg.overrides, **(extra or {})}))
    config = config_from_strings(algo_cls.Config, algo_cls.Config(), assignments)
    g = config.group_size
    if g > 1 and cfg.batch % g and algo_cls.group_sizes is None:  # e.g. LaSRO's N_s noises per prompt: keep the image count
        config = dataclasses.replace(config, group_size=2 if cfg.batch % 2 == 0 else 1)
    return config
