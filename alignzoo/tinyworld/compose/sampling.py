"""Scene samplers of the compositional tiny world (re-exported by ``compose.grammar``).

Layout: object size (half-extent ``r``) = BASE_SIZE[number of objects] x ``style.size_scale``;
objects are placed one by one uniformly at random inside the canvas (1 px margin) with their
bounding boxes at least 1 px apart (restart when stuck), then the whole group is shifted so its
centre of mass (mean of the centres) sits ``style.offset`` px from the image centre in a random
direction, as far as the canvas allows; the achieved offset is written back into the style.
A satisfied relation has a clear margin (``RELATION_CLEAR`` px > MARGIN); a broken one puts the
first object at least 1 px on the wrong side.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from alignzoo.tinyworld.compose import grammar as g

BASE_SIZE = {1: 6.0, 2: 5.0, 3: 4.3, 4: 3.8}
RELATION_CLEAR = 4.0
GAP = 1.0
EDGE = 1.0
VIOLATIONS: dict[str, tuple[str, ...]] = {
    "single_object": ("missing",),
    "two_object": ("missing",),
    "counting": ("count",),
    "colors": ("colour", "missing"),
    "position": ("relation",),
    "color_attr": ("colour", "swap", "missing"),
}


def extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """(left, right, up, down) extent of a shape around its centre, px (render.py draws these)."""
    if shape == "circle":
        return r, r, r, r
    if shape == "square":
        s = 0.88 * r
        return s, s, s, s
    big = 1.2 * r  # triangle: circumradius; centroid at the centre, apex up
    return 0.866 * big, 0.866 * big, big, big / 2


def _box(shape, cx, cy, r):
    left, right, up, down = extent(shape, r)
    return cx - left, cx + right, cy - up, cy + down


def _apart(a, b) -> bool:
    return a[1] + GAP <= b[0] or b[1] + GAP <= a[0] or a[3] + GAP <= b[2] or b[3] + GAP <= a[2]


def _place(shapes: list[str], r: float, rng, pair_ok: Callable | None = None) -> list[tuple[float, float]]:
    """Centres for ``shapes`` of size ``r``: sequential rejection sampling, restarts when stuck.
    ``pair_ok(centre0, centre1)`` constrains the first two objects (relations)."""
    size = g.IMAGE_SIZE
    for _ in range(200):
        boxes, centres = [], []
        for i, s in enumerate(shapes):
            left, right, up, down = extent(s, r)
            for _ in range(60):
                cx = rng.uniform(left + EDGE, size - right - EDGE)
                cy = rng.uniform(up + EDGE, size - down - EDGE)
                box = _box(s, cx, cy, r)
                if not all(_apart(box, b) for b in boxes):
                    continue
                if i == 1 and pair_ok is not None and not pair_ok(centres[0], (cx, cy)):
                    continue
                boxes.append(box)
                centres.append((cx, cy))
                break
            else:
                break
        if len(centres) == len(shapes):
            return centres
    raise RuntimeError(f"could not place {shapes} at size {r:.2f}")


def _shift(shapes, centres, r, offset: float, rng) -> tuple[list[tuple[float, float]], float]:
    """Moves the group's centre of mass towards ``offset`` px from the image centre."""
    if not centres:
        return centres, 0.0
    size = g.IMAGE_SIZE
    c = np.array(centres)
    lo = np.full(2, -np.inf)
    hi = np.full(2, np.inf)
    for s, (cx, cy) in zip(shapes, centres):
        left, right, up, down = extent(s, r)
        lo = np.maximum(lo, [left + EDGE - cx, up + EDGE - cy])
        hi = np.minimum(hi, [size - right - EDGE - cx, size - down - EDGE - cy])
    theta = rng.uniform(0, 2 * np.pi)
    target = size / 2 + offset * np.array([np.cos(theta), np.sin(theta)])
    move = np.clip(target - c.mean(0), lo, hi)
    c = c + move
    achieved = float(np.hypot(*(c.mean(0) - size / 2)))
    return [tuple(map(float, p)) for p in c], achieved


def build_scene(items: list[tuple[str, str]], style: g.Style, rng, pair_ok: Callable | None = None) -> g.Scene:
    """A scene of ``items`` = [(shape, colour), ...] in ``style`` (see the module's layout)."""
    n = len(items)
    r = BASE_SIZE.get(max(n, 1), BASE_SIZE[4]) * style.size_scale
    shapes = [s for s, _ in items]
    centres = _place(shapes, r, rng, pair_ok)
    centres, achieved = _shift(shapes, centres, r, style.offset, rng)
    objs = tuple(g.Obj(s, c, cx, cy, float(r)) for (s, c), (cx, cy) in zip(items, centres))
    return g.Scene(objs, replace(style, offset=achieved))


def _relation_ok(relation: str, holds: bool) -> Callable:
    axis, sign = g.RELATION_AXIS[relation]
    k = 0 if axis == "x" else 1

    def ok(p, q) -> bool:
        d = sign * (p[k] - q[k])
        return d > RELATION_CLEAR if holds else d < -1.0

    return ok


def _colour(spec_colour, rng, avoid=()) -> str:
    if spec_colour is not None:
        return spec_colour
    return str(rng.choice([c for c in g.COLOURS if c not in avoid]))


def _other(values, current, rng) -> str:
    return str(rng.choice([v for v in values if v != current]))


def sample_scene(spec, rng: np.random.Generator, style: g.Style | None = None) -> g.Scene:
    """A scene that satisfies the prompt (``spec`` or its text) under GenEval's rules.
    single_object / colors draw one object (two with probability 1/4); everything else draws
    exactly what the prompt names, each shape once (counting: N times)."""
    spec = g.as_spec(spec)
    style = style if style is not None else g.Style.random(rng)
    o = spec.objects
    if spec.category == "counting":
        items = [(o[0].shape, _colour(None, rng))] * o[0].count
    elif spec.category in ("single_object", "colors"):
        items = [(o[0].shape, _colour(o[0].colour, rng))] * (2 if rng.random() < 0.25 else 1)
    else:
        items = [(x.shape, _colour(x.colour, rng)) for x in o]
    pair_ok = _relation_ok(spec.relation, True) if spec.category == "position" else None
    return build_scene(items, style, rng, pair_ok)


def sample_violating_scene(spec, rng: np.random.Generator, style: g.Style | None = None, kind: str | None = None) -> g.Scene:
    """A scene that breaks exactly one of ``criteria(spec, .)``: ``kind`` (default: random
    among ``VIOLATIONS[category]``) is missing (an object absent, sometimes replaced by another
    shape), count (N -+ 1), colour (one object another colour), swap (color_attr's colours
    exchanged) or relation (first object on the wrong side)."""
    spec = g.as_spec(spec)
    style = style if style is not None else g.Style.random(rng)
    kinds = VIOLATIONS[spec.category]
    kind = kind if kind is not None else str(rng.choice(kinds))
    if kind not in kinds:
        raise ValueError(f"violation {kind!r} does not apply to {spec.category}; known: {', '.join(kinds)}")
    o = spec.objects
    items = [(x.shape, _colour(x.colour, rng)) for x in o]
    pair_ok = None
    if kind == "count":
        n = o[0].count
        m = int(rng.choice([k for k in (n - 1, n + 1) if 0 <= k <= g.MAX_COUNT]))
        items = [items[0]] * m
    elif kind == "missing":
        drop = int(rng.integers(len(items)))
        keep = [it for i, it in enumerate(items) if i != drop]
        absent = [s for s in g.SHAPES if s not in {x.shape for x in o}]
        if rng.random() < (0.8 if not keep else 0.6):  # another shape instead (else just absent)
            keep.append((str(rng.choice(absent)), _colour(None, rng)))
        items = keep
    elif kind == "colour":
        i = int(rng.integers(len(items)))
        items[i] = (items[i][0], _other(g.COLOURS, o[i].colour, rng))
    elif kind == "swap":
        items = [(items[0][0], items[1][1]), (items[1][0], items[0][1])]
    elif kind == "relation":
        pair_ok = _relation_ok(spec.relation, False)
    return build_scene(items, style, rng, pair_ok)


def random_scene(rng: np.random.Generator, style: g.Style | None = None, max_objects: int = g.MAX_COUNT) -> g.Scene:
    """A prompt-free scene (the judges' training data): 0..max_objects objects of random shapes,
    one random colour per shape."""
    style = style if style is not None else g.Style.random(rng)
    n = int(rng.integers(0, max_objects + 1)) if rng.random() < 0.9 else int(rng.integers(1, 3))
    colour = {s: str(rng.choice(g.COLOURS)) for s in g.SHAPES}
    shapes = [str(rng.choice(g.SHAPES)) for _ in range(n)]
    return build_scene([(s, colour[s]) for s in shapes], style, rng)
