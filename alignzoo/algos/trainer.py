"""The shared trainer: rollouts, rewards, advantages, updates, logging, checkpoints, devices.

One loop serves every algorithm (an :class:`~alignzoo.algos.base.Algorithm` only says what to
sample, which steps to score, how to form advantages and the loss of a group of items):

    for epoch:                                        (each epoch: samples_per_epoch images)
        prompts ← shared-seed draw, split over processes
        trajectories ← sampler under the current (= old) policy, no grad
        rewards ← decode and score only the (trajectory, step) x̂0 the algorithm asks for
        advantages ← algorithm (statistics gathered over all processes)
        [reference log-probs ← same UNet, LoRA disabled]       (D3PO)
        for update in algorithm.plan(...):                     (one optimiser step each)
            new log-probs of the update's transitions, batched (≤ max_transitions_per_forward)
            loss = mean of the algorithm's per-item losses; backward
            gradients averaged over processes; clip; step
        log a JSONL line; save a checkpoint (LoRA + optimiser + trackers + RNG states)

Exact resume: every random draw comes from generators whose states are checkpointed (a numpy
generator for prompts and plans shared by all processes, a torch CPU generator per process for
the sampler's noise), so an interrupted run continues to the same final numbers on CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alignzoo.algos.base import Algorithm, get_algorithm
from alignzoo.algos.stat_tracking import StatTracker
from alignzoo.models.sampling import Trajectory, decode_steps, recompute_log_probs, sample, sample_pairs


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
    prompts: str = "seen"  # prompt set name or file
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (accelerate)
    cpu: bool = False  # force the CPU even where a GPU is present
    checkpoint_every: int = 1  # epochs
    keep_checkpoints: int = 2
    log_with: tuple = ()  # accelerate trackers: "tensorboard", "wandb"
    log_first_step_reward: bool = True  # also score the 1-step x̂0 when the algorithm does not
    max_transitions_per_forward: int = 256  # fuse an update's micro-batches into forwards this large
    reward_kwargs: dict = field(default_factory=dict)
    progress: bool = True


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, config: TrainConfig, algo_config=None, accelerator=None, model=None, reward=None):
        from accelerate import Accelerator

        from alignzoo.algos.validation import validate_configs

        self.config = config
        algo_cls: type[Algorithm] = get_algorithm(config.algo)
        self.algo = algo_cls(validate_configs(config, algo_config if algo_config is not None else algo_cls.Config(), builds_reward=reward is None))
        acfg = self.algo.config
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision, cpu=config.cpu, log_with=list(config.log_with) or None,
            project_dir=config.out if config.log_with else None,
        )
        acc = self.accelerator
        self.device = acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if model is None:
            from alignzoo.models import load_model

            model = load_model(config.model, model_path=config.model_path, device=self.device)
        self.model = model
        if model.kind not in self.algo.model_kinds:
            raise ValueError(f"algorithm {config.algo!r} runs on {'/'.join(self.algo.model_kinds)} models; {config.model!r} is a {model.kind} model")
        self.num_steps = int(acfg.num_steps or model.spec.train_steps)
        if model.kind == "sd" and acfg.eta <= 0:
            raise ValueError("training needs a stochastic policy: set eta > 0 (DDIM with eta = 0 has no log-probability)")
        if model.lora_config is None:
            model.add_lora(rank=acfg.lora_rank, alpha=acfg.lora_alpha, target_modules=acfg.lora_targets, seed=config.seed)
        params = model.trainable_parameters()
        opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(acfg.optimizer)
        if opt_cls is None:
            raise ValueError(f"unknown optimizer {acfg.optimizer!r}: choose adamw or adam")
        self.optimizer = opt_cls(params, lr=acfg.learning_rate, betas=(acfg.adam_beta1, acfg.adam_beta2), weight_decay=acfg.weight_decay, eps=acfg.adam_epsilon)
        if acfg.lr_schedule == "linear":
            self.lr_scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, 1.0, 0.0, total_iters=acfg.lr_schedule_epochs)
        elif acfg.lr_schedule == "constant":
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        else:
            raise ValueError(f"unknown lr_schedule {acfg.lr_schedule!r}: choose constant or linear")
        if reward is None:
            from alignzoo.rewards import get_reward

            reward = get_reward(config.reward, device=self.device, **config.reward_kwargs)
            reward.to(self.device)
        self.reward = reward
        from alignzoo.benchmarks.prompts import get_prompts

        self.prompt_set = get_prompts(config.prompts)
        self.tracker = StatTracker(acfg.normalization, acfg.tracker_buffer, acfg.tracker_min_count)
        self.prompts_per_process = self.algo.prompts_per_epoch(self.world)
        self.num_epochs = math.ceil(config.samples / acfg.samples_per_epoch)
        # generators: shared (same on all processes) and per-process (sampling noise)
        self.shared_rng = np.random.default_rng([config.seed, 0])
        self.noise_gen = torch.Generator().manual_seed(config.seed * 1000 + 17 + self.rank)
        self.epoch = 0
        self.totals = {"samples": 0, "reward_queries": 0, "log_reward_queries": 0, "vae_decodes": 0, "unet_evals_sampling": 0, "unet_evals_training": 0,
                       "seconds_sampling": 0.0, "seconds_decoding": 0.0, "seconds_reward": 0.0, "seconds_update": 0.0, "seconds_total": 0.0}
        self.out = Path(config.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.log_path = self.out / "log.jsonl"
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        self.algo.setup(self)
        self.resumed_from = self._resume()
        if config.log_with and acc.is_main_process:
            acc.init_trackers(self.out.name, config={"algo": config.algo, "reward": config.reward, **{k: str(v) for k, v in dataclasses.asdict(acfg).items()}})

    # ------------------------------------------------------------------------ distributed
    def gather(self, values: torch.Tensor, prompts: list[str]):
        """All processes' values/prompts (concatenated by rank) and this process's slice."""
        n = values.shape[0]
        if self.world == 1:
            return values.detach().cpu(), list(prompts), slice(0, n)
        from accelerate.utils import gather_object

        all_values = self.accelerator.gather(values.detach().to(self.device).contiguous()).cpu()
        all_prompts = gather_object(list(prompts))
        return all_values, all_prompts, slice(self.rank * n, (self.rank + 1) * n)

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        params = [p for p in self.model.trainable_parameters()]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            k = p.numel()
            p.grad.copy_(flat[offset:offset + k].view_as(p))
            offset += k

    # ------------------------------------------------------------------------ one epoch
    def rollout(self) -> Trajectory:
        n_all = self.prompts_per_process * self.world
        idx = self.shared_rng.integers(0, len(self.prompt_set), size=n_all)
        mine = idx[self.rank * self.prompts_per_process:(self.rank + 1) * self.prompts_per_process]
        prompts = [self.prompt_set[i] for i in mine]
        repeat = int(getattr(self.algo, "samples_per_prompt", 1))  # e.g. LaSRO's N_s noises per prompt
        if repeat > 1:
            prompts = [p for p in prompts for _ in range(repeat)]
        eta = self.algo.config.eta
        with torch.no_grad(), self.accelerator.autocast():
            if self.algo.paired and getattr(self.algo.config, "shared_noise", self.algo.shared_noise):
                return sample_pairs(self.model, prompts, self.num_steps, eta, self.noise_gen)
            return sample(self.model, prompts + prompts if self.algo.paired else prompts, self.num_steps, eta, self.noise_gen)

    def score(self, traj: Trajectory, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Decodes x̂0 at the requested (row, step) pairs, batched, and scores them."""
        t0 = time.perf_counter()
        lat = traj.pred_x0[rows, steps]
        with torch.no_grad(), self.accelerator.autocast():
            images = self.model.decode(lat)
        t1 = time.perf_counter()
        values = self.reward(images, [traj.prompts[i] for i in rows.tolist()]).detach().float().cpu()
        self.totals["seconds_decoding"] += t1 - t0
        self.totals["seconds_reward"] += time.perf_counter() - t1
        self.totals["vae_decodes"] += int(rows.shape[0])
        return values

    def train_epoch(self) -> dict:
        acfg = self.algo.config
        t_start = time.perf_counter()
        self.model.unet.train()
        traj = self.rollout()
        t_sampled = time.perf_counter()
        b, t = traj.batch_size, traj.num_steps
        cfg_factor = 2 if self.model.uses_cfg else 1
        self.totals["seconds_sampling"] += t_sampled - t_start
        self.totals["unet_evals_sampling"] += b * t * cfg_factor
        self.totals["samples"] += b * self.world

        rows, steps = self.algo.reward_queries(traj, self.shared_rng)
        values = self.score(traj, rows, steps)
        self.totals["reward_queries"] += int(rows.shape[0])
        final_mask = steps == t - 1
        final = torch.full((b,), float("nan"))
        final[rows[final_mask]] = values[final_mask]
        first_mask = steps == 0
        first = torch.full((b,), float("nan"))
        first[rows[first_mask]] = values[first_mask]
        if self.config.log_first_step_reward and torch.isnan(first).any():
            missing = torch.nonzero(torch.isnan(first)).flatten()
            first[missing] = self.score(traj, missing, torch.zeros_like(missing))
            self.totals["log_reward_queries"] += int(missing.shape[0])
        t_update = time.perf_counter()
        stats: dict[str, list[float]] = {}
        if self.algo.update_epoch is not None:
            stats = {k: [v] for k, v in self.algo.update_epoch(self, traj, rows, steps, values).items()}
        else:
            data = self.algo.advantages(traj, rows, steps, values, self.tracker, self.gather)
            data.advantages = data.advantages.to(self.device)
            if self.algo.needs_reference:
                data.ref_log_probs = self.log_probs_all(traj, reference=True, num_steps=self.algo.action_steps(t))  # only what the losses read
            for _inner in range(acfg.num_inner_epochs):
                for items in self.algo.plan(b, t, self.shared_rng):
                    info = self.update(traj, items, data)
                    for k, v in info.items():
                        stats.setdefault(k, []).append(v)
        self.lr_scheduler.step()
        self.totals["seconds_update"] += time.perf_counter() - t_update
        self.epoch += 1
        self.totals["seconds_total"] += time.perf_counter() - t_start

        final_all, _, _ = self.gather(final, traj.prompts)
        first_all, _, _ = self.gather(first, traj.prompts)
        record = {
            "epoch": self.epoch,
            "samples": self.totals["samples"],
            "reward_mean": float(np.nanmean(final_all.numpy())),
            "reward_std": float(np.nanstd(final_all.numpy())),
            "reward_1step_mean": float(np.nanmean(first_all.numpy())) if not torch.isnan(first_all).all() else None,
            "reward_1step_std": float(np.nanstd(first_all.numpy())) if not torch.isnan(first_all).all() else None,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            **{k: float(np.mean(v)) for k, v in stats.items()},
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.totals.items()},
        }
        return record

    def log_probs_all(self, traj: Trajectory, reference: bool = False, num_steps: int | None = None) -> torch.Tensor:
        """Log-probs of the first ``num_steps`` (default all) stored transitions of every row, no
        grad, under the pretrained model if asked: (B, T), NaN for the transitions not computed."""
        b, t = traj.batch_size, traj.num_steps
        n = t if num_steps is None else num_steps
        rows = torch.arange(b).repeat_interleave(n)
        steps = torch.arange(n).repeat(b)
        out = []
        chunk = self.config.max_transitions_per_forward
        with torch.no_grad(), self.accelerator.autocast(), (self.model.reference() if reference else contextlib.nullcontext()):
            for r, s in zip(rows.split(chunk), steps.split(chunk)):
                out.append(recompute_log_probs(self.model, traj, s, r).float())
        self.totals["unet_evals_training"] += b * n * (2 if self.model.uses_cfg else 1)
        computed = torch.cat(out).view(b, n)
        full = torch.full((b, t), float("nan"), device=computed.device)
        full[:, :n] = computed
        return full

    def update(self, traj: Trajectory, items, data) -> dict:
        """One optimiser step on the mean of the algorithm's per-item losses over ``items``."""
        self.optimizer.zero_grad(set_to_none=True)
        k = items.rows.shape[1]
        per_forward = max(1, self.config.max_transitions_per_forward // k)
        total = len(items)
        loss_sum, kl_sum = 0.0, 0.0
        info_sums: dict[str, float] = {}
        for chunk in items.split(per_forward):
            r, s = chunk.rows.reshape(-1), chunk.steps.reshape(-1)
            with self.accelerator.autocast():
                new = recompute_log_probs(self.model, traj, s, r).float().view(len(chunk), k)
            old = traj.log_probs[r, s].float().view(len(chunk), k)
            loss_items, info = self.algo.loss(chunk, new, old, data)
            (loss_items.sum() / total).backward()
            loss_sum += float(loss_items.detach().sum())
            kl_sum += float((0.5 * (new.detach() - old) ** 2).mean(1).sum())
            for name, v in info.items():
                info_sums[name] = info_sums.get(name, 0.0) + float(v.detach().float().sum())
            self.totals["unet_evals_training"] += r.shape[0] * (2 if self.model.uses_cfg else 1)
        grad_norm = self.optimizer_step()
        out = {"loss": loss_sum / total, "approx_kl": kl_sum / total, **{n: v / total for n, v in info_sums.items()}}
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def optimizer_step(self) -> float | None:
        """Averages gradients over processes, clips them, steps; returns the pre-clip norm."""
        self._average_gradients()
        grad_norm = None
        if self.algo.config.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), self.algo.config.max_grad_norm))
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
        while self.epoch < self.num_epochs:
            record = self.train_epoch()
            records.append(record)
            if self.accelerator.is_main_process:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                if self.config.log_with:
                    self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["samples"])
            if self.epoch % self.config.checkpoint_every == 0 or self.epoch == self.num_epochs:
                self.save_checkpoint()
            if callback is not None:
                callback(self, record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", loss=f"{record.get('loss', float('nan')):.3g}")
        if bar is not None:
            bar.close()
        if self.accelerator.is_main_process:
            self.model.save_lora(self.out / "final")
        self._check_processes_agree()
        self.accelerator.wait_for_everyone()
        if self.config.log_with:
            self.accelerator.end_training()
        return records

    def _check_processes_agree(self) -> None:
        """Every process must end with the same LoRA weights (and the algorithm's other replicated
        tensors, e.g. LaSRO's surrogate); records what each one did."""
        def checksums(tensors):
            flat = torch.cat([p.detach().double().reshape(-1) for p in tensors]) if tensors else torch.zeros(1, dtype=torch.float64)
            return [float(flat.sum()), float((flat ** 2).sum())]

        mine = torch.tensor(checksums(list(self.model.trainable_parameters())) + checksums(self.algo.replicated_parameters())
                            + [float(self.prompts_per_process)], dtype=torch.float64, device=self.device)
        every = self.accelerator.gather(mine[None]).cpu() if self.world > 1 else mine[None].cpu()
        if self.accelerator.is_main_process:
            info = {"processes": self.world, "lora_checksums": every[:, :2].tolist(), "algo_checksums": every[:, 2:4].tolist(),
                    "prompts_per_process_per_epoch": every[:, 4].tolist()}
            _atomic_write_text(self.out / "final" / "processes.json", json.dumps(info, indent=1))
        for name, cols in (("LoRA weights", slice(0, 2)), ("algorithm state (replicated_parameters)", slice(2, 4))):
            if not torch.equal(every[:, cols], every[:1, cols].expand_as(every[:, cols])):
                raise RuntimeError(f"processes ended with different {name}: {every[:, cols].tolist()}")

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


def read_log(out: str | Path) -> list[dict]:
    path = Path(out) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
