"""HPSv2: a tiny open_clip config registered with ``open_clip.add_model_config``, random weights
saved as the HPS checkpoint layout ({'state_dict': ...} in HPS_v2.1_compressed.pt), loaded through
``get_reward('hpsv2', model_name=...)`` (the same path as ViT-H-14 with the real file)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward
from alignzoo.rewards.hpsv2 import convert_hps_state_dict

from helpers import smooth_images, without_weights

TINY = "alignzoo-test-tiny-hps"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = ["a photo of a cat", "a dog on the moon", "zebra", "four wolves in the park"]


def _save_checkpoint(model, path):
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}}, path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("hpsv2")
    (root / "configs").mkdir()
    (root / "configs" / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / "configs")
    folder = root / "HPSv2"
    folder.mkdir()
    torch.manual_seed(0)
    _save_checkpoint(open_clip.create_model(TINY, pretrained=None), folder / "HPS_v2.1_compressed.pt")
    torch.manual_seed(1)
    _save_checkpoint(open_clip.create_model(TINY, pretrained=None), folder / "HPS_v2_compressed.pt")
    return {"folder": folder, "file": folder / "HPS_v2.1_compressed.pt"}


@pytest.fixture(scope="module")
def reward(weights):
    return get_reward("hpsv2", weights=str(weights["file"]), model_name=TINY)


def _images(b=4, h=64, w=72, seed=0):
    return smooth_images(b, h, w, grid=(8, 9), seed=seed)


def official_scores(path, x, prompts):
    """hpsv2.score's recipe: open_clip val transform on PIL, tokenizer, diag(img_feat @ txt_feat.T)."""
    import open_clip
    from PIL import Image

    model, _, preprocess_val = open_clip.create_model_and_transforms(TINY, pretrained=None)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    model.eval()
    pixels = torch.stack([preprocess_val(Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy())) for im in x])
    text = open_clip.get_tokenizer(TINY)(prompts)
    with torch.no_grad():
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(text), dim=-1)
    return torch.diagonal(img @ txt.T), pixels


def test_matches_official_recipe(weights, reward):
    x = _images()
    ref, pixels = official_scores(weights["file"], x, PROMPTS)
    ours = reward(x, PROMPTS)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    assert ref.std() > 0.02
    torch.testing.assert_close(ours, ref, rtol=0, atol=0.05 * float(ref.std()))
    with torch.no_grad():  # identical pixels -> identical score
        exact = (reward.model.encode_image(pixels, normalize=True) * reward.model.encode_text(reward.tokenizer(PROMPTS), normalize=True)).sum(-1)
    torch.testing.assert_close(exact, ref, rtol=1e-5, atol=1e-5)
    assert (ours.abs() <= 1 + 1e-6).all()  # a cosine


def test_preprocessing_matches_open_clip(weights, reward):
    x = _images(h=300, w=257, seed=5)
    _, pixels = official_scores(weights["file"], x, PROMPTS)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    assert float(((reward.transform(x) - pixels) * std).abs().max()) * 255 <= 1.5


def test_version_selects_checkpoint(weights, reward):
    x = _images(seed=1)
    v21 = get_reward("hpsv2", weights=str(weights["folder"]), model_name=TINY)
    v2 = get_reward("hpsv2", weights=str(weights["folder"]), model_name=TINY, version="v2")
    torch.testing.assert_close(v21(x, PROMPTS), reward(x, PROMPTS))
    torch.testing.assert_close(v2(x, PROMPTS), official_scores(weights["folder"] / "HPS_v2_compressed.pt", x, PROMPTS)[0], rtol=0, atol=0.01)
    assert not torch.allclose(v2(x, PROMPTS), v21(x, PROMPTS))
    with pytest.raises(ValueError, match="version"):
        get_reward("hpsv2", weights=str(weights["folder"]), model_name=TINY, version="v3")


def test_determinism_batch_invariance_prompt_dependence(reward):
    x = _images(seed=2)
    s = reward(x, PROMPTS)
    assert torch.equal(s, reward(x, PROMPTS))
    torch.testing.assert_close(s, torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)]), rtol=1e-5, atol=1e-5)
    a, b = reward(x[:1].repeat(2, 1, 1, 1), ["a cat", "a spaceship"])
    assert abs(float(a - b)) > 1e-4


def test_differentiable(weights):
    r = get_reward("hpsv2", weights=str(weights["file"]), model_name=TINY, differentiable=True)
    x = _images(b=2, seed=3).requires_grad_(True)
    r(x, PROMPTS[:2]).sum().backward()
    assert x.grad.abs().sum() > 0


def test_key_mapping_and_incomplete_checkpoint(weights, tmp_path):
    sd = torch.load(weights["file"], weights_only=True)["state_dict"]
    assert convert_hps_state_dict({"module." + k: v for k, v in sd.items()}).keys() == sd.keys()
    ddp = tmp_path / "ddp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, ddp)
    get_reward("hpsv2", weights=str(ddp), model_name=TINY)  # DDP prefix is stripped
    broken = tmp_path / "broken.pt"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("visual.transformer.resblocks.1.")}}, broken)
    with pytest.raises(ValueError, match="missing"):
        get_reward("hpsv2", weights=str(broken), model_name=TINY)


def test_bad_inputs(reward):
    x = _images(b=2)
    for bad in (x * 2, x[0], x[:, :2], x * float("nan")):
        with pytest.raises(ValueError):
            reward(bad, PROMPTS[:2])
    with pytest.raises(ValueError):
        reward(x, PROMPTS[:1])


def test_offline_without_weights(tmp_path, monkeypatch):
    without_weights(monkeypatch, tmp_path, "ALIGNZOO_HPSV2")
    with pytest.raises(MissingWeightsError) as err:
        get_reward("hpsv2")
    msg = str(err.value)
    for part in ("xswu/HPSv2", "HPS_v2.1_compressed.pt", "--weights", "ALIGNZOO_HPSV2"):
        assert part in msg
    with pytest.raises(MissingWeightsError, match="HPS_v2_compressed.pt"):
        get_reward("hpsv2", version="v2")


def test_features_are_the_normalised_image_embedding(reward):
    import open_clip

    x = _images()
    prompts = ["a red cat", "a dog", "two birds", "a cat"]
    f = reward.features(x)
    with torch.no_grad():
        img = reward.model.encode_image(reward.transform(x))
        txt = reward.model.encode_text(open_clip.get_tokenizer(TINY)(prompts), normalize=True)
    assert reward.feature_space == "hpsv2.1-clip-vit-h-14" and f.shape == img.shape
    torch.testing.assert_close(f, F.normalize(img, dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close((f * txt).sum(-1), reward(x, prompts), rtol=1e-5, atol=1e-5)  # the score is its cosine with the text
