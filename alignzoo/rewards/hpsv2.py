"""Human Preference Score v2 / v2.1 (Wu et al., 2023) on open_clip ViT-H-14.

HPS v2 is an open_clip ``ViT-H-14`` fine-tuned on human preferences; the score is the cosine of
the L2-normalised image and text embeddings (no logit scale), about 0.2–0.3 for typical images
(``hpsv2.score``: ``diag(image_features @ text_features.T)``). v2.1 (default) is the later
checkpoint trained on more data; ``version="v2"`` selects the original.

Loading: ``open_clip.create_model('ViT-H-14', pretrained=None)`` builds the architecture and the
HPS checkpoint (``{'state_dict': ...}``, saved from HPSv2's fork of open_clip 2.x) is loaded into
it. The fork's CLIP module tree for this model is the same as open_clip 3.x's, so the key
mapping is the identity; :func:`convert_hps_state_dict` only strips a DDP ``module.`` prefix.
Any missing key is an error; keys the current open_clip does not know are reported.
Preprocessing is open_clip's evaluation transform: Resize(224, bicubic) on the shortest side +
CenterCrop (torchvision rounding) + OpenAI CLIP mean/std; text goes through open_clip's tokenizer
(77 tokens, bundled BPE vocabulary, no download).

Weights: ``weights=`` / ``ALIGNZOO_HPSV2`` (the ``.pt`` file, or a folder holding it), else the
hub repo ``xswu/HPSv2`` (``HPS_v2.1_compressed.pt`` / ``HPS_v2_compressed.pt``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch

from alignzoo.hub import resolve_file
from alignzoo.rewards.base import Reward, register_reward
from alignzoo.rewards.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform, freeze, load_checkpoint, parse_dtype, skip_init, unwrap_state_dict

HPS_REPO = "xswu/HPSv2"
HPS_ENV = "ALIGNZOO_HPSV2"
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2": "HPS_v2_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
HPS_ARCH = "ViT-H-14"


def resolve_hps_checkpoint(weights: str | os.PathLike | None = None, version: str = "v2.1") -> Path:
    if version not in HPS_FILES:
        raise ValueError(f"unknown HPS version {version!r}; use one of {', '.join(sorted(HPS_FILES))}")
    return resolve_file(HPS_REPO, HPS_FILES[version], what=f"HPS {version}", option="`weights=` (CLI `--weights`)", env_var=HPS_ENV, local_path=weights)


def convert_hps_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HPS checkpoint keys -> open_clip ``CLIP`` keys (identity after removing ``module.``)."""
    return unwrap_state_dict(dict(state_dict))


def load_hps_model(path: str | os.PathLike, model_name: str = HPS_ARCH):
    """Builds ``model_name`` with open_clip (no pretrained tag) and loads the HPS checkpoint."""
    import open_clip

    with skip_init():
        model = open_clip.create_model(model_name, pretrained=None, precision="fp32", device="cpu")
    sd = convert_hps_state_dict(unwrap_state_dict(load_checkpoint(path, "HPSv2")))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"HPS checkpoint {str(path)!r} does not fit open_clip {model_name!r}: missing {result.missing_keys[:8]}"
            + (f" ({len(result.missing_keys)} in all)" if len(result.missing_keys) > 8 else "")
        )
    if result.unexpected_keys:
        warnings.warn(f"HPS checkpoint: keys unknown to open_clip {model_name!r} were ignored: {result.unexpected_keys[:8]}", stacklevel=2)
    return model


def openclip_transform(model) -> ImageTransform:
    """open_clip's evaluation transform for ``model`` as a tensor :class:`ImageTransform`."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size if isinstance(size, int) else size[0] if size[0] == size[-1] else None
    if size is None or cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") != "bicubic":
        raise ValueError(f"unsupported open_clip preprocessing {cfg}: only a square bicubic shortest-side resize is implemented")
    return ImageTransform(
        size=int(size), crop=(int(size), int(size)), mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD)), crop_rounding="round"
    )


@register_reward("hpsv2", "Human Preference Score v2.1 (v2 via version='v2'): CLIP cosine, ~0.2-0.3")
class HPSv2Reward(Reward):
    """HPS v2.1 / v2: cosine of open_clip ViT-H-14 image and text embeddings."""

    reads_prompt = True
    weights_source = f"{HPS_REPO} ({HPS_FILES['v2.1']} or {HPS_FILES['v2']}) on open_clip {HPS_ARCH}"
    supports_grad = True

    @property
    def feature_space(self) -> str:  # HPS's fine-tuned open_clip image tower (per version)
        return f"hps{self.version}-clip-vit-h-14"

    def __init__(
        self,
        device=None,
        differentiable: bool = False,
        weights: str | os.PathLike | None = None,
        version: str = "v2.1",
        model_name: str = HPS_ARCH,
        dtype: str | torch.dtype | None = None,
    ):
        super().__init__(device=device, differentiable=differentiable)
        import open_clip

        self.version = version
        self.dtype = parse_dtype(dtype)
        path = resolve_hps_checkpoint(weights, version)
        self.model = freeze(load_hps_model(path, model_name).to(self.dtype))
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.transform = openclip_transform(self.model)
        self.to(self._device)

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        return self.model.encode_image(pixels, normalize=True).float()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        img = self.model.encode_image(pixels, normalize=True).float()
        txt = self.model.encode_text(tokens, normalize=True).float()
        return (img * txt).sum(-1).to(images.device)
