"""The compositional world's base models: web captions, tokenizer, reflow math, committed pipelines."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose import pretrain_data as pdata
from alignzoo.tinyworld.compose.sampling import sample_scene

WORDS_OF_COUNT = {"one": 1, "two": 2, "three": 3, "four": 4}


def _captions(prompt: str, n: int, seed: int = 0) -> tuple[list[str], g.Scene]:
    rng = np.random.default_rng(seed)
    spec = g.parse_prompt(prompt)
    scene = sample_scene(spec, rng)
    return [pdata.web_caption(spec, scene, rng) for _ in range(n)], scene


def test_counting_captions_state_the_right_number_at_the_documented_rates():
    caps, _ = _captions("three circles", 6000)
    right = sum(c == "three circles" for c in caps) / len(caps)
    dropped = sum(c == "circles" for c in caps) / len(caps)
    wrong = [WORDS_OF_COUNT[c.split()[0]] for c in caps if c.split()[0] in WORDS_OF_COUNT and c.split()[0] != "three"]
    assert abs(right - 0.35) < 0.02 and abs(dropped - 0.35) < 0.02
    assert abs(len(wrong) / len(caps) - 0.30) < 0.02 and set(wrong) == {1, 2, 4}
    # "one circle" for a wrong count of 1, plural otherwise
    assert all(re.fullmatch(r"(one circle|(two|three|four) circles|circles)", c) for c in caps)


def test_position_captions_keep_drop_or_garble_the_relation():
    caps, scene = _captions("a circle left of a square", 6000, seed=1)
    circle = next(o for o in scene.objects if o.shape == "circle")
    square = next(o for o in scene.objects if o.shape == "square")
    assert circle.cx < square.cx - g.MARGIN  # the scene itself is right
    true_statements = {"a circle left of a square", "a square right of a circle"}
    right = sum(c in true_statements for c in caps) / len(caps)
    dropped = sum(" and " in c for c in caps) / len(caps)
    # every relational caption parses, and the wrong ones are false of the scene
    rel = [c for c in caps if " and " not in c]
    assert all(g.parse_prompt(c).category == "position" for c in rel)
    assert abs(right - 0.30) < 0.02 and abs(dropped - 0.45) < 0.02
    wrong = [c for c in rel if c not in true_statements]
    assert abs(len(wrong) / len(caps) - 0.25) < 0.02
    said = g.combinations(g.parse_prompt("a circle left of a square"))
    assert all(g.combinations(g.parse_prompt(c)) != said for c in wrong)  # another relation, either phrasing


def test_colour_attribution_captions_swap_colours_at_the_documented_rate():
    caps, scene = _captions("a red circle and a blue square", 6000, seed=2)
    colours = {o.shape: o.colour for o in scene.objects}
    assert colours == {"circle": "red", "square": "blue"}
    coloured = [c for c in caps if any(col in c for col in g.COLOURS)]
    true = [c for c in coloured if g.strict(g.parse_prompt(c), scene)]
    assert abs(len(true) / len(caps) - 0.40) < 0.02
    assert abs((len(coloured) - len(true)) / len(caps) - 0.30) < 0.02  # swapped: false of the scene


def test_pretraining_scenes_cover_every_category_evenly_and_satisfy_their_prompts():
    scenes, specs = pdata.pretraining_scenes(1200, np.random.default_rng(3))
    cats = [s.category for s in specs]
    for c in g.CATEGORIES:
        assert abs(cats.count(c) / len(cats) - 1 / 6) < 0.04
    assert all(g.strict(spec, scene) for spec, scene in zip(specs, scenes))


def test_compose_tokenizer_keeps_every_caption_word_whole():
    from alignzoo.tinyworld.training.compose.base_models import compose_tokenizer

    tok = compose_tokenizer()
    for w in pdata.caption_vocabulary():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert len(tok("a red circle left of a blue square").input_ids) <= tok.model_max_length


def test_trailing_timesteps_are_the_union_of_diffusers_1_to_4_step_schedules():
    from alignzoo.tinyworld.training.compose.distill import trailing_timesteps

    # diffusers' "trailing" spacing: round(arange(1000, 0, -1000 / n)) - 1
    expected = {int(t) for n in range(1, 5) for t in np.round(np.arange(1000, 0, -1000 / n)) - 1}
    assert set(trailing_timesteps(4).tolist()) == expected == {999, 749, 666, 499, 332, 249}


def test_reflow_line_is_followed_exactly_by_ddim_with_its_constant_eps():
    """Step 2 of distill's docstring: DDIM (diffusers' own step, eta 0) fed eps* at every step
    stays on the line and ends at z0 (up to the final alpha, abar_0 = 0.99915)."""
    from alignzoo.tinyworld.training.components import ddim_scheduler
    from alignzoo.tinyworld.training.compose.distill import reflow_point

    gen = torch.Generator().manual_seed(0)
    xT, z0 = torch.randn(3, 8, 8, 8, generator=gen), torch.randn(3, 8, 8, 8, generator=gen)
    sched = ddim_scheduler()
    ac = sched.alphas_cumprod
    for n in (1, 2, 4):
        sched.set_timesteps(n)
        x = xT.clone()
        for t in sched.timesteps:
            xt, eps = reflow_point(xT, z0, ac[int(t)], ac[999])
            assert torch.allclose(x, xt, atol=1e-4)  # on the line at every visited timestep
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        a0 = sched.final_alpha_cumprod
        expected = a0.sqrt() * z0 + (1 - a0).sqrt() * (xT - ac[999].sqrt() * z0) / (1 - ac[999]).sqrt()
        assert torch.allclose(x, expected, atol=1e-4)
        assert (x - z0).abs().max() < 0.2  # sqrt(1 - abar_0) |eps*| ~ 0.03 x 4


def _weights():
    from alignzoo.tinyworld import weights_dir

    return weights_dir()


@pytest.mark.parametrize("name", ["tiny-sd-v2", "tiny-turbo", "tiny-lcm-v2"])
def test_committed_compose_model_samples_through_diffusers(name):
    from alignzoo.tinyworld.training.compose.model_eval import MODELS, load_pipeline, sample

    sub, kind = MODELS[name]
    if not (_weights() / sub / "model_index.json").is_file():
        pytest.skip(f"{name} not trained (alignzoo tinyworld train --stage compose-models)")
    pipe = load_pipeline(_weights() / sub, kind)
    assert pipe.unet.config.in_channels == 8 and pipe.vae.config.latent_channels == 8
    imgs = sample(pipe, ["a red circle", "two squares"], 2, 1.0, seed=0)
    assert imgs.shape == (2, 3, 32, 32) and 0.0 <= imgs.min() and imgs.max() <= 1.0
    assert imgs.std() > 0.05  # not a flat image


def test_balanced_prompt_sets_weigh_categories_equally_and_cover_the_split():
    from collections import Counter

    from alignzoo.prompts import get_prompts

    train = get_prompts("geneval_train")
    assert Counter(g.category_of(p) for p in train) == {c: 78 for c in g.CATEGORIES}
    assert set(train) == set(g.seen_prompts())  # every seen prompt at least once
    unseen = g.balanced_prompts("unseen", 12)
    assert set(unseen) <= set(g.unseen_prompts()) and len(unseen) == 72
    # fewer prompts than slots: repeated in turn (single_object has one unseen prompt, "a triangle")
    assert unseen[:12] == ["a triangle"] * 12
    # more prompts than slots: an evenly spaced subset, first and last included
    ca = g.seen_prompts("color_attr")
    sub = g.balanced_prompts("seen", 24)[-24:]
    assert sub[0] == ca[0] and sub[-1] == ca[-1] and len(set(sub)) == 24


def test_compositional_models_train_on_their_own_prompts_and_the_judge_names_the_fix(capsys):
    """A model of the compositional world trains on geneval_train by default; a first-world prompt
    given to tiny_geneval fails with the prompt sets that fit, and `alignzoo list prompts` lists them."""
    from alignzoo.cli import main as cli_main
    from alignzoo.models.base import get_model_spec
    from alignzoo.rewards import get_reward

    assert {get_model_spec(m).train_prompts for m in ("tiny-sd-v2", "tiny-turbo", "tiny-lcm-v2")} == {"geneval_train"}
    assert get_model_spec("tiny-sd").train_prompts == "seen"
    with pytest.raises(ValueError, match=r"unknown word 'at'.*--prompts geneval_train"):
        get_reward("tiny_geneval")(torch.zeros(1, 3, 32, 32), ["a red square at the top"])
    assert cli_main(["list", "prompts"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("geneval_train", "geneval_seen_small", "geneval_unseen", "simple_animals"))


@pytest.mark.parametrize(
    "stage,expected",
    [("all", ["geneval", "preference", "vae2", "sd2", "turbo", "lcm2"]), ("compose-models", ["vae2", "sd2", "turbo", "lcm2"]), ("turbo", ["turbo"])],
)
def test_train_stage_all_runs_the_compositional_world_in_order(monkeypatch, tmp_path, stage, expected):
    """`--stage all` reproduces the whole compositional world: rewards (renders only) before the
    models, and the models in their dependency order (vae2 -> sd2 -> turbo, lcm2)."""
    from alignzoo.cli import main
    from alignzoo.tinyworld.training.compose import stages

    ran = []
    monkeypatch.setattr(stages, "run_stage", lambda stage, **kw: ran.append((stage, kw["seed"], kw["scale"])) or {})
    assert main(["tinyworld", "train", "--stage", stage, "--out", str(tmp_path), "--seed", "3", "--scale", "0.5"]) == 0
    assert ran == [(s, 3, 0.5) for s in expected]


def test_train_first_world_runs_its_four_stages(monkeypatch, tmp_path):
    from alignzoo.cli import main
    from alignzoo.tinyworld import training

    called = {}
    monkeypatch.setattr(training, "train", lambda **kw: called.update(kw) or {})
    assert main(["tinyworld", "train", "--stage", "first-world", "--out", str(tmp_path)]) == 0
    assert called["stage"] == "all" and training.STAGES == ("rewards", "vae", "sd", "lcm")
