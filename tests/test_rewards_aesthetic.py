"""LAION aesthetic predictor: tiny random CLIP + a real-shaped MLP saved in the official layouts
(a transformers CLIP folder, the ``.pth`` state dict), loaded through ``get_reward('aesthetic')``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignzoo.hub import MissingWeightsError
from alignzoo.rewards import get_reward

from helpers import smooth_images, tiny_clip_config, without_weights

PROJ = 768  # the real MLP input (CLIP ViT-L/14 projection)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from transformers import CLIPImageProcessorPil, CLIPModel

    root = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    cfg = tiny_clip_config(vocab_size=64, bos=62, eos=63, text_layers=1, max_positions=16, projection_dim=PROJ)
    clip = CLIPModel(cfg).eval()
    clip_dir = root / "clip-vit-large-patch14"
    clip.save_pretrained(clip_dir)
    CLIPImageProcessorPil().save_pretrained(clip_dir)
    g = torch.Generator().manual_seed(1)
    dims = [(1024, PROJ), (128, 1024), (64, 128), (16, 64), (1, 16)]
    sd = {}
    for idx, (o, i) in zip((0, 2, 4, 6, 7), dims):
        sd[f"layers.{idx}.weight"] = torch.randn(o, i, generator=g) / i**0.5 * (40.0 if idx == 0 else 1.0)
        sd[f"layers.{idx}.bias"] = 0.1 * torch.randn(o, generator=g)
    sd["layers.7.bias"] += 5.5
    mlp_dir = root / "mlp"
    mlp_dir.mkdir()
    torch.save(sd, mlp_dir / "sac+logos+ava1-l14-linearMSE.pth")
    return {"clip": clip, "clip_dir": clip_dir, "mlp_sd": sd, "mlp_file": mlp_dir / "sac+logos+ava1-l14-linearMSE.pth", "root": root}


@pytest.fixture(scope="module")
def reward(weights):
    return get_reward("aesthetic", weights=str(weights["mlp_file"]), clip_path=str(weights["clip_dir"]))


def _images(b=4, h=64, w=48, seed=0):
    return smooth_images(b, h, w, grid=(6, 5), seed=seed)


def reference_scores(weights, x):
    """DDPO/SDPO-style: CLIPProcessor on PIL images -> CLIPModel image features -> L2 norm -> MLP."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(weights["clip_dir"])
    pils = [Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()) for im in x]
    pixels = torch.as_tensor(np.asarray(proc(pils, return_tensors="pt")["pixel_values"]))
    clip = weights["clip"]
    with torch.no_grad():
        emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        for idx in (0, 2, 4, 6, 7):
            emb = F.linear(emb, weights["mlp_sd"][f"layers.{idx}.weight"], weights["mlp_sd"][f"layers.{idx}.bias"])
    return emb.squeeze(-1), pixels


def test_scores_match_reference_pipeline(weights, reward):
    x = _images()
    ref, pixels = reference_scores(weights, x)
    ours = reward(x)
    assert ours.shape == (4,) and ours.dtype == torch.float32
    assert ref.std() > 0.05
    # end to end: the ~1/255 preprocessing difference moves scores by a few % of their spread
    torch.testing.assert_close(ours, ref, rtol=0, atol=0.05 * float(ref.std()))
    # same pixels in -> same score out (vision-only load == the full CLIP model)
    with torch.no_grad():
        emb = reward.clip(pixel_values=pixels).image_embeds
        exact = reward.mlp(emb / emb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(exact, ref, rtol=1e-5, atol=1e-5)


def test_preprocessing_matches_clip_processor(weights, reward):
    _, pixels = reference_scores(weights, _images(h=300, w=257, seed=2))
    ours = reward.transform(_images(h=300, w=257, seed=2))
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    assert float(((ours - pixels) * std).abs().max()) * 255 <= 1.5


def test_determinism_and_batch_invariance(reward):
    x = _images(b=3, seed=3)
    s = reward(x)
    assert torch.equal(s, reward(x))
    torch.testing.assert_close(s, torch.cat([reward(x[i : i + 1]) for i in range(3)]), rtol=1e-5, atol=1e-5)
    assert not reward.reads_prompt and reward.supports_grad
    assert reward(x, ["a", "b", "c"]).equal(s)  # prompts are accepted and ignored


def test_differentiable(weights):
    r = get_reward("aesthetic", weights=str(weights["mlp_file"]), clip_path=str(weights["clip_dir"]), differentiable=True)
    x = _images(b=2, seed=4).requires_grad_(True)
    r(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in r.parameters())


def test_weights_folder_hub_filename_and_env_vars(weights, monkeypatch, tmp_path):
    folder = tmp_path / "trl"
    folder.mkdir()
    torch.save(weights["mlp_sd"], folder / "aesthetic-model.pth")  # TRL's hub copy
    monkeypatch.setenv("ALIGNZOO_AESTHETIC_MLP", str(folder))
    monkeypatch.setenv("ALIGNZOO_CLIP_L14", str(weights["clip_dir"]))
    x = _images(b=1, seed=5)
    torch.testing.assert_close(get_reward("aesthetic")(x), reference_scores(weights, x)[0], rtol=0, atol=0.02)


def test_bad_inputs(reward):
    x = _images(b=2)
    for bad in (x + 1.5, x[0], x[:, :2], x * float("nan")):
        with pytest.raises(ValueError):
            reward(bad)
    with pytest.raises(ValueError):
        reward(x, ["one"])


def test_wrong_mlp_file_is_refused(weights, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, bad)
    with pytest.raises(ValueError, match="layers.0.weight"):
        get_reward("aesthetic", weights=str(bad), clip_path=str(weights["clip_dir"]))


@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    without_weights(monkeypatch, tmp_path, "ALIGNZOO_AESTHETIC_MLP", "ALIGNZOO_CLIP_L14")


def test_offline_without_weights(no_hub, weights):
    with pytest.raises(MissingWeightsError) as err:
        get_reward("aesthetic")
    msg = str(err.value)
    for part in ("aesthetic-model.pth", "--weights", "ALIGNZOO_AESTHETIC_MLP"):
        assert part in msg
    with pytest.raises(MissingWeightsError) as err:
        get_reward("aesthetic", weights=str(weights["mlp_file"]))
    msg = str(err.value)
    for part in ("openai/clip-vit-large-patch14", "config.json", "clip_path", "ALIGNZOO_CLIP_L14"):
        assert part in msg


def test_clip_folder_without_weights_file(weights, tmp_path):
    partial = tmp_path / "clip-partial"
    partial.mkdir()
    (partial / "config.json").write_text((weights["clip_dir"] / "config.json").read_text())
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        get_reward("aesthetic", weights=str(weights["mlp_file"]), clip_path=str(partial))


def test_features_are_the_clip_embedding_the_score_reads(weights, reward):
    x = _images()
    clip = weights["clip"]
    with torch.no_grad():  # CLIP's projected image embedding of the reward's own preprocessing
        emb = clip.visual_projection(clip.vision_model(pixel_values=reward.transform(x)).pooler_output)
    f = reward.features(x)
    assert reward.feature_space == "clip-vit-l-14" and f.shape == emb.shape
    torch.testing.assert_close(f, emb / emb.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reward.mlp(f), reward(x), rtol=1e-5, atol=1e-5)
