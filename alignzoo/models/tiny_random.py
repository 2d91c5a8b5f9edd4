"""Tiny random-weight pipelines in the real SD / LCM folder layouts, built from configs.

Used by tests (the adapters must load exactly what ``save_pretrained`` writes) and as a
template for the tiny world. Nothing is downloaded: the tokenizer is a hand-written CLIP BPE.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignzoo.models.base import diffusers_pipeline

WORDS = ["a", "an", "the", "red", "green", "blue", "cat", "dog", "circle", "square", "on", "left", "right", "photo", "of"]


def write_word_tokenizer(folder: Path, words, max_length: int = 16):
    """A CLIPTokenizer whose BPE merges form each word as a single token."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = {}, []

    def add(tok):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for c in "abcdefghijklmnopqrstuvwxyz":
        add(c)
        add(c + "</w>")
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in [tuple(m.split()) for m in merges[-0:]] and f"{parts[0]} {parts[1]}" not in merges:
                merges.append(f"{parts[0]} {parts[1]}")
            add(merged)
            parts = [merged] + parts[2:]
    add("<|startoftext|>")
    add("<|endoftext|>")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def build_tiny_pipeline(folder, kind: str = "sd", seed: int = 0, sample_size: int = 8, vae_downsamples: int = 1) -> Path:
    """Writes a random tiny SD (DDIM, trailing) or LCM (LCMScheduler, w-embedding) pipeline."""
    from diffusers import DDIMScheduler, LCMScheduler

    folder = Path(folder)
    torch.manual_seed(seed)  # the text encoder, VAE and UNet draw their weights in this order
    tok = write_word_tokenizer(folder / "tokenizer", WORDS)
    text_encoder, vae, unet = _tiny_text_encoder(tok), _tiny_vae(vae_downsamples), _tiny_unet(sample_size, lcm=kind == "lcm")
    schedule = dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    if kind == "lcm":
        scheduler = LCMScheduler(original_inference_steps=50, timestep_spacing="leading", **schedule)
    else:
        scheduler = DDIMScheduler(timestep_spacing="trailing", **schedule)
    diffusers_pipeline(kind, vae, text_encoder, tok, unet, scheduler).save_pretrained(folder)
    return folder


def _tiny_text_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return CLIPTextModel(config)


def _tiny_vae(downsamples: int):
    from diffusers import AutoencoderKL

    blocks = (16,) + (32,) * downsamples
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=blocks, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(blocks), up_block_types=("UpDecoderBlock2D",) * len(blocks), norm_num_groups=8,
    )  # fmt: skip


def _tiny_unet(sample_size: int, lcm: bool):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8, time_cond_proj_dim=32 if lcm else None,
    )  # fmt: skip
