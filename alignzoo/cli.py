"""The ``alignzoo`` command line.

Each subcommand lives next to the code it drives and is imported lazily, so ``alignzoo list``
stays fast. Errors a user can fix (unknown names, missing weights, bad input) are printed as
one clear message with exit code 2, never as a raw traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# subcommand -> (module, function that adds its arguments, function that runs it, help)
SUBCOMMANDS = {
    "list": ("alignzoo.cli_list", "add_arguments", "run", "list models, rewards, algos or suites"),
    "sample": ("alignzoo.models.cli", "add_sample_arguments", "run_sample", "sample an image grid over step counts"),
    "score": ("alignzoo.rewards.cli", "add_arguments", "run", "score a folder of images with a reward"),
    "tinyworld": ("alignzoo.tinyworld.cli", "add_arguments", "run", "train or inspect the tiny world's models"),
    "train": ("alignzoo.algos.cli", "add_arguments", "run", "fine-tune a model with an algorithm"),
    "bench": ("alignzoo.benchmarks.cli", "add_bench_arguments", "run_bench", "run a benchmark suite"),
    "eval": ("alignzoo.benchmarks.cli", "add_eval_arguments", "run_eval", "paired gain of a fine-tuned LoRA over its pretrained model"),
    "report": ("alignzoo.reports.cli", "add_arguments", "run", "write the report of a benchmark folder"),
    "perf": ("alignzoo.benchmarks.perf", "add_arguments", "run", "measure throughput and memory"),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from alignzoo.hub import MissingWeightsError
    from alignzoo.registry import UnknownNameError

    return (UnknownNameError, MissingWeightsError, ValueError, FileNotFoundError)


def _check_device(name: str | None) -> None:
    """Every command's ``--device``, checked once here rather than as a traceback deep in torch."""
    if name is None or name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignzoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add, _run, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as err:
                if err.name != module:
                    raise
                continue
            getattr(mod, add)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    module, _add, run, _help = SUBCOMMANDS[args.command]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            print(f"alignzoo: the {args.command!r} command is not available in this version", file=sys.stderr)
            return 2
        raise
    # warnings for the user (e.g. a damaged checkpoint skipped) as one line, without file:line and source
    default_format = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"alignzoo {args.command}: warning: {message}\n"
    try:
        _check_device(getattr(args, "device", None))
        return int(getattr(mod, run)(args) or 0)
    except _user_errors() as err:
        print(f"alignzoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
