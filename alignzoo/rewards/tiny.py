"""The tiny world's reward models (small CNNs trained on procedural renders).

``tiny_alignment``  reads the prompt: the mean over four softmax heads (colour, shape, count,
                    position) of the probability the head gives to the prompt's attribute. In
                    [0, 1], smooth in the image, differentiable.
``tiny_aesthetic``  ignores the prompt: a score in [0, 1] trained to be 1 - severity of blur,
                    noise, washed-out colour and off-centre composition.

Both load the weights committed under ``alignzoo/tinyworld/weights/rewards/`` (written by
``alignzoo tinyworld train --stage rewards``); ``weights=`` points elsewhere (the
``.safetensors`` file or its folder). Images that are not 32x32 are resized to 32x32 (area
averaging when shrinking, bilinear when enlarging).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards.base import Reward, register_reward, validate_inputs

IMAGE_SIZE = 32
_TRAIN_CMD = "alignzoo tinyworld train --stage rewards"


def default_weights_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "tinyworld" / "weights" / "rewards"


def _weights_file(name: str, weights: str | os.PathLike | None, train_cmd: str = _TRAIN_CMD) -> Path:
    """The ``.safetensors`` file of a tiny reward (its ``.json`` beside it), or a MissingWeightsError
    naming the command that rebuilds it (every tiny reward, old and compositional world)."""
    path = Path(weights) if weights is not None else default_weights_dir()
    if path.is_dir():
        path = path / f"{name}.safetensors"
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise MissingWeightsError(
            f"tiny reward {name!r}: weights {str(path)!r} (and its .json config) not found. "
            f"They are committed with the package; rebuild them with `{train_cmd}` "
            f"or pass weights=/path/to/{name}.safetensors"
        )
    return path


def _resize(images: torch.Tensor) -> torch.Tensor:
    """To 32x32: area averaging when shrinking (a box filter: no aliasing, and no extra blur
    that the aesthetic head would read as a degradation), bilinear when enlarging."""
    if images.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return images
    if images.shape[-1] >= IMAGE_SIZE and images.shape[-2] >= IMAGE_SIZE:
        return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
    return F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=4096)
def _labels(prompt: str) -> tuple[int, int, int, int]:
    from alignzoo.tinyworld.grammar import parse_prompt

    lab = parse_prompt(prompt).labels()
    return lab["colour"], lab["shape"], lab["count"], lab["position"]


class _TinyNetReward(Reward):
    """A tiny CNN reward loaded from committed weights (``train_cmd`` rebuilds them), always in eval mode."""

    weights_source = f"trained by `{_TRAIN_CMD}`"
    train_cmd = _TRAIN_CMD
    supports_grad = True

    def __init__(self, device=None, differentiable: bool = False, weights: str | os.PathLike | None = None):
        super().__init__(device=device, differentiable=differentiable)
        from alignzoo.tinyworld.nets import load_net

        self.weights_path = _weights_file(self.name, weights, self.train_cmd)
        net, cfg = load_net(self.weights_path)
        self.config = cfg
        self.net = net.to(self.device)
        self.net.requires_grad_(False)  # gradients flow to the images, not the reward
        self.eval()

    def train(self, mode: bool = True):  # the reward network always runs in eval mode
        super().train(False)
        return self

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = _resize(images.to(self.device, torch.float32))
        return self.net(x)

    @property
    def feature_space(self) -> str:
        return f"{self.name}.backbone"

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        """The shared trunk's output (conv stack + hidden layer, before the heads): (B, hidden)."""
        x = _resize(images.to(self.device, torch.float32))
        return self.net.mlp(self.net.features(x * 2 - 1))


@register_reward("tiny_alignment", "tiny world: mean probability of the prompt's colour/shape/count/position")
class TinyAlignmentReward(_TinyNetReward):
    """Tiny world prompt alignment: mean of the four heads' probabilities of the prompt's attributes."""

    reads_prompt = True
    heads = ("colour", "shape", "count", "position")

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Softmax probabilities per head: dict head -> (B, n_classes)."""
        return {k: v.softmax(-1) for k, v in self.logits(images).items()}

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        probs = self.probabilities(images)
        labels = torch.tensor([_labels(p) for p in prompts], device=self.device)
        per_head = [probs[h].gather(1, labels[:, i : i + 1])[:, 0] for i, h in enumerate(self.heads)]
        return torch.stack(per_head, 1).mean(1)


@register_reward("tiny_aesthetic", "tiny world: clean renders high, blurred/noisy/washed-out/off-centre low")
class TinyAestheticReward(_TinyNetReward):
    """Tiny world aesthetic: ~1 for clean renders, ~1 - severity for degraded ones."""

    reads_prompt = False

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return torch.sigmoid(self.logits(images)["score"][:, 0])


def evaluate_attribute_accuracy(
    images: torch.Tensor, prompts: Sequence[str], reward: TinyAlignmentReward | None = None, batch_size: int = 256
) -> dict[str, float]:
    """How often tiny_alignment's heads' argmax matches each prompt's attributes.

    Returns accuracies per head ("colour", "shape", "count", "position"), "colour_and_shape"
    (both right), "all" (all four right), "score" (mean tiny_alignment score) and "n".
    """
    prompts = validate_inputs(images, prompts, needs_prompts=True)
    if reward is None:
        reward = TinyAlignmentReward(device=images.device)
    labels = torch.tensor([_labels(p) for p in prompts], device=reward.device)
    hits = {h: [] for h in TinyAlignmentReward.heads}
    scores = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size]
            probs = reward.probabilities(x)
            for j, h in enumerate(TinyAlignmentReward.heads):
                hits[h].append(probs[h].argmax(-1) == labels[i : i + batch_size, j])
            scores.append(reward.score(x, prompts[i : i + batch_size]))
    ok = {h: torch.cat(v) for h, v in hits.items()}
    out = {h: ok[h].float().mean().item() for h in ok}
    out["colour_and_shape"] = (ok["colour"] & ok["shape"]).float().mean().item()
    out["all"] = torch.stack(list(ok.values())).all(0).float().mean().item()
    out["score"] = torch.cat(scores).mean().item()
    out["n"] = int(images.shape[0])
    return out
