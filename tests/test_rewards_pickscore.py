"""PickScore: a tiny random CLIPModel saved as a transformers folder plus a processor folder
(tokenizer + preprocessor_config.json), loaded through ``get_reward('pickscore')``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward

from helpers import smooth_images, tiny_clip_config, without_weights

PROMPTS = ["a cat", "a dog on the moon", "zebra", "a green rabbit in a very long prompt that gets cut off somewhere here"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_tiny_clip_tokenizer(folder):
    """A character-level CLIP BPE tokenizer (no merges): ids 0-51 letters, 52 bos, 53 eos."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(LETTERS)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(folder)
    return tok


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from transformers import CLIPImageProcessorPil, CLIPModel

    root = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    cfg = tiny_clip_config(vocab_size=54, bos=52, eos=53, text_layers=2, max_positions=77, projection_dim=16)  # the tokenizer below
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # spread the embeddings so that scores differ visibly between pairs
        model.visual_projection.weight.mul_(20)
        model.text_projection.weight.mul_(20)
    model.save_pretrained(root / "PickScore_v1")
    proc = root / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    tok = write_tiny_clip_tokenizer(proc)
    CLIPImageProcessorPil().save_pretrained(proc)
    return {"model": model, "folder": root / "PickScore_v1", "processor": proc, "tokenizer": tok}


@pytest.fixture(scope="module")
def reward(weights):
    return get_reward("pickscore", weights=str(weights["folder"]), processor_path=str(weights["processor"]))


def _images(b=4, h=56, w=64, seed=0):
    return smooth_images(b, h, w, grid=(7, 8), seed=seed)


def official_scores(weights, x, prompts):
    """The official PickScore recipe: processor on PIL images and padded text, logit_scale * cosine."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(weights["processor"])
    pils = [Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()) for im in x]
    pixels = torch.as_tensor(np.asarray(proc(pils, return_tensors="pt")["pixel_values"]))
    text = weights["tokenizer"](prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = weights["model"](input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    return torch.diagonal(out.logits_per_image), pixels


def test_official_score(weights, reward):
    x = _images()
    ref, _ = official_scores(weights, x, PROMPTS)
    ours = reward(x, PROMPTS)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    assert ref.std() > 0.5
    torch.testing.assert_close(ours, ref, rtol=0, atol=0.05 * float(ref.std()))


def test_exact_given_same_pixels(weights, reward):
    x = _images(seed=1)
    ref, pixels = official_scores(weights, x, PROMPTS)
    with torch.no_grad():
        img = reward.model.visual_projection(reward.model.vision_model(pixel_values=pixels).pooler_output)
        img = img / img.norm(dim=-1, keepdim=True)
        ours = reward.model.logit_scale.exp() * (img * reward.text_embeds(PROMPTS)).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_sdpo_variant_is_the_bare_cosine(weights, reward):
    sdpo = get_reward("pickscore", weights=str(weights["folder"]), processor_path=str(weights["processor"]), sdpo_variant=True)
    x = _images(seed=2)
    scale = float(weights["model"].logit_scale.detach().exp())
    assert scale > 10
    torch.testing.assert_close(sdpo(x, PROMPTS) * scale, reward(x, PROMPTS), rtol=1e-5, atol=1e-4)
    assert sdpo(x, PROMPTS).abs().max() <= 1.0 + 1e-6


def test_determinism_batch_invariance_prompt_dependence(reward):
    x = _images(seed=3)
    s = reward(x, PROMPTS)
    assert torch.equal(s, reward(x, PROMPTS))
    torch.testing.assert_close(s, torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)]), rtol=1e-5, atol=1e-4)
    same = x[:1].repeat(2, 1, 1, 1)
    a, b = reward(same, ["a cat", "the moon"])
    assert abs(float(a - b)) > 1e-3


def test_differentiable(weights):
    r = get_reward("pickscore", weights=str(weights["folder"]), processor_path=str(weights["processor"]), differentiable=True)
    x = _images(b=2, seed=4).requires_grad_(True)
    r(x, PROMPTS[:2]).sum().backward()
    assert x.grad.abs().sum() > 0


def test_bad_inputs(reward):
    x = _images(b=2)
    for bad in (x - 2, x[0], x[:, :1], x * float("nan")):
        with pytest.raises(ValueError):
            reward(bad, PROMPTS[:2])
    with pytest.raises(ValueError):
        reward(x, PROMPTS[:3])
    with pytest.raises(ValueError):
        reward(x)  # reads the prompt


@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    without_weights(monkeypatch, tmp_path, "ALIGNZOO_PICKSCORE", "ALIGNZOO_PICKSCORE_PROCESSOR", "ALIGNZOO_CLIP_L14")


def test_offline_without_weights(no_hub, weights):
    with pytest.raises(MissingWeightsError) as err:
        get_reward("pickscore")
    msg = str(err.value)
    for part in ("yuvalkirstain/PickScore_v1", "config.json", "--weights", "ALIGNZOO_PICKSCORE"):
        assert part in msg
    with pytest.raises(MissingWeightsError) as err:
        get_reward("pickscore", weights=str(weights["folder"]))
    msg = str(err.value)
    for part in ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "preprocessor_config.json", "processor_path", "ALIGNZOO_PICKSCORE_PROCESSOR"):
        assert part in msg
    with pytest.raises(MissingWeightsError, match="openai/clip-vit-large-patch14"):
        get_reward("pickscore", weights=str(weights["folder"]), sdpo_variant=True)


def test_features_are_the_normalised_image_embedding(weights, reward):
    x = _images()
    model = weights["model"]
    with torch.no_grad():  # PickScore's projected image embedding of the reward's own preprocessing
        emb = model.visual_projection(model.vision_model(pixel_values=reward.transform(x)).pooler_output)
    f = reward.features(x)
    assert reward.feature_space == "pickscore-clip-vit-h-14" and f.shape == emb.shape
    torch.testing.assert_close(f, emb / emb.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)
