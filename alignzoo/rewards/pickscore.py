"""PickScore v1 (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Official score (default): ``logit_scale.exp() * cos(image_embedding, text_embedding)`` with the
model ``yuvalkirstain/PickScore_v1`` (transformers ``CLIPModel``) and the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (tokenizer: 77 tokens; images: shortest side 224
bicubic, center crop 224, OpenAI CLIP mean/std). Typical values are about 18–23 (logit scale
≈ 100).

``sdpo_variant=True`` reproduces SDPO's scorer: the processor of ``openai/clip-vit-large-patch14``
and no logit scale, i.e. the bare cosine (≈ 0.18–0.23). The two processors have the same image
settings and a CLIP BPE tokenizer each, so in practice the variant differs by the factor
``logit_scale.exp()`` only.

Weights: ``weights=`` / ``ALIGNZOO_PICKSCORE`` (a transformers folder), else the hub; the
processor folder from ``processor_path=`` / ``ALIGNZOO_PICKSCORE_PROCESSOR`` (official) or
``ALIGNZOO_CLIP_L14`` (SDPO variant), else the hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from alignzoo.hf import quiet
from alignzoo.hub import resolve_snapshot
from alignzoo.rewards.base import Reward, register_reward
from alignzoo.rewards.preprocess import ImageTransform, check_tokenizer, freeze, parse_dtype, resolve_hf_model

PICKSCORE_ID = "yuvalkirstain/PickScore_v1"
PICKSCORE_ENV = "ALIGNZOO_PICKSCORE"
PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROCESSOR_ENV = "ALIGNZOO_PICKSCORE_PROCESSOR"
SDPO_PROCESSOR_ID = "openai/clip-vit-large-patch14"
SDPO_PROCESSOR_ENV = "ALIGNZOO_CLIP_L14"
MAX_TEXT_LENGTH = 77


def load_clip_model(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    from transformers import CLIPModel

    with quiet("transformers", ignore_warnings=True):
        model, info = CLIPModel.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    missing = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if missing:
        raise ValueError(f"CLIP weights in {str(folder)!r} are incomplete: missing/mismatched {missing[:8]}")
    return model


def resolve_processor(processor_path: str | os.PathLike | None, sdpo_variant: bool) -> Path:
    model_id, env = (SDPO_PROCESSOR_ID, SDPO_PROCESSOR_ENV) if sdpo_variant else (PROCESSOR_ID, PROCESSOR_ENV)
    return resolve_snapshot(
        model_id,
        ["preprocessor_config.json", "tokenizer_config.json"],
        what="CLIP processor",
        option="`processor_path=` (CLI `--option processor_path=PATH`)",
        env_var=env,
        local_path=processor_path,
        allow_patterns=["*.json", "*.txt"],
    )


@register_reward("pickscore", "PickScore v1: logit_scale * CLIP-H cosine (~18-23); sdpo_variant=True for SDPO's cosine")
class PickScoreReward(Reward):
    """PickScore of each (image, prompt)."""

    reads_prompt = True
    weights_source = f"{PICKSCORE_ID} + processor {PROCESSOR_ID}"
    supports_grad = True
    feature_space = "pickscore-clip-vit-h-14"  # PickScore's fine-tuned CLIP-H image embedding

    def __init__(
        self,
        device=None,
        differentiable: bool = False,
        weights: str | os.PathLike | None = None,
        processor_path: str | os.PathLike | None = None,
        sdpo_variant: bool = False,
        dtype: str | torch.dtype | None = None,
    ):
        super().__init__(device=device, differentiable=differentiable)
        from transformers import AutoTokenizer

        self.sdpo_variant = bool(sdpo_variant)
        self.dtype = parse_dtype(dtype)
        folder = resolve_hf_model(PICKSCORE_ID, what="PickScore", option="`weights=` (CLI `--weights`)", env_var=PICKSCORE_ENV, local_path=weights)
        proc = resolve_processor(processor_path, self.sdpo_variant)
        self.model = freeze(load_clip_model(folder, self.dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(str(proc))
        check_tokenizer(self.tokenizer, what="PickScore (CLIP)", folder=proc, max_ids=self.model.config.text_config.vocab_size)
        self.max_length = min(MAX_TEXT_LENGTH, int(self.model.config.text_config.max_position_embeddings))
        self.transform = ImageTransform.from_processor_config(proc / "preprocessor_config.json", crop_rounding="floor")
        self.to(self._device)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        emb = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_embeds(images)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        t = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.text_model(input_ids=t["input_ids"].to(self.device), attention_mask=t["attention_mask"].to(self.device))
        emb = self.model.text_projection(out.pooler_output).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        cos = (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)
        if not self.sdpo_variant:
            cos = self.model.logit_scale.exp().float() * cos
        return cos.to(images.device)
