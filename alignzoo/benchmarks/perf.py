"""``alignzoo perf``: what each algorithm costs, measured on the trainer's own code paths.

For every algorithm that runs on the chosen model it builds the real :class:`Trainer` and runs
``--warmup`` + ``--repeats`` epochs of ``Trainer.train_epoch`` (rollout → decode and score the
requested x̂0 → advantages → updates), with timers around the model calls:

* **phases** of an epoch: *sampling* (inside ``Trainer.rollout``), *decoding* (inside
  ``model.decode``, wherever it is called), *reward* (inside the reward model's forward) and
  *update* (the rest of the epoch: advantages, reference log-probs, log-prob recomputation with
  backward, optimiser steps);
* **components**: UNet calls (``model.predict_noise``, with and without gradients), backward
  passes (``Tensor.backward``; the losses are elementwise in the UNet outputs, so this is the
  UNet's backward), VAE decodes, reward calls, the text encoder (``model.encode_prompts``) and
  any network the algorithm owns (e.g. LaSRO's surrogate). Nested calls count once, to the
  outermost. On CUDA every timer synchronises the device first.

Reported per algorithm (median over the repeats): rollout throughput (trajectories/s), training
throughput (transitions whose log-prob is recomputed *with* backward, per second of the update
phase), reward queries and VAE decodes per trajectory, seconds per 1,000 training samples split
into sampling / decoding / reward / update, peak memory (process RSS high-water mark on CPU,
reset with ``/proc/self/clear_refs``; ``torch.cuda.max_memory_allocated`` on GPU), and the
**trainer overhead**: epoch time minus the time inside UNet (forward and backward), VAE and reward
calls, as a fraction of the epoch.

Budgets (checked here, printed PASS/FAIL): trainer overhead < 10 % of an epoch (every algorithm);
SDPO's reward time with ``reward_prediction=adaptive`` (3 queries per trajectory) at most
3/T × 1.1 of the ``reward_prediction=all`` variant's (T queries).

``--fast-paths`` adds before/after micro-benchmarks of the fast paths on the same model: batched
log-prob recomputation vs one transition per forward, decoding only the requested steps vs all
T, batched vs per-image decoding and reward calls, reference log-probs through the LoRA toggle
vs a second UNet copy. ``--ablate`` re-runs one algorithm in a fresh process per option
(channels_last, gradient checkpointing, bf16 autocast, torch.compile) against the baseline.
Results: a Markdown table on stdout and ``perf.json`` + ``perf.md`` in ``--out``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

OVERHEAD_BUDGET = 0.10
SDPO_SLACK = 1.10
ABLATIONS = ("channels_last", "grad_checkpointing", "bf16", "compile")


# ------------------------------------------------------------------------------ configuration
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
    p.add_argument("--model", default="tiny-sd", help="registered model (alignzoo list models) or a diffusers folder; sd-turbo-arch / lcm-arch: real size, random weights")
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
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects [algo.]key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
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
        model=args.model, model_path=args.model_path, algos=[a.strip() for a in args.algos.split(",") if a.strip()] if args.algos else None,
        reward=args.reward, prompts=args.prompts, steps=args.steps, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
        resolution=args.resolution, mixed_precision=args.mixed_precision, channels_last=args.channels_last, compile=args.compile,
        grad_checkpointing=args.grad_checkpointing, device=args.device, seed=args.seed,
        max_transitions_per_forward=args.max_transitions_per_forward, log_first_step_reward=args.log_first_step_reward,
        overrides=overrides, budgets=not args.no_budgets, fast_paths=args.fast_paths, ablate=ablate, ablate_algo=args.ablate_algo, out=args.out,
    )


def run(args) -> int:
    cfg = config_from_args(args)
    result = run_perf(cfg)
    print(result["markdown"])
    if cfg.out:
        print(f"wrote {Path(cfg.out) / 'perf.json'} and {Path(cfg.out) / 'perf.md'}")
    return 0


# ------------------------------------------------------------------------------ timing probes
class Probe:
    """Accumulates time and rows per component; nested component calls count once (outermost)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.depth = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    @contextlib.contextmanager
    def component(self, name: str, rows: int = 0, count_as: str | None = None) -> Iterator[None]:
        if count_as:
            self.counts[count_as] += rows
        if self.depth:
            yield
            return
        self.depth += 1
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds[name] += self.now() - t0
            self.depth -= 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds["phase_" + name] += self.now() - t0

    # -- installation (instance attributes shadow the class methods; removed afterwards) --------
    def wrap(self, obj, attr: str, make: Callable[[Callable], Callable]) -> None:
        had = attr in vars(obj)
        orig = getattr(obj, attr)
        setattr(obj, attr, make(orig))

        def undo():
            if had:
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)

        self._undo.append(undo)

    def install(self, trainer) -> None:
        model, probe = trainer.model, self

        def unet(orig):
            def predict_noise(latents, *a, **k):
                key = "unet_rows_grad" if torch.is_grad_enabled() else "unet_rows_nograd"
                with probe.component("unet", latents.shape[0], key):
                    return orig(latents, *a, **k)
            return predict_noise

        def decode(orig):
            def dec(latents, *a, **k):
                with probe.component("vae", latents.shape[0], "vae_rows"):
                    return orig(latents, *a, **k)
            return dec

        def text(orig):
            def enc(prompts, *a, **k):
                with probe.component("text_encoder", len(prompts), "text_rows"):
                    return orig(prompts, *a, **k)
            return enc

        def reward(orig):
            def fwd(images, *a, **k):
                with probe.component("reward", images.shape[0], "reward_images"):
                    return orig(images, *a, **k)
            return fwd

        def rollout(orig):
            def roll(*a, **k):
                with probe.phase("sampling"):
                    traj = orig(*a, **k)
                probe.counts["trajectories"] += traj.batch_size
                return traj
            return roll

        self.wrap(model, "predict_noise", unet)
        self.wrap(model, "decode", decode)
        self.wrap(model, "encode_prompts", text)
        self.wrap(trainer.reward, "forward", reward)
        self.wrap(trainer, "rollout", rollout)
        for name, value in list(vars(trainer.algo).items()):  # networks the algorithm owns (LaSRO's surrogate)
            if isinstance(value, torch.nn.Module):
                def algo_net(orig, _name=name):
                    def fwd(*a, **k):
                        with probe.component("algo_nets"):
                            return orig(*a, **k)
                    return fwd
                self.wrap(value, "forward", algo_net)
        orig_backward = torch.Tensor.backward

        def backward(tensor, *a, **k):
            with probe.component("backward"):
                return orig_backward(tensor, *a, **k)

        torch.Tensor.backward = backward

        def undo_backward():
            torch.Tensor.backward = orig_backward

        self._undo.append(undo_backward)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


# ------------------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory over a window: CUDA max_memory_allocated, or the process RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "rss_peak"
        self._rss_reset = False
        self._rss_base = 0.0

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self._rss_reset = True
        except OSError:
            self._rss_reset = False
            self.kind = "rss_peak_since_start"

    def peak_mb(self) -> float | None:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except Exception:  # noqa: BLE001
            return None


# ------------------------------------------------------------------------------ helpers
def _is_tiny(model) -> bool:
    """The tiny world's models (and tiny random pipelines): native resolution <= 64 px."""
    native = int(model.unet.config.sample_size) * model.vae_scale
    return model.spec.name.startswith("tiny") or native <= 64


def _convert_override(text, current, key):
    from alignzoo.algos.base import _convert

    return _convert(text, current, key)


def algo_config(algo_cls, cfg: PerfConfig, extra: dict | None = None):
    """The algorithm's default config with the benchmark's settings and overrides applied."""
    base = algo_cls.Config()
    fields = {f.name for f in dataclasses.fields(base)}
    kw: dict[str, Any] = {"samples_per_epoch": cfg.batch}
    if cfg.steps is not None:
        kw["num_steps"] = cfg.steps
    items = dict(cfg.overrides)
    items.update(extra or {})
    for key, value in items.items():
        target, _, name = key.rpartition(".")
        if target and target != algo_cls.name:
            continue
        if name not in fields:
            if target:
                print(f"alignzoo perf: warning: {algo_cls.name} has no config field {name!r}; ignored", file=sys.stderr)
            continue
        kw[name] = _convert_override(value, getattr(base, name), name) if isinstance(value, str) else value
    spp = int(kw.get("samples_per_prompt", getattr(base, "samples_per_prompt", 1) or 1))
    if spp > 1 and cfg.batch % spp:  # e.g. LaSRO's N_s noises per prompt: keep the image count
        kw["samples_per_prompt"] = 2 if cfg.batch % 2 == 0 else 1
    return dataclasses.replace(base, **kw)


def _median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(), "device": str(device)}
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


# ------------------------------------------------------------------------------ the benchmark
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
        from alignzoo.algos.base import get_algorithm, list_algorithms

        names = list(self.cfg.algos) if self.cfg.algos else [a for a in list_algorithms() if self.kind in get_algorithm(a).model_kinds]
        for a in names:
            cls = get_algorithm(a)
            if self.kind not in cls.model_kinds:
                raise ValueError(f"algorithm {a!r} runs on {'/'.join(cls.model_kinds)} models; {self.cfg.model!r} is a {self.kind} model")
        return names

    def trainer(self, algo: str, extra: dict | None = None, model=None):
        from alignzoo.algos.base import get_algorithm
        from alignzoo.algos.trainer import Trainer, TrainConfig

        cls = get_algorithm(algo)
        acfg = algo_config(cls, self.cfg, extra)
        tcfg = TrainConfig(
            algo=algo, reward=self.reward_name, model=self.cfg.model, model_path=self.cfg.model_path,
            out=str(Path(self.tmp.name) / f"{algo}_{len(os.listdir(self.tmp.name))}"), samples=10**9, seed=self.cfg.seed,
            prompts=self.prompts, mixed_precision=self.cfg.mixed_precision, cpu=self.cfg.device == "cpu", progress=False,
            log_first_step_reward=self.cfg.log_first_step_reward, max_transitions_per_forward=self.cfg.max_transitions_per_forward,
        )
        trainer = Trainer(tcfg, acfg, accelerator=self.accelerator, model=model if model is not None else self.model(), reward=self.reward)
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
            "algo": algo, "label": label, "num_steps": trainer.num_steps, "paired": bool(trainer.algo.paired),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(acfg).items()},
            "setup_seconds": setup_s, "peak_memory_mb": peak, "memory_kind": mem.kind,
            "uses_cfg": bool(trainer.model.uses_cfg), "epochs": epochs,
        }
        keys = [k for k in epochs[0] if k != "components" and not isinstance(epochs[0][k], dict)]
        row.update({k: _median([e[k] for e in epochs]) for k in keys})
        row["sec_per_1k"] = {k: _median([e["sec_per_1k"][k] for e in epochs]) for k in epochs[0]["sec_per_1k"]}
        row["components"] = {k: _median([e["components"].get(k, 0.0) for e in epochs]) for k in epochs[0]["components"]}
        del trainer
        _free(self.device)
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
        grad_rows = c["unet_rows_grad"]
        return {
            "epoch_seconds": epoch_s,
            "trajectories": c["trajectories"],
            "rollout_traj_per_s": c["trajectories"] / sampling if sampling > 0 else None,
            "train_transitions": grad_rows,
            "train_transitions_per_s": grad_rows / update if grad_rows and update > 0 else None,
            "reward_queries_per_traj": c["reward_images"] / n,
            "vae_decodes_per_traj": c["vae_rows"] / n,
            "unet_evals_per_traj": (c["unet_rows_grad"] + c["unet_rows_nograd"]) * (2 if trainer.model.uses_cfg else 1) / n,
            "overhead_fraction": overhead / epoch_s if epoch_s > 0 else None,
            "overhead_fraction_excl_text_encoder": max(0.0, overhead - s["text_encoder"]) / epoch_s if epoch_s > 0 else None,
            "sec_per_1k": {k: v * 1000.0 / n for k, v in (("sampling", sampling), ("decoding", decoding), ("reward", reward),
                                                          ("update", update), ("total", epoch_s))},
            "components": {"unet_forward": s["unet"], "backward": s["backward"], "vae": s["vae"], "reward": s["reward"],
                           "text_encoder": s["text_encoder"], "algo_nets": s["algo_nets"], "trainer_overhead": overhead},
        }

    # -- budgets ------------------------------------------------------------------------------
    def budgets(self, rows: list[dict]) -> dict:
        out = {}
        per_algo = {r["label"]: r["overhead_fraction"] for r in rows if r["label"] == r["algo"]}
        out["trainer_overhead"] = {
            "budget": f"trainer overhead < {OVERHEAD_BUDGET:.0%} of an epoch",
            "per_algo": per_algo, "worst": max(per_algo.values()) if per_algo else None,
            "pass": bool(per_algo) and all(v is not None and v < OVERHEAD_BUDGET for v in per_algo.values()),
            "applies": (f"{self.cfg.model} on {self.device.type}, {torch.get_num_threads()} thread(s)"
                        + ("" if self.cfg.model == "tiny-sd" and self.device.type == "cpu" else "; the budget is stated for tiny-sd on CPU")),
        }
        from alignzoo.algos.base import list_algorithms

        if "sdpo" in list_algorithms() and self.kind in ("sd", "lcm"):
            adaptive = next((r for r in rows if r["label"] == "sdpo"), None)
            if adaptive is None:
                adaptive = self.measure("sdpo")
                rows.append(adaptive)
            t = adaptive["num_steps"]
            if t < 3:
                out["sdpo_reward"] = {"budget": "needs T >= 3", "pass": None}
                return out
            every = self.measure("sdpo", label="sdpo[all]", extra={"sdpo.reward_prediction": "all"})
            rows.append(every)
            ra, rb = adaptive["sec_per_1k"]["reward"], every["sec_per_1k"]["reward"]
            ratio = ra / rb if rb else None
            limit = 3.0 / t * SDPO_SLACK
            out["sdpo_reward"] = {
                "budget": f"SDPO reward time with 3 queries <= 3/T x {SDPO_SLACK} of the all-T-queries variant's (T = {t})",
                "reward_s_per_1k_adaptive": ra, "reward_s_per_1k_all": rb, "ratio": ratio, "limit": limit,
                "queries_per_traj": [adaptive["reward_queries_per_traj"], every["reward_queries_per_traj"]],
                "decoding_ratio": adaptive["sec_per_1k"]["decoding"] / every["sec_per_1k"]["decoding"] if every["sec_per_1k"]["decoding"] else None,
                "pass": ratio is not None and ratio <= limit,
            }
        return out

    # -- fast-path micro-benchmarks -----------------------------------------------------------
    def fast_paths(self) -> dict:
        from alignzoo.models.sampling import decode_steps, recompute_log_probs, sample

        cfg, dev, acc = self.cfg, self.device, self.accelerator
        trainer = self.trainer("ddpo")  # a model with the LoRA adapter attached, as in training
        model = trainer.model
        steps = trainer.num_steps
        from alignzoo.benchmarks.prompts import get_prompts

        pool = get_prompts(self.prompts)
        prompts = [pool[i % len(pool)] for i in range(cfg.batch)]
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad(), acc.autocast():
            traj = sample(model, prompts, steps, 1.0, gen)
        b, t = traj.batch_size, traj.num_steps
        rows_all, steps_all = torch.arange(b).repeat_interleave(t), torch.arange(t).repeat(b)
        reps = max(1, min(cfg.repeats, 3))
        out: dict[str, Any] = {"trajectories": b, "num_steps": t}

        def timed(fn) -> float:
            fn()  # warm-up
            times = []
            for _ in range(reps):
                _sync(dev)
                t0 = time.perf_counter()
                fn()
                _sync(dev)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        # 1. batched log-prob recomputation with backward
        def logprob(chunk):
            def go():
                model.unet.zero_grad(set_to_none=True)
                for r, s in zip(rows_all.split(chunk), steps_all.split(chunk)):
                    with acc.autocast():
                        lp = recompute_log_probs(model, traj, s, r).float()
                    lp.sum().backward()
            return go

        big = min(b * t, cfg.max_transitions_per_forward)
        t1, tb = timed(logprob(1)), timed(logprob(big))
        out["logprob_batching"] = {"transitions": b * t, "one_per_forward_per_s": b * t / t1, f"batched_{big}_per_s": b * t / tb,
                                   "batch": big, "speedup": t1 / tb}
        self.log(f"  fast paths: log-prob recomputation {b * t / t1:.0f} -> {b * t / tb:.0f} transitions/s")

        # 2. decode only the requested steps (SDPO's 3) vs every step; batched vs one image per call
        query = [0, t // 2, -1] if t >= 3 else list(range(t))
        td_all = timed(lambda: decode_steps(model, traj, list(range(t))))
        td_q = timed(lambda: decode_steps(model, traj, query))
        td_one = timed(lambda: decode_steps(model, traj, query, chunk=1))
        out["decode"] = {"all_steps_s_per_traj": td_all / b, "requested_s_per_traj": td_q / b, "decodes_per_traj": [t, len(query)],
                         "speedup": td_all / td_q, "one_per_call_s_per_traj": td_one / b, "batching_speedup": td_one / td_q}

        # 3. reward: one batched call on device vs one image per call
        with torch.no_grad():
            images = decode_steps(model, traj, [-1])[:, 0]
        tr_b = timed(lambda: self.reward(images, prompts))
        tr_1 = timed(lambda: [self.reward(images[i:i + 1], prompts[i:i + 1]) for i in range(b)])
        out["reward_batching"] = {"batched_s_per_image": tr_b / b, "one_per_call_s_per_image": tr_1 / b, "speedup": tr_1 / tr_b}

        # 4. reference log-probs: the LoRA adapter toggled on the one UNet vs a second UNet copy
        def ref_logprobs():
            with torch.no_grad(), acc.autocast(), model.reference():
                for r, s in zip(rows_all.split(big), steps_all.split(big)):
                    recompute_log_probs(model, traj, s, r)

        t_toggle = timed(ref_logprobs)
        unet_bytes = sum(p.numel() * p.element_size() for p in model.unet.parameters())
        mem = PeakMemory(dev)
        _free(dev)
        mem.reset()
        before = mem.peak_mb()
        t_copy = None
        try:
            ref_unet = copy.deepcopy(model.unet)  # what a second reference UNet would cost
        except Exception as err:  # noqa: BLE001 - e.g. a compiled module that does not deep-copy
            self.log(f"  fast paths: no second-UNet comparison ({type(err).__name__}: {err})")
            ref_unet = None
        if ref_unet is not None:
            ref_unet.disable_adapters()
            live, model.unet = model.unet, ref_unet

            def copy_logprobs():
                with torch.no_grad(), acc.autocast():
                    for r, s in zip(rows_all.split(big), steps_all.split(big)):
                        recompute_log_probs(model, traj, s, r)

            try:
                t_copy = timed(copy_logprobs)
            finally:
                model.unet = live
            del ref_unet
        after = mem.peak_mb()
        out["reference"] = {"toggle_s": t_toggle, "second_copy_s": t_copy, "second_copy_extra_mb": unet_bytes / 2**20,
                            "measured_peak_increase_mb": (after - before) if (after is not None and before is not None) else None}
        del trainer, model, traj
        _free(dev)
        return out

    # -- option ablations in fresh processes --------------------------------------------------
    def ablations(self) -> dict:
        cfg = self.cfg
        base = [sys.executable, "-m", "alignzoo", "perf", "--model", cfg.model, "--algos", cfg.ablate_algo, "--batch", str(cfg.batch),
                "--repeats", str(cfg.repeats), "--warmup", str(max(1, cfg.warmup)), "--no-budgets", "--seed", str(cfg.seed),
                "--reward", self.reward_name, "--prompts", self.prompts, "--device", cfg.device]
        if cfg.model_path:
            base += ["--model-path", cfg.model_path]
        if cfg.steps is not None:
            base += ["--steps", str(cfg.steps)]
        if cfg.resolution is not None:
            base += ["--resolution", str(cfg.resolution)]
        for k, v in cfg.overrides.items():
            base += ["--set", f"{k}={v}"]
        variants = {"baseline": []}
        flags = {"channels_last": ["--channels-last"], "grad_checkpointing": ["--grad-checkpointing"], "bf16": ["--mixed-precision", "bf16"],
                 "compile": ["--compile"]}
        for a in cfg.ablate:
            variants[a] = flags[a]
        results = {}
        for name, extra in variants.items():
            with tempfile.TemporaryDirectory(prefix="alignzoo_ablate_") as d:
                cmd = base + extra + ["--out", d]
                self.log(f"  ablation {name}: {' '.join(cmd[2:])}")
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if proc.returncode != 0:
                    results[name] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
                    continue
                data = json.loads((Path(d) / "perf.json").read_text())
                row = data["rows"][0]
                results[name] = {"flags": " ".join(extra) or "(none)", "epoch_seconds": row["epoch_seconds"],
                                 "rollout_traj_per_s": row["rollout_traj_per_s"], "train_transitions_per_s": row["train_transitions_per_s"],
                                 "sec_per_1k_total": row["sec_per_1k"]["total"], "peak_memory_mb": row["peak_memory_mb"],
                                 "wall_seconds_incl_startup": time.perf_counter() - t0}
        return results


def run_perf(cfg: PerfConfig) -> dict:
    """Runs the benchmark; returns {"rows", "budgets", "fast_paths", "ablations", "machine", "markdown", ...}."""
    runner = PerfRun(cfg)
    try:
        rows = []
        algos = runner.algorithms()
        runner.log(f"alignzoo perf: {cfg.model} ({runner.kind}, {runner.resolution} px) on {runner.device}, reward {runner.reward_name}, "
                   f"{cfg.batch} images/epoch, warm-up {cfg.warmup}, repeats {cfg.repeats}: {', '.join(algos)}")
        for algo in algos:
            rows.append(runner.measure(algo))
        budgets = runner.budgets(rows) if cfg.budgets else {}
        fast = runner.fast_paths() if cfg.fast_paths else {}
        ablations = runner.ablations() if cfg.ablate else {}
        result = {
            "command": "alignzoo perf " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "perf" else None,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
            "model": {"name": cfg.model, "kind": runner.kind, "resolution": runner.resolution},
            "reward": runner.reward_name, "prompts": runner.prompts,
            "machine": machine_info(runner.device),
            "rows": rows, "budgets": budgets, "fast_paths": fast, "ablations": ablations,
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


# ------------------------------------------------------------------------------ reporting
def _f(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def to_markdown(result: dict) -> str:
    m, mach = result["model"], result["machine"]
    rows = result["rows"]
    mem = rows[0]["memory_kind"] if rows else ""
    where = mach.get("gpu") or f"{mach.get('cpu', 'CPU')}, {mach.get('torch_threads')} thread(s)"
    lines = [f"### alignzoo perf: {m['name']} ({m['kind']}, {m['resolution']} px), reward {result['reward']}, {where}", ""]
    c = result["config"]
    lines.append(f"{c['batch']} images per epoch, median of {c['repeats']} epochs after {c['warmup']} warm-up; mixed precision {c['mixed_precision']}"
                 + ("; channels_last" if c["channels_last"] else "") + ("; torch.compile" if c["compile"] else "")
                 + ("; gradient checkpointing" if c["grad_checkpointing"] else "") + ".")
    lines.append("")
    lines.append("| algo | T | rollout traj/s | train transitions/s | reward queries/traj | VAE decodes/traj | UNet evals/traj "
                 "| s/1k sampling | s/1k decoding | s/1k reward | s/1k update | s/1k total | peak mem MB | trainer overhead |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["sec_per_1k"]
        lines.append(f"| {r['label']} | {r['num_steps']} | {_f(r['rollout_traj_per_s'])} | {_f(r['train_transitions_per_s'])} "
                     f"| {_f(r['reward_queries_per_traj'])} | {_f(r['vae_decodes_per_traj'])} | {_f(r['unet_evals_per_traj'])} "
                     f"| {_f(s['sampling'])} | {_f(s['decoding'])} | {_f(s['reward'])} | {_f(s['update'])} | {_f(s['total'])} "
                     f"| {_f(r['peak_memory_mb'], 4)} | {_f(100 * r['overhead_fraction'], 2) + ' %' if r['overhead_fraction'] is not None else '–'} |")
    lines.append("")
    lines.append(f"Peak memory: {'torch.cuda.max_memory_allocated' if mem.startswith('cuda') else 'process RSS high-water mark (whole process)'}. "
                 "Train transitions/s: log-prob recomputations with backward per second of the update phase. "
                 "Trainer overhead: the share of the epoch spent outside UNet (forward and backward), VAE and reward-model calls "
                 "(an algorithm's own reward network, LaSRO's surrogate, counts as a reward model; the text encoder counts as overhead).")
    b = result.get("budgets") or {}
    if b:
        lines += ["", "#### Budgets", ""]
        o = b.get("trainer_overhead")
        if o:
            worst = o["worst"]
            lines.append(f"- {o['budget']} ({o['applies']}): worst {_f(100 * worst, 2) if worst is not None else '–'} % "
                         f"({', '.join(f'{k} {100 * v:.1f} %' for k, v in o['per_algo'].items() if v is not None)}) → **{'PASS' if o['pass'] else 'FAIL'}**")
        s = b.get("sdpo_reward")
        if s and s.get("ratio") is not None:
            lines.append(f"- {s['budget']}: reward s/1k {_f(s['reward_s_per_1k_adaptive'])} (3 queries) vs {_f(s['reward_s_per_1k_all'])} "
                         f"(all), ratio {s['ratio']:.3f} {'≤' if s['pass'] else '>'} limit {s['limit']:.3f} → **{'PASS' if s['pass'] else 'FAIL'}**")
        elif s:
            lines.append(f"- SDPO reward budget: {s['budget']}")
    fp = result.get("fast_paths") or {}
    if fp:
        lines += ["", f"#### Fast paths, before → after ({fp['trajectories']} trajectories × {fp['num_steps']} steps)", "",
                  "| fast path | before | after | gain |", "|---|---|---|---|"]
        lp = fp["logprob_batching"]
        after = next(v for k, v in lp.items() if k.startswith("batched_"))
        lines.append(f"| batched log-prob recomputation + backward (transitions/s) | {_f(lp['one_per_forward_per_s'])} (1 per forward) "
                     f"| {_f(after)} ({lp['batch']} per forward) | {lp['speedup']:.1f}× |")
        d = fp["decode"]
        lines.append(f"| decode only requested steps (ms per trajectory) | {_f(1000 * d['all_steps_s_per_traj'])} (all {d['decodes_per_traj'][0]}) "
                     f"| {_f(1000 * d['requested_s_per_traj'])} ({d['decodes_per_traj'][1]}) | {d['speedup']:.1f}× |")
        lines.append(f"| batched decoding (ms per trajectory, {d['decodes_per_traj'][1]} decodes) | {_f(1000 * d['one_per_call_s_per_traj'])} (1 per call) "
                     f"| {_f(1000 * d['requested_s_per_traj'])} (batched) | {d['batching_speedup']:.1f}× |")
        rb = fp["reward_batching"]
        lines.append(f"| batched reward on device (ms per image) | {_f(1000 * rb['one_per_call_s_per_image'])} (1 per call) "
                     f"| {_f(1000 * rb['batched_s_per_image'])} (batched) | {rb['speedup']:.1f}× |")
        ref = fp["reference"]
        lines.append(f"| reference log-probs: LoRA toggle vs second UNet (s; extra MB) | {_f(ref['second_copy_s'])} s; +{_f(ref['second_copy_extra_mb'], 4)} MB "
                     f"(copy) | {_f(ref['toggle_s'])} s; +0 MB (toggle) | {_f(ref['second_copy_extra_mb'], 4)} MB saved |")
    ab = result.get("ablations") or {}
    if ab:
        lines += ["", f"#### Options ({result['config']['ablate_algo']}, each in a fresh process)", "",
                  "| option | flags | epoch s | rollout traj/s | train transitions/s | s/1k total | peak mem MB |", "|---|---|---|---|---|---|---|"]
        for name, r in ab.items():
            if "error" in r:
                lines.append(f"| {name} | – | error: {' '.join(r['error'])} | | | | |")
                continue
            lines.append(f"| {name} | `{r['flags']}` | {_f(r['epoch_seconds'])} | {_f(r['rollout_traj_per_s'])} | {_f(r['train_transitions_per_s'])} "
                         f"| {_f(r['sec_per_1k_total'])} | {_f(r['peak_memory_mb'], 4)} |")
    return "\n".join(lines) + "\n"
