"""The compositional tiny world (issue 13): grammar, seen/unseen split, GenEval's rules on
sampled scenes, and the renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose.grammar import (
    CATEGORIES,
    ObjectSpec,
    PromptSpec,
    Style,
    category_of,
    criteria,
    parse_prompt,
    sample_scene,
    sample_violating_scene,
    seen_prompts,
    strict,
    unseen_prompts,
)
from alignzoo.tinyworld.compose.render import DEGRADATIONS, SIZE, degrade, render, render_batch
from alignzoo.tinyworld.compose.sampling import VIOLATIONS, random_scene

# prompts per category (seen, unseen): 3 shapes x 5 colours, counts 1..4, 4 relations
COUNTS = {"single_object": (2, 1), "two_object": (4, 2), "counting": (9, 3), "colors": (12, 3), "position": (20, 4), "color_attr": (78, 42)}


def test_examples_and_categories():
    O = ObjectSpec
    cases = {
        "a circle": PromptSpec("single_object", (O("circle"),)),
        "a circle and a square": PromptSpec("two_object", (O("circle"), O("square"))),
        "three triangles": PromptSpec("counting", (O("triangle", count=3),)),
        "one square": PromptSpec("counting", (O("square", count=1),)),
        "a red circle": PromptSpec("colors", (O("circle", "red"),)),
        "a circle left of a square": PromptSpec("position", (O("circle"), O("square")), "left of"),
        "a red circle and a blue square": PromptSpec("color_attr", (O("circle", "red"), O("square", "blue"))),
    }
    for text, spec in cases.items():
        assert parse_prompt(text) == spec and spec.text == text
        assert category_of(text) == spec.category


def test_make_parse_inverse_on_every_prompt():
    specs = g.all_specs()
    assert len({s.text for s in specs}) == len(specs) == sum(a + b for a, b in COUNTS.values())
    for s in specs:
        assert parse_prompt(s.text) == s
        assert parse_prompt("  " + s.text.upper() + " ") == s


@pytest.mark.parametrize("bad, word", [("a pink circle", "'pink'"), ("a circle near a square", "'near'"), ("five circles", "'five'")])
def test_parse_names_the_unknown_word(bad, word):
    with pytest.raises(ValueError) as err:
        parse_prompt(bad)
    msg = str(err.value)
    assert word in msg and "\n" not in msg


@pytest.mark.parametrize(
    "bad",
    ["", "circle", "two circle", "one circles", "a circle and a circle", "a red circle and a square", "a red circle left of a square", "a red blue circle"],
)
def test_parse_rejects_malformed_prompts(bad):
    with pytest.raises(ValueError):
        parse_prompt(bad)


def test_seen_unseen_split():
    seen, unseen = seen_prompts(), unseen_prompts()
    assert seen == seen_prompts() and unseen == unseen_prompts()  # deterministic
    assert not set(seen) & set(unseen)
    seen_combos = set().union(*(g.combinations(parse_prompt(p)) for p in seen))
    for p in unseen:
        assert g.combinations(parse_prompt(p)) - seen_combos, p
    for cat, (n_seen, n_unseen) in COUNTS.items():
        assert len(seen_prompts(cat)) == n_seen and len(unseen_prompts(cat)) == n_unseen, cat
        assert all(category_of(p) == cat for p in seen_prompts(cat) + unseen_prompts(cat))
    assert set(seen) | set(unseen) == {s.text for s in g.all_specs()}


def test_relation_equivalence_is_held_out_together():
    assert "a circle left of a triangle" in unseen_prompts("position")
    assert "a triangle right of a circle" in unseen_prompts("position")


def test_samplers_follow_genevals_rules_on_many_draws():
    rng = np.random.default_rng(0)
    specs = g.all_specs()
    kinds_seen = {c: set() for c in CATEGORIES}
    for _ in range(1000):
        spec = specs[rng.integers(len(specs))]
        scene = sample_scene(spec, rng)
        assert strict(spec, scene), (spec.text, scene)
        kind = str(rng.choice(VIOLATIONS[spec.category]))
        bad = sample_violating_scene(spec.text, rng, kind=kind)
        broken = [k for k, ok in criteria(spec, bad).items() if not ok]
        assert len(broken) == 1 and not strict(spec, bad), (spec.text, kind, broken, bad)
        kinds_seen[spec.category].add(kind)
        for sc in (scene, bad):
            assert len(sc.objects) <= g.MAX_COUNT
            for s in g.SHAPES:  # one colour per shape
                assert len({o.colour for o in sc.objects if o.shape == s}) <= 1
    assert all(kinds_seen[c] == set(VIOLATIONS[c]) for c in CATEGORIES)


def test_criteria_examples():
    st = Style.neutral()
    O = g.Obj
    scene = g.Scene((O("circle", "red", 8, 16, 4), O("square", "blue", 24, 16, 4)), st)
    assert strict(parse_prompt("a circle left of a square"), scene)
    assert not strict(parse_prompt("a circle right of a square"), scene)
    assert not strict(parse_prompt("a circle above a square"), scene)  # same row: within the margin
    assert criteria(parse_prompt("a blue circle and a red square"), scene) == {"present:circle": True, "present:square": True, "colour": False}
    assert strict(parse_prompt("one circle"), scene) and not strict(parse_prompt("two circles"), scene)
    assert not strict(parse_prompt("a triangle"), scene)


def test_style_random_and_neutral():
    rng = np.random.default_rng(1)
    styles = [Style.random(rng) for _ in range(500)]
    for name, lo, hi in (("size_scale", 0.7, 1.3), ("saturation", 0, 1), ("outline", 0, 1), ("background", 0, 1), ("bg_tint", 0, 1)):
        v = np.array([getattr(s, name) for s in styles])
        assert v.min() >= lo and v.max() <= hi and v.max() - v.min() > 0.8 * (hi - lo), name
    n = Style.neutral()
    assert n.size_scale == 1 and n.offset == 0 and n.outline == 0


def test_offset_is_what_the_layout_achieved():
    rng = np.random.default_rng(2)
    for _ in range(200):
        sc = sample_scene("a circle and a square", rng)
        c = np.mean([[o.cx, o.cy] for o in sc.objects], 0)
        assert abs(np.hypot(*(c - SIZE / 2)) - sc.style.offset) < 1e-6
    centred = sample_scene("a circle", rng, style=Style.neutral())
    assert centred.style.offset < 1e-6


def _coverage(scene, ob):
    from alignzoo.tinyworld.compose.render import sdf

    return np.clip(0.5 - sdf(ob.shape, ob.cx, ob.cy, ob.size), 0, 1)


def test_objects_visible_and_inside_the_image():
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = random_scene(rng)
        img = render(scene)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.float32
        assert img.min() >= 0 and img.max() <= 1
        for ob in scene.objects:
            from alignzoo.tinyworld.compose.sampling import extent

            left, right, up, down = extent(ob.shape, ob.size)
            assert ob.cx - left >= 0.99 and ob.cx + right <= SIZE - 0.99
            assert ob.cy - up >= 0.99 and ob.cy + down <= SIZE - 0.99
            cov = _coverage(scene, ob)
            assert cov.sum() >= 10  # at least ~10 px of body
            # the body differs visibly from the background
            inside = img[cov > 0.99].mean(0)
            bg = render(g.Scene((), scene.style))[0, 0]
            assert np.abs(inside - bg).max() > 0.08, (ob, scene.style)


def test_four_counted_shapes_fit_without_overlap():
    rng = np.random.default_rng(4)
    big = Style(size_scale=1.3, offset=7.0)
    for shape in g.SHAPES:
        for _ in range(30):
            scene = sample_scene(f"four {shape}s", rng, style=big)
            covs = [_coverage(scene, o) for o in scene.objects]
            assert len(covs) == 4
            for i in range(4):
                for j in range(i + 1, 4):
                    assert (np.minimum(covs[i], covs[j]) > 0).sum() == 0


def test_render_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(s, rng) for s in g.all_specs()[:40]]
    a, b, c = render_batch(scenes, seed=7), render_batch(scenes, seed=7), render_batch(scenes, seed=8)
    assert a.shape == (40, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.array_equal(render(scenes[0]), render(scenes[0]))


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_degrade(kind):
    x = render_batch([sample_scene("a red circle", np.random.default_rng(6))] * 4, seed=0)
    assert torch.equal(degrade(x, kind, 0.0), x)
    y = degrade(x, kind, 0.8, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert float((y - x).abs().mean()) > 0.005
    with pytest.raises(ValueError):
        degrade(x, "sepia", 0.5)
