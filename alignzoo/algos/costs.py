"""What one epoch of an algorithm costs beyond sampling its rollout, declared by the algorithm.

Per rollout image (``samples_per_epoch`` of them per epoch), as the run log counts them
(:mod:`alignzoo.runlog`): the UNet evaluations of the update phase (``unet_evals_training``),
the reward queries of scoring the rollout (``query_steps``, plus the trainer's 1-step reward for
the log) and those of the update phase (``reward_queries``). The suite's cost estimate
(``alignzoo bench SUITE --estimate``, :meth:`alignzoo.benchmarks.suites.Suite.cell_cost`)
multiplies them out, so every algorithm states its cost in its own module: the defaults here
read the trainer's own loop off the algorithm's plan and flags, and an algorithm that drives its
own updates (``update_epoch``) declares what they count. tests/test_cost_estimate.py checks every
built-in algorithm's declaration against a short run's log.
"""

from __future__ import annotations

import numpy as np
import torch


def stand_in_trajectory(num_steps: int, rows: int):
    """A random ``rows`` × ``num_steps`` trajectory of a 1 × 2 × 2 latent: what ``query_steps``
    reads (its shape, and SDPO's x̂0 for its anchor), without a model."""
    from alignzoo.models.sampling import Trajectory

    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return Trajectory(
        prompts=["a"] * rows,
        prompt_embeds=rand(rows, 1, 4),
        neg_embeds=None,
        timesteps=torch.arange(num_steps),
        prev_timesteps=torch.arange(num_steps),
        latents=rand(rows, num_steps + 1, 1, 2, 2),
        pred_x0=rand(rows, num_steps, 1, 2, 2),
        log_probs=rand(rows, num_steps),
        eta=1.0,
        kernel="ddim",
    )


class DeclaredCost:
    """The cost hooks of :class:`~alignzoo.algos.base.Algorithm` (a mixin of it)."""

    def training_unet_evals(self, num_steps: int, cfg: bool = False) -> float:
        """UNet evaluations of one epoch's update phase per rollout image, as the log's
        ``unet_evals_training`` counts them. The trainer's loop (``Trainer.train_epoch``): every
        planned transition (``plan``) one forward with gradient, ``num_inner_epochs`` times over; with
        ``needs_reference`` the reference's log-probs of every action step, once per epoch (its
        means too, with ``needs_means``: the KL of GRPO and DPOK reads them from the same forward). ``cfg``:
        the model's classifier-free guidance, which the log counts twice. An algorithm with its
        own ``update_epoch`` overrides this with what that counts."""
        if self.update_epoch is not None:
            raise NotImplementedError(
                f"{self.name} drives its own updates (update_epoch): declare their UNet evaluations in training_unet_evals(num_steps, cfg)"
            )
        c = self.config
        local = c.samples_per_epoch // self.world_size
        planned = sum(items.rows.numel() for items in self.plan(local, num_steps, np.random.default_rng(0))) / local
        reference = self.action_steps(num_steps) if self.needs_reference else 0
        return (c.num_inner_epochs * planned + reference) * (2 if cfg else 1)

    def training_reward_queries(self, num_steps: int) -> float:
        """Reward queries of one epoch's update phase per rollout image (reward backprop's); none
        in the trainer's loop."""
        return 0.0

    def rollout_reward_queries(self, num_steps: int, log_first_step: bool = True) -> float:
        """Reward queries of scoring one rollout image: the steps ``query_steps`` asks for (read
        off a stand-in trajectory of one group), and, with ``log_first_step``
        (``TrainConfig.log_first_step_reward``, on in every bench cell), the 1-step x̂0 the
        trainer scores for the log where step 0 is not among them."""
        queries = self.query_steps(stand_in_trajectory(num_steps, self.config.group_size), np.random.default_rng(0))
        unlogged = float((~(queries == 0).any(1)).float().mean()) if log_first_step else 0.0
        return queries.shape[1] + unlogged
