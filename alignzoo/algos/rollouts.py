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

    Training on a weighted sum of R rewards (``--reward a --reward b --reward-weights 1,0.5``),
    ``rewards`` is the weighted sum and ``components`` (B, Q, R) the R rewards themselves, with
    their ``weights`` (R,) (GRPO's GDPO aggregation normalises each within its group first); with
    one reward R = 1. :meth:`gather` returns every process's values of a per-row tensor.
    """

    traj: Trajectory
    queries: torch.Tensor
    rewards: torch.Tensor
    group_size: int
    normalizer: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None
    components: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    gatherer: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return self.normalizer(values, self.traj.prompts)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``values`` (B, ...), concatenated by rank (this one's alone
        when there is no trainer)."""
        return values if self.gatherer is None else self.gatherer(values, self.traj.prompts)

    @property
    def final_components(self) -> torch.Tensor:
        """(B, R) each trajectory's R rewards of its sample (one column for a single reward)."""
        comps = self.rewards[..., None] if self.components is None else self.components
        return comps[self.queries == self.traj.num_steps - 1].view(self.traj.batch_size, -1)

    @property
    def component_weights(self) -> torch.Tensor:
        return torch.ones(1) if self.weights is None else self.weights

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
    algo, c = trainer.algo, trainer.algo.config
    eta = algo.sampling_eta(trainer.num_steps)  # one η, or one per step (MixGRPO's window)
    policy = algo.sampling_policy(trainer.context) if algo.sampling_policy else contextlib.nullcontext()  # DiffusionNFT's old policy
    with torch.no_grad(), trainer.accelerator.autocast(), policy:
        traj = sample_groups(trainer.model, prompts, c.group_size, trainer.num_steps, eta, trainer.noise_gen, c.shared_noise, algo.needs_means)
    trainer.count(samples=traj.batch_size, unet=traj.batch_size * traj.num_steps, phase="sampling")
    return traj


def score(trainer, traj: Trajectory, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Decodes x̂0 at the requested (row, step) pairs, batched, and scores them."""
    return score_components(trainer, traj, rows, steps)[0]


def score_components(trainer, traj: Trajectory, rows: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`score` and, beside the (N,) rewards, the (N, R) rewards a weighted sum of R
    rewards adds up (R = 1 for a single reward): one decode and one query per image either way."""
    t0 = time.perf_counter()
    lat = traj.pred_x0[rows, steps]
    with torch.no_grad(), trainer.accelerator.autocast():
        images = trainer.model.decode(lat)
    t1 = time.perf_counter()
    prompts = [traj.prompts[i] for i in rows.tolist()]
    both = getattr(trainer.reward, "forward_components", None)
    values, comps = both(images, prompts) if both is not None else (trainer.reward(images, prompts),) * 2
    trainer.totals["seconds_decoding"] += t1 - t0
    trainer.totals["seconds_reward"] += time.perf_counter() - t1
    trainer.count(vae_decodes=rows.shape[0], reward_queries=rows.shape[0])  # training and logging queries alike
    return values.detach().float().cpu(), comps.detach().float().cpu().reshape(rows.shape[0], -1)


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
    values, comps = score_components(trainer, traj, rows, steps)
    final, first = logged_rewards(trainer, traj, rows, steps, values)
    weights = getattr(trainer.reward, "weights", None)
    return (
        Rollout(
            traj,
            queries,
            values.view(q, b).T.contiguous(),
            trainer.algo.config.group_size,
            trainer.normalize,
            components=comps.view(q, b, -1).transpose(0, 1).contiguous(),
            weights=torch.ones(1) if weights is None else weights.detach().float().cpu(),
            gatherer=lambda v, prompts: trainer.gather(v, prompts)[0],
        ),
        final,
        first,
    )


def component_means(trainer, rollout: Rollout) -> dict[str, float]:
    """The log's per-reward means of the samples when training on a weighted sum of rewards
    (``reward_mean[NAME]``, all processes); nothing for a single reward, whose log is unchanged."""
    names = getattr(trainer.reward, "component_names", ())
    if len(names) < 2:
        return {}
    every = rollout.gather(rollout.final_components)
    return {f"reward_mean[{n}]": float(every[:, k].mean()) for k, n in enumerate(names)}
