"""LaSRO: latent-space surrogate reward optimisation for ≤2-step models (Jia et al., arXiv 2411.15247).

The paper's method section could not be read: this module follows /work/shared/LASRO_NOTES.md,
and every constant the notes mark as unverified is a config field ([O] = our choice, tuned on
the tiny world; docs/lasro.md records the tuning). Notation: z1 = the 1-step clean latent
x̂0 of the first sampling step (``pred_x0[:, 0]``), z2 = the final clean latent
(``pred_x0[:, -1]``), c the prompt, r the true (possibly non-differentiable) reward.

* Surrogate R_ψ(z, c) (notes §2): the pretrained UNet's own encoder — conv_in, time embedding,
  down blocks and mid block, prompt-conditioned through their cross-attention — evaluated on a
  clean latent at a fixed timestep t_s, then a conv head Conv3×3(C→h1)+SiLU → Conv3×3(h1→h2,
  stride 2)+SiLU → global average pool → Linear(h2→1). The backbone is a *copy* of the
  pretrained weights (the generator's LoRA stripped): the surrogate is trained at other times,
  with other optimisers and (``surrogate_backbone="full"``) on all its weights, so it cannot
  share modules with the generator's UNet; only the generator's own reference uses
  ``model.reference()`` (no second generator copy). ``surrogate_backbone`` = "full" | "lora" |
  "frozen" picks which backbone weights train (the head always trains).
* Bradley–Terry loss (notes §3):  L_surr(ψ) = −E log σ(R_ψ(z^w, c) − R_ψ(z^l, c))  over every
  pair of samples of the same prompt and step kind (z1 with z1, z2 with z2) whose true rewards
  differ by more than ``tie_margin``; only the ranking of r is used.
* Stage 1 (notes §4, reconstructed): on the first epoch, sample ``pretrain_prompts`` prompts ×
  N_s noises from the frozen pretrained model, score z1 and z2 with r (counted as reward
  queries), fill the replay buffer and take ``pretrain_steps`` surrogate steps; another
  ``heldout_prompts`` × N_s samples are never trained on and give the held-out pairwise accuracy.
* Stage 2 (notes §5): generator steps minimise
      L_gen(θ) = c·L_reg(θ) − c1·S[R_ψ(z1, c)] − c2·S[R_ψ(z2, c)]
  through the differentiable 1–2 step sampler (R_ψ frozen but differentiable in z), with
  S[R] = clip((R − μ)/m, −1, 1), μ ← EMA(mean R), m ← max(EMA(max|R − μ|), floor) tracked per
  step kind, and the regulariser (c = ``reg_weight``)
      L_reg = E_τ ‖f_θ(z_τ, τ, c) − f_θ0(z_τ, τ, c)‖²,  z_τ = √ᾱ_τ z + √(1−ᾱ_τ) ε
  on buffer latents noised to a timestep of the sampling schedule, f_θ0 = the same UNet under
  ``model.reference()`` (``reg_form="trajectory"`` uses the generator's own states instead).
* Online adaptation (notes §6–7): each epoch the trainer's rollout (N_s noises per prompt, from
  the current generator) is scored at z1 and z2 and pushed into a FIFO replay buffer; the epoch
  then alternates ``k_surr`` surrogate steps (a ``fresh_fraction`` of pairs from the newest
  samples, the rest replayed) with ``k_gen`` generator steps, ``gen_steps`` generator steps in all.

Ablations of the paper (notes §8): ``surrogate_mode`` "online" | "fixed" (no refits after
stage 1), ``objective`` "z1z2" | "z2", ``buffer`` "off_policy" | "on_policy" (the buffer only
holds the newest generator's samples).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignzoo.algos import distributed
from alignzoo.algos.base import AlgoConfig, Algorithm, ComputeException, register_algorithm
from alignzoo.models.sampling import Trajectory, previous_timesteps, sample, step_distribution

SURROGATE_MODES = ("online", "fixed")
OBJECTIVES = ("z1z2", "z2")
BUFFERS = ("off_policy", "on_policy")
BACKBONES = ("full", "lora", "frozen")
REG_FORMS = ("consistency", "trajectory", "none")


@dataclass
class LaSROConfig(AlgoConfig):
    """Defaults: tuned on the tiny world (tiny-lcm, tiny_alignment; docs/lasro.md). Notes §9a
    gives the GPU-scale values (the ``paper-lcm`` suite's [algo.lasro] table)."""

    num_steps: int | None = 2  # sampling steps of the generator (the paper: 2; z1 is its 1-step output)
    learning_rate: float = 6e-4  # generator LoRA lr [O] (notes §9a: 5e-5 at real scale)
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    samples_per_prompt: int = 8  # N_s: noises per prompt in every scored batch (rollout and stage 1) [O]
    # surrogate network (notes §2)
    surrogate_backbone: str = "full"  # "full" | "lora" | "frozen": which backbone weights train [O]
    surrogate_lr_backbone: float = 1e-4  # [O] (notes §9a: 1e-5)
    surrogate_lr_head: float = 3e-3  # [O] (notes §9a: 1e-4)
    surrogate_weight_decay: float = 0.0
    surrogate_lora_rank: int = 8  # for surrogate_backbone="lora"
    surrogate_lora_targets: tuple = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
    head_channels: tuple = (64, 32)  # (h1, h2) of the conv head [O] (notes: 256, 64)
    head_pool: int = 1  # the head's average pool to head_pool × head_pool cells (1: global) [O]
    surrogate_timestep: int = 0  # t_s fed to the backbone [O]
    surrogate_noise_aug: bool = False  # add forward noise at t_s to buffer latents while fitting [O]
    surrogate_grad_clip: float | None = 1.0
    # Bradley–Terry data (notes §3, §6–7)
    tie_margin: float = 0.005  # pairs need |r_w − r_l| > tie_margin (reward units) [O]
    groups_per_batch: int = 8  # prompt groups per surrogate step, ≤ N_s items each, all their ranked pairs [O]
    buffer_size: int = 4096  # FIFO replay buffer of scored latents (z1 and z2 each count) [O]
    fresh_fraction: float = 0.5  # share of each surrogate batch's groups holding the newest samples [O]
    # stage 1 (notes §4)
    pretrain_prompts: int = 256  # prompts (× N_s noises) sampled from the frozen model, stratified over the set [O]
    heldout_prompts: int = 64  # held-out prompts (× N_s) for the pairwise accuracy [O]
    pretrain_steps: int = 400  # surrogate steps before stage 2 [O] (notes §9a: 3k)
    # stage 2 (notes §5, §7)
    gen_steps: int = 8  # generator steps per epoch [O]
    k_gen: int = 1  # K_gen: generator steps per round [O]
    k_surr: int = 2  # K_surr: surrogate steps before each round of generator steps [O]
    gen_batch_size: int = 32  # prompts (one noise each) per generator step [O]
    gen_warmup_steps: int = 0  # linear warm-up of the generator lr over its first steps [O]
    reward_weight_z1: float = 1.0  # c1 [O]
    reward_weight_z2: float = 1.0  # c2 [O]
    reg_weight: float = 3.0  # c [O]
    reg_form: str = "consistency"  # "consistency" (noised buffer latents) | "trajectory" | "none"
    reg_batch_size: int = 32  # buffer latents per regulariser term [O]
    norm_ema: float = 0.99  # EMA rate of S[·]'s mean and max-deviation statistics [O]
    norm_floor: float = 1e-3  # lower bound of S[·]'s scale m [O]
    norm_clip: float | None = 1.0  # S[·]'s clip; None: no clip [O]
    detach_between_steps: bool = False  # stop ∂R(z2)/∂z2 at the re-noised state between steps [O]
    # ablations (notes §8)
    surrogate_mode: str = "online"  # "online" | "fixed"
    objective: str = "z1z2"  # "z1z2" | "z2"
    buffer: str = "off_policy"  # "off_policy" | "on_policy"
    sample_batch_size: int = 256  # images per no-grad sampling call in stage 1 (memory only)


# ------------------------------------------------------------------------------ loss and pairs
def bradley_terry_loss(score_w: torch.Tensor, score_l: torch.Tensor) -> torch.Tensor:
    """−mean log σ(s_w − s_l): the Bradley–Terry negative log-likelihood of the (w, l) pairs."""
    return -F.logsigmoid(score_w - score_l).mean()


def ranked_pairs(groups: torch.Tensor, rewards: torch.Tensor, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (winner, loser) index pair with the same group id and r_w − r_l > margin.

    ``groups`` (N,) long: one id per (prompt, step kind); ``rewards`` (N,). Each unordered
    pair appears at most once, winner first. Returns two (P,) long tensors.
    """
    groups = torch.as_tensor(groups, dtype=torch.long).cpu()
    rewards = torch.as_tensor(rewards, dtype=torch.float64).cpu()
    ws, ls = [], []
    order = torch.argsort(groups, stable=True)
    uniq, counts = torch.unique_consecutive(groups[order], return_counts=True)
    for idx in torch.split(order, counts.tolist()):
        if idx.numel() < 2:
            continue
        r = rewards[idx]
        w, l = torch.nonzero(r[:, None] - r[None, :] > margin, as_tuple=True)
        ws.append(idx[w])
        ls.append(idx[l])
    if not ws:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(ws), torch.cat(ls)


def pairwise_accuracy(scores: torch.Tensor, w: torch.Tensor, l: torch.Tensor) -> float:
    """Share of (w, l) pairs the scores order correctly (ties count half); NaN without pairs."""
    if w.numel() == 0:
        return float("nan")
    d = scores[w] - scores[l]
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


# ------------------------------------------------------------------------------ the surrogate
def _strip_lora(module: nn.Module) -> nn.Module:
    """Replaces every PEFT LoRA layer by its base layer (the pretrained weights), in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in list(module.named_modules()):
        if name and isinstance(sub, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, sub.get_base_layer())
    return module


class LatentSurrogate(nn.Module):
    """R_ψ(z, c): the pretrained UNet's encoder (conv_in, time embedding, down + mid blocks) on a
    clean latent at timestep t_s, conditioned on prompt embeddings, plus a conv head → scalar."""

    def __init__(self, unet, head_channels=(64, 32), timestep: int = 0, time_cond: torch.Tensor | None = None, pool: int = 1):
        super().__init__()
        cfg = unet.config
        for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
            if cfg.get(key) is not None:
                raise ValueError(f"LaSRO's surrogate does not support UNets with {key}={cfg.get(key)!r} (SD1.x/2.x/LCM layouts only)")
        part = lambda m: None if m is None else _strip_lora(copy.deepcopy(m)).float()  # noqa: E731
        self.conv_in = part(unet.conv_in)
        self.time_proj = part(unet.time_proj)
        self.time_embedding = part(unet.time_embedding)
        self.time_embed_act = part(getattr(unet, "time_embed_act", None))
        self.down_blocks = part(unet.down_blocks)
        self.mid_block = part(unet.mid_block)
        channels = int(cfg.block_out_channels[-1])
        h1, h2 = (int(h) for h in head_channels)
        self.head = nn.Sequential(
            nn.Conv2d(channels, h1, 3, padding=1), nn.SiLU(), nn.Conv2d(h1, h2, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(h2 * pool * pool, 1),
        )
        self.register_buffer("timestep", torch.tensor(int(timestep), dtype=torch.long), persistent=False)
        self.register_buffer("time_cond", None if time_cond is None else time_cond.detach().float().reshape(1, -1).clone(), persistent=False)

    def backbone_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("head.")]

    def forward(self, z: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        x = z.float()
        enc = encoder_hidden_states.float()
        t_emb = self.time_proj(self.timestep.to(x.device).expand(b)).to(x.dtype)
        cond = None if self.time_cond is None else self.time_cond.expand(b, -1)
        emb = self.time_embedding(t_emb, cond)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        h = self.conv_in(x)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=enc)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, encoder_hidden_states=enc)
            else:
                h = self.mid_block(h, emb)
        return self.head(h).squeeze(1).float()


class ScoreNormalizer:
    """S[·] (notes §5, [O]): μ ← EMA(mean R), m ← max(EMA(max|R − μ|), floor), S = clip((R − μ)/m)."""

    def __init__(self, rate: float = 0.99, floor: float = 1e-3, clip: float | None = 1.0):
        self.rate, self.floor, self.clip = rate, floor, clip
        self.mean: float | None = None
        self.dev: float | None = None

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            bm = float(r.detach().mean())
            self.mean = bm if self.mean is None else self.rate * self.mean + (1 - self.rate) * bm
            bd = float((r.detach() - self.mean).abs().max())
            self.dev = bd if self.dev is None else self.rate * self.dev + (1 - self.rate) * bd
        s = (r - self.mean) / max(self.dev, self.floor)
        return s if self.clip is None else s.clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "dev": self.dev}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.dev = state["mean"], state["dev"]


# ------------------------------------------------------------------------------ replay buffer
class ReplayBuffer:
    """FIFO of scored clean latents: latents (N, C, h, w), rewards, prompt ids, step kind
    (0 = z1, 1 = z2) and version (0 = stage 1, e = the generator after e − 1 epochs)."""

    FIELDS = ("latents", "rewards", "prompt_ids", "kinds", "versions")

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.prompts: list[str] = []
        self._ids: dict[str, int] = {}
        self.latents = self.rewards = self.prompt_ids = self.kinds = self.versions = None

    def __len__(self) -> int:
        return 0 if self.rewards is None else int(self.rewards.shape[0])

    def prompt_id(self, prompt: str) -> int:
        if prompt not in self._ids:
            self._ids[prompt] = len(self.prompts)
            self.prompts.append(prompt)
        return self._ids[prompt]

    def push(self, latents, rewards, prompts, kinds, version: int) -> None:
        new = {"latents": latents.detach().float().cpu(), "rewards": rewards.detach().float().cpu(),
               "prompt_ids": torch.tensor([self.prompt_id(p) for p in prompts], dtype=torch.long),
               "kinds": torch.as_tensor(kinds, dtype=torch.long).cpu(), "versions": torch.full((len(prompts),), int(version), dtype=torch.long)}
        for k, v in new.items():
            old = getattr(self, k)
            setattr(self, k, (v if old is None else torch.cat([old, v]))[-self.capacity:])

    def clear(self) -> None:
        for k in self.FIELDS:
            setattr(self, k, None)

    def group_ids(self) -> torch.Tensor:
        return self.prompt_ids * 2 + self.kinds

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "prompts": list(self.prompts), **{k: getattr(self, k) for k in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.prompts = list(state["prompts"])
        self._ids = {p: i for i, p in enumerate(self.prompts)}
        for k in self.FIELDS:
            setattr(self, k, state[k])


# ------------------------------------------------------------------------------ the algorithm
@register_algorithm("lasro", "LaSRO: a Bradley–Terry latent surrogate reward, back-propagated through 1–2 sampling steps (Jia et al.)")
class LaSRO(Algorithm):
    Config = LaSROConfig
    paired = False

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        for name, value, allowed in (("surrogate_mode", c.surrogate_mode, SURROGATE_MODES), ("objective", c.objective, OBJECTIVES),
                                     ("buffer", c.buffer, BUFFERS), ("surrogate_backbone", c.surrogate_backbone, BACKBONES),
                                     ("reg_form", c.reg_form, REG_FORMS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if c.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt (N_s) must be >= 2: Bradley–Terry pairs are formed within a prompt")
        if c.samples_per_epoch % c.samples_per_prompt:
            raise ValueError(f"samples_per_epoch {c.samples_per_epoch} is not a multiple of samples_per_prompt {c.samples_per_prompt}")
        if len(tuple(c.head_channels)) != 2:
            raise ValueError("head_channels must name two widths (h1, h2)")
        self.surrogate = None
        self.pretrained = False

    # -- the trainer's rollout: N_s noises per prompt -----------------------------------------
    @property
    def samples_per_prompt(self) -> int:
        return int(self.config.samples_per_prompt)

    def prompts_per_epoch(self, world_size: int = 1) -> int:
        n = self.config.samples_per_epoch // self.samples_per_prompt
        if n % world_size:
            raise ValueError(f"samples_per_epoch / samples_per_prompt = {n} prompts do not split over {world_size} processes")
        return n // world_size

    # -- compute: equal in images, not in updates ----------------------------------------------
    def compute_exception(self):
        return ComputeException("lasro-surrogate-steps", "gen_steps generator steps per epoch back-propagate a learned surrogate through their own fresh "
                                "1–2 step rollouts, alternating K_gen:K_surr with surrogate steps (Jia et al., Fig. 3); equal in images (budget), not updates")

    def update_schedule(self, num_steps, world_size=1, seed=0):
        return [self.config.gen_batch_size * world_size] * self.config.gen_steps  # gen_batch_size is per process

    def images_per_epoch(self, world_size=1):
        return self.config.samples_per_epoch + self.config.gen_steps * self.config.gen_batch_size * world_size

    def images_before_training(self, world_size=1):  # stage 1: _sample_frozen's pretraining and held-out prompts × N_s
        return sum(math.ceil(n / world_size) * world_size * self.samples_per_prompt for n in (self.config.pretrain_prompts, self.config.heldout_prompts))

    def reward_queries(self, traj, generator):
        """z1 and z2 of every rollout sample (both train the surrogate)."""
        b, t = traj.batch_size, traj.num_steps
        rows = torch.arange(b)
        if t == 1:
            return rows, torch.zeros(b, dtype=torch.long)
        return torch.cat([rows, rows]), torch.cat([torch.zeros(b, dtype=torch.long), torch.full((b,), t - 1, dtype=torch.long)])

    # -- setup and state ----------------------------------------------------------------------
    def setup(self, trainer) -> None:
        c = self.config
        model = trainer.model
        seed = int(trainer.config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 7919 + 11)
            time_cond = model.w_embedding(1) if hasattr(model, "w_embedding") else None
            self.surrogate = LatentSurrogate(model.unet, c.head_channels, c.surrogate_timestep, time_cond, c.head_pool).to(trainer.device)
            if c.surrogate_backbone == "lora":
                from peft import LoraConfig, inject_adapter_in_model

                inject_adapter_in_model(LoraConfig(r=c.surrogate_lora_rank, lora_alpha=c.surrogate_lora_rank, target_modules=list(c.surrogate_lora_targets)), self.surrogate)
        s = self.surrogate
        for n, p in s.named_parameters():
            trainable = n.startswith("head.") or c.surrogate_backbone == "full" or (c.surrogate_backbone == "lora" and "lora_" in n)
            p.requires_grad_(trainable)
            p.data = p.data.float()
        self._trainable = [n for n, p in s.named_parameters() if p.requires_grad]
        head = [p for n, p in s.named_parameters() if p.requires_grad and n.startswith("head.")]
        body = [p for n, p in s.named_parameters() if p.requires_grad and not n.startswith("head.")]
        groups = [{"params": head, "lr": c.surrogate_lr_head}] + ([{"params": body, "lr": c.surrogate_lr_backbone}] if body else [])
        self.surrogate_optimizer = torch.optim.AdamW(groups, weight_decay=c.surrogate_weight_decay)
        self.buffer = ReplayBuffer(c.buffer_size)
        self.heldout = ReplayBuffer(10**9)
        self.norm = {k: ScoreNormalizer(c.norm_ema, c.norm_floor, c.norm_clip) for k in ("z1", "z2")}
        self.rng = np.random.default_rng([seed, 7, 11])  # the same on every process (the buffer is global)
        self.pretrained = False
        self.counts = {"pretrain_samples": 0, "surrogate_steps": 0, "generator_steps": 0}
        self._embed_cache: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        if self.surrogate is None:
            return {}
        sd = self.surrogate.state_dict()
        return {
            "surrogate": {n: sd[n].detach().cpu().clone() for n in self._trainable},
            "surrogate_optimizer": self.surrogate_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(), "heldout": self.heldout.state_dict(),
            "norm": {k: v.state_dict() for k, v in self.norm.items()},
            "rng": self.rng.bit_generator.state, "pretrained": self.pretrained, "counts": dict(self.counts),
        }

    def replicated_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.surrogate.parameters() if p.requires_grad] if self.surrogate is not None else []

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        missing = set(self._trainable) - set(state["surrogate"])
        if missing:
            raise ValueError(f"LaSRO checkpoint lacks surrogate weights {sorted(missing)[:3]}: it was written with another surrogate_backbone")
        self.surrogate.load_state_dict(state["surrogate"], strict=False)
        self.surrogate_optimizer.load_state_dict(state["surrogate_optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.heldout.load_state_dict(state["heldout"])
        for k, v in state["norm"].items():
            self.norm[k].load_state_dict(v)
        self.rng.bit_generator.state = state["rng"]
        self.pretrained = bool(state["pretrained"])
        self.counts = dict(state["counts"])

    # -- helpers ------------------------------------------------------------------------------
    def embeds(self, model, prompts) -> torch.Tensor:
        """Prompt embeddings of the generator's (frozen) text encoder, cached per prompt."""
        todo = sorted({p for p in prompts if p not in self._embed_cache})
        if todo:
            for p, e in zip(todo, model.encode_prompts(todo)):
                self._embed_cache[p] = e.detach()
        return torch.stack([self._embed_cache[p] for p in prompts])

    def surrogate_scores(self, trainer, latents: torch.Tensor, prompts, chunk: int = 256) -> torch.Tensor:
        """R_ψ of stored latents, no grad, on CPU."""
        out = []
        with torch.no_grad(), trainer.accelerator.autocast():
            for i in range(0, latents.shape[0], chunk):
                z = latents[i:i + chunk].to(trainer.device)
                out.append(self.surrogate(z, self.embeds(trainer.model, prompts[i:i + chunk])).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def buffer_accuracy(self, trainer, buf: ReplayBuffer) -> float:
        if len(buf) == 0:
            return float("nan")
        w, l = ranked_pairs(buf.group_ids(), buf.rewards, self.config.tie_margin)
        scores = self.surrogate_scores(trainer, buf.latents, [buf.prompts[i] for i in buf.prompt_ids.tolist()])
        return pairwise_accuracy(scores, w, l)

    def _gather_scored(self, trainer, traj: Trajectory, rows, steps, values):
        """(latents, rewards, prompts, kinds) of this epoch's scored samples from every process."""
        t = traj.num_steps
        lat = traj.pred_x0[rows, steps].detach().float()
        prompts = [traj.prompts[i] for i in rows.tolist()]
        kinds = torch.where(steps == t - 1, 1, 0) if t > 1 else torch.ones_like(steps)
        all_lat, all_prompts, _ = trainer.gather(lat, prompts)
        all_vals, _, _ = trainer.gather(values.float(), prompts)
        all_kinds, _, _ = trainer.gather(kinds, prompts)
        return all_lat, all_vals, all_prompts, all_kinds

    def _sample_frozen(self, trainer, n_prompts: int) -> tuple:
        """Stage-1 data: n_prompts prompts (every prompt of the set once before any twice) × N_s
        noises from the pretrained model, scored at z1 and z2."""
        model, k, world = trainer.model, self.samples_per_prompt, trainer.world
        per_proc = math.ceil(n_prompts / world)
        n_set = len(trainer.prompt_set)  # stratified: whole permutations of the prompt set first
        idx = np.concatenate([trainer.shared_rng.permutation(n_set) for _ in range(math.ceil(per_proc * world / n_set))])[:per_proc * world]
        mine = [trainer.prompt_set[i] for i in idx[trainer.rank * per_proc:(trainer.rank + 1) * per_proc]]
        prompts = [p for p in mine for _ in range(k)]
        parts = []
        bs = max(k, self.config.sample_batch_size // k * k)
        with torch.no_grad(), trainer.accelerator.autocast(), model.reference():
            for i in range(0, len(prompts), bs):
                parts.append(sample(model, prompts[i:i + bs], trainer.num_steps, self.config.eta, trainer.noise_gen))
        traj = Trajectory.cat(parts)
        rows, steps = self.reward_queries(traj, None)
        values = trainer.score(traj, rows, steps)
        trainer.count(samples=traj.batch_size, unet=traj.batch_size * traj.num_steps, phase="sampling")  # stage-1 images count (budget)
        self.counts["pretrain_samples"] += traj.batch_size * world
        return self._gather_scored(trainer, traj, rows, steps, values)

    # -- one surrogate step -------------------------------------------------------------------
    def _groups(self) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
        """The buffer's (prompt, kind) groups that hold a ranked pair: every group's item indices
        (replay), and for the groups with items of the newest samples, (newest, older) indices."""
        buf, margin = self.buffer, self.config.tie_margin
        if len(buf) == 0:
            return [], []
        keys, rewards, versions = buf.group_ids().numpy(), buf.rewards.numpy(), buf.versions.numpy()
        newest = versions.max()
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        replay, fresh = [], []
        for idx in np.split(order, bounds):
            if len(idx) > 1 and np.ptp(rewards[idx]) > margin:
                replay.append(idx)
                is_new = versions[idx] == newest
                if is_new.any():
                    fresh.append((idx[is_new], idx[~is_new]))
        return replay, fresh

    def _pick(self, group) -> np.ndarray:
        """≤ N_s items of a group: a replay group at random; a fresh group's newest items (up to
        half, more if it has no older ones) beside older ones of the same prompt, so that the
        newest samples are ranked against earlier generators' (what exposes reward hacking)."""
        k = self.samples_per_prompt
        if not isinstance(group, tuple):
            return group if len(group) <= k else self.rng.choice(group, size=k, replace=False)
        new, old = group
        n_new = min(len(new), max(k - len(old), (k + 1) // 2))
        n_old = min(len(old), k - n_new)
        parts = [self.rng.choice(new, size=n_new, replace=False)]
        if n_old:
            parts.append(self.rng.choice(old, size=n_old, replace=False))
        return np.concatenate(parts)

    def surrogate_step(self, trainer, groups) -> dict | None:
        """One Bradley–Terry step: ``groups_per_batch`` prompt groups (a ``fresh_fraction`` of them
        holding the newest samples, the rest from the whole buffer), ≤ N_s items of each, and the
        loss over every ranked pair inside each group. The buffer latents carry no graph, so only
        the surrogate receives gradients."""
        c = self.config
        replay, fresh = groups
        if not replay:
            return None
        g = c.groups_per_batch * trainer.world
        n_fresh = min(len(fresh), int(round(g * c.fresh_fraction)))
        chosen = [fresh[i] for i in self.rng.choice(len(fresh), size=n_fresh, replace=False)] if n_fresh else []
        chosen += [replay[i] for i in self.rng.integers(0, len(replay), size=g - n_fresh)]
        chosen = [self._pick(grp) for grp in chosen]
        chosen = chosen[trainer.rank * c.groups_per_batch:(trainer.rank + 1) * c.groups_per_batch]
        items = torch.as_tensor(np.concatenate(chosen), dtype=torch.long)
        local = torch.repeat_interleave(torch.arange(len(chosen)), torch.as_tensor([len(x) for x in chosen]))
        w, l = ranked_pairs(local, self.buffer.rewards[items], c.tie_margin)
        z = self.buffer.latents[items].to(trainer.device)
        prompts = [self.buffer.prompts[i] for i in self.buffer.prompt_ids[items].tolist()]
        if c.surrogate_noise_aug and c.surrogate_timestep > 0:
            a = trainer.model.alphas_cumprod[c.surrogate_timestep]
            eps = torch.as_tensor(self.rng.standard_normal(z.shape), dtype=torch.float32, device=z.device)
            z = a.sqrt() * z + (1 - a).sqrt() * eps
        s = self.surrogate
        s.train()
        self.surrogate_optimizer.zero_grad(set_to_none=True)
        with trainer.accelerator.autocast():
            scores = s(z, self.embeds(trainer.model, prompts)).float()
        loss = bradley_terry_loss(scores[w.to(scores.device)], scores[l.to(scores.device)]) if w.numel() else scores.sum() * 0
        loss.backward()
        params = [p for p in s.parameters() if p.requires_grad]
        distributed.average_gradients(trainer.accelerator, params)
        if c.surrogate_grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, c.surrogate_grad_clip)
        self.surrogate_optimizer.step()
        s.eval()
        self.counts["surrogate_steps"] += 1
        return {"loss": float(loss.detach()), "acc": pairwise_accuracy(scores.detach().cpu(), w, l), "pairs": float(w.numel())}

    def fit_surrogate(self, trainer, steps: int) -> dict:
        groups = self._groups()
        out = [r for r in (self.surrogate_step(trainer, groups) for _ in range(steps)) if r is not None]
        return {} if not out else {"surr_loss": float(np.mean([r["loss"] for r in out])), "surr_acc_train": float(np.nanmean([r["acc"] for r in out])),
                                   "surr_pairs_per_step": float(np.mean([r["pairs"] for r in out]))}

    # -- one generator step -------------------------------------------------------------------
    def _differentiable_sample(self, trainer, prompts) -> Trajectory:
        """The 1–2 step sampler with the graph kept; ``detach_between_steps`` stops the gradient at
        each re-noised state (then ∂R(z2)/∂θ flows only through the last UNet call)."""
        model, t = trainer.model, trainer.num_steps
        if not self.config.detach_between_steps:
            return sample(model, prompts, t, self.config.eta, trainer.noise_gen, grad=True)
        timesteps = model.timesteps(t)
        prev = previous_timesteps(model, timesteps)
        b = len(prompts)
        x = model.init_noise(b, trainer.noise_gen)
        embeds = model.encode_prompts(prompts)
        neg = model.negative_embeds(b)
        states, x0s = [x], []
        for i in range(t):
            eps, x0 = model.predict_noise(x, timesteps[i].expand(b), embeds, neg)
            mean, std = step_distribution(model, x, timesteps[i].expand(b), prev[i].expand(b), eps, x0, self.config.eta)
            z = torch.randn(x.shape, generator=trainer.noise_gen, dtype=torch.float32).to(model.device)
            x = (mean + std * z).detach()
            states.append(x)
            x0s.append(x0)
        return Trajectory(prompts=list(prompts), prompt_embeds=embeds, neg_embeds=neg, timesteps=timesteps, prev_timesteps=prev,
                          latents=torch.stack(states, 1), pred_x0=torch.stack(x0s, 1), log_probs=torch.full((b, t), float("nan")),
                          eta=float(self.config.eta), kernel="lcm" if model.kind == "lcm" else "ddim")

    def regulariser(self, trainer, traj: Trajectory) -> torch.Tensor:
        """L_reg = mean ‖f_θ(z_τ, τ, c) − f_θ0(z_τ, τ, c)‖² (per-element mean); f_θ0 = LoRA disabled."""
        c, model = self.config, trainer.model
        if c.reg_form == "none" or c.reg_weight == 0:
            return torch.zeros((), device=trainer.device)
        if c.reg_form == "trajectory":
            t = traj.num_steps
            x = traj.latents[:, :t].detach().flatten(0, 1)
            ts = traj.timesteps.repeat(traj.batch_size)
            emb = traj.prompt_embeds.repeat_interleave(t, 0)
            neg = traj.neg_embeds.repeat_interleave(t, 0) if traj.neg_embeds is not None else None
            with torch.no_grad(), model.reference():
                _, ref = model.predict_noise(x, ts, emb, neg)
            trainer.count(unet=x.shape[0])
            return ((traj.pred_x0.flatten(0, 1) - ref.detach()) ** 2).mean()
        if len(self.buffer) == 0:
            return torch.zeros((), device=trainer.device)
        n = c.reg_batch_size
        idx = self.rng.integers(0, len(self.buffer), size=n * trainer.world)[trainer.rank * n:(trainer.rank + 1) * n]
        z = self.buffer.latents[torch.as_tensor(idx)].to(trainer.device)
        prompts = [self.buffer.prompts[i] for i in self.buffer.prompt_ids[torch.as_tensor(idx)].tolist()]
        schedule = model.timesteps(trainer.num_steps)
        tau = schedule[torch.as_tensor(self.rng.integers(0, len(schedule), size=n), device=schedule.device)]
        a = model.alphas_cumprod[tau].view(-1, 1, 1, 1)
        eps = torch.as_tensor(self.rng.standard_normal(z.shape), dtype=torch.float32, device=z.device)
        z_tau = a.sqrt() * z + (1 - a).sqrt() * eps
        emb = self.embeds(model, prompts)
        neg = model.negative_embeds(n)
        _, f = model.predict_noise(z_tau, tau, emb, neg)
        with torch.no_grad(), model.reference():
            _, f0 = model.predict_noise(z_tau, tau, emb, neg)
        trainer.count(unet=2 * n, unet_backward=n * (2 if model.uses_cfg else 1))  # f with grad, f_θ0 without
        return ((f - f0.detach()) ** 2).mean()

    def generator_step(self, trainer) -> dict:
        """One optimiser step of L_gen through the differentiable sampler; R_ψ frozen."""
        c, model = self.config, trainer.model
        n = c.gen_batch_size
        idx = trainer.shared_rng.integers(0, len(trainer.prompt_set), size=n * trainer.world)[trainer.rank * n:(trainer.rank + 1) * n]
        prompts = [trainer.prompt_set[i] for i in idx]
        s = self.surrogate
        flags = [p.requires_grad for p in s.parameters()]
        s.requires_grad_(False)
        s.eval()
        trainer.optimizer.zero_grad(set_to_none=True)
        try:
            with trainer.accelerator.autocast():
                traj = self._differentiable_sample(trainer, prompts)
                trainer.count(samples=n, unet=n * traj.num_steps, grad=True)  # the generator's own rollouts count as samples
                enc = self.embeds(model, prompts)
                terms = {"z2": (traj.pred_x0[:, -1], c.reward_weight_z2)}
                if c.objective == "z1z2" and traj.num_steps > 1:
                    terms["z1"] = (traj.pred_x0[:, 0], c.reward_weight_z1)
                reward_term = 0.0
                info = {}
                for key, (z, weight) in terms.items():
                    r = s(z, enc)
                    reward_term = reward_term + weight * self.norm[key](r).mean()
                    info[f"surr_gen_{key}"] = float(r.detach().mean())
                reg = self.regulariser(trainer, traj)
                loss = c.reg_weight * reg - reward_term
            loss.backward()
        finally:
            for p, f in zip(s.parameters(), flags):
                p.requires_grad_(f)
        warm = min(1.0, (self.counts["generator_steps"] + 1) / c.gen_warmup_steps) if c.gen_warmup_steps > 0 else 1.0
        lrs = [g["lr"] for g in trainer.optimizer.param_groups]
        for g in trainer.optimizer.param_groups:
            g["lr"] *= warm
        try:
            grad_norm = trainer.optimizer_step()
        finally:
            for g, lr in zip(trainer.optimizer.param_groups, lrs):
                g["lr"] = lr
        self.counts["generator_steps"] += 1
        # "loss" is the generator objective: the trainer logs it (and shows it) as every algorithm's loss
        info.update({"loss": float(loss.detach()), "reg": float(reg.detach())})
        if grad_norm is not None:
            info["grad_norm"] = grad_norm
        return info

    # -- stage 1 ------------------------------------------------------------------------------
    def pretrain(self, trainer) -> dict:
        """Stage 1: score N_s samples per prompt of the frozen model, fill the buffer (and the
        held-out set), fit the surrogate for ``pretrain_steps`` steps."""
        c = self.config
        t0 = time.perf_counter()
        lat, vals, prompts, kinds = self._sample_frozen(trainer, c.pretrain_prompts)
        self.buffer.push(lat, vals, prompts, kinds, version=0)
        if c.heldout_prompts > 0:
            lat, vals, prompts, kinds = self._sample_frozen(trainer, c.heldout_prompts)
            self.heldout.push(lat, vals, prompts, kinds, version=0)
        out = self.fit_surrogate(trainer, c.pretrain_steps)
        self.pretrained = True
        out["surr_acc_pretrain"] = self.buffer_accuracy(trainer, self.heldout)
        out["seconds_pretrain"] = time.perf_counter() - t0
        return out

    # -- the epoch ----------------------------------------------------------------------------
    def update_epoch(self, trainer, traj, rows, steps, rewards) -> dict:
        c = self.config
        stats: dict[str, list[float]] = {}
        add = lambda d: [stats.setdefault(k, []).append(v) for k, v in d.items()]  # noqa: E731
        if not self.pretrained:  # stage 1, lazily on the first epoch
            add(self.pretrain(trainer))
        version = trainer.epoch + 1
        lat, vals, prompts, kinds = self._gather_scored(trainer, traj, rows, steps, rewards)
        # held-out accuracy on the newest generator's samples, before the surrogate sees them
        fresh = ReplayBuffer(10**9)
        fresh.push(lat, vals, prompts, kinds, version)
        scores = self.surrogate_scores(trainer, fresh.latents, prompts)
        w, l = ranked_pairs(fresh.group_ids(), fresh.rewards, c.tie_margin)
        for k, name in ((0, "z1"), (1, "z2")):
            mask = fresh.kinds == k
            if mask.any():
                stats[f"surr_rollout_{name}"] = [float(scores[mask].mean())]
                acc = pairwise_accuracy(scores, w[fresh.kinds[w] == k], l[fresh.kinds[w] == k])
                if not math.isnan(acc):
                    stats[f"surr_acc_fresh_{name}"] = [acc]
        if c.surrogate_mode == "online":
            if c.buffer == "on_policy":
                self.buffer.clear()
            self.buffer.push(lat, vals, prompts, kinds, version)
        for done in range(0, c.gen_steps, max(1, c.k_gen)):  # rounds: K_surr surrogate steps, then ≤ K_gen generator steps
            if c.surrogate_mode == "online" and c.k_surr > 0:
                add(self.fit_surrogate(trainer, c.k_surr))
            for _ in range(min(c.k_gen, c.gen_steps - done)):
                add(self.generator_step(trainer))
        acc = self.buffer_accuracy(trainer, self.heldout)
        if not math.isnan(acc):
            stats["surr_acc_heldout"] = [acc]
        stats["buffer_size"] = [float(len(self.buffer))]
        stats.update({k: [float(v)] for k, v in self.counts.items()})
        for k in ("z1", "z2"):
            if self.norm[k].mean is not None:
                stats[f"norm_mean_{k}"], stats[f"norm_scale_{k}"] = [self.norm[k].mean], [max(self.norm[k].dev, c.norm_floor)]
        return {k: float(np.mean(v)) for k, v in stats.items()}
