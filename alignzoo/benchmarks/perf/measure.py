"""The benchmark itself: :class:`PerfRun` builds the real :class:`Trainer` for each algorithm on
one model and reward, times ``--warmup`` + ``--repeats`` of its epochs under a :class:`Probe` and
reduces them to one row of medians, then checks the budgets (trainer overhead; SDPO's reward time
with 3 queries against its all-T-queries variant). :func:`run_perf` runs it all, with the optional
fast paths and ablations, and writes ``perf.json`` and ``perf.md``; :func:`run` is the command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignzoo.benchmarks.perf.ablations import ablations
from alignzoo.benchmarks.perf.config import PerfConfig, algo_config, config_from_args
from alignzoo.benchmarks.perf.fast_paths import fast_paths
from alignzoo.benchmarks.perf.markdown import to_markdown
from alignzoo.benchmarks.perf.probe import PeakMemory, Probe, free_memory

OVERHEAD_BUDGET = 0.10
SDPO_SLACK = 1.10


def _is_tiny(model) -> bool:
    """The tiny world's models (and tiny random pipelines): native resolution <= 64 px."""
    native = int(model.unet.config.sample_size) * model.vae_scale
    return model.spec.name.startswith("tiny") or native <= 64


def _median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


class PerfRun:
    def __init__(self, cfg: PerfConfig):
        from accelerate import Accelerator

        from alignzoo.models import load_model

        self.cfg = cfg
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.device == "cpu")
        self.device = self.accelerator.device
        if cfg.device == "cuda" and self.device.type != "cuda":
            raise ValueError("--device cuda: no CUDA device is available")
        if self.device.type == "cuda":  # as the trainer sets them
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self._load = lambda: load_model(cfg.model, model_path=cfg.model_path, device=self.device, resolution=cfg.resolution)
        self._first_model = self._load()
        m = self._first_model
        self.kind = m.kind
        self.tiny = _is_tiny(m)
        self.resolution = m.resolution
        self.reward_name = cfg.reward or ("tiny_alignment" if self.tiny else "jpeg_compressibility")
        self.prompts = cfg.prompts or ("seen" if self.tiny else "simple_animals")
        from alignzoo.rewards import get_reward

        self.reward = get_reward(self.reward_name, device=self.device)
        self.reward.to(self.device)
        self.tmp = tempfile.TemporaryDirectory(prefix="alignzoo_perf_")

    def log(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, file=sys.stderr, flush=True)

    def model(self):
        if self._first_model is not None:
            m, self._first_model = self._first_model, None
            return m
        return self._load()

    def algorithms(self) -> list[str]:
        """The algorithms to measure, with the overrides checked against them here, so that a bad
        ``--set`` fails before the first measurement rather than minutes into the run."""
        from alignzoo.algos.base import get_algorithm, list_algorithms

        names = list(self.cfg.algos) if self.cfg.algos else [a for a in list_algorithms() if self.kind in get_algorithm(a).model_kinds]
        if not self.cfg.algos and not self.reward.supports_grad:  # reward backprop needs a differentiable reward
            names = [a for a in names if not get_algorithm(a).needs_reward_grad]
        for a in names:
            cls = get_algorithm(a)
            if self.kind not in cls.model_kinds:
                raise ValueError(f"algorithm {a!r} runs on {'/'.join(cls.model_kinds)} models; {self.cfg.model!r} is a {self.kind} model")
        self._check_overrides(names)
        return names

    def _check_overrides(self, names: list[str]) -> None:
        """Refuses an override that would change nothing: one for an unknown algorithm, an
        ``algo.key`` that is not a field of that algorithm (raised by ``algo_config``), or a plain
        ``key`` that no measured algorithm has."""
        from alignzoo.algos.base import get_algorithm, list_algorithms

        targets = {key.rpartition(".")[0] for key in self.cfg.overrides} - {""}
        if targets - set(list_algorithms()):
            raise ValueError(f"--set names unknown algorithm(s) {', '.join(sorted(targets - set(list_algorithms())))}; known: {', '.join(list_algorithms())}")
        fields = set()
        for a in names:
            fields |= {f.name for f in dataclasses.fields(algo_config(get_algorithm(a), self.cfg))}
        plain = {key for key in self.cfg.overrides if "." not in key} - fields
        if plain:
            raise ValueError(f"--set key(s) {', '.join(sorted(plain))} match no config field of {', '.join(names)}")

    def trainer(self, algo: str, extra: dict | None = None, model=None):
        from alignzoo.algos.base import get_algorithm
        from alignzoo.algos.trainer import TrainConfig, Trainer

        cls = get_algorithm(algo)
        acfg = algo_config(cls, self.cfg, extra)
        tcfg = TrainConfig(
            algo=algo,
            reward=self.reward_name,
            model=self.cfg.model,
            model_path=self.cfg.model_path,
            out=str(Path(self.tmp.name) / f"{algo}_{len(os.listdir(self.tmp.name))}"),
            samples=10**9,
            seed=self.cfg.seed,
            prompts=self.prompts,
            mixed_precision=self.cfg.mixed_precision,
            cpu=self.cfg.device == "cpu",
            progress=False,
            log_first_step_reward=self.cfg.log_first_step_reward,
            max_transitions_per_forward=self.cfg.max_transitions_per_forward,
        )
        reward = None if cls.needs_reward_grad else self.reward  # None: the trainer builds it differentiable
        trainer = Trainer(tcfg, acfg, accelerator=self.accelerator, model=model if model is not None else self.model(), reward=reward)
        trainer.model.enable_fast_paths(channels_last=self.cfg.channels_last, compile=self.cfg.compile, gradient_checkpointing=self.cfg.grad_checkpointing)
        return trainer

    # -- one algorithm -----------------------------------------------------------------------
    def measure(self, algo: str, label: str | None = None, extra: dict | None = None) -> dict:
        label = label or algo
        t_setup = time.perf_counter()
        trainer = self.trainer(algo, extra)
        setup_s = time.perf_counter() - t_setup
        probe, mem = Probe(self.device), PeakMemory(self.device)
        epochs = []
        probe.install(trainer)
        try:
            for i in range(self.cfg.warmup):
                t0 = time.perf_counter()
                trainer.train_epoch()
                self.log(f"  {label}: warm-up epoch {i + 1}/{self.cfg.warmup} {time.perf_counter() - t0:.2f}s")
            mem.reset()
            for i in range(self.cfg.repeats):
                probe.reset()
                t0 = probe.now()
                trainer.train_epoch()
                epoch_s = probe.now() - t0
                epochs.append(self._epoch_metrics(probe, epoch_s, trainer))
                self.log(f"  {label}: epoch {i + 1}/{self.cfg.repeats} {epoch_s:.2f}s")
            peak = mem.peak_mb()
        finally:
            probe.uninstall()
        acfg = trainer.algo.config
        row = {
            "algo": algo,
            "label": label,
            "num_steps": trainer.num_steps,
            "group_size": trainer.algo.config.group_size,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(acfg).items()},
            "setup_seconds": setup_s,
            "peak_memory_mb": peak,
            "memory_kind": mem.kind,
            "uses_cfg": bool(trainer.model.uses_cfg),
            "epochs": epochs,
        }
        keys = [k for k in epochs[0] if k != "components" and not isinstance(epochs[0][k], dict)]
        row.update({k: _median([e[k] for e in epochs]) for k in keys})
        row["sec_per_1k"] = {k: _median([e["sec_per_1k"][k] for e in epochs]) for k in epochs[0]["sec_per_1k"]}
        row["components"] = {k: _median([e["components"].get(k, 0.0) for e in epochs]) for k in epochs[0]["components"]}
        del trainer
        free_memory(self.device)
        return row

    @staticmethod
    def _epoch_metrics(probe: Probe, epoch_s: float, trainer) -> dict:
        s, c = probe.seconds, probe.counts
        n = max(1, c["trajectories"])
        sampling = s["phase_sampling"]
        decoding, reward = s["vae"], s["reward"]
        update = max(0.0, epoch_s - sampling - decoding - reward)
        # UNet (forward and backward), VAE and reward-model calls; an algorithm's own networks
        # (LaSRO's surrogate: a learned latent reward model) count as reward-model calls.
        model_s = s["unet"] + s["backward"] + s["vae"] + s["reward"] + s["algo_nets"]
        overhead = max(0.0, epoch_s - model_s)
        # the UNet hook counts its batch rows: two per image under classifier-free guidance
        grad_rows = c["unet_rows_grad"] // (2 if trainer.model.uses_cfg else 1)
        return {
            "epoch_seconds": epoch_s,
            "trajectories": c["trajectories"],
            "rollout_traj_per_s": c["trajectories"] / sampling if sampling > 0 else None,
            "train_transitions": grad_rows,
            "train_transitions_per_s": grad_rows / update if grad_rows and update > 0 else None,
            "reward_queries_per_traj": c["reward_images"] / n,
            "vae_decodes_per_traj": c["vae_rows"] / n,
            "unet_evals_per_traj": (c["unet_rows_grad"] + c["unet_rows_nograd"]) / n,
            "overhead_fraction": overhead / epoch_s if epoch_s > 0 else None,
            "overhead_fraction_excl_text_encoder": max(0.0, overhead - s["text_encoder"]) / epoch_s if epoch_s > 0 else None,
            "sec_per_1k": {
                k: v * 1000.0 / n for k, v in (("sampling", sampling), ("decoding", decoding), ("reward", reward), ("update", update), ("total", epoch_s))
            },
            "components": {
                "unet_forward": s["unet"],
                "backward": s["backward"],
                "vae": s["vae"],
                "reward": s["reward"],
                "text_encoder": s["text_encoder"],
                "algo_nets": s["algo_nets"],
                "trainer_overhead": overhead,
            },
        }

    # -- budgets ------------------------------------------------------------------------------
    def budgets(self, rows: list[dict]) -> dict:
        out = {}
        per_algo = {r["label"]: r["overhead_fraction"] for r in rows if r["label"] == r["algo"]}
        out["trainer_overhead"] = {
            "budget": f"trainer overhead < {OVERHEAD_BUDGET:.0%} of an epoch",
            "per_algo": per_algo,
            "worst": max(per_algo.values()) if per_algo else None,
            "pass": bool(per_algo) and all(v is not None and v < OVERHEAD_BUDGET for v in per_algo.values()),
            "applies": (
                f"{self.cfg.model} on {self.device.type}, {torch.get_num_threads()} thread(s)"
                + ("" if self.cfg.model == "tiny-sd" and self.device.type == "cpu" else "; the budget is stated for tiny-sd on CPU")
            ),
        }
        from alignzoo.algos.base import list_algorithms

        if "sdpo" in list_algorithms() and self.kind in ("sd", "lcm"):
            out["sdpo_reward"] = self._sdpo_reward_budget(rows)
        return out

    def _sdpo_reward_budget(self, rows: list[dict]) -> dict:
        """SDPO's reward time with its 3 queries per trajectory against the all-T-queries variant's
        (measured here, and added to ``rows``)."""
        adaptive = next((r for r in rows if r["label"] == "sdpo"), None)
        if adaptive is None:
            adaptive = self.measure("sdpo")
            rows.append(adaptive)
        t = adaptive["num_steps"]
        if t < 3:
            return {"budget": "needs T >= 3", "pass": None}
        every = self.measure("sdpo", label="sdpo[all]", extra={"sdpo.reward_prediction": "all"})
        rows.append(every)
        ra, rb = adaptive["sec_per_1k"]["reward"], every["sec_per_1k"]["reward"]
        ratio = ra / rb if rb else None
        limit = 3.0 / t * SDPO_SLACK
        return {
            "budget": f"SDPO reward time with 3 queries <= 3/T x {SDPO_SLACK} of the all-T-queries variant's (T = {t})",
            "reward_s_per_1k_adaptive": ra,
            "reward_s_per_1k_all": rb,
            "ratio": ratio,
            "limit": limit,
            "queries_per_traj": [adaptive["reward_queries_per_traj"], every["reward_queries_per_traj"]],
            "decoding_ratio": adaptive["sec_per_1k"]["decoding"] / every["sec_per_1k"]["decoding"] if every["sec_per_1k"]["decoding"] else None,
            "pass": ratio is not None and ratio <= limit,
        }


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    try:
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    return info


def run_perf(cfg: PerfConfig) -> dict:
    """Runs the benchmark; returns {"rows", "budgets", "fast_paths", "ablations", "machine", "markdown", ...}."""
    runner = PerfRun(cfg)
    try:
        rows = []
        algos = runner.algorithms()
        runner.log(
            f"alignzoo perf: {cfg.model} ({runner.kind}, {runner.resolution} px) on {runner.device}, reward {runner.reward_name}, "
            f"{cfg.batch} images/epoch, warm-up {cfg.warmup}, repeats {cfg.repeats}: {', '.join(algos)}"
        )
        for algo in algos:
            rows.append(runner.measure(algo))
        budgets = runner.budgets(rows) if cfg.budgets else {}
        fast = fast_paths(runner) if cfg.fast_paths else {}
        options = ablations(runner) if cfg.ablate else {}
        result = {
            "command": "alignzoo perf " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "perf" else None,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
            "model": {"name": cfg.model, "kind": runner.kind, "resolution": runner.resolution},
            "reward": runner.reward_name,
            "prompts": runner.prompts,
            "machine": machine_info(runner.device),
            "rows": rows,
            "budgets": budgets,
            "fast_paths": fast,
            "ablations": options,
        }
        result["markdown"] = to_markdown(result)
        if cfg.out:
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "perf.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=1, default=str))
            (out / "perf.md").write_text(result["markdown"])
        return result
    finally:
        runner.tmp.cleanup()


def run(args) -> int:
    cfg = config_from_args(args)
    result = run_perf(cfg)
    print(result["markdown"])
    if cfg.out:
        print(f"wrote {Path(cfg.out) / 'perf.json'} and {Path(cfg.out) / 'perf.md'}")
    return 0
