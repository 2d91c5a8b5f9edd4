"""``alignzoo perf``: what each algorithm costs, measured on the trainer's own code paths: per
algorithm, throughput, reward queries and VAE decodes per trajectory, seconds per 1,000 samples by
phase, peak memory and trainer overhead, with budget checks, fast-path micro-benchmarks
(``--fast-paths``) and option ablations in fresh processes (``--ablate``). docs/perf.md is the
manual, with measured figures.
"""

from alignzoo.benchmarks.perf.config import ABLATIONS, PerfConfig, add_arguments, algo_config, config_from_args
from alignzoo.benchmarks.perf.markdown import to_markdown
from alignzoo.benchmarks.perf.measure import OVERHEAD_BUDGET, SDPO_SLACK, PerfRun, machine_info, run, run_perf
from alignzoo.benchmarks.perf.probe import PeakMemory, Probe

__all__ = [
    "ABLATIONS",
    "OVERHEAD_BUDGET",
    "SDPO_SLACK",
    "PeakMemory",
    "PerfConfig",
    "PerfRun",
    "Probe",
    "add_arguments",
    "algo_config",
    "config_from_args",
    "machine_info",
    "run",
    "run_perf",
    "to_markdown",
]
