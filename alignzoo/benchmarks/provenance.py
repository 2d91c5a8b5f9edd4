"""Evaluation provenance: what determines an evaluation number, and a hash of it.

Every evaluation line carries ``provenance`` (a dict), ``hash`` (first 16 hex characters of the
SHA-256 of its canonical JSON) and ``setting_hash`` (the same without ``lora_checksum``: what
must agree between the lines of one table column, the pretrained model's included). Keys:

  model, model_checksum      the model's name and a checksum of its UNet, VAE and text encoder
  lora_checksum              the LoRA adapter's weights at evaluation time (null: no adapter)
  reward, reward_checksum    the reward's name and a checksum of its weights (null: weightless)
  reward_args                the suite's keyword arguments of the reward
  steps, eta, guidance, resolution, scheduler, timesteps
                             how images are sampled (``timesteps``: the N-step schedule used, so
                             a change of spacing or LCM schedule shows even under one name)
  prompt_set, prompts_checksum, images_per_prompt, noise_seed
                             which prompts and initial noise (the noise depends on the seed, the
                             prompt set's name and the sizes: ``evaluation.evaluation_noise``)
  batch_size                 only when eta > 0: the stochastic steps' generators are seeded per batch

Checksums are SHA-256 over the tensors' names, dtypes, shapes and bytes (not over files, so a
model built in memory and the same weights in another folder agree). The model and reward
checksums are computed once per loaded object and cached on it; the LoRA checksum is computed at
every evaluation point, so two points of one cell differ in ``hash`` but not in ``setting_hash``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping, Sequence

import torch

_MODEL_CACHE = "_alignzoo_model_checksum"
_REWARD_CACHE = "_alignzoo_reward_checksum"


def tensor_checksum(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 (hex) of (name, dtype, shape, bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda kv: kv[0]):
        t = t.detach()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        # uint8 view: bytes of any dtype (bf16 has no numpy type); contiguous undoes channels_last
        h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _base_weights(module: torch.nn.Module, prefix: str):
    """The module's base weights: LoRA tensors skipped, PEFT's ``.base_layer`` wrapping removed
    (so the checksum is the same before and after an adapter is attached)."""
    for name, t in module.state_dict().items():
        if "lora_" in name:
            continue
        yield f"{prefix}.{name.replace('.base_layer', '')}", t


def model_checksum(model) -> str:
    """Checksum of the base UNet, VAE and text encoder weights; cached on the model object
    (the zoo fine-tunes through LoRA only, so the base weights never change after loading)."""
    cached = getattr(model, _MODEL_CACHE, None)
    if cached is None:
        named = [kv for part in ("unet", "vae", "text_encoder") for kv in _base_weights(getattr(model, part), part)]
        cached = tensor_checksum(named)
        setattr(model, _MODEL_CACHE, cached)
    return cached


def lora_checksum(model) -> str | None:
    """Checksum of the LoRA adapter's current weights and scale (rank, alpha), or None."""
    cfg = getattr(model, "lora_config", None)
    if cfg is None:
        return None
    named = [(n, p) for n, p in model.unet.named_parameters() if "lora_" in n]
    scale = torch.tensor([float(cfg.r), float(cfg.lora_alpha)], dtype=torch.float64)
    return tensor_checksum(named + [("lora_scale", scale)])


def reward_checksum(reward: torch.nn.Module) -> str | None:
    """Checksum of the reward's parameters and buffers (None for a weightless reward); cached."""
    cached = getattr(reward, _REWARD_CACHE, False)
    if cached is False:
        sd = reward.state_dict()
        cached = tensor_checksum(sd.items()) if sd else None
        setattr(reward, _REWARD_CACHE, cached)
    return cached


def prompts_checksum(prompts: Sequence[str]) -> str:
    """SHA-256 (hex) of the prompt list's canonical JSON (order and exact text count)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=True).encode()).hexdigest()


def scheduler_name(model) -> str:
    """``ddim-<spacing>`` for the DDIM kernel, ``lcm`` (``lcm-<schedule>`` if the model names one)."""
    sched = model.scheduler
    if getattr(model, "kind", "sd") == "lcm":
        schedule = getattr(model, "lcm_schedule", None) or getattr(getattr(model, "spec", None), "lcm_schedule", None)
        return f"lcm-{schedule}" if schedule else "lcm"
    base = type(sched).__name__.removesuffix("Scheduler").lower()
    spacing = getattr(sched.config, "timestep_spacing", None)
    return f"{base}-{spacing}" if spacing else base


def _plain(value):
    """JSON-plain copy (tuples to lists, paths and other objects to strings)."""
    return json.loads(json.dumps(value, default=str))


def canonical_hash(data: Mapping) -> str:
    """First 16 hex characters of SHA-256 of the canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hashes(provenance: Mapping) -> dict:
    """``{"hash": ..., "setting_hash": ...}`` of a provenance dict."""
    setting = {k: v for k, v in provenance.items() if k != "lora_checksum"}
    return {"hash": canonical_hash(provenance), "setting_hash": canonical_hash(setting)}


class ProvenanceBuilder:
    """Builds the provenance of every line of one evaluation point.

    ``model_fields`` (model name and checksums) is computed once per point; ``line`` adds the
    reward, step count and prompt set of one line.
    """

    def __init__(
        self,
        model,
        rewards: Mapping[str, torch.nn.Module],
        reward_args: Mapping[str, Mapping],
        prompt_sets: Mapping[str, Sequence[str]],
        images_per_prompt: int,
        eta: float,
        noise_seed: int,
        batch_size: int,
    ):
        self.model = model
        self.common = {
            "model": getattr(getattr(model, "spec", None), "name", None),
            "model_checksum": model_checksum(model),
            "lora_checksum": lora_checksum(model),
            "eta": float(eta),
            "guidance": float(model.guidance_scale),
            "resolution": int(model.resolution),
            "scheduler": scheduler_name(model),
            "images_per_prompt": int(images_per_prompt),
            "noise_seed": int(noise_seed),
        }
        if float(eta) != 0.0:
            self.common["batch_size"] = int(batch_size)
        self.rewards = {
            name: {"reward": name, "reward_checksum": reward_checksum(r), "reward_args": _plain(dict(reward_args.get(name, {})))} for name, r in rewards.items()
        }
        self.prompts = {name: prompts_checksum(p) for name, p in prompt_sets.items()}
        self._timesteps: dict[int, list[int]] = {}

    def timesteps(self, steps: int) -> list[int]:
        if steps not in self._timesteps:
            self._timesteps[steps] = [int(t) for t in self.model.timesteps(int(steps)).tolist()]
        return self._timesteps[steps]

    def line(self, prompt_set: str, reward: str, steps: int) -> dict:
        """``{"provenance": ..., "hash": ..., "setting_hash": ...}`` for one evaluation line."""
        prov = {
            **self.common,
            **self.rewards[reward],
            "steps": int(steps),
            "timesteps": self.timesteps(steps),
            "prompt_set": prompt_set,
            "prompts_checksum": self.prompts[prompt_set],
        }
        return {"provenance": prov, **hashes(prov)}
