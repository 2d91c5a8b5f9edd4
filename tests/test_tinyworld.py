"""The tiny world: grammar, prompt split, tokenizer, renderer, degradations, shipped pipelines."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch

from alignzoo.tinyworld import grammar
from alignzoo.tinyworld.grammar import (
    COLOURS,
    HELD_OUT,
    UNSEEN_CATEGORIES,
    Scene,
    all_prompts,
    all_scenes,
    held_out_categories,
    make_prompt,
    parse_prompt,
    seen_prompts,
    seen_scenes,
    unseen_prompts,
    unseen_scenes,
    vocabulary,
)
from alignzoo.tinyworld.render import DEGRADATIONS, degrade, render, render_batch

# ---------------------------------------------------------------- grammar


def test_make_prompt_examples():
    assert make_prompt(Scene("red", "circle")) == "a red circle"
    assert make_prompt(Scene("blue", "square", 2, "left")) == "two blue squares on the left"
    assert make_prompt(Scene("yellow", "triangle", 3, "top")) == "three yellow triangles at the top"
    assert make_prompt(Scene("green", "circle", 1, "bottom")) == "a green circle at the bottom"


def test_round_trip_every_scene():
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == 6 * 3 * 3 * 5
    for s in scenes:
        assert parse_prompt(make_prompt(s)) == s
    assert len(set(all_prompts())) == len(scenes)


def test_parse_accepts_case_spacing_and_centre_phrase():
    assert parse_prompt("  Two  RED circles on the LEFT ") == Scene("red", "circle", 2, "left")
    assert parse_prompt("a blue square in the center") == Scene("blue", "square", 1, "center")


def test_parse_unknown_word_names_word_and_vocabulary():
    with pytest.raises(ValueError) as err:
        parse_prompt("a pink circle")
    msg = str(err.value)
    assert "'pink'" in msg and all(w in msg for w in vocabulary())


@pytest.mark.parametrize("bad", ["red circle", "a red circles", "two red circle", "a circle red", "a red circle on the top", ""])
def test_parse_rejects_malformed_prompts(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_scene_rejects_unknown_values():
    with pytest.raises(ValueError, match="colour"):
        Scene("pink", "circle")
    with pytest.raises(ValueError, match="count"):
        Scene("red", "circle", 4)


def test_vocabulary_covers_every_prompt_word():
    vocab = set(vocabulary())
    words = {w for p in all_prompts() for w in p.split()}
    assert words <= vocab
    assert {"red", "circles", "two", "left", "the"} <= vocab


# ---------------------------------------------------------------- seen / unseen split


def test_split_sizes_disjoint_and_deterministic():
    seen, unseen = seen_prompts(), unseen_prompts()
    assert 40 <= len(seen) <= 80 and len(set(seen)) == len(seen)
    assert len(unseen) == len(set(unseen)) >= 20
    assert not set(seen) & set(unseen)
    grammar._CACHE.clear()
    assert seen_prompts() == seen and unseen_prompts() == unseen


def test_seen_covers_every_attribute_value():
    seen = seen_scenes()
    for attr, values in grammar.ATTRIBUTES.items():
        assert {getattr(s, attr) for s in seen} == set(values), attr


def test_unseen_combinations_never_occur_in_seen():
    seen = seen_scenes()
    for cat, ((a, b), pairs) in HELD_OUT.items():
        seen_pairs = {(getattr(s, a), getattr(s, b)) for s in seen}
        assert not seen_pairs & set(pairs), cat
        # each held-out value occurs in seen on its own (only the combination is new)
        for va, vb in pairs:
            assert any(getattr(s, a) == va for s in seen) and any(getattr(s, b) == vb for s in seen)
    for cat in UNSEEN_CATEGORIES:
        scenes = unseen_scenes(cat)
        assert scenes, cat
        for s in scenes:
            assert held_out_categories(s) == [cat]
    assert all(not held_out_categories(s) for s in seen)
    with pytest.raises(ValueError, match="colour"):
        unseen_prompts("nonsense")


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from alignzoo.tinyworld.tokenizer import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_every_word_is_one_whole_word_token(tokenizer):
    for w in vocabulary():
        ids = tokenizer(w, add_special_tokens=False).input_ids
        assert tokenizer.convert_ids_to_tokens(ids) == [w + "</w>"], w


def test_no_prompt_maps_to_unknown_token(tokenizer):
    specials = {tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}
    assert tokenizer.unk_token_id is not None
    for p in all_prompts() + [""]:
        ids = tokenizer(p).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        body = ids[1:-1]
        assert len(body) == len(p.split()) and not set(body) & specials, p
        assert len(ids) <= tokenizer.model_max_length == 16


def test_shipped_tokenizer_matches_grammar(tokenizer):
    from alignzoo.tinyworld import load_tokenizer, tiny_lcm_path, tiny_sd_path

    for folder in (tiny_sd_path(), tiny_lcm_path()):
        shipped = load_tokenizer(folder)
        assert shipped.model_max_length == 16
        batch = all_prompts()
        assert shipped(batch).input_ids == tokenizer(batch).input_ids


# ---------------------------------------------------------------- renderer


def test_render_types_and_determinism():
    img = render(Scene("red", "circle"), np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    prompts = seen_prompts()[:16]
    a, b = render_batch(prompts, seed=3), render_batch(prompts, seed=3)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, render_batch(prompts, seed=4))


def test_background_is_light():
    x = render_batch(all_prompts(), seed=0)
    corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert float(corners.min()) > 0.75


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_colours_differ_in_the_expected_channel(shape):
    def mean_rgb(colour):
        # same seed -> same background and layout; only the object colour differs
        return render_batch([Scene(colour, shape, 3, "center")] * 8, seed=11).mean((0, 2, 3))

    red, green, blue, yellow = (mean_rgb(c) for c in ("red", "green", "blue", "yellow"))
    R, G, B = 0, 1, 2
    assert red[R] > blue[R] and red[R] > green[R]
    assert green[G] > red[G] and green[G] > blue[G]
    assert blue[B] > red[B] and blue[B] > green[B] and blue[B] > yellow[B]
    assert yellow[R] > blue[R] and yellow[G] > blue[G]


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        comp, q = [], deque([(y, x)])
        seen[y, x] = True
        while q:
            cy, cx = q.popleft()
            comp.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < 32 and 0 <= nx < 32 and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        comps.append(comp)
    return comps


def test_counts_and_positions_are_laid_out_as_named():
    rng = np.random.default_rng(5)
    for scene in all_scenes() * 3:
        img = render(scene, rng).astype(np.float32)
        bg = np.median(img[[0, 0, -1, -1], [0, -1, 0, -1]], axis=0)
        mask = np.abs(img - bg).sum(-1) > 120
        comps = [c for c in _components(mask) if len(c) >= 4]
        assert len(comps) == scene.count, make_prompt(scene)
        ys, xs = np.nonzero(mask)
        # never cut by the border
        assert mask[0].sum() == mask[-1].sum() == mask[:, 0].sum() == mask[:, -1].sum() == 0, make_prompt(scene)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        if scene.position == "left":
            assert cx < 13
        elif scene.position == "right":
            assert cx > 19
        elif scene.position == "top":
            assert cy < 13
        elif scene.position == "bottom":
            assert cy > 19
        else:
            assert 12 < cx < 20 and 12 < cy < 20


def test_degradations():
    x = render_batch(seen_prompts()[:8], seed=1)
    gen = torch.Generator().manual_seed(0)
    for kind in DEGRADATIONS:
        assert torch.equal(degrade(x, kind, 0.0, gen), x), kind
        y = degrade(x, kind, 0.8, gen)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert (y - x).abs().mean() > 0.005, kind
        mild = degrade(x, kind, 0.2, torch.Generator().manual_seed(0))
        strong = degrade(x, kind, 0.9, torch.Generator().manual_seed(0))
        assert (strong - x).abs().mean() > (mild - x).abs().mean(), kind
    # blur removes high frequencies; washed-out lowers saturation
    hf = lambda im: ((im[..., 1:] - im[..., :-1]) ** 2).mean()  # noqa: E731
    assert hf(degrade(x, "blur", 1.0)) < 0.6 * hf(x)
    sat = lambda im: (im.max(1).values - im.min(1).values).mean()  # noqa: E731
    assert sat(degrade(x, "washed", 1.0)) < 0.5 * sat(x)
    with pytest.raises(ValueError):
        degrade(x, "sepia", 0.5)
    with pytest.raises(ValueError):
        degrade(x, "blur", 1.5)


def test_render_cli(tmp_path):
    from PIL import Image

    from alignzoo.cli import main

    out = tmp_path / "x.png"
    assert main(["tinyworld", "render", "--prompt", "two red circles on the left", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3)
    assert main(["tinyworld", "render", "--prompt", "a pink circle", "--out", str(out)]) == 2


# ---------------------------------------------------------------- shipped pipelines


def test_shipped_tiny_sd_pipeline_layout_and_sampling():
    from diffusers import StableDiffusionPipeline

    from alignzoo.tinyworld import tiny_sd_path

    folder = tiny_sd_path()
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sc = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (sc.timestep_spacing, sc.set_alpha_to_one, sc.steps_offset, sc.clip_sample) == ("trailing", False, 1, False)
    assert (sc.beta_start, sc.beta_end, sc.beta_schedule, sc.num_train_timesteps) == (0.00085, 0.012, "scaled_linear", 1000)
    assert sum(p.numel() for p in pipe.unet.parameters()) < 1_000_000
    assert pipe.unet.config.time_cond_proj_dim is None
    assert json.loads((folder / "alignzoo.json").read_text())["guidance_scale"] == 1.0
    out = pipe(
        ["a red circle", "two blue squares on the left"],
        num_inference_steps=4,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_shipped_tiny_lcm_pipeline_layout_and_sampling():
    from diffusers import LatentConsistencyModelPipeline

    from alignzoo.tinyworld import tiny_lcm_path

    folder = tiny_lcm_path()
    pipe = LatentConsistencyModelPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert pipe.scheduler.config.original_inference_steps == 50
    assert pipe.unet.config.time_cond_proj_dim is not None
    meta = json.loads((folder / "alignzoo.json").read_text())
    assert 1.0 <= meta["guidance_scale"] <= 3.0
    out = pipe(
        ["a red circle", "three green triangles at the top"],
        num_inference_steps=4,
        guidance_scale=meta["guidance_scale"],
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_shipped_weights_fit_the_budget():
    import hashlib

    from alignzoo.tinyworld import weights_dir

    # what git stores: each distinct file content once (the few-step pipelines carry their
    # teacher's VAE and text encoder byte for byte; git keeps one blob of each)
    blobs = {
        hashlib.sha1(f.read_bytes()).hexdigest(): f.stat().st_size
        for f in weights_dir().rglob("*")
        if f.is_file() and not any(p.endswith("-snapshots") for p in f.parts)
    }  # local, gitignored
    assert sum(blobs.values()) <= 25 * 1024 * 1024
    assert (weights_dir() / "rewards" / "tiny_alignment.safetensors").is_file()


def test_colour_constants_are_distinct():
    from alignzoo.tinyworld.render import COLOUR_RGB

    rgb = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=float)
    d = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    assert d[np.triu_indices(len(COLOURS), 1)].min() > 60
