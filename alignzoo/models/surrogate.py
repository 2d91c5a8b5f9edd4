"""LaSRO's latent surrogate reward R_ψ(z, c) (Jia et al., arXiv 2411.15247; LASRO_NOTES.md §2): the
pretrained UNet's own encoder — conv_in, time embedding, down blocks and mid block, prompt-conditioned
through their cross-attention — evaluated on a clean latent at a fixed timestep t_s, then a conv head
Conv3×3(C→h1)+SiLU → Conv3×3(h1→h2, stride 2)+SiLU → global average pool → Linear(h2→1). The backbone
is a *copy* of the pretrained weights (the generator's LoRA stripped): the surrogate is trained at
other times, with other optimisers and (backbone "full") on all its weights, so it cannot share
modules with the generator's UNet; only the generator's own reference uses ``model.reference()`` (no
second generator copy).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

BACKBONES = ("full", "lora", "frozen")  # which backbone weights train: all, a LoRA on them, none


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
            nn.Conv2d(channels, h1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(h1, h2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
            nn.Linear(h2 * pool * pool, 1),
        )
        self.register_buffer("timestep", torch.tensor(int(timestep), dtype=torch.long), persistent=False)
        self.register_buffer("time_cond", None if time_cond is None else time_cond.detach().float().reshape(1, -1).clone(), persistent=False)

    def optimizer_groups(self, lr_head: float, lr_backbone: float) -> list[dict]:
        """The trainable weights as optimiser groups: the head's, then the backbone's (if any train)."""
        head = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("head.")]
        body = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("head.")]
        return [{"params": head, "lr": lr_head}] + ([{"params": body, "lr": lr_backbone}] if body else [])

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


def build_surrogate(model, device, *, init_seed: int, backbone: str, head_channels, timestep: int, pool: int, lora_rank: int, lora_targets) -> LatentSurrogate:
    """R_ψ over ``model``'s UNet, in float32 on ``device``. The new weights (head, and a "lora"
    backbone's adapters) are drawn from torch's RNG seeded with ``init_seed`` inside a forked RNG
    state, so the run's own torch draws do not move. ``backbone`` = "full" | "lora" | "frozen" picks
    which backbone weights train (the head always trains)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        time_cond = model.w_embedding(1) if hasattr(model, "w_embedding") else None
        surrogate = LatentSurrogate(model.unet, head_channels, timestep, time_cond, pool).to(device)
        if backbone == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(lora_targets)), surrogate)
    for n, p in surrogate.named_parameters():
        p.requires_grad_(n.startswith("head.") or backbone == "full" or (backbone == "lora" and "lora_" in n))
        p.data = p.data.float()
    return surrogate
