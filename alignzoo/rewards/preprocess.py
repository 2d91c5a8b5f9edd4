"""Shared tensor preprocessing and weight-file helpers for the reward models.

Every learned reward here was trained on images prepared the same way: resize the shortest side
to the model's input size with bicubic interpolation, center-crop a square, scale to [0, 1] and
normalise with the OpenAI CLIP mean/std. The reference implementations do this on PIL images
(uint8), which cuts the gradient. :class:`ImageTransform` does it on the device, on float tensors,
differentiably, and matches the reference processors to within about 1/255 per pixel:

* resizing uses ``F.interpolate(mode="bicubic", antialias=True)``, the PIL bicubic filter
  (a = -0.5, widened when downsampling), in PIL's order (width pass, then height pass) and
  clamped to [0, 1] after each pass as PIL's uint8 passes are, but without PIL's rounding to
  uint8 (so the result differs from PIL by at most ~1/255 and stays differentiable);
* the new size follows both ``transformers`` and ``torchvision``: short side = ``size``, long side
  = ``int(size * long / short)``;
* the crop offset is where the two libraries differ when (resized - crop) is odd: transformers'
  ``CLIPImageProcessor`` floors it (``crop_rounding="floor"``), torchvision's ``CenterCrop``
  (used by open_clip, ImageReward and the LAION aesthetic code) rounds half to even
  (``crop_rounding="round"``). Each reward picks the rule of its reference processor.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from alignzoo.hub import MissingWeightsError, resolve_snapshot

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TRUST_ENV = "ALIGNZOO_TRUST_CHECKPOINTS"


# ----------------------------------------------------------------------------------------------
# image preprocessing
# ----------------------------------------------------------------------------------------------


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of a shortest-side resize to ``size`` (transformers' and torchvision's rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_shortest(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased, PIL-like) resize of (B, C, H, W) so that the short side is ``size``.

    Like PIL, it resizes the width first, then the height, and clips to [0, 1] after each pass
    (PIL clips to uint8 between its passes; without that, bicubic overshoot on sharp edges
    differs from the reference by up to ~20/255).
    """
    h, w = images.shape[-2:]
    new_h, new_w = resized_shape(h, w, size)
    out = images
    if new_w != w:
        out = F.interpolate(out, size=(h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    if new_h != h:
        out = F.interpolate(out, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    return out


def center_crop(images: torch.Tensor, crop: tuple[int, int], rounding: str = "floor") -> torch.Tensor:
    """Center crop to ``crop`` = (h, w); pads with zeros first when the image is smaller."""
    ch, cw = crop
    h, w = images.shape[-2:]
    if h < ch or w < cw:
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        h, w = images.shape[-2:]
    if (h, w) == (ch, cw):
        return images
    if rounding == "floor":
        top, left = (h - ch) // 2, (w - cw) // 2
    elif rounding == "round":
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    else:
        raise ValueError(f"crop_rounding must be 'floor' or 'round', got {rounding!r}")
    return images[..., top : top + ch, left : left + cw]


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shortest side, bicubic) + center crop + normalise, on tensors, differentiable.

    ``__call__`` takes (B, 3, H, W) floats in [0, 1] and returns normalised float32 pixels of
    shape (B, 3, crop_h, crop_w) on the same device.
    """

    size: int = 224
    crop: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    crop_rounding: str = "floor"
    do_resize: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.do_resize:
            x = resize_shortest(x, self.size)
        if self.crop is not None:
            x = center_crop(x, self.crop, self.crop_rounding)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any] | str | os.PathLike, crop_rounding: str = "floor") -> "ImageTransform":
        """Reads a transformers ``preprocessor_config.json`` (CLIP-style: shortest_edge + crop)."""
        if not isinstance(config, Mapping):
            config = json.loads(Path(config).read_text())
        size = config.get("size", 224)
        if isinstance(size, Mapping):
            if "shortest_edge" in size:
                size = size["shortest_edge"]
            elif "height" in size and size.get("height") == size.get("width"):
                size = size["height"]
            else:
                raise ValueError(f"unsupported image processor size {size!r}: expected shortest_edge or a square")
        crop = config.get("crop_size", size)
        if isinstance(crop, Mapping):
            crop = (int(crop["height"]), int(crop["width"]))
        else:
            crop = (int(crop), int(crop))
        resample = config.get("resample", 3)
        if resample not in (3, "bicubic", "BICUBIC"):
            raise ValueError(f"unsupported resample {resample!r} in the image processor config: only bicubic (3) is implemented")
        return cls(
            size=int(size),
            crop=crop if config.get("do_center_crop", True) else None,
            mean=tuple(float(m) for m in config.get("image_mean", CLIP_MEAN)),
            std=tuple(float(s) for s in config.get("image_std", CLIP_STD)),
            crop_rounding=crop_rounding,
            do_resize=bool(config.get("do_resize", True)),
        )


# ----------------------------------------------------------------------------------------------
# weight files
# ----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike, what: str) -> dict:
    """``torch.load(weights_only=True)`` on CPU; a file that needs full unpickling is refused
    unless ``ALIGNZOO_TRUST_CHECKPOINTS=1`` says the user trusts it."""
    trust = os.environ.get(TRUST_ENV, "0").lower() in ("1", "true", "yes")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except (pickle.UnpicklingError, RuntimeError) as err:
        if trust or "weights_only" not in str(err).lower() and "weights only" not in str(err).lower():
            raise ValueError(f"could not read {what} weights from {str(path)!r}: {err}") from None
        raise ValueError(
            f"{what} weights file {str(path)!r} holds objects that torch.load(weights_only=True) refuses. "
            f"If you trust the file, set {TRUST_ENV}=1 to load it with full unpickling."
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} weights file {str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    return obj


def unwrap_state_dict(obj: dict, keys: Sequence[str] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """Returns the tensor dict inside a checkpoint ({'state_dict': ...} or flat), minus a DDP
    ``module.`` prefix."""
    for k in keys:
        if k in obj and isinstance(obj[k], dict):
            obj = obj[k]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_hf_model(
    model_id: str, *, what: str, option: str, env_var: str | None, local_path: str | os.PathLike | None, extra_files: Sequence[str] = ()
) -> Path:
    """A local folder with a transformers checkpoint (config.json + one weights file) for ``model_id``."""
    folder = resolve_snapshot(
        model_id,
        ["config.json", *extra_files],
        what=what,
        option=option,
        env_var=env_var,
        local_path=local_path,
        allow_patterns=["*.json", "*.txt", "model.safetensors"],
    )
    if not any((folder / f).exists() for f in WEIGHT_FILES) and not local_path and not (env_var and os.environ.get(env_var)):
        # a hub repo without model.safetensors: fetch the PyTorch weights instead
        try:
            folder = resolve_snapshot(
                model_id,
                ["config.json", "pytorch_model.bin"],
                what=what,
                option=option,
                env_var=env_var,
                allow_patterns=["*.json", "*.txt", "pytorch_model.bin"],
            )
        except MissingWeightsError:
            pass
    if not any((folder / f).exists() for f in WEIGHT_FILES):
        raise MissingWeightsError(
            f"{what} folder {str(folder)!r} for {model_id!r} has config.json but no weights file "
            f"(expected one of: {', '.join(WEIGHT_FILES)}). Pass a complete folder with {option}" + (f" or {env_var}=/path" if env_var else "")
        )
    return folder


def check_tokenizer(tokenizer, *, what: str, folder: str | os.PathLike, max_ids: int | None = None) -> None:
    """Fails loudly on the empty tokenizer an offline hub load can return, and on a vocabulary
    that does not fit the text model's embedding table."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    words = [t for t in vocab if t not in special]
    if len(words) < 2:
        raise MissingWeightsError(
            f"{what} tokenizer loaded from {str(folder)!r} is empty ({len(vocab)} tokens, all special): "
            "its vocabulary files are missing. Put the tokenizer files (vocab.txt / vocab.json + merges.txt "
            "or tokenizer.json) in that folder."
        )
    if max_ids is not None and len(tokenizer) > max_ids:
        raise ValueError(
            f"{what} tokenizer from {str(folder)!r} has {len(tokenizer)} tokens but the text model's embedding "
            f"table has {max_ids} rows: the tokenizer does not belong to these weights"
        )


def skip_init():
    """Context manager that skips random weight initialisation while a model that is about to be
    overwritten by a checkpoint is built (transformers' ``no_init_weights``); a no-op fallback."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """eval() + no parameter gradients (gradients still flow to the input images)."""
    module.eval()
    module.requires_grad_(False)
    return module


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]
