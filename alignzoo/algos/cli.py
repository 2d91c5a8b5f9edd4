"""``alignzoo train``: fine-tune a model with a registered algorithm."""

from __future__ import annotations

import json


def add_arguments(p) -> None:
    p.add_argument("--algo", required=True, help="algorithm (alignzoo list algos)")
    p.add_argument(
        "--reward",
        required=True,
        action="append",
        help="reward (alignzoo list rewards); repeat it to train on a weighted sum of several (see --reward-weights)",
    )
    p.add_argument("--reward-weights", default=None, metavar="W1,W2,...", help="weights of the --reward rewards, one each, in their order (default: all 1)")
    p.add_argument("--model", default="tiny-sd", help="model name (alignzoo list models) or diffusers folder")
    p.add_argument("--model-path", default=None, help="local folder with the model's weights")
    p.add_argument("--samples", type=int, default=256, help="total generated images (sample budget)")
    p.add_argument("--out", required=True, help="run folder (log.jsonl, checkpoints/, final/ LoRA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prompts",
        default=None,
        help="prompt set name or file (default: the model's own, e.g. geneval_train for the compositional tiny world; alignzoo list prompts)",
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="SUITE",
        help="start from a bench suite's settings for this algorithm and reward (e.g. tiny-lcm); --set overrides them",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an algorithm config field (repeatable)")
    p.add_argument(
        "--reward-arg", action="append", metavar="KEY=VALUE", help="keyword argument for the reward (repeatable); with several rewards, REWARD.KEY=VALUE"
    )
    p.add_argument("--plugin", action="append", help="Python file that registers extra algorithms")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("--log-with", action="append", choices=["tensorboard", "wandb"], help="accelerate tracker(s)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    from alignzoo.algos.base import get_algorithm, load_plugin
    from alignzoo.algos.config_strings import config_from_strings, parse_assignments
    from alignzoo.algos.trainer import TrainConfig, Trainer
    from alignzoo.rewards.combined import combination_spec

    for plugin in args.plugin or []:
        load_plugin(plugin)
    algo_cls = get_algorithm(args.algo)
    reward = combination_spec(args.reward, args.reward_weights)
    base = algo_cls.Config()
    if args.preset:
        from alignzoo.benchmarks.suites import load_suite

        base = load_suite(args.preset).algo_config(args.algo, reward)
    algo_config = config_from_strings(algo_cls.Config, base, parse_assignments(args.set))
    reward_kwargs = _reward_kwargs(reward, parse_assignments(args.reward_arg, "--reward-arg"))
    cfg = TrainConfig(
        algo=args.algo,
        reward=reward,
        model=args.model,
        model_path=args.model_path,
        out=args.out,
        samples=args.samples,
        seed=args.seed,
        prompts=args.prompts,
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
        log_with=tuple(args.log_with or ()),
        reward_kwargs=reward_kwargs,
        progress=not args.no_progress,
    )
    trainer = Trainer(cfg, algo_config)
    if trainer.resumed_from is not None and trainer.accelerator.is_main_process:
        print(f"resuming from {trainer.resumed_from}")
    records = trainer.train()
    if trainer.accelerator.is_main_process and records:
        last = records[-1]
        print(json.dumps({k: last[k] for k in ("epoch", "samples", "reward_mean", "reward_std", "seconds_total") if k in last}))
        print(f"LoRA: {trainer.out / 'final'}")
    return 0


def _reward_kwargs(reward: str, assignments: dict[str, str]) -> dict:
    """``--reward-arg`` values: ``{key: value}`` for one reward, ``{reward: {key: value}}`` for a
    weighted sum, whose arguments name their reward (``REWARD.key=value``)."""
    from alignzoo.rewards.combined import is_combination

    if not is_combination(reward):
        return {k: _literal(v) for k, v in assignments.items()}
    out: dict[str, dict] = {}
    for key, value in assignments.items():
        name, dot, arg = key.rpartition(".")
        if not dot or not name:
            raise ValueError(f"--reward-arg {key}={value}: with several rewards, name the one it is for: --reward-arg REWARD.{key}={value}")
        out.setdefault(name, {})[arg] = _literal(value)
    return out


def _literal(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
