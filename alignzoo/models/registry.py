"""The registered models (``alignzoo list models``)."""

from __future__ import annotations

from pathlib import Path

from alignzoo.models.base import ModelSpec, register_model

TINY_WEIGHTS = Path(__file__).resolve().parent.parent / "tinyworld" / "weights"

register_model(
    ModelSpec(
        name="sd-turbo",
        source="stabilityai/sd-turbo",
        kind="sd",
        resolution=512,
        guidance_scale=1.0,
        train_steps=50,
        env_var="ALIGNZOO_SD_TURBO",
        summary="SD-Turbo (stabilityai/sd-turbo), DDIM trailing, guidance 1.0, 512 px",
    )
)
register_model(
    ModelSpec(
        name="lcm-dreamshaper-v7",
        source="SimianLuo/LCM_Dreamshaper_v7",
        kind="lcm",
        resolution=512,
        guidance_scale=8.0,
        train_steps=8,
        original_inference_steps=50,
        env_var="ALIGNZOO_LCM_DREAMSHAPER",
        summary="LCM-Dreamshaper-v7, LCMScheduler, w-embedding guidance 8, 8 steps from 50 (RLCM's setting)",
    )
)
register_model(
    ModelSpec(
        name="tiny-sd",
        source=str(TINY_WEIGHTS / "tiny-sd"),
        kind="sd",
        guidance_scale=1.0,
        train_steps=10,
        summary="the tiny world's latent diffusion model (32 px coloured shapes), DDIM trailing",
    )
)
register_model(
    ModelSpec(
        # guidance 2.0: the w-embedding value the training run's sweep chose (weights/tiny-lcm/alignzoo.json)
        name="tiny-lcm",
        source=str(TINY_WEIGHTS / "tiny-lcm"),
        kind="lcm",
        guidance_scale=2.0,
        train_steps=4,
        summary="the tiny world's LCM, distilled from tiny-sd by latent consistency distillation",
    )
)

# The compositional tiny world (issue 13): a weak multi-step teacher and its few-step students.
register_model(
    ModelSpec(
        name="tiny-sd-v2",
        source=str(TINY_WEIGHTS / "compose-sd"),
        kind="sd",
        guidance_scale=1.0,
        train_steps=4,
        train_prompts="geneval_train",
        summary="compositional tiny world's multi-step teacher (32 px GenEval-style scenes, web-captioned pretraining), DDIM trailing",
    )
)
register_model(
    ModelSpec(
        name="tiny-turbo",
        source=str(TINY_WEIGHTS / "compose-turbo"),
        kind="sd",
        guidance_scale=1.0,
        train_steps=4,
        train_prompts="geneval_train",
        summary="SD-Turbo analogue: tiny-sd-v2 reflowed onto straight DDIM lines for 1-4 steps, DDIM trailing, no guidance",
    )
)
register_model(
    ModelSpec(
        name="tiny-lcm-v2",
        source=str(TINY_WEIGHTS / "compose-lcm"),
        kind="lcm",
        guidance_scale=1.0,
        train_steps=4,
        train_prompts="geneval_train",
        summary="latent consistency distillate of tiny-sd-v2 (LCMScheduler, w-embedding guidance)",
    )
)

# Real-size architectures with random weights (built once into $ALIGNZOO_CACHE/arch/<name>;
# see alignzoo/models/arch.py): throughput and memory at real size without downloads.
from alignzoo.models.arch import arch_builder  # noqa: E402

register_model(
    ModelSpec(
        name="sd-turbo-arch",
        source="configs/sd-turbo (random weights)",
        kind="sd",
        resolution=512,
        guidance_scale=1.0,
        train_steps=50,
        builder=arch_builder("sd-turbo-arch"),
        summary="SD-Turbo's architecture (865.9M UNet) with random weights, for `alignzoo perf`; built locally on first use",
    )
)
register_model(
    ModelSpec(
        name="lcm-arch",
        source="configs/lcm-dreamshaper-v7 (random weights)",
        kind="lcm",
        resolution=512,
        guidance_scale=8.0,
        train_steps=8,
        original_inference_steps=50,
        builder=arch_builder("lcm-arch"),
        summary="LCM-Dreamshaper-v7's architecture (859.6M UNet) with random weights, for `alignzoo perf`; built locally on first use",
    )
)
