"""Algorithm registry and the small base every algorithm subclasses.

An algorithm (one module, registered with ``@register_algorithm``) declares:

* ``Config``            a dataclass of its hyperparameters (documented fields, paper defaults);
* ``Config.group_size`` G trajectories per prompt (1 = single, 2 = pairs, N = GRPO groups),
                        rows prompt-major (row = p·G + g), from one shared x_T per group unless
                        ``Config.shared_noise`` is False; ``group_sizes`` names the G its math allows;
* ``query_steps``       which steps' clean predictions x̂0 need a reward, (B, Q) — the sample
                        only (the default), or dense queries (SDPO);
* ``advantages``        how the :class:`~alignzoo.algos.rollouts.Rollout` (queried rewards,
                        ``normalize``) becomes per-(trajectory, step) advantages (B, T); the
                        default, for final-reward methods: normalised final rewards;
* ``plan``              how the (trajectory, step) items of an epoch are grouped into
                        optimiser updates: a list of updates, each an ``Items`` of shape (M, K)
                        (M loss terms, each reading K transitions' log-probs);
* ``loss``              the per-item loss for a group given the new and old log-probs;
* its cost              (:mod:`alignzoo.algos.costs`) the UNet evaluations and reward queries of
                        an epoch per rollout image, read off the plan unless it drives its own
                        updates (``update_epoch``): then declared in its module.

It owns no loops, devices, logging or checkpoints: :mod:`alignzoo.algos.trainer` does.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from alignzoo.algos.config_strings import config_from_strings, parse_assignments  # noqa: F401  (public here)
from alignzoo.algos.costs import DeclaredCost
from alignzoo.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")


def register_algorithm(name: str, summary: str | None = None):
    """Class decorator registering an :class:`Algorithm` subclass under ``name``."""

    def deco(cls):
        cls.name = name
        return ALGORITHMS.register(name, summary)(cls)

    return deco


_loaded = False


def _load_builtin_and_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import alignzoo.algos  # noqa: F401  (registers the built-in algorithms)

    for ep in importlib.metadata.entry_points(group="alignzoo.algorithms"):
        ep.load()


def load_plugin(path: str | Path) -> None:
    """Imports a Python file that registers algorithms (``--plugin path/to/file.py``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {str(path)!r} does not exist")
    name = f"alignzoo_plugin_{path.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def get_algorithm(name: str) -> type["Algorithm"]:
    _load_builtin_and_plugins()
    return ALGORITHMS.get(name)


def list_algorithms() -> list[str]:
    _load_builtin_and_plugins()
    return ALGORITHMS.names()


@dataclass
class AlgoConfig:
    """Fields shared by every algorithm (TRL/DDPO names where they exist)."""

    # sampling
    num_steps: int | None = None  # trajectory length T; None: the model's default (50 for sd-turbo)
    eta: float = 1.0  # DDIM η while sampling for training (LCM ignores it)
    # Batch numbers are global (all processes together) and count images (trajectories), never
    # groups: an update over train_batch_size × gradient_accumulation_steps images reads 1/G as
    # many groups, so every algorithm makes the same number of optimiser updates per epoch, each
    # over the same images (SDPO paper, Appendix A: paired methods halve batch and accumulation).
    # Each process takes 1/world of them (Algorithm.split_over checks they divide).
    samples_per_epoch: int = 32  # generated images per epoch, the same for every algorithm
    group_size: int = 1  # G trajectories per prompt, rows prompt-major (row = p·G + g)
    shared_noise: bool = True  # the G trajectories of a prompt start from one x_T (False: one each)
    # optimisation
    learning_rate: float = 3e-4
    optimizer: str = "adamw"  # "adamw" or "adam" (RLCM: Adam, no weight decay)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    lr_schedule: str = "constant"  # "constant" or "linear" (RLCM: 1 → 0 over lr_schedule_epochs, stepped per epoch)
    lr_schedule_epochs: int = 300
    max_grad_norm: float | None = 1.0
    train_batch_size: int = 4  # images per micro-batch, global (the trainer fuses an update's micro-batches)
    gradient_accumulation_steps: int = 1  # micro-batches per update: an update covers train_batch_size × this images
    num_inner_epochs: int = 1
    timestep_fraction: float = 1.0  # fraction of each trajectory's steps trained on
    # The sampler renders the last step's x̂0 (what SD-Turbo's and LCM's pipelines output), so the
    # last transition's sample x_T never reaches the reward: its log-prob gradient is zero-mean
    # noise, ∝ 1/σ (σ ≈ 0.03 for DDIM's last step, 34× the first step's scale at T = 2), which
    # swamped learning at short T (docs/tiny-presets.md). False trains on the T − 1 transitions
    # that reach the image; True on all T, as the public DDPO (which renders x_T) and RLCM (which
    # does not) code do.
    train_unrendered_step: bool = False
    # LoRA
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: = rank (scale 1)
    lora_targets: tuple = ("to_q", "to_k", "to_v", "to_out.0")
    # advantages
    adv_clip: float | None = 5.0
    normalization: str = "per_prompt"  # per_prompt | per_step_prompt | global
    tracker_buffer: int = 16
    tracker_min_count: int = 16

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclass
class Items:
    """M loss items over groups: ``rows`` and ``steps`` are (M, G, K) long tensors. Item m reads,
    for each of the G trajectories of its group (rows p·G + g), K transitions; the trainer hands
    the loss their log-probs in the same (M, G, K) shape."""

    rows: torch.Tensor
    steps: torch.Tensor

    def __post_init__(self):
        if self.rows.ndim != 3 or self.rows.shape != self.steps.shape:
            raise ValueError(f"Items need rows and steps of one shape (M, G, K), got {tuple(self.rows.shape)} and {tuple(self.steps.shape)}")

    def __len__(self) -> int:
        return self.rows.shape[0]

    def split(self, size: int) -> list["Items"]:
        return [Items(r, s) for r, s in zip(self.rows.split(size), self.steps.split(size))]


def group_rows(groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n,) group (prompt) indices → (n, G) their rows, prompt-major: row = group·G + g."""
    return torch.as_tensor(groups, dtype=torch.long)[:, None] * group_size + torch.arange(group_size)


@dataclass(frozen=True)
class ComputeException:
    """A declared departure from equal compute (the same optimiser updates per epoch, each over
    the same images, as every other algorithm of a suite): a short ``name`` and the paper's
    ``reason``. ``tests/test_fairness.py`` accepts an unequal plan only with one."""

    name: str
    reason: str


@dataclass
class EpochData:
    """What an algorithm keeps between rollout and update for one epoch."""

    advantages: torch.Tensor  # (B, T) per (trajectory, step)
    ref_log_probs: torch.Tensor | None = None  # (B, T) under the reference policy, if needed
    ref_means: torch.Tensor | None = None  # (B, T, C, h, w) step means μ_ref, if needed (needs_reference and needs_means)
    extra: dict = field(default_factory=dict)


class Algorithm(DeclaredCost):
    """Base class: subclasses set ``Config`` (its ``group_size`` default) and implement the hooks below."""

    name: ClassVar[str] = "algorithm"
    Config: ClassVar[type] = AlgoConfig
    group_sizes: ClassVar[tuple[int, ...] | None] = None  # the G the math allows (None: any G >= 1)
    needs_reference: ClassVar[bool] = False  # wants log-probs under the pretrained model
    needs_log_probs: ClassVar[bool] = True  # trains on transition log-probs, so DDIM needs eta > 0 (False: eta = 0 allowed)
    needs_reward_grad: ClassVar[bool] = False  # back-propagates the reward: the trainer builds it differentiable
    # loss() also receives new_means=(M, G, K, C, h, w), the current policy's step means μ_θ (with
    # grad); the rollout keeps the sampling policy's (Trajectory.means), and with needs_reference
    # the trainer adds the pretrained model's (EpochData.ref_means)
    needs_means: ClassVar[bool] = False
    model_kinds: ClassVar[tuple[str, ...]] = ("sd", "lcm")

    world_size: int = 1  # processes that share each update (set by split_over)

    def __init__(self, config: AlgoConfig | None = None):
        self.config = config or self.Config()
        g = self.config.group_size
        if g < 1 or (self.group_sizes is not None and g not in self.group_sizes):
            allowed = "G >= 1" if self.group_sizes is None else " or ".join(map(str, self.group_sizes))
            raise ValueError(f"{self.name}: group_size {g} does not fit its objective; use {allowed}")
        if self.config.samples_per_epoch < g:
            raise ValueError(f"{self.name}: samples_per_epoch {self.config.samples_per_epoch} is smaller than one group of {g}")

    # -- global batch numbers ---------------------------------------------------------------
    def split_over(self, world_size: int) -> None:
        """Divides the global numbers over ``world_size`` processes (each holds whole pairs);
        raises a one-line error naming the numbers and the fix when they do not divide."""
        self.prompts_per_epoch(world_size)
        self.world_size = int(world_size)
        if self.update_epoch is None:
            self.units_per_update()

    def images_per_update(self) -> int:
        """Images (trajectories) one optimiser update covers, all processes together."""
        return self.config.train_batch_size * self.config.gradient_accumulation_steps

    def units_per_update(self) -> int:
        """Groups (G trajectories of one prompt) one update reads on this process."""
        c, unit = self.config, self.config.group_size * self.world_size
        n = self.images_per_update()
        if n < unit or n % unit:
            raise ValueError(
                f"{self.name}: train_batch_size × gradient_accumulation_steps = {c.train_batch_size} × {c.gradient_accumulation_steps} = {n} "
                f"images per update (global) do not split into whole groups of {c.group_size} over {self.world_size} process(es): "
                f"make it a multiple of {unit}"
            )
        return n // unit

    def compute_exception(self) -> ComputeException | None:
        """Why this algorithm, under this config, does not make the suite's equal number of
        updates per epoch over the same images per update; None when it does."""
        return None

    def images_per_epoch(self, world_size: int = 1) -> int:
        """Every image generated in one epoch (the sample budget counts them all)."""
        return self.config.samples_per_epoch

    def images_before_training(self, world_size: int = 1) -> int:
        """Images generated once, before the first epoch's updates (e.g. LaSRO's stage 1)."""
        return 0

    def update_schedule(self, num_steps: int, world_size: int = 1, seed: int = 0) -> list[int]:
        """The global images each optimiser update of one epoch reads (its length is the number of
        updates per epoch), from the plan alone: no model. What the fairness test and the cost
        estimate compare."""
        self.split_over(world_size)
        rng, local = np.random.default_rng(seed), self.config.samples_per_epoch // world_size
        return [int(items.rows.unique().numel()) * world_size for _ in range(self.config.num_inner_epochs) for items in self.plan(local, num_steps, rng)]

    # -- rollouts and rewards ---------------------------------------------------------------
    def prompts_per_epoch(self, world_size: int = 1) -> int:
        """Groups of G images sample 1/G as many prompts, so every algorithm makes the same
        number of images per epoch (SDPO paper, Appendix A). Global, split over processes."""
        spe, unit = self.config.samples_per_epoch, self.config.group_size
        n = spe // unit
        if spe % unit or n % world_size:
            raise ValueError(
                f"{self.name}: samples_per_epoch {spe} (global) does not split into whole groups of {unit} "
                f"over {world_size} process(es): make it a multiple of {unit * world_size}"
            )
        return n // world_size

    def sampling_eta(self, num_steps: int) -> float | list[float]:
        """DDIM η of this epoch's rollout: ``config.eta`` at every step, or a list of T values
        (MixGRPO: η = 0 outside its SDE window). The LCM kernel has no η."""
        return self.config.eta

    def query_steps(self, traj, generator: np.random.Generator) -> torch.Tensor:
        """(B, Q) sampling-order steps whose x̂0 is decoded and scored. Default: the sample."""
        return torch.full((traj.batch_size, 1), traj.num_steps - 1, dtype=torch.long)

    def advantages(self, rollout) -> EpochData:
        """Final-reward methods (DDPO, REBEL): one normalised, clipped advantage per trajectory,
        broadcast over its T steps."""
        adv = self.clip_advantages(rollout.normalize(rollout.final_rewards))
        return EpochData(advantages=adv[:, None].expand(-1, rollout.traj.num_steps).contiguous())

    # -- updates ----------------------------------------------------------------------------
    def plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        raise NotImplementedError

    def loss(self, items: Items, new_logp: torch.Tensor, old_logp: torch.Tensor, data: EpochData) -> tuple[torch.Tensor, dict]:
        """Per-item loss (M,) and per-item diagnostics (each (M,)) for one group of items (``needs_means``: and ``new_means=``)."""
        raise NotImplementedError

    # -- optional hooks (algorithms that are not per-step policy gradients, e.g. LaSRO) ------
    def setup(self, ctx) -> None:
        """Called with the :class:`~alignzoo.algos.context.TrainerContext` once the trainer has its model, reward and optimiser (before resuming)."""

    sampling_policy = None  # optionally ``sampling_policy(ctx)``: a context the rollout is sampled in (DiffusionNFT: its old policy)
    update_epoch = None
    """Optionally ``update_epoch(ctx, rollout) -> dict``: replaces the advantages/plan/loss loop of
    the epoch, working through the :class:`~alignzoo.algos.context.TrainerContext` ``ctx`` only."""
    update_extra = None
    """Optionally ``update_extra(ctx, traj, items) -> dict``: a differentiable term added to each
    update's loss (hybrid: reward backprop through the last step). Called by ``Trainer.update``
    after the per-item losses' backward and before the optimiser step, it back-propagates its term
    through ``ctx.backward``, counts its calls, and returns update means; its "loss" adds to the update's."""

    def state_dict(self) -> dict:
        """Extra state to checkpoint (e.g. a surrogate model and its replay buffer)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def replicated_parameters(self) -> list[torch.Tensor]:
        """Tensors besides the LoRA that every process must hold identically at the end of a run
        (e.g. a surrogate trained with averaged gradients); the trainer checks them."""
        return []

    # -- helpers shared by subclasses -------------------------------------------------------
    def clip_advantages(self, adv: torch.Tensor) -> torch.Tensor:
        c = self.config.adv_clip
        return adv if c is None else adv.clamp(-c, c)

    def action_steps(self, num_steps: int) -> int:
        """How many transitions (the first ones, in sampling order) the losses train on."""
        if self.config.train_unrendered_step:
            return num_steps
        if num_steps < 2:
            raise ValueError(
                f"{self.name}: with 1 sampling step the only transition is never rendered (the image is step 0's x̂0), "
                "so a log-prob objective has nothing to train; use num_steps >= 2, or --set train_unrendered_step=true"
            )
        return num_steps - 1

    def trained_steps(self, num_steps: int) -> int:
        """Steps per trajectory in an epoch's updates: ``timestep_fraction`` of the action steps."""
        return max(1, int(round(self.action_steps(num_steps) * self.config.timestep_fraction)))

    def updates(self, order: np.ndarray, make_items) -> list[Items]:
        """The epoch's updates: the shuffled groups ``order`` in runs of :meth:`units_per_update`
        (train_batch_size × gradient_accumulation_steps images), each run's Items made by
        ``make_items(groups)`` from its (n,) group indices."""
        per_update = self.units_per_update()
        return [make_items(torch.as_tensor(order[start : start + per_update])) for start in range(0, len(order), per_update)]

    def all_steps_plan(self, batch_size: int, num_steps: int, generator: np.random.Generator) -> list[Items]:
        """DDPO-style updates: shuffle the groups, permute each group's steps, and put all
        (sub-sampled) steps of ``train_batch_size × gradient_accumulation_steps`` images into one
        update. An item reads the G trajectories of one group at one step: (M, G, 1)."""
        g = self.config.group_size
        groups, keep = batch_size // g, self.trained_steps(num_steps)
        order = generator.permutation(groups)
        cols = torch.as_tensor(shuffled_step_columns(groups, self.action_steps(num_steps), keep, generator))

        def items(chosen: torch.Tensor) -> Items:
            rows = group_rows(chosen.repeat_interleave(keep), g)
            steps = cols[chosen].reshape(-1, 1).expand(-1, g)
            return Items(rows[..., None], steps[..., None].contiguous())

        return self.updates(order, items)


def shuffled_step_columns(n: int, num_steps: int, keep: int, generator: np.random.Generator) -> np.ndarray:
    """(n, keep) step indices: an independent permutation of the T steps for each row/pair."""
    return np.stack([generator.permutation(num_steps)[:keep] for _ in range(n)]) if n else np.zeros((0, keep), dtype=np.int64)
