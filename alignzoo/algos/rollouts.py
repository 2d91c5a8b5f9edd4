"""One epoch's samples and their rewards: the :class:`Rollout` an algorithm pulls from, and the
trainer's rollout and scoring steps (methods of :class:`~alignzoo.algos.trainer.Trainer`).

Every generated image and every decode/reward call is counted here (``trainer.count``), so the
epoch records' ``samples``, ``vae_decodes`` and ``reward_queries`` cover training and logging alike.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from alignzoo.models.sampling import Trajectory, sample_groups


@dataclass
class Rollout:
    """This process's samples of one epoch, scored: what ``Algorithm.advantages`` pulls from
    (Stable-Baselines3's rollout buffer). Rows are prompt-major: row p·G + g is trajectory g of
    prompt p.

    ``queries`` (B, Q) are the sampling-order steps whose x̂0 was scored (``Algorithm.query_steps``)
    and ``rewards`` (B, Q) their rewards. :meth:`normalize` turns per-row values, (B,) or (B, T),
    into advantages with the run's statistics: values of every process gathered, the per-prompt
    tracker updated, this process's slice returned, so every process normalises identically.
    """

    traj: Trajectory
    queries: torch.Tensor
    rewards: torch.Tensor
    group_size: int
    normalizer: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return self.normalizer(values, self.traj.prompts)

    @property
    def final_rewards(self) -> torch.Tensor:
        """(B,) each trajectory's reward of its sample (the last step's x̂0)."""
        last = self.queries == self.traj.num_steps - 1
        if not bool((last.sum(1) == 1).all()):
            raise ValueError("final_rewards needs every row to query its last step exactly once")
        return self.rewards[last]

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, steps, rewards) of every query, (B·Q,) each, in scoring order: query column by
        column (all rows' first query, then all rows' second, ...)."""
        b, q = self.queries.shape
        return torch.arange(b).repeat(q), self.queries.T.reshape(-1), self.rewards.T.reshape(-1)


def rollout(trainer) -> Trajectory:
    """This process's share of the epoch's trajectories under the sampling policy (the current one
    unless the algorithm's ``sampling_policy`` says otherwise), no grad:
    prompts from the shared generator (the same draw on every process), split by rank, each
    sampled ``group_size`` times (rows prompt-major)."""
    prompts = trainer.context.draw_prompts(trainer.prompts_per_process)
    c = trainer.algo.config
    policy = trainer.algo.sampling_policy(trainer.context) if trainer.algo.sampling_policy else contextlib.nullcontext()
    with torch.no_grad(), trainer.accelerator.autocast(), policy:
        traj = sample_groups(trainer.model, prompts, c.group_size, trainer.num_steps, c.eta, trainer.noise_gen, shared_noise=c.shared_noise)
    trainer.count(samples=traj.batch_size, unet=traj.batch_size * traj.num_steps, phase="sampling")
    return traj


def score(trainer, traj: Trajectory, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Decodes x̂0 at the requested (row, step) pairs, batched, and scores them."""
    t0 = time.perf_counter()
    lat = traj.pred_x0[rows, steps]
    with torch.no_grad(), trainer.accelerator.autocast():
        images = trainer.model.decode(lat)
    t1 = time.perf_counter()
    values = trainer.reward(images, [traj.prompts[i] for i in rows.tolist()]).detach().float().cpu()
    trainer.totals["seconds_decoding"] += t1 - t0
    trainer.totals["seconds_reward"] += time.perf_counter() - t1
    trainer.count(vae_decodes=rows.shape[0], reward_queries=rows.shape[0])  # training and logging queries alike
    return values


def logged_rewards(trainer, traj: Trajectory, rows, steps, values) -> tuple[torch.Tensor, torch.Tensor]:
    """(final, first): each trajectory's reward of its last and of its 1-step x̂0 (NaN where not
    scored), scoring the 1-step x̂0 for the log if the algorithm did not (log_reward_queries)."""
    b, t = traj.batch_size, traj.num_steps
    final, first = torch.full((b,), float("nan")), torch.full((b,), float("nan"))
    final[rows[steps == t - 1]] = values[steps == t - 1]
    first[rows[steps == 0]] = values[steps == 0]
    if trainer.config.log_first_step_reward and torch.isnan(first).any():
        missing = torch.nonzero(torch.isnan(first)).flatten()
        first[missing] = score(trainer, traj, missing, torch.zeros_like(missing))
        trainer.count(log_reward_queries=missing.shape[0])
    return final, first


def scored_rollout(trainer, traj: Trajectory) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """Scores the steps the algorithm queries (column by column, see :meth:`Rollout.flat`);
    returns the rollout and the logged (final, 1-step) rewards."""
    queries = trainer.algo.query_steps(traj, trainer.shared_rng)
    b, q = queries.shape
    rows, steps = torch.arange(b).repeat(q), queries.T.reshape(-1)
    values = trainer.score(traj, rows, steps)
    final, first = logged_rewards(trainer, traj, rows, steps, values)
    return Rollout(traj, queries, values.view(q, b).T.contiguous(), trainer.algo.config.group_size, trainer.normalize), final, first
