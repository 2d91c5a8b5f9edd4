"""``tiny_preference``: the compositional tiny world's preference reward (an ImageReward analogue).

Prompt-independent, like the aesthetic predictor: a small CNN trained with the Bradley–Terry loss
on synthetic pairwise preferences of a hidden utility over style and layout (saturation, outline,
dark plain background, one large centred object; :mod:`alignzoo.tinyworld.compose.preference`).
Scores are standardised: mean ~0, sd ~1 over renders of random prompts with ``Style.random``
(higher = preferred); utility-maximising renders score near the top (figures in
docs/tinyworld-preference.md and the weights' json). Pushed far, it pays for dropping counted and
positioned objects: the reward hack it exists to make visible next to ``tiny_geneval``.

Weights: ``alignzoo/tinyworld/weights/rewards/tiny_preference.safetensors`` (+ ``.json``), written
by ``alignzoo tinyworld train --stage preference``; ``weights=`` points elsewhere (the file or its
folder). Images of any size are resized to 32x32 (area averaging when shrinking).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from alignzoo.rewards.base import register_reward, validate_inputs
from alignzoo.rewards.tiny import _TinyNetReward, _weights_file

NAME = "tiny_preference"
TRAIN_CMD = "alignzoo tinyworld train --stage preference"


def preference_weights_file(weights: str | os.PathLike | None = None) -> Path:
    """The safetensors file (its .json next to it); a clear MissingWeightsError otherwise."""
    return _weights_file(NAME, weights, TRAIN_CMD)


@register_reward(NAME, "compositional tiny world: Bradley-Terry preference of a hidden style/layout utility, ~N(0,1) on random renders")
class TinyPreferenceReward(_TinyNetReward):
    """Standardised Bradley–Terry score of each image (prompt-independent; higher = preferred)."""

    reads_prompt = False
    weights_source = f"trained by `{TRAIN_CMD}`"
    train_cmd = TRAIN_CMD

    def __init__(self, device=None, differentiable: bool = False, weights: str | os.PathLike | None = None):
        super().__init__(device=device, differentiable=differentiable, weights=weights)
        std = self.config["standardise"]
        self.mean, self.sd = float(std["mean"]), float(std["sd"])

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The Bradley–Terry logit before standardisation."""
        return self.net.heads["score"](self.embed_features(images))[:, 0]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return (self.raw(images) - self.mean) / self.sd

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, hidden) of the images (the diversity column's embedding)."""
        validate_inputs(images, None, needs_prompts=False)
        ctx = torch.enable_grad() if self.differentiable else torch.no_grad()
        with ctx:
            return self.embed_features(images)
