"""ImageReward on transformers' BLIP: official key mapping, numerics against an independent
re-statement of the official forward pass, preprocessing, and the loading path (tiny random model
saved in the official layout: a folder with ImageReward.pt + med_config.json, and a BERT vocab)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward
from alignzoo.rewards.imagereward import SCORE_MEAN, SCORE_STD, ImageRewardModel, convert_official_state_dict

from helpers import without_weights

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "rewards_imagereward_official_tiny.json").read_text())
PROMPTS = ["a photo of a cat", "a dog on the moon", "zebra", "the cat"]
WORDS = ["photo", "of", "cat", "dog", "the", "on", "moon"]


def bert_vocab() -> list[str]:
    out = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    out += [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + WORDS
    return out


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the official names and shapes (LayerNorms near identity, as trained ones are)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in FIXTURE["params"].items():
        if name.endswith("position_ids"):
            sd[name] = torch.arange(shape[1]).unsqueeze(0)
        elif "norm" in name.lower() and name.endswith("weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) > 1:  # unit-variance outputs, so that attention is far from uniform
            sd[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            sd[name] = 0.1 * torch.randn(shape, generator=g)
    return sd


# ---- an independent statement of the official forward pass (BLIP vit.py + med.py + MLP) ------


def _ln(x, sd, key, eps):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps)


def _lin(x, sd, key):
    return F.linear(x, sd[key + ".weight"], sd[key + ".bias"])


def official_vit(sd, pixels, heads):
    p = "blip.visual_encoder."
    w = sd[p + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, sd[p + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    b, n, d = x.shape[0], x.shape[1] + 1, x.shape[2]
    x = torch.cat([sd[p + "cls_token"].expand(b, -1, -1), x], 1) + sd[p + "pos_embed"][:, :n]
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(p + "blocks."))
    for i in range(depth):
        k = f"{p}blocks.{i}."
        qkv = _lin(_ln(x, sd, k + "norm1", 1e-6), sd, k + "attn.qkv").reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * (d // heads) ** -0.5
        o = (att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, n, d)
        x = x + _lin(o, sd, k + "attn.proj")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, k + "norm2", 1e-6), sd, k + "mlp.fc1")), sd, k + "mlp.fc2")
    return _ln(x, sd, p + "norm", 1e-6)


def _bert_attention(h, ctx, sd, k, heads, mask):
    b, lq, d = h.shape
    hd = d // heads
    q = _lin(h, sd, k + ".self.query").view(b, lq, heads, hd).transpose(1, 2)
    kk = _lin(ctx, sd, k + ".self.key").view(b, ctx.shape[1], heads, hd).transpose(1, 2)
    v = _lin(ctx, sd, k + ".self.value").view(b, ctx.shape[1], heads, hd).transpose(1, 2)
    s = q @ kk.transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        s = s + mask
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, d)
    return _ln(_lin(o, sd, k + ".output.dense") + h, sd, k + ".output.LayerNorm", 1e-12)


def official_text_cls(sd, ids, attn_mask, image_embeds, heads):
    t = "blip.text_encoder."
    pos = torch.arange(ids.shape[1])
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][pos]
    h = _ln(h, sd, t + "embeddings.LayerNorm", 1e-12)
    ext = (1.0 - attn_mask[:, None, None, :].float()) * -10000.0
    layers = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith(t + "encoder.layer."))
    for i in range(layers):
        k = f"{t}encoder.layer.{i}"
        h = _bert_attention(h, h, sd, k + ".attention", heads, ext)
        h = _bert_attention(h, image_embeds, sd, k + ".crossattention", heads, None)
        f = _lin(F.gelu(_lin(h, sd, k + ".intermediate.dense")), sd, k + ".output.dense")
        h = _ln(f + h, sd, k + ".output.LayerNorm", 1e-12)
    return h[:, 0]


def official_head(sd, x):
    for i in (0, 2, 4, 6, 7):
        x = F.linear(x, sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"])
    return x.squeeze(-1)


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    sd = official_state_dict()
    folder = root / "ImageReward"
    folder.mkdir()
    torch.save(sd, folder / "ImageReward.pt")  # the official file is a flat state dict
    (folder / "med_config.json").write_text(json.dumps(FIXTURE["med_config"]))
    tok = root / "bert-base-uncased"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n")
    return {"sd": sd, "folder": folder, "tokenizer": tok}


@pytest.fixture(scope="module")
def reward(official):
    return get_reward("imagereward", weights=str(official["folder"]), tokenizer_path=str(official["tokenizer"]))


def _images(seed=0, b=4, h=48, w=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h // 8, w // 8, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) + 0.05 * torch.rand(b, 3, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round() / 255


# ---- key mapping ------------------------------------------------------------------------------


def test_fixture_vocab_matches_tokenizer_size():
    assert len(bert_vocab()) + 2 == FIXTURE["med_config"]["vocab_size"]  # + [DEC] and [ENC]


def test_official_keys_map_with_nothing_missing_or_unexpected():
    sd = {k: torch.zeros(v) for k, v in FIXTURE["params"].items()}
    conv = convert_official_state_dict(sd)
    assert conv.unknown == []
    assert sorted(conv.ignored) == sorted(
        ["blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids"]
    )
    from alignzoo.rewards.imagereward import text_config_from_med, vision_config_from_state_dict

    vcfg = vision_config_from_state_dict(sd)
    assert (vcfg.hidden_size, vcfg.num_hidden_layers, vcfg.num_attention_heads, vcfg.image_size, vcfg.patch_size) == (128, 2, 2, 224, 16)
    assert vcfg.intermediate_size == 512 and vcfg.layer_norm_eps == 1e-6
    tcfg = text_config_from_med(FIXTURE["med_config"], encoder_width=vcfg.hidden_size)
    model = ImageRewardModel(vcfg, tcfg)
    for name, module, part in (("vision", model.vision, conv.vision), ("text", model.text, conv.text), ("head", model.head, conv.head)):
        expected = module.state_dict()
        assert set(part) == set(expected), f"{name}: missing {set(expected) - set(part)}, unexpected {set(part) - set(expected)}"
        for k, v in part.items():
            assert tuple(v.shape) == tuple(expected[k].shape), (name, k)
    # a few explicit renamings, including the fused qkv (same (3, heads, head_dim) layout in transformers)
    assert "encoder.layers.1.self_attn.qkv.weight" in conv.vision
    assert conv.vision["encoder.layers.1.self_attn.qkv.weight"].shape == (384, 128)
    assert "embeddings.class_embedding" in conv.vision and "post_layernorm.bias" in conv.vision
    assert conv.text["encoder.layer.0.crossattention.self.key.weight"].shape == (32, 128)
    assert set(conv.head) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def test_unknown_and_missing_keys_are_reported():
    sd = official_state_dict()
    extra = dict(sd, **{"blip.visual_encoder.head.weight": torch.zeros(3)})
    assert convert_official_state_dict(extra).unknown == ["blip.visual_encoder.head.weight"]
    broken = {k: v for k, v in sd.items() if "blocks.1.attn.proj.bias" not in k}
    with pytest.raises(ValueError, match="missing"):
        ImageRewardModel.from_official(broken, FIXTURE["med_config"])


# ---- numerics against the official forward pass ----------------------------------------------


def test_converted_model_matches_official_forward(official, reward):
    sd = {k: v.float() for k, v in official["sd"].items()}
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 224, 224)
    ids, mask = reward.tokenize(PROMPTS[:3])
    assert (mask.sum(1) < mask.shape[1]).any(), "want padded prompts in the comparison"
    with torch.no_grad():
        ours = reward.model(pixels, ids, mask)
        ours_img = reward.model.vision(pixel_values=pixels).last_hidden_state
        img = official_vit(sd, pixels, heads=2)
        cls = official_text_cls(sd, ids, mask, img, heads=FIXTURE["med_config"]["num_attention_heads"])
        ref = official_head(sd, cls)
        # the same weights read with 1 vision head instead of 2 must give visibly different outputs
        wrong = ImageRewardModel.from_official(sd, FIXTURE["med_config"], vision_heads=1).vision(pixel_values=pixels).last_hidden_state
    assert ours.shape == (3,)
    torch.testing.assert_close(ours_img, img, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (wrong - img).abs().max() > 0.1
    assert ref.std() > 0.05  # the comparison is not between constants


def test_tokenizer_follows_blip(reward):
    tok = reward.tokenizer
    assert tok.convert_tokens_to_ids("[DEC]") == 64 and tok.convert_tokens_to_ids("[ENC]") == 65
    ids, mask = reward.tokenize(["a photo of a cat"])
    assert ids.shape == (1, 35)
    assert ids[0, :7].tolist() == [2, 5, 57, 58, 5, 59, 3]  # [CLS] a photo of a cat [SEP]
    assert int(mask.sum()) == 7


# ---- preprocessing, scoring path -------------------------------------------------------------


def test_preprocessing_matches_official_transform(reward):
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    official = Compose(
        [
            Resize(224, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(224),
            ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    for h, w in [(48, 40), (300, 253), (227, 224)]:  # 227: odd margin, torchvision's rounding crops at 2
        x = _images(seed=h, b=2, h=h, w=w)
        ours = reward.transform(x)
        for i in range(2):
            pil = Image.fromarray((x[i] * 255).round().byte().permute(1, 2, 0).numpy())
            ref = official(pil)
            diff = (ours[i] - ref).abs() * 0.2686  # back to [0, 1] pixel units
            assert diff.max() < 1.5 / 255 and diff.mean() < 0.5 / 255, (h, w, float(diff.max()))


def test_scores_shape_dtype_determinism_and_batch_invariance(reward):
    x = _images()
    s1 = reward(x, PROMPTS)
    s2 = reward(x, PROMPTS)
    assert s1.shape == (4,) and s1.dtype == torch.float32
    assert torch.equal(s1, s2)
    single = torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(s1, single, rtol=1e-5, atol=1e-5)
    assert s1.std() > 1e-4
    assert reward.images_scored == 8 + 4


def test_normalisation_and_raw_option(official, reward):
    assert (SCORE_MEAN, SCORE_STD) == (0.16717362830052426, 1.0333394966054072)  # ImageReward.py
    raw = get_reward("imagereward", weights=str(official["folder"]), tokenizer_path=str(official["tokenizer"]), raw=True)
    x = _images(seed=3, b=2)
    torch.testing.assert_close(reward(x, PROMPTS[:2]), (raw(x, PROMPTS[:2]) - SCORE_MEAN) / SCORE_STD, rtol=1e-5, atol=1e-5)


def test_prompt_changes_the_score(reward):
    x = _images(seed=4, b=1).repeat(2, 1, 1, 1)
    s = reward(x, ["a photo of a cat", "the moon"])
    assert abs(float(s[0] - s[1])) > 1e-5


def test_differentiable_mode_gives_image_gradients(official):
    r = get_reward("imagereward", weights=str(official["folder"]), tokenizer_path=str(official["tokenizer"]), differentiable=True)
    x = _images(seed=5, b=2).requires_grad_(True)
    r(x, PROMPTS[:2]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in r.parameters())


def test_weights_as_pt_file_and_env_var(official, monkeypatch):
    monkeypatch.setenv("ALIGNZOO_IMAGEREWARD", str(official["folder"] / "ImageReward.pt"))
    monkeypatch.setenv("ALIGNZOO_BERT_TOKENIZER", str(official["tokenizer"]))
    r = get_reward("imagereward")
    x = _images(seed=6, b=1)
    assert r(x, ["a cat"]).shape == (1,)


# ---- errors ------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error(reward):
    x = _images(b=2)
    with pytest.raises(ValueError):
        reward(x * 2, PROMPTS[:2])
    with pytest.raises(ValueError):
        reward(x.clone().fill_(float("nan")), PROMPTS[:2])
    with pytest.raises(ValueError):
        reward(x[0], PROMPTS[:1])
    with pytest.raises(ValueError):
        reward(x[:, :1], PROMPTS[:2])
    with pytest.raises(ValueError):
        reward(x, PROMPTS[:3])


@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    without_weights(monkeypatch, tmp_path, "ALIGNZOO_IMAGEREWARD", "ALIGNZOO_BERT_TOKENIZER")


def test_offline_without_weights_names_files_and_option(no_hub):
    with pytest.raises(MissingWeightsError) as err:
        get_reward("imagereward")
    msg = str(err.value)
    for part in ("ImageReward.pt", "med_config.json", "--weights", "ALIGNZOO_IMAGEREWARD", "THUDM/ImageReward"):
        assert part in msg


def test_offline_without_tokenizer_names_files_and_option(no_hub, official):
    with pytest.raises(MissingWeightsError) as err:
        get_reward("imagereward", weights=str(official["folder"]))
    msg = str(err.value)
    for part in ("vocab.txt", "tokenizer_path", "ALIGNZOO_BERT_TOKENIZER"):
        assert part in msg


def test_empty_tokenizer_is_refused(official, tmp_path):
    tok = tmp_path / "empty-bert"
    tok.mkdir()
    (tok / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(MissingWeightsError, match="empty"):
        get_reward("imagereward", weights=str(official["folder"]), tokenizer_path=str(tok))


def official_param_shapes(c: dict) -> dict[str, list[int]]:
    """The official names and shapes for a config like FIXTURE["tiny_config"], written from BLIP's
    vit.py / med.py / blip_pretrain.py and ImageReward's MLP (checked against the fixture below)."""
    D, P, T, n = c["vision_width"], c["patch"], c["text_hidden"], (c["image_size"] // c["patch"]) ** 2
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    out = {v + "cls_token": [1, 1, D], v + "pos_embed": [1, n + 1, D], v + "patch_embed.proj.weight": [D, 3, P, P], v + "patch_embed.proj.bias": [D]}
    for i in range(c["vision_depth"]):
        b = f"{v}blocks.{i}."
        for name, shape in (
            ("norm1", [D]),
            ("attn.qkv", [3 * D, D]),
            ("attn.proj", [D, D]),
            ("norm2", [D]),
            ("mlp.fc1", [c["vision_mlp"], D]),
            ("mlp.fc2", [D, c["vision_mlp"]]),
        ):
            out[f"{b}{name}.weight"], out[f"{b}{name}.bias"] = shape, [shape[0]]
    out[v + "norm.weight"], out[v + "norm.bias"] = [D], [D]
    out[t + "embeddings.position_ids"] = [1, c["max_pos"]]
    out[t + "embeddings.word_embeddings.weight"] = [c["vocab"], T]
    out[t + "embeddings.position_embeddings.weight"] = [c["max_pos"], T]
    out[t + "embeddings.LayerNorm.weight"], out[t + "embeddings.LayerNorm.bias"] = [T], [T]
    for i in range(c["text_layers"]):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", T), ("crossattention", D)):
            for name, shape in (("self.query", [T, T]), ("self.key", [T, kv]), ("self.value", [T, kv]), ("output.dense", [T, T]), ("output.LayerNorm", [T])):
                out[f"{b}{att}.{name}.weight"], out[f"{b}{att}.{name}.bias"] = shape, [shape[0]]
        for name, shape in (("intermediate.dense", [c["text_intermediate"], T]), ("output.dense", [T, c["text_intermediate"]]), ("output.LayerNorm", [T])):
            out[f"{b}{name}.weight"], out[f"{b}{name}.bias"] = shape, [shape[0]]
    for name, width in (("vision_proj", D), ("text_proj", T)):
        out[f"blip.{name}.weight"], out[f"blip.{name}.bias"] = [c["embed_dim"], width], [c["embed_dim"]]
    for idx, (o, i) in zip((0, 2, 4, 6, 7), ((1024, T), (128, 1024), (64, 128), (16, 64), (1, 16))):
        out[f"mlp.layers.{idx}.weight"], out[f"mlp.layers.{idx}.bias"] = [o, i], [o]
    return out


def test_fixture_is_consistent_with_the_generator():
    assert official_param_shapes(FIXTURE["tiny_config"]) == FIXTURE["params"]


def test_real_size_official_keys_map_onto_real_size_modules():
    """ImageReward-v1.0 at full size (ViT-L/16 224 px, BERT-base, vocab 30524), on the meta device."""
    from alignzoo.rewards.imagereward import text_config_from_med, vision_config_from_state_dict

    real = dict(
        vision_width=1024,
        vision_depth=24,
        patch=16,
        image_size=224,
        vision_mlp=4096,
        text_hidden=768,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
        max_pos=512,
        vocab=30524,
        embed_dim=256,
    )
    med = dict(
        FIXTURE["med_config"],
        hidden_size=768,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_attention_heads=12,
        num_hidden_layers=12,
        vocab_size=30524,
        encoder_width=768,
    )
    sd = {k: torch.empty(v, device="meta") for k, v in official_param_shapes(real).items()}
    conv = convert_official_state_dict(sd)
    assert conv.unknown == [] and len(conv.ignored) == 5
    vcfg = vision_config_from_state_dict(sd)
    assert (vcfg.num_attention_heads, vcfg.num_hidden_layers, vcfg.image_size) == (16, 24, 224)
    with torch.device("meta"):
        model = ImageRewardModel(vcfg, text_config_from_med(med, encoder_width=1024))
    for module, part in ((model.vision, conv.vision), (model.text, conv.text), (model.head, conv.head)):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in part.items()} == expected
    n_params = sum(p.numel() for p in model.parameters())
    assert 440e6 < n_params < 455e6  # "447M parameters" (vision_proj/text_proj excluded here)


def test_real_size_geometry_is_inferred():
    """ViT-L/16 at 224 px -> 16 heads of 64, as BLIP's create_vit('large') builds it."""
    from alignzoo.rewards.imagereward import vision_config_from_state_dict

    shapes = {
        "blip.visual_encoder.patch_embed.proj.weight": (1024, 3, 16, 16),
        "blip.visual_encoder.pos_embed": (1, 197, 1024),
        "blip.visual_encoder.blocks.0.mlp.fc1.weight": (4096, 1024),
        "blip.visual_encoder.blocks.23.norm1.weight": (1024,),
    }
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    cfg = vision_config_from_state_dict(sd)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.image_size, cfg.intermediate_size) == (1024, 24, 16, 224, 4096)
    assert np.isclose(cfg.layer_norm_eps, 1e-6)


def test_features_are_the_vision_towers_cls_token(official, reward):
    x = _images()
    pixels = reward.transform(x)
    sd = {k: v.float() for k, v in official["sd"].items()}
    with torch.no_grad():
        ref = official_vit(sd, pixels, heads=2)[:, 0]
    f = reward.features(x)
    assert reward.feature_space == "imagereward-blip-vit-l" and f.shape == (4, 128)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-4)
