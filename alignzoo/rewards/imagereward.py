"""ImageReward v1.0 (Xu et al., NeurIPS 2023) rebuilt on transformers' BLIP modules.

The official model (pip ``image-reward``, ``ImageReward/ImageReward.py``) is BLIP's
``BLIP_Pretrain(image_size=224, vit='large')``: a timm-style ViT-L/16 (``VisionTransformer`` of
BLIP's ``vit.py``: LayerNorm eps 1e-6, fused qkv with bias, exact GELU, final ``norm`` applied to
all tokens) and a BERT-base text encoder with a cross-attention block in every layer (BLIP's
``med.py``; no token-type embeddings), plus an MLP head 768 -> 1024 -> 128 -> 64 -> 16 -> 1
(``mlp.layers.{0,2,4,6,7}``; dropouts between, no nonlinearity). The score is the head applied to
the text [CLS] state after the prompt (BERT tokenizer, padded/truncated to 35 tokens) has
cross-attended to all image tokens, normalised as (s - 0.16717362830052426) / 1.0333394966054072.
``raw=True`` skips the normalisation (SDPO reported raw scores). Images are preprocessed as in the
official ``_transform(224)``: torchvision Resize(224, bicubic) + CenterCrop + CLIP mean/std.

The ``image-reward`` package cannot be imported with transformers >= 4.56, so this module maps
the official checkpoint (``ImageReward.pt``, a flat state dict) onto ``BlipVisionModel`` and
``BlipTextModel`` with :func:`convert_official_state_dict`. Both transformers modules were ported
from the same BLIP code, so the mapping is a renaming: the vision qkv stays fused (transformers'
``BlipAttention`` also uses one ``qkv`` Linear in the same (3, heads, head_dim) layout), the text
encoder keys are unchanged, and ``blip.vision_proj`` / ``blip.text_proj`` (the ITC projections) and
the ``position_ids`` buffer are not needed for scoring. The vision width, depth, patch size, image
size and MLP width are read from the checkpoint's shapes; the number of vision heads is
``width // 64`` (16 for ViT-L, 12 for ViT-B, as in BLIP's ``create_vit``).

Weights: ``weights=`` / ``ALIGNZOO_IMAGEREWARD`` (a folder with ``ImageReward.pt`` and
``med_config.json`` as on the hub repo ``THUDM/ImageReward``, or the ``.pt`` file with
``med_config.json`` beside it); the BERT tokenizer from ``tokenizer_path=`` /
``ALIGNZOO_BERT_TOKENIZER`` or the hub's ``bert-base-uncased`` (``vocab.txt``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from alignzoo.hub import MissingWeightsError, resolve_snapshot
from alignzoo.rewards.aesthetic import AestheticMLP
from alignzoo.rewards.base import Reward, register_reward
from alignzoo.rewards.preprocess import CLIP_MEAN, CLIP_STD, ImageTransform, check_tokenizer, freeze, load_checkpoint, parse_dtype, skip_init, unwrap_state_dict

IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_FILES = ("ImageReward.pt", "med_config.json")
IMAGEREWARD_ENV = "ALIGNZOO_IMAGEREWARD"
BERT_REPO = "bert-base-uncased"
BERT_ENV = "ALIGNZOO_BERT_TOKENIZER"
SCORE_MEAN = 0.16717362830052426
SCORE_STD = 1.0333394966054072
MAX_TEXT_LENGTH = 35
VISION_HEAD_DIM = 64
VISION_LAYER_NORM_EPS = 1e-6

_V = r"blip\.visual_encoder\."
_WB = r"(weight|bias)"
# official key (regex) -> key in BlipVisionModel
VISION_RULES: list[tuple[str, str]] = [
    (rf"^{_V}cls_token$", "embeddings.class_embedding"),
    (rf"^{_V}pos_embed$", "embeddings.position_embedding"),
    (rf"^{_V}patch_embed\.proj\.{_WB}$", r"embeddings.patch_embedding.\1"),
    (rf"^{_V}blocks\.(\d+)\.norm1\.{_WB}$", r"encoder.layers.\1.layer_norm1.\2"),
    (rf"^{_V}blocks\.(\d+)\.attn\.qkv\.{_WB}$", r"encoder.layers.\1.self_attn.qkv.\2"),
    (rf"^{_V}blocks\.(\d+)\.attn\.proj\.{_WB}$", r"encoder.layers.\1.self_attn.projection.\2"),
    (rf"^{_V}blocks\.(\d+)\.norm2\.{_WB}$", r"encoder.layers.\1.layer_norm2.\2"),
    (rf"^{_V}blocks\.(\d+)\.mlp\.(fc1|fc2)\.{_WB}$", r"encoder.layers.\1.mlp.\2.\3"),
    (rf"^{_V}norm\.{_WB}$", r"post_layernorm.\1"),
]
# official key (regex) -> key in BlipTextModel (same names: transformers ported BLIP's med.py)
TEXT_RULES: list[tuple[str, str]] = [
    (r"^blip\.text_encoder\.(embeddings\.(word_embeddings|position_embeddings)\.weight)$", r"\1"),
    (r"^blip\.text_encoder\.(embeddings\.LayerNorm\.(weight|bias))$", r"\1"),
    (
        r"^blip\.text_encoder\.(encoder\.layer\.\d+\.(attention|crossattention)\."
        r"(self\.(query|key|value)|output\.dense|output\.LayerNorm)\.(weight|bias))$",
        r"\1",
    ),
    (r"^blip\.text_encoder\.(encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias))$", r"\1"),
]
HEAD_RULES: list[tuple[str, str]] = [(r"^mlp\.(layers\.\d+\.(weight|bias))$", r"\1")]
# present in ImageReward.pt, not used for scoring
IGNORED_RULES: list[str] = [r"^blip\.(vision_proj|text_proj)\.(weight|bias)$", r"^blip\.text_encoder\.embeddings\.position_ids$"]


@dataclass
class ConvertedStateDict:
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ConvertedStateDict:
    """Splits and renames an official ``ImageReward.pt`` state dict for the transformers modules."""
    out = ConvertedStateDict()
    targets = ((VISION_RULES, out.vision), (TEXT_RULES, out.text), (HEAD_RULES, out.head))
    for key, value in state_dict.items():
        for rules, dest in targets:
            new = next((re.sub(p, r, key) for p, r in rules if re.match(p, key)), None)
            if new is not None:
                dest[new] = value
                break
        else:
            (out.ignored if any(re.match(p, key) for p in IGNORED_RULES) else out.unknown).append(key)
    return out


def _official_shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"not an ImageReward checkpoint: it lacks {key!r}")
    return tuple(sd[key].shape)


def vision_config_from_state_dict(sd: Mapping[str, torch.Tensor], num_heads: int | None = None):
    """The ``BlipVisionConfig`` of the official ViT, read from the checkpoint's shapes."""
    from transformers import BlipVisionConfig

    width, _, patch, patch_w = _official_shape(sd, "blip.visual_encoder.patch_embed.proj.weight")
    num_pos = _official_shape(sd, "blip.visual_encoder.pos_embed")[1]
    grid = int(round((num_pos - 1) ** 0.5))
    if grid * grid != num_pos - 1 or patch != patch_w:
        raise ValueError(f"unexpected ViT geometry in the ImageReward checkpoint: {num_pos} positions, patch {patch}x{patch_w}")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"^{_V}blocks\.(\d+)\.", k)))
    mlp_width = _official_shape(sd, "blip.visual_encoder.blocks.0.mlp.fc1.weight")[0]
    heads = num_heads or max(1, width // VISION_HEAD_DIM)
    if width % heads:
        raise ValueError(f"vision width {width} is not divisible by {heads} heads")
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=mlp_width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=VISION_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config_from_med(med: Mapping, encoder_width: int):
    """The ``BlipTextConfig`` equivalent of an official ``med_config.json`` (a BertConfig)."""
    from transformers import BlipTextConfig

    if not med.get("add_cross_attention", False):
        raise ValueError("med_config.json must have add_cross_attention=true (ImageReward's text encoder cross-attends to the image)")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"unsupported position_embedding_type {med['position_embedding_type']!r} in med_config.json")
    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=med.get("pad_token_id", 0),
        bos_token_id=None,
        eos_token_id=None,
        sep_token_id=None,
        is_decoder=True,  # builds the cross-attention blocks; forward runs with is_decoder=False
        use_cache=False,
    )


class RewardHead(AestheticMLP):
    """ImageReward's MLP head (``mlp.layers``): the same linear layers with dropouts and no
    nonlinearity as the LAION aesthetic predictor's MLP, under ImageReward's name."""


class ImageRewardModel(nn.Module):
    """BLIP ViT + BLIP text encoder with cross-attention + MLP head; ``forward`` gives raw scores."""

    def __init__(self, vision_config, text_config, head_input: int | None = None, init_weights: bool = True):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        ctx = contextlib.nullcontext() if init_weights else skip_init()
        with ctx:
            self.vision = BlipVisionModel(vision_config)
            self.text = BlipTextModel(text_config, add_pooling_layer=False)
        self.head = RewardHead(head_input or text_config.hidden_size)

    @classmethod
    def from_official(cls, state_dict: Mapping[str, torch.Tensor], med_config: Mapping, vision_heads: int | None = None) -> "ImageRewardModel":
        """Builds the model from an official ``ImageReward.pt`` state dict and ``med_config.json``."""
        conv = convert_official_state_dict(state_dict)
        if conv.unknown:
            warnings.warn(f"ImageReward checkpoint: {len(conv.unknown)} keys not used: {conv.unknown[:8]}", stacklevel=2)
        vcfg = vision_config_from_state_dict(state_dict, vision_heads)
        tcfg = text_config_from_med(med_config, encoder_width=vcfg.hidden_size)
        head_in = _official_shape(state_dict, "mlp.layers.0.weight")[1]
        if head_in != tcfg.hidden_size:
            raise ValueError(f"the ImageReward head takes {head_in}-d features but the text encoder is {tcfg.hidden_size}-d")
        model = cls(vcfg, tcfg, head_in, init_weights=False)
        for name, module, sd in (("vision", model.vision, conv.vision), ("text", model.text, conv.text), ("head", model.head, conv.head)):
            sd = {k: v.float() for k, v in sd.items()}
            result = module.load_state_dict(sd, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise ValueError(
                    f"ImageReward checkpoint does not fit the {name} module: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
                )
        return model

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, is_decoder=False).last_hidden_state
        return self.head(text[:, 0, :].float())


def init_tokenizer(folder: str | os.PathLike, vocab_rows: int | None = None):
    """BLIP's tokenizer: bert-base-uncased plus a [DEC] bos token and an [ENC] special token."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(folder))
    check_tokenizer(tok, what="ImageReward (BERT)", folder=folder)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    check_tokenizer(tok, what="ImageReward (BERT)", folder=folder, max_ids=vocab_rows)
    return tok


def resolve_imagereward_files(weights: str | os.PathLike | None, med_config: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(ImageReward.pt, med_config.json): from ``weights`` / $ALIGNZOO_IMAGEREWARD or the hub."""
    local = weights or os.environ.get(IMAGEREWARD_ENV)
    if local and Path(local).is_file():
        pt = Path(local)
        med = Path(med_config) if med_config else pt.parent / "med_config.json"
        if not med.is_file():
            raise MissingWeightsError(
                f"ImageReward: {str(med)!r} does not exist. Put med_config.json (from {IMAGEREWARD_REPO!r}) next to "
                f"{pt.name}, or pass `med_config=` (CLI `--option med_config=PATH`)"
            )
        return pt, med
    folder = resolve_snapshot(
        IMAGEREWARD_REPO,
        list(IMAGEREWARD_FILES),
        what="ImageReward",
        option="`weights=` (CLI `--weights`)",
        env_var=IMAGEREWARD_ENV,
        local_path=weights,
        allow_patterns=list(IMAGEREWARD_FILES),
    )
    return folder / "ImageReward.pt", Path(med_config) if med_config else folder / "med_config.json"


def resolve_bert_tokenizer(tokenizer_path: str | os.PathLike | None) -> Path:
    return resolve_snapshot(
        BERT_REPO,
        ["vocab.txt"],
        what="BERT tokenizer",
        option="`tokenizer_path=` (CLI `--option tokenizer_path=PATH`)",
        env_var=BERT_ENV,
        local_path=tokenizer_path,
        allow_patterns=["vocab.txt", "tokenizer_config.json", "tokenizer.json", "config.json"],
    )


@register_reward("imagereward", "ImageReward v1.0 (BLIP ViT-L + BERT cross-attention + MLP), normalised")
class ImageRewardReward(Reward):
    """ImageReward score of each (image, prompt); ``raw=True`` for the un-normalised head output."""

    reads_prompt = True
    weights_source = f"{IMAGEREWARD_REPO} (ImageReward.pt, med_config.json) + {BERT_REPO} tokenizer"
    supports_grad = True
    feature_space = "imagereward-blip-vit-l"  # the [CLS] token of ImageReward's BLIP ViT-L vision tower

    def __init__(
        self,
        device=None,
        differentiable: bool = False,
        weights: str | os.PathLike | None = None,
        tokenizer_path: str | os.PathLike | None = None,
        med_config: str | os.PathLike | None = None,
        raw: bool = False,
        dtype: str | torch.dtype | None = None,
        vision_heads: int | None = None,
    ):
        super().__init__(device=device, differentiable=differentiable)
        self.raw = bool(raw)
        self.dtype = parse_dtype(dtype)
        pt, med_path = resolve_imagereward_files(weights, med_config)
        tok_folder = resolve_bert_tokenizer(tokenizer_path)
        med = json.loads(Path(med_path).read_text())
        sd = unwrap_state_dict(load_checkpoint(pt, "ImageReward"), keys=("state_dict", "model"))
        model = ImageRewardModel.from_official(sd, med, vision_heads=vision_heads)
        del sd
        self.tokenizer = init_tokenizer(tok_folder, vocab_rows=model.text.config.vocab_size)
        if model.text.config.max_position_embeddings < MAX_TEXT_LENGTH:
            raise ValueError(f"med_config.json max_position_embeddings < {MAX_TEXT_LENGTH} (ImageReward's prompt length)")
        model.to(self.dtype)
        model.head.float()  # the head runs in float32, as in the official code (``.float()`` features)
        self.model = freeze(model)
        size = self.model.image_size
        # the official _transform(224): torchvision Resize + CenterCrop (round) + CLIP mean/std
        self.transform = ImageTransform(size=size, crop=(size, size), mean=CLIP_MEAN, std=CLIP_STD, crop_rounding="round")
        self.to(self._device)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH, return_tensors="pt")
        return t["input_ids"].to(self.device), t["attention_mask"].to(self.device)

    def embed_features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        return self.model.vision(pixel_values=pixels).last_hidden_state[:, 0].float()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        pixels = self.transform(images.to(self.device)).to(self.dtype)
        ids, mask = self.tokenize(prompts)
        s = self.model(pixels, ids, mask).float()
        if not self.raw:
            s = (s - SCORE_MEAN) / SCORE_STD
        return s.to(images.device)
