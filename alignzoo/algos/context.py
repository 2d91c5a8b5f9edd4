"""The trainer context: the part of the trainer an algorithm that drives its own updates may use.

Per-step policy gradients need none of it (the trainer runs rollout → advantages → plan → loss).
Algorithms that are not (LaSRO, reward backprop; forward-process methods next) define
``update_epoch(ctx, rollout)`` and work through this small surface only: draw prompts, sample
(with or without gradient, optionally detaching between steps), replay stored trajectories with
gradient on a suffix of their steps, score (also with gradient, for a reward built
differentiable), gather, back-propagate, average gradients, count, and step the optimiser with an
lr scale. Every random draw goes through the trainer's generators, so a resumed run repeats the
same draws; every image and network call is counted through :meth:`count`, every backward pass
goes through :meth:`backward`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from alignzoo.algos import distributed
from alignzoo.models.sampling import Trajectory, replay, sample


class TrainerContext:
    def __init__(self, trainer):
        self._trainer = trainer

    # -- what is trained, where ------------------------------------------------------------------
    @property
    def model(self):
        return self._trainer.model

    @property
    def device(self) -> torch.device:
        return self._trainer.device

    @property
    def num_steps(self) -> int:
        return self._trainer.num_steps

    @property
    def epoch(self) -> int:
        return self._trainer.epoch

    @property
    def seed(self) -> int:
        return int(self._trainer.config.seed)

    @property
    def rank(self) -> int:
        return self._trainer.rank

    @property
    def world(self) -> int:
        return self._trainer.world

    @property
    def max_rows_per_forward(self) -> int:
        """The most UNet rows one forward should hold (TrainConfig.max_transitions_per_forward)."""
        return int(self._trainer.config.max_transitions_per_forward)

    def autocast(self):
        return self._trainer.accelerator.autocast()

    # -- data ----------------------------------------------------------------------------------
    def local(self, values, n: int):
        """This process's n of a global draw of n × world (the same draw on every process)."""
        return values[self.rank * n : (self.rank + 1) * n]

    @property
    def shared_rng(self) -> np.random.Generator:
        """The generator every process shares (prompts, plans): the same draws on every process."""
        return self._trainer.shared_rng

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise from this process's sampling generator, on the device."""
        return torch.randn(shape, generator=self._trainer.noise_gen, dtype=torch.float32).to(self.device)

    def draw_prompts(self, n: int, stratified: bool = False) -> list[str]:
        """n training prompts for this process from the shared generator; ``stratified``: whole
        permutations of the prompt set before any prompt comes twice."""
        t = self._trainer
        size, total = len(t.prompt_set), n * self.world
        if stratified:
            idx = np.concatenate([t.shared_rng.permutation(size) for _ in range(-(-total // size))])[:total]
        else:
            idx = t.shared_rng.integers(0, size, size=total)
        return [t.prompt_set[i] for i in self.local(idx, n)]

    def sample(self, prompts, eta: float, grad: bool = False, detach_between_steps: bool = False) -> Trajectory:
        """Trajectories of ``prompts`` from the current policy (``model.reference()`` around the
        call for the pretrained one), drawing noise from this process's generator. Not counted:
        the caller counts what it generated (:meth:`count`)."""
        t = self._trainer
        return sample(t.model, prompts, t.num_steps, eta, t.noise_gen, grad=grad, detach_between_steps=detach_between_steps)

    def replay(self, traj: Trajectory, rows, grad_from: int, stop: int | None = None, checkpoint: bool = False, from_stored: bool = False) -> torch.Tensor:
        """x̂0 of steps grad_from..stop−1 of stored trajectories re-run under the current policy, with
        gradients from step ``grad_from`` on (:func:`alignzoo.models.sampling.replay`). Not counted."""
        return replay(self._trainer.model, traj, rows, grad_from, stop, checkpoint=checkpoint, from_stored=from_stored)

    def score_with_grad(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Rewards (B,) of clean latents (B, C, h, w), decoded and scored keeping the graph, so their
        gradient reaches the latents (the reward is built differentiable for an algorithm with
        ``needs_reward_grad``); counted as decodes and reward queries."""
        t = self._trainer
        t0 = time.perf_counter()
        images = t.model.decode(latents)
        t1 = time.perf_counter()
        values = t.reward(images, prompts)
        t.totals["seconds_decoding"] += t1 - t0
        t.totals["seconds_reward"] += time.perf_counter() - t1
        self.count(vae_decodes=len(prompts), reward_queries=len(prompts))
        return values

    def score(self, traj: Trajectory, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Rewards of the x̂0 at (row, step), decoded and scored in a batch (counted)."""
        return self._trainer.score(traj, rows, steps)

    def gather(self, values: torch.Tensor, prompts: list[str]):
        """All processes' values and prompts (concatenated by rank) and this process's slice."""
        return self._trainer.gather(values, prompts)

    def count(self, unet: int = 0, grad: bool = False, phase: str = "training", **counts: int) -> None:
        """Adds to the run's compute counters (runlog.add_counts): images, UNet rows, decodes..."""
        self._trainer.count(unet=unet, grad=grad, phase=phase, **counts)

    # -- updates -------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the trainer (timed by ``alignzoo perf``)."""
        self._trainer.backward(loss)

    def zero_grad(self) -> None:
        self._trainer.optimizer.zero_grad(set_to_none=True)

    def average_gradients(self, params) -> None:
        """Gradients of ``params`` (besides the LoRA, e.g. a surrogate's) averaged over processes."""
        distributed.average_gradients(self._trainer.accelerator, params)

    def optimizer_step(self, lr_scale: float = 1.0) -> float | None:
        """The policy's optimiser step (gradients averaged over processes, clipped), with every
        learning rate scaled by ``lr_scale`` for this step only; returns the pre-clip norm."""
        groups = self._trainer.optimizer.param_groups
        lrs = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] *= lr_scale
        try:
            return self._trainer.optimizer_step()
        finally:
            for g, lr in zip(groups, lrs):
                g["lr"] = lr
