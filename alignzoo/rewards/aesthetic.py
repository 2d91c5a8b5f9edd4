"""LAION improved aesthetic predictor: an MLP over L2-normalised CLIP ViT-L/14 image embeddings.

The reward of DDPO, D3PO, SDPO, RLCM and TRL. The MLP is 768 -> 1024 -> 128 -> 64 -> 16 -> 1
with dropouts 0.2 / 0.2 / 0.1 (inactive at eval) and no nonlinearity, stored as an
``nn.Sequential`` called ``layers`` (state-dict keys ``layers.0.weight`` ... ``layers.7.bias``),
as in the official ``sac+logos+ava1-l14-linearMSE.pth``. The image embedding is CLIP's projected
image embedding (``openai/clip-vit-large-patch14``), divided by its L2 norm. Scores lie on the
AVA 1–10 scale; Stable Diffusion images typically score 4.5–7.

Weights:
  * CLIP: ``clip_path=`` / ``ALIGNZOO_CLIP_L14`` (a transformers folder), else the hub id
    ``openai/clip-vit-large-patch14``. Only the vision tower is loaded.
  * MLP: ``weights=`` / ``ALIGNZOO_AESTHETIC_MLP`` (the ``.pth`` file, or a folder holding
    ``sac+logos+ava1-l14-linearMSE.pth`` or ``aesthetic-model.pth``), else the hub file
    ``aesthetic-model.pth`` of ``trl-lib/ddpo-aesthetic-predictor`` (TRL's copy of the predictor).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from alignzoo.hf import quiet
from alignzoo.hub import MissingWeightsError, resolve_file
from alignzoo.rewards.base import Reward, register_reward
from alignzoo.rewards.preprocess import ImageTransform, freeze, load_checkpoint, parse_dtype, resolve_hf_model, unwrap_state_dict

CLIP_L14_ID = "openai/clip-vit-large-patch14"
CLIP_ENV = "ALIGNZOO_CLIP_L14"
MLP_ENV = "ALIGNZOO_AESTHETIC_MLP"
MLP_REPO = "trl-lib/ddpo-aesthetic-predictor"
MLP_HUB_FILE = "aesthetic-model.pth"
MLP_OFFICIAL_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticMLP(nn.Module):
    """The LAION predictor head (linear layers only; the dropouts are identity at eval)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)


def resolve_aesthetic_mlp(weights: str | os.PathLike | None = None) -> Path:
    """The MLP file: ``weights`` / $ALIGNZOO_AESTHETIC_MLP (file or folder), else the hub."""
    local = weights or os.environ.get(MLP_ENV)
    if local and Path(local).is_dir():
        for name in (MLP_OFFICIAL_FILE, MLP_HUB_FILE):
            if (Path(local) / name).is_file():
                return Path(local) / name
        raise MissingWeightsError(
            f"aesthetic MLP folder {str(local)!r} holds neither {MLP_OFFICIAL_FILE!r} nor {MLP_HUB_FILE!r}; "
            f"pass the .pth file itself with `weights=` (CLI `--weights`) or {MLP_ENV}"
        )
    return resolve_file(MLP_REPO, MLP_HUB_FILE, what="aesthetic MLP", option="`weights=` (CLI `--weights`)", env_var=MLP_ENV, local_path=weights)


def load_aesthetic_mlp(path: str | os.PathLike) -> AestheticMLP:
    """Loads ``sac+logos+ava1-l14-linearMSE.pth`` (or TRL's copy) with ``weights_only=True``."""
    sd = unwrap_state_dict(load_checkpoint(path, "aesthetic MLP"))
    if "layers.0.weight" not in sd:
        raise ValueError(f"{str(path)!r} is not a LAION aesthetic MLP state dict (no 'layers.0.weight'; keys: {sorted(sd)[:6]}...)")
    mlp = AestheticMLP(int(sd["layers.0.weight"].shape[1]))
    mlp.load_state_dict(sd, strict=True)
    return mlp


def load_clip_vision(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``CLIPVisionModelWithProjection`` from a full CLIP folder (the text tower is skipped).

    A full CLIP config keeps ``projection_dim`` at the top level, so it is copied into the vision
    config (otherwise transformers builds a 512-wide projection and re-initialises it).
    """
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") == "clip":
        full = CLIPConfig.from_pretrained(folder)
        config = full.vision_config
        config.projection_dim = full.projection_dim
    else:
        config = CLIPVisionConfig.from_pretrained(folder)
    with quiet("transformers", ignore_warnings=True):
        model, info = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, dtype=dtype, output_loading_info=True)
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        raise ValueError(f"CLIP vision weights in {str(folder)!r} are incomplete: missing/mismatched {missing[:8]}")
    return model


def clip_transform(folder: str | os.PathLike, crop_rounding: str = "floor") -> ImageTransform:
    """The image transform of a CLIP folder's ``preprocessor_config.json`` (CLIP defaults if absent)."""
    cfg = Path(folder) / "preprocessor_config.json"
    if cfg.is_file():
        return ImageTransform.from_processor_config(cfg, crop_rounding=crop_rounding)
    return ImageTransform(crop_rounding=crop_rounding)


@register_reward("aesthetic", "LAION improved aesthetic predictor (CLIP ViT-L/14 + MLP), AVA 1-10 scale")
class AestheticReward(Reward):
    """LAION aesthetic score of each image (prompt-independent)."""

    reads_prompt = False
    weights_source = f"{CLIP_L14_ID} + {MLP_OFFICIAL_FILE} (hub copy: {MLP_REPO}/{MLP_HUB_FILE})"
    supports_grad = True
    feature_space = "clip-vit-l-14"  # OpenAI CLIP ViT-L/14's projected image embedding

    def __init__(
        self,
        device=None,
        differentiable: bool = False,
        weights: str | os.PathLike | None = None,
        clip_path: str | os.PathLike | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        super().__init__(device=device, differentiable=differentiable)
        self.dtype = parse_dtype(dtype)
        mlp_path = resolve_aesthetic_mlp(weights)
        clip_folder = resolve_hf_model(
            CLIP_L14_ID, what="CLIP ViT-L/14", option="`clip_path=` (CLI `--option clip_path=PATH`)", env_var=CLIP_ENV, local_path=clip_path
        )
        self.mlp = freeze(load_aesthetic_mlp(mlp_path))
        self.clip = freeze(load_clip_vision(clip_folder, self.dtype))
        proj = self.clip.config.projection_dim
        if proj != self.mlp.input_size:
            raise ValueError(f"the aesthetic MLP takes {self.mlp.input_size}-d embeddings but the CLIP model gives {proj}-d")
        self.transform = clip_transform(clip_folder, crop_rounding="floor")
        self.to(self._device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (float32) of [0, 1] images."""
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        emb = self.clip(pixel_values=pixels).image_embeds.float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.mlp(self.embed(images)).to(images.device)
