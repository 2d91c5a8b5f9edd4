"""The shared trainer: rollouts, rewards, advantages, updates, logging, checkpoints, devices.

One loop serves every algorithm (an :class:`~alignzoo.algos.base.Algorithm` only says what to
sample, which steps to score, how to form advantages and the loss of a group of items):

    for epoch:                                        (each epoch: samples_per_epoch images)
        prompts ← shared-seed draw, split over processes
        trajectories ← sampler under the current (= old) policy, no grad
        rewards ← decode and score only the (trajectory, step) x̂0 the algorithm asks for
        advantages ← algorithm (statistics gathered over all processes)
        [reference log-probs ← same UNet, LoRA disabled]       (D3PO)
        [per-transition KL to it, in each update's forward]   (DPOK)
        for update in algorithm.plan(...):                     (one optimiser step each)
            new log-probs of the update's transitions, batched (≤ max_transitions_per_forward)
            loss = mean of the algorithm's per-item losses; backward
            gradients averaged over processes; clip; step
        log a JSONL line; save a checkpoint (LoRA + optimiser + trackers + RNG states)
    until the sample budget is spent (every generated image counts, LaSRO's own rollouts too)

Batch numbers are global and count images (Algorithm.split_over); log lines carry global counters
and health fields (alignzoo.runlog, docs/architecture.md); health flags end the run (health.json).

Exact resume: every random draw comes from generators whose states are checkpointed (a numpy
generator for prompts and plans shared by all processes, a torch CPU generator per process for
the sampler's noise), so an interrupted run continues to the same final numbers on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alignzoo.algos import distributed, rollouts
from alignzoo.algos.base import Algorithm, get_algorithm
from alignzoo.algos.context import TrainerContext
from alignzoo.algos.optim import make_optimizer
from alignzoo.algos.stat_tracking import StatTracker
from alignzoo.algos.timer import NullTimer
from alignzoo.models.sampling import Trajectory, step_moments
from alignzoo.prompts import get_prompts
from alignzoo.runlog import FRESH_TOTALS, add_counts, append_record, read_log, report_health  # noqa: F401  (read_log: public here)


@dataclass
class TrainConfig:
    """What to train and where; the algorithm's hyperparameters live in its own Config."""

    algo: str
    reward: str
    model: str = "tiny-sd"
    model_path: str | None = None
    out: str = "runs/train"
    samples: int = 256  # total generated images (the sample budget)
    seed: int = 0
    prompts: str | None = None  # prompt set name or file; None: the model's own (ModelSpec.train_prompts)
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (accelerate)
    cpu: bool = False  # force the CPU even where a GPU is present
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    log_with: tuple = ()  # accelerate trackers: "tensorboard", "wandb"
    log_first_step_reward: bool = True  # also score the 1-step x̂0 when the algorithm does not
    max_transitions_per_forward: int = 256  # fuse an update's micro-batches into forwards this large
    reward_kwargs: dict = field(default_factory=dict)
    progress: bool = True


class Trainer:
    def __init__(self, config: TrainConfig, algo_config=None, accelerator=None, model=None, reward=None):
        from alignzoo.algos.validation import check_reward_gradients, validate_configs

        self.config = config
        algo_cls: type[Algorithm] = get_algorithm(config.algo)
        self.algo = algo_cls(validate_configs(config, algo_config if algo_config is not None else algo_cls.Config(), builds_reward=reward is None))
        check_reward_gradients(algo_cls, config.reward, reward)
        self._setup_accelerator(accelerator)
        self._setup_model(model)
        self._setup_reward_and_prompts(reward)
        self._setup_budget()
        # generators: shared (same on all processes) and per-process (sampling noise)
        self.shared_rng = np.random.default_rng([config.seed, 0])
        self.noise_gen = torch.Generator().manual_seed(config.seed * 1000 + 17 + self.rank)
        self.epoch = 0
        # cumulative and global (all processes); this epoch's per-process counts wait in `pending`
        # until the epoch's end sums them over processes (count(), _merge_counts())
        self.totals = dict(FRESH_TOTALS)
        self.pending: dict[str, int] = {}
        self._first_ratio: float | None = None
        self.timer = NullTimer()  # alignzoo perf sets its probe here (alignzoo/algos/timer.py)
        self.out = Path(config.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.log_path = self.out / "log.jsonl"
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.context = TrainerContext(self)  # what algorithms driving their own updates may use
        self.algo.setup(self.context)
        self.resumed_from = self._resume()
        for k, v in FRESH_TOTALS.items():  # a checkpoint written before a counter existed
            self.totals.setdefault(k, v)
        if config.log_with and self.accelerator.is_main_process:
            tracked = {"algo": config.algo, "reward": config.reward, **{k: str(v) for k, v in dataclasses.asdict(self.algo.config).items()}}
            self.accelerator.init_trackers(self.out.name, config=tracked)

    def _setup_accelerator(self, accelerator) -> None:
        from accelerate import Accelerator

        config = self.config
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision, cpu=config.cpu, log_with=list(config.log_with) or None, project_dir=config.out if config.log_with else None
        )
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def _setup_model(self, model) -> None:
        """The model (loaded unless given), checked against the algorithm, with its LoRA and optimiser."""
        config, acfg = self.config, self.algo.config
        if model is None:
            from alignzoo.models import load_model

            model = load_model(config.model, model_path=config.model_path, device=self.device)
        self.model = model
        if model.kind not in self.algo.model_kinds:
            raise ValueError(f"algorithm {config.algo!r} runs on {'/'.join(self.algo.model_kinds)} models; {config.model!r} is a {model.kind} model")
        self.num_steps = int(acfg.num_steps or model.spec.train_steps)
        if model.kind == "sd" and acfg.eta <= 0 and self.algo.needs_log_probs:
            raise ValueError(f"{config.algo} trains on log-probs, so it needs a stochastic policy: set eta > 0 (DDIM with eta = 0 has no log-probability)")
        if model.lora_config is None:
            model.add_lora(rank=acfg.lora_rank, alpha=acfg.lora_alpha, target_modules=acfg.lora_targets, seed=config.seed)
        # the LoRA parameters, listed once: walking the UNet's named_parameters() at every update
        # took 6% of a tiny-world run (resuming copies into these same tensors)
        self.params = model.trainable_parameters()
        self.optimizer, self.lr_scheduler = make_optimizer(acfg, self.params)

    def _setup_reward_and_prompts(self, reward) -> None:
        if reward is None:
            from alignzoo.rewards import get_reward

            grad = {"differentiable": True} if self.algo.needs_reward_grad else {}  # reward backprop: gradients w.r.t. the images
            reward = get_reward(self.config.reward, device=self.device, **{**self.config.reward_kwargs, **grad})
            reward.to(self.device)
        self.reward = reward
        self.prompt_set = get_prompts(self.config.prompts or self.model.spec.train_prompts)
        acfg = self.algo.config
        self.tracker = StatTracker(acfg.normalization, acfg.tracker_buffer, acfg.tracker_min_count)

    def _setup_budget(self) -> None:
        """Global batch numbers → this process's share (a one-line error if they do not divide),
        and the epochs the sample budget allows."""
        config = self.config
        self.algo.split_over(self.world)
        self.prompts_per_process = self.algo.prompts_per_epoch(self.world)
        first, per_epoch = self.algo.images_before_training(self.world), self.algo.images_per_epoch(self.world)
        self.num_epochs = max(1, math.ceil((config.samples - first) / per_epoch))  # the budget's epochs, as train() will find them
        if first + per_epoch > config.samples and self.accelerator.is_main_process:
            print(
                f"alignzoo: warning: {config.algo} generates {first + per_epoch:,} images in its first epoch, beyond the sample budget {config.samples:,}",
                file=sys.stderr,
            )

    # ------------------------------------------------------------------------ distributed
    def gather(self, values: torch.Tensor, prompts: list[str]):
        """All processes' values/prompts (concatenated by rank) and this process's slice."""
        return distributed.gather(self.accelerator, values, prompts)

    def normalize(self, values: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Advantages from per-row values, (B,) or (B, T): every process's values gathered, the
        run's tracker updated with them, this process's slice (identical on every process)."""
        all_values, all_prompts, local = self.gather(values, prompts)
        return torch.as_tensor(self.tracker.update(all_prompts, all_values.numpy()), dtype=torch.float32)[local]

    def count(self, unet: int = 0, grad: bool = False, phase: str = "training", **counts: int) -> None:
        """Adds this process's counts of the epoch (runlog.add_counts); summed over processes at its end."""
        add_counts(self.pending, unet, grad, self.model.uses_cfg, phase, **counts)

    # ------------------------------------------------------------------------ one epoch
    rollout = rollouts.rollout
    score = rollouts.score

    def train_epoch(self) -> dict:
        acfg = self.algo.config
        t_start = time.perf_counter()
        self.model.unet.train()
        with self.timer.phase("sampling"):
            traj = self.rollout()
        b, t = traj.batch_size, traj.num_steps
        self.timer.count("trajectories", b)
        self.totals["seconds_sampling"] += time.perf_counter() - t_start
        self._first_ratio, nonfinite_before = None, self.totals["nonfinite_losses"]
        scored, final, first = rollouts.scored_rollout(self, traj)
        t_update = time.perf_counter()
        stats: dict[str, list[float]] = {}
        if self.algo.update_epoch is not None:
            stats = {k: [v] for k, v in self.algo.update_epoch(self.context, scored).items()}
            self.count(nonfinite_losses=sum(not math.isfinite(v) for v in stats.get("loss", [])))
        else:
            data = self.algo.advantages(scored)
            data.advantages = data.advantages.to(self.device)
            if self.algo.needs_reference:  # only what the losses read
                data.ref_log_probs, data.ref_means = self.log_probs_all(traj, True, self.algo.action_steps(t), means=self.algo.needs_means)
            for _inner in range(acfg.num_inner_epochs):
                for items in self.algo.plan(b, t, self.shared_rng):
                    info = self.update(traj, items, data)
                    for k, v in info.items():
                        stats.setdefault(k, []).append(v)
                    if not math.isfinite(info["loss"]):
                        self.count(nonfinite_losses=1)
        self.lr_scheduler.step()
        self.totals["seconds_update"] += time.perf_counter() - t_update
        self.epoch += 1
        self.totals["seconds_total"] += time.perf_counter() - t_start
        for k, v in distributed.sum_counts(self.accelerator, self.pending).items():  # this epoch's counts, all processes
            self.totals[k] = self.totals.get(k, 0) + v
        self.pending = {}
        self.nonfinite_loss = self.totals["nonfinite_losses"] > nonfinite_before  # the same on every process: all stop together

        final_all, _, _ = self.gather(final, traj.prompts)
        first_all, _, _ = self.gather(first, traj.prompts)
        record = {
            "epoch": self.epoch,
            "samples": self.totals["samples"],
            "reward_mean": float(np.nanmean(final_all.numpy())),
            "reward_std": float(np.nanstd(final_all.numpy())),
            "reward_1step_mean": float(np.nanmean(first_all.numpy())) if not torch.isnan(first_all).all() else None,
            "reward_1step_std": float(np.nanstd(first_all.numpy())) if not torch.isnan(first_all).all() else None,
            **rollouts.component_means(self, scored),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            **{k: float(np.mean(v)) for k, v in stats.items()},
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.totals.items()},
            "first_log_ratio_abs": distributed.max_over_processes(self.accelerator, self._first_ratio),
        }
        if self.nonfinite_loss and math.isfinite(record.get("loss", 0.0)):
            record["loss"] = float("nan")  # another process's loss was not finite
        return record

    def log_probs_all(self, traj: Trajectory, reference: bool = False, num_steps: int | None = None, means: bool = False):
        """Log-probs of the first ``num_steps`` (default all) stored transitions of every row, no
        grad, under the pretrained model if asked: (B, T), NaN for the transitions not computed
        (and deterministic ones), and with ``means`` their step means (B, T, C, h, w), else None."""
        b, t = traj.batch_size, traj.num_steps
        n = t if num_steps is None else num_steps
        rows = torch.arange(b).repeat_interleave(n)
        steps = torch.arange(n).repeat(b)
        out, mus = [], []
        chunk = self.config.max_transitions_per_forward
        with torch.no_grad(), self.accelerator.autocast(), self.model.reference() if reference else contextlib.nullcontext():
            for r, s in zip(rows.split(chunk), steps.split(chunk)):
                lp, mu, _std = step_moments(self.model, traj, s, r)
                out.append(lp.float())
                mus.append(mu.float() if means else None)
        self.count(unet=b * n)
        computed = torch.cat(out).view(b, n)
        full = torch.full((b, t), float("nan"), device=computed.device)
        full[:, :n] = computed
        if not means:
            return full, None
        mu = torch.cat(mus).view(b, n, *mus[0].shape[1:])
        return full, torch.cat([mu, torch.full((b, t - n, *mu.shape[2:]), float("nan"), device=mu.device)], 1)

    def update(self, traj: Trajectory, items, data) -> dict:
        """One optimiser step on the mean of the algorithm's per-item losses over ``items``."""
        self.optimizer.zero_grad(set_to_none=True)
        shape = items.rows.shape[1:]  # (G, K): the transitions one item reads
        per_forward = max(1, self.config.max_transitions_per_forward // shape.numel())
        total = len(items)
        loss_sum, kl_sum, first = 0.0, 0.0, False
        info_sums: dict[str, float] = {}
        for chunk in items.split(per_forward):
            r, s = chunk.rows.reshape(-1), chunk.steps.reshape(-1)
            extra = {}
            with self.accelerator.autocast():
                new, mean, std = step_moments(self.model, traj, s, r)
            if not bool((std > 0).all()):
                raise ValueError(f"{self.config.algo}: its plan trains a deterministic step (eta = 0 there), which has no log-probability")
            new = new.float().view(len(chunk), *shape)
            if self.algo.needs_means:
                extra["new_means"] = mean.float().view(len(chunk), *shape, *mean.shape[1:])
            old = traj.log_probs[r, s].float().view(len(chunk), *shape)
            if self._first_ratio is None or first:  # the epoch's first update, before its step (must be ~0)
                first = True
                self._first_ratio = max(self._first_ratio or 0.0, float((new.detach() - old).abs().max()))
            loss_items, info = self.algo.loss(chunk, new, old, data, **extra)
            self.backward(loss_items.sum() / total)
            loss_sum += float(loss_items.detach().sum())
            kl_sum += float((0.5 * (new.detach() - old) ** 2).flatten(1).mean(1).sum())
            for name, v in info.items():
                info_sums[name] = info_sums.get(name, 0.0) + float(v.detach().float().sum())
            self.count(unet=r.shape[0], grad=True)
        out = {"loss": loss_sum / total, "approx_kl": kl_sum / total, **{n: v / total for n, v in info_sums.items()}}
        for name, v in (self.algo.update_extra(self.context, traj, items) if self.algo.update_extra is not None else {}).items():
            out[name] = out.get(name, 0.0) + v  # an extra differentiable term (Algorithm.update_extra)
        grad_norm = self.optimizer_step()
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``: every backward pass of a run goes through here (the context's too),
        so that the trainer's timer sees them all."""
        with self.timer.component("backward"):
            loss.backward()

    def optimizer_step(self) -> float | None:
        """Averages gradients over processes, clips them, steps; returns the pre-clip norm."""
        distributed.average_gradients(self.accelerator, self.params)
        self.totals["updates"] += 1  # collective: the same on every process, so global as it stands
        grad_norm = None
        if self.algo.config.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.algo.config.max_grad_norm))
        self.optimizer.step()
        return grad_norm

    # ------------------------------------------------------------------------ the run
    def train(self, callback: Callable[["Trainer", dict], None] | None = None) -> list[dict]:
        """Runs the remaining epochs; ``callback(trainer, record)`` runs after each epoch's checkpoint."""
        records = []
        bar = None
        if self.config.progress and self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.num_epochs, initial=self.epoch, desc=f"{self.config.algo}/{self.config.reward}", unit="epoch", dynamic_ncols=True)
        while self.totals["samples"] < self.config.samples:  # the budget: every generated image counts
            record = self.train_epoch()
            records.append(record)
            if self.accelerator.is_main_process:
                append_record(self.log_path, record)
                if self.config.log_with:
                    self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["samples"])
            if self.nonfinite_loss:
                self._health()
                raise RuntimeError(
                    f"{self.config.algo}: non-finite loss ({record.get('loss')}) at epoch {self.epoch} (logged in {self.log_path}); "
                    "lower learning_rate or check the reward for NaN/inf values"
                )
            self.num_epochs = max(self.num_epochs, self.epoch + (self.totals["samples"] < self.config.samples))
            if self.epoch % self.config.checkpoint_every == 0 or self.totals["samples"] >= self.config.samples:
                self.save_checkpoint()
            if callback is not None:
                callback(self, record)
            if bar is not None:
                bar.update(1)
                bar.total = self.num_epochs
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", loss=f"{record.get('loss', float('nan')):.3g}")
        if bar is not None:
            bar.close()
        if self.accelerator.is_main_process:
            self.model.save_lora(self.out / "final")
        distributed.check_processes_agree(self)
        self.accelerator.wait_for_everyone()
        if self.config.log_with:
            self.accelerator.end_training()
        self._health()
        return records

    def _health(self) -> list[dict]:
        """The health flags of the whole log, printed and written to health.json (main process)."""
        return report_health(self.out, getattr(self.algo.config, "clip_range", None)) if self.accelerator.is_main_process else []

    # ------------------------------------------------------------------------ checkpoints (alignzoo.algos.checkpoints)
    def _state(self) -> dict:
        from alignzoo.algos.checkpoints import trainer_state

        return trainer_state(self)

    def save_checkpoint(self) -> Path:
        """Collective: every process writes its own RNG state; the main process the rest."""
        from alignzoo.algos.checkpoints import save_checkpoint

        return save_checkpoint(self)

    def latest_checkpoint(self) -> Path | None:
        from alignzoo.algos.checkpoints import latest_checkpoint

        return latest_checkpoint(self.ckpt_dir)

    def _resume(self) -> Path | None:
        """Loads the newest intact checkpoint (a damaged newer one is moved aside with a warning)."""
        from alignzoo.algos.checkpoints import resume

        return resume(self)
