"""The tiny world: procedural coloured shapes, a tiny latent diffusion model (tiny-sd), its
latent consistency distillate (tiny-lcm) and two tiny reward models, all trained by
``alignzoo tinyworld train`` and committed under ``alignzoo/tinyworld/weights/``.

    from alignzoo.tinyworld import make_prompt, parse_prompt, render_batch, seen_prompts
    from alignzoo.tinyworld import tiny_sd_path, tiny_lcm_path   # diffusers folders
"""

from __future__ import annotations

from pathlib import Path

from alignzoo.tinyworld.grammar import (  # noqa: F401
    ATTRIBUTES,
    COLOURS,
    COUNTS,
    POSITIONS,
    SHAPES,
    UNSEEN_CATEGORIES,
    Scene,
    all_prompts,
    all_scenes,
    held_out_categories,
    make_prompt,
    parse_prompt,
    seen_prompts,
    unseen_prompts,
    vocabulary,
)
from alignzoo.tinyworld.render import DEGRADATIONS, degrade, render, render_batch  # noqa: F401


def weights_dir() -> Path:
    """The committed tiny-world weights: rewards/, tiny-sd/, tiny-lcm/."""
    return Path(__file__).resolve().parent / "weights"


def tiny_sd_path() -> Path:
    """The tiny-sd StableDiffusionPipeline folder (DDIM trailing, sample with guidance 1.0)."""
    return weights_dir() / "tiny-sd"


def tiny_lcm_path() -> Path:
    """The tiny-lcm LatentConsistencyModelPipeline folder (guidance in its alignzoo.json)."""
    return weights_dir() / "tiny-lcm"


def load_tokenizer(path: str | Path | None = None):
    """The tiny world's CLIPTokenizer: from a pipeline folder's ``tokenizer/`` (default tiny-sd),
    else built from the grammar."""
    from transformers import CLIPTokenizer

    folder = Path(path) if path is not None else tiny_sd_path()
    if (folder / "tokenizer").is_dir():
        folder = folder / "tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder))
    from alignzoo.tinyworld.tokenizer import build_tokenizer

    return build_tokenizer()
