"""The tiny world's diffusers components: builders of the VAE, UNet and CLIP text encoder, the
DDIM and LCM schedulers over SD's training noise schedule, and pipelines that bundle them.

Both worlds use these (the compositional one with 8 latent channels); every builder draws its
initial weights from torch's global RNG, so callers seed before building.
"""

from __future__ import annotations

import torch

from alignzoo.models.base import diffusers_pipeline

# SD 1.x / SD-Turbo's training noise schedule: the training loss and both samplers share it
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
TRAIN_TIMESTEPS = NOISE_SCHEDULE["num_train_timesteps"]
_SAMPLER_SCHEDULE = dict(NOISE_SCHEDULE, prediction_type="epsilon", clip_sample=False, steps_offset=1)
# LCMScheduler's distillation grid (50 steps: 19, 39, ..., 999) and its boundary-condition timestep scale
LCM_ORIGINAL_STEPS = 50
TIMESTEP_SCALING = 10.0


def build_vae(latent_channels: int = 4):
    """``AutoencoderKL`` 32x32x3 <-> ``latent_channels`` x 8x8 (two downsamples)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
    )


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(cfg)


def build_unet(time_cond_proj_dim: int | None = None, latent_channels: int = 4, block_out_channels: tuple = (32, 64)):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=32,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_SAMPLER_SCHEDULE, set_alpha_to_one=False, timestep_spacing="trailing")


def lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(**_SAMPLER_SCHEDULE, set_alpha_to_one=True, original_inference_steps=LCM_ORIGINAL_STEPS, timestep_scaling=TIMESTEP_SCALING)


def alphas_cumprod() -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod.float()


def sd_pipeline(vae, text_encoder, tokenizer, unet):
    """A ``StableDiffusionPipeline`` of these components with the trailing DDIM scheduler."""
    return diffusers_pipeline("sd", vae, text_encoder, tokenizer, unet, ddim_scheduler())


def lcm_pipeline(vae, text_encoder, tokenizer, unet):
    """A ``LatentConsistencyModelPipeline`` of these components with the LCM scheduler."""
    return diffusers_pipeline("lcm", vae, text_encoder, tokenizer, unet, lcm_scheduler())
