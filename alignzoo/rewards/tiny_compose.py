"""GenEval in miniature: the compositional tiny world's detector-style rewards.

``tiny_geneval``         the judge's soft score: the product over the prompt's GenEval criteria
                         (objects present, exact count, colours, relation) of their
                         probabilities under a small CNN detector (per shape class: count
                         0..4, colour, centre). In [0, 1], differentiable: the training reward.
                         ``strict=True`` gives GenEval's 0/1 score instead (all criteria right).
``tiny_geneval_strict``  the same judge's 0/1 strict score (what tables report).
``tiny_geneval_judge2``  a second judge trained independently (other seed, width and data):
                         the held-out reward; also takes ``strict=True``.

Prompts come from ``alignzoo.tinyworld.compose.grammar`` (other prompts raise ValueError).
Weights are committed under ``alignzoo/tinyworld/weights/rewards/`` (written by
``alignzoo tinyworld train --stage geneval``); ``weights=`` points elsewhere (the
``.safetensors`` file or its folder). Images that are not 32x32 are resized to 32x32 as for
the other tiny rewards. ``details`` returns the per-criterion probabilities and decisions,
``features`` the judge's backbone embedding (for the diversity column).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from alignzoo.rewards.base import Reward, register_reward, validate_inputs
from alignzoo.rewards.tiny import _resize, _weights_file

TRAIN_CMD = "alignzoo tinyworld train --stage geneval"


def judge_weights_file(name: str, weights: str | os.PathLike | None) -> Path:
    return _weights_file(name, weights, TRAIN_CMD)


@register_reward("tiny_geneval", "compositional tiny world: GenEval-style judge, soft score (strict=True: 0/1)")
class TinyGenevalReward(Reward):
    """GenEval in miniature (see the module docstring); ``strict=True`` scores 0/1."""

    reads_prompt = True
    supports_grad = True
    weights_source = f"trained by `{TRAIN_CMD}`"
    judge = "tiny_geneval"

    def __init__(self, device=None, differentiable: bool = False, weights: str | os.PathLike | None = None, strict: bool = False):
        if strict and differentiable:
            raise ValueError(f"reward {self.name!r} with strict=True is a 0/1 score: it has no gradient")
        super().__init__(device=device, differentiable=differentiable)
        from alignzoo.tinyworld.compose.judge import load_judge

        self.strict = strict
        self.weights_path = judge_weights_file(self.judge, weights)
        net, cfg = load_judge(self.weights_path)
        self.config = cfg
        self.net = net.to(self.device)
        self.net.requires_grad_(False)  # gradients flow to the images, not the judge
        self.eval()

    def train(self, mode: bool = True):  # the judge always runs in eval mode
        super().train(False)
        return self

    def _outputs(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        from alignzoo.tinyworld.compose.judge import judge_outputs

        maps = self.net(_resize(images.to(self.device, torch.float32)))
        try:
            return judge_outputs(maps, prompts, self.net.threshold)
        except ValueError as e:  # judge_outputs raises only the grammar's parse errors: name the prompt sets that fit
            raise ValueError(
                f"{self.name} judges prompts of the compositional world's grammar only ({e}); train and evaluate "
                "on its prompt sets: --prompts geneval_train, [eval] prompt_sets geneval_seen / geneval_unseen "
                "(alignzoo list prompts)"
            ) from None

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self._outputs(images, prompts)["strict" if self.strict else "soft"]

    @torch.no_grad()
    def details(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per image: ``soft``, ``strict`` and per criterion ``p:<key>`` (probability) and
        ``ok:<key>`` (0/1 decision), NaN where the prompt has no such criterion; ``category``
        as an index into ``grammar.CATEGORIES``."""
        from alignzoo.tinyworld.compose.grammar import CATEGORIES, category_of

        prompts = validate_inputs(images, prompts, needs_prompts=True)
        out = self._outputs(images, prompts)
        out["category"] = torch.tensor([CATEGORIES.index(category_of(p)) for p in prompts], device=self.device)
        return out

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's backbone embedding (B, 4 x width: mean and max of its last map) of each image (for the diversity column)."""
        validate_inputs(images, None, needs_prompts=False)
        ctx = torch.enable_grad() if self.differentiable else torch.no_grad()
        with ctx:
            return self.net.embed(_resize(images.to(self.device, torch.float32)))


@register_reward("tiny_geneval_strict", "compositional tiny world: GenEval-style judge, strict 0/1 score")
class TinyGenevalStrictReward(TinyGenevalReward):
    supports_grad = False

    def __init__(self, device=None, differentiable: bool = False, weights: str | os.PathLike | None = None):
        super().__init__(device=device, differentiable=differentiable, weights=weights, strict=True)


@register_reward("tiny_geneval_judge2", "compositional tiny world: the second, held-out GenEval judge (soft; strict=True: 0/1)")
class TinyGenevalJudge2Reward(TinyGenevalReward):
    judge = "tiny_geneval_judge2"
