"""Pretraining data of the compositional tiny world's base models: scenes with web-like captions.

Real text-to-image models are good at single objects and colours and weak at counting, position
and colour binding, largely because web alt-text rarely states counts or layouts and often
binds colours loosely. The tiny base models learn from captions with the same defects, so they
inherit the same weaknesses (issue 13, item 4) while every image itself is a clean render:

==============  ======================================================================
scene drawn as  caption (probabilities per image, re-drawn every time it is used)
==============  ======================================================================
single_object   the shape, with its colour half of the time ("a red circle" / "a circle")
colors          "a red circle" 70%, colour left out 30%
counting        right number 35% ("three circles"), number left out 35% ("circles"),
                a wrong number 30% (uniform over the others)
two_object      both shapes in random order; colours (correctly bound) 30% of the time
color_attr      colours bound right 40%, swapped between the shapes 30%, left out 30%
position        the relation 30% (either phrasing, "a circle left of a square" or "a square
                right of a circle"), left out 45% ("a circle and a square"), a wrong
                relation 25% (uniform over the other three)
==============  ======================================================================

With these rates a caption's words still point the right way on average (e.g. "left of" is
right for 0.30 / (0.30 + 0.25 / 3 x 3) = 55% of the scenes it describes), so the pretrained
model knows the words but follows them unreliably; RL has correct samples to reinforce.
Scenes come from :func:`sampling.sample_scene` of a prompt drawn uniformly over categories, then
uniformly over *all* prompts of the category (seen and unseen: a base model has seen every word
pairing; the held-out split concerns fine-tuning prompts), with a random :class:`Style`.
"""

from __future__ import annotations

import numpy as np

from alignzoo.tinyworld.compose import grammar as g
from alignzoo.tinyworld.compose.sampling import sample_scene

COUNT_RATES = (0.35, 0.35, 0.30)  # right, left out, wrong
RELATION_RATES = (0.30, 0.45, 0.25)  # right, left out, wrong
BINDING_RATES = (0.40, 0.30, 0.30)  # right, swapped, left out
COLOUR_KEPT = {"single_object": 0.5, "colors": 0.7, "two_object": 0.3}
FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _np(shape: str, colour: str | None) -> str:
    return " ".join(["a"] + ([colour] if colour else []) + [shape])


def _colour_of(scene: g.Scene, shape: str) -> str:
    return next(o.colour for o in scene.objects if o.shape == shape)


def _pick(rng: np.random.Generator, rates) -> int:
    return int(rng.choice(len(rates), p=rates))


def web_caption(spec: g.PromptSpec, scene: g.Scene, rng: np.random.Generator) -> str:
    """A caption of ``scene`` (drawn for ``spec``) with the defects of the table above."""
    o, cat = spec.objects, spec.category
    if cat in ("single_object", "colors"):
        keep = rng.random() < COLOUR_KEPT[cat]
        return _np(o[0].shape, _colour_of(scene, o[0].shape) if keep else None)
    if cat == "counting":
        n, shape = o[0].count, o[0].shape
        kind = _pick(rng, COUNT_RATES)
        if kind == 1:
            return g.PLURALS[shape] if n > 1 else _np(shape, None)
        if kind == 2:
            n = int(rng.choice([k for k in range(1, g.MAX_COUNT + 1) if k != n]))
        return f"{g.COUNT_WORDS[n]} {shape if n == 1 else g.PLURALS[shape]}"
    first, second = (o[0].shape, o[1].shape) if rng.random() < 0.5 else (o[1].shape, o[0].shape)
    if cat == "two_object":
        if rng.random() < COLOUR_KEPT[cat]:
            return f"{_np(first, _colour_of(scene, first))} and {_np(second, _colour_of(scene, second))}"
        return f"{_np(first, None)} and {_np(second, None)}"
    if cat == "color_attr":
        kind = _pick(rng, BINDING_RATES)
        if kind == 2:
            return f"{_np(first, None)} and {_np(second, None)}"
        c1, c2 = _colour_of(scene, first), _colour_of(scene, second)
        if kind == 1:
            c1, c2 = c2, c1
        return f"{_np(first, c1)} and {_np(second, c2)}"
    if cat == "position":
        kind = _pick(rng, RELATION_RATES)
        if kind == 1:
            return f"{_np(first, None)} and {_np(second, None)}"
        rel = spec.relation if kind == 0 else str(rng.choice([r for r in g.RELATIONS if r != spec.relation]))
        a, b = o[0].shape, o[1].shape
        if rng.random() < 0.5:  # the same statement, the other way round
            a, b, rel = b, a, FLIP[rel]
        return f"{_np(a, None)} {rel} {_np(b, None)}"
    raise ValueError(f"unknown category {cat!r}; known: {', '.join(g.CATEGORIES)}")


def pretraining_scenes(n: int, rng: np.random.Generator) -> tuple[list[g.Scene], list[g.PromptSpec]]:
    """``n`` scenes, each drawn for a prompt of a uniformly drawn category, with their specs."""
    by_cat = {c: g.all_specs(c) for c in g.CATEGORIES}
    specs, scenes = [], []
    for c in rng.choice(g.CATEGORIES, size=n):
        pool = by_cat[str(c)]
        spec = pool[int(rng.integers(len(pool)))]
        specs.append(spec)
        scenes.append(sample_scene(spec, rng))
    return scenes, specs


def caption_batch(specs, scenes, index, rng: np.random.Generator) -> list[str]:
    return [web_caption(specs[i], scenes[i], rng) for i in index]


def caption_vocabulary() -> list[str]:
    """Every word a prompt or a caption uses (the tokenizer's merges cover them whole)."""
    return g.vocabulary()
