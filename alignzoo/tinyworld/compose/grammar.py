"""The compositional tiny world's prompts: GenEval's six categories in miniature.

=================  ==================================  ===========================================
category           prompt                              strict (GenEval's rule on the scene)
=================  ==================================  ===========================================
single_object      "a circle"                          >= 1 circle
two_object         "a circle and a square"             >= 1 of each
counting           "three triangles" (one..four)       exactly 3 triangles
colors             "a red circle"                      >= 1 circle, and the circles are red
position           "a circle left of a square"         both present; the first's centre is on the
                                                       named side of the second's by > MARGIN px
color_attr         "a red circle and a blue square"    both present, each with its colour
=================  ==================================  ===========================================

A scene holds at most one colour per shape (every sampler keeps that invariant), so "the
colour of the circle" is well defined for the judges. ``criteria`` lists the rules one by one;
``strict`` is their conjunction. The seen / unseen split holds out *combinations*
(:data:`HELD_OUT`): a shape alone, a pair of shapes, a count of a shape, a colour bound to a
shape, a spatial relation between two shapes; a prompt is unseen iff it contains one of them,
so every unseen prompt holds a combination no seen prompt contains. Scenes are sampled in
:mod:`alignzoo.tinyworld.compose.sampling` (re-exported here).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
RELATIONS = ("left of", "right of", "above", "below")
MAX_COUNT = 4
MARGIN = 2.0  # px: a relation holds when the centres differ by more than this on its axis
IMAGE_SIZE = 32  # the canvas the grammar's pixel coordinates refer to (render.SIZE)

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {s: s + "s" for s in SHAPES}
# relation -> (axis, sign): "left of" = first.cx - second.cx < -MARGIN
RELATION_AXIS = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a prompt; None = not constrained (single/two_object: "at least one")."""

    shape: str
    colour: str | None = None
    count: int | None = None


@dataclass(frozen=True)
class PromptSpec:
    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        return make_text(self)


@dataclass(frozen=True)
class Obj:
    """One drawn object: centre (cx, cy) and size (half-extent ``r``, px) on the canvas."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Style:
    """The prompt-independent look, varied uniformly in pretraining images.

    size_scale  object size multiplier (0.7-1.3)        saturation  0 = greyish colours, 1 = full
    offset      px from the image centre to the objects' centre of mass (the layout sampler
                draws a target and writes back what it achieved)
    outline     0-1 strength of a dark inner outline    background  0 = dark, 1 = light
    bg_tint     0-1 strength of a hue tint of the background (hue ``bg_hue``, 0-1)
    """

    size_scale: float = 1.0
    saturation: float = 0.5
    offset: float = 0.0
    outline: float = 0.0
    background: float = 0.85
    bg_tint: float = 0.0
    bg_hue: float = 0.0

    @staticmethod
    def random(rng: np.random.Generator) -> "Style":
        u = rng.uniform(0, 1, size=7)
        return Style(
            size_scale=0.7 + 0.6 * u[0],
            saturation=float(u[1]),
            offset=7.0 * u[2],
            outline=float(u[3]),
            background=float(u[4]),
            bg_tint=float(u[5]),
            bg_hue=float(u[6]),
        )

    @staticmethod
    def neutral() -> "Style":
        """Plain look: unit size, half saturation, centred, no outline, light untinted background."""
        return Style()


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    style: Style = field(default_factory=Style.neutral)

    def with_style(self, **changes) -> "Scene":
        return Scene(self.objects, replace(self.style, **changes))


# ------------------------------------------------------------------------------ text <-> spec


def _a(shape: str, colour: str | None = None) -> str:
    return " ".join(["a"] + ([colour] if colour else []) + [shape])


def make_text(spec: PromptSpec) -> str:
    o = spec.objects
    c = spec.category
    if c in ("single_object", "colors"):
        return _a(o[0].shape, o[0].colour)
    if c == "counting":
        n = o[0].count
        return f"{COUNT_WORDS[n]} {o[0].shape if n == 1 else PLURALS[o[0].shape]}"
    if c in ("two_object", "color_attr"):
        return f"{_a(o[0].shape, o[0].colour)} and {_a(o[1].shape, o[1].colour)}"
    if c == "position":
        return f"{_a(o[0].shape)} {spec.relation} {_a(o[1].shape)}"
    raise ValueError(f"unknown category {c!r}; known: {', '.join(CATEGORIES)}")


def vocabulary() -> list[str]:
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(COUNT_WORDS.values())
    words |= {"a", "and"} | {w for r in RELATIONS for w in r.split()}
    return sorted(words)


def _noun_phrase(words: list[str], text: str) -> ObjectSpec:
    """["a", (colour,) shape] -> ObjectSpec."""
    if len(words) == 2 and words[0] == "a" and words[1] in SHAPES:
        return ObjectSpec(words[1])
    if len(words) == 3 and words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES:
        return ObjectSpec(words[2], words[1])
    raise ValueError(f"cannot parse {' '.join(words)!r} in {text!r}: expected 'a [colour] shape'")


def parse_prompt(text: str) -> PromptSpec:
    """Inverse of ``PromptSpec.text``; a one-line ValueError names an unknown word or the
    expected form."""
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    words = text.strip().lower().split()
    known = set(vocabulary())
    for w in words:
        if w not in known:
            raise ValueError(f"unknown word {w!r} in prompt {text!r}; known words: {', '.join(sorted(known))}")
    counts = {w: n for n, w in COUNT_WORDS.items()}
    if len(words) == 2 and words[0] in counts:
        n = counts[words[0]]
        noun = {PLURALS[s] if n > 1 else s: s for s in SHAPES}.get(words[1])
        if noun is None:
            raise ValueError(f"{text!r}: count {words[0]!r} needs a {'plural' if n > 1 else 'singular'} shape noun")
        return PromptSpec("counting", (ObjectSpec(noun, count=n),))
    spec = _parse_relational(words, text)
    if spec is not None:
        return spec
    first = _noun_phrase(words, text)
    return PromptSpec("single_object" if first.colour is None else "colors", (first,))


def _parse_relational(words: list[str], text: str) -> PromptSpec | None:
    if "and" in words:
        i = words.index("and")
        a, b = _noun_phrase(words[:i], text), _noun_phrase(words[i + 1 :], text)
        if (a.colour is None) != (b.colour is None):
            raise ValueError(f"{text!r}: give both objects a colour or neither")
        cat = "two_object" if a.colour is None else "color_attr"
        spec = PromptSpec(cat, (a, b))
    else:
        rel = next((r for r in RELATIONS if f" {r} " in f" {' '.join(words)} "), None)
        if rel is None:
            return None
        joined = " ".join(words)
        left, right = joined.split(f" {rel} ", 1)
        a, b = _noun_phrase(left.split(), text), _noun_phrase(right.split(), text)
        if a.colour or b.colour:
            raise ValueError(f"{text!r}: position prompts name no colours")
        spec = PromptSpec("position", (a, b), rel)
    if a.shape == b.shape or (a.colour is not None and a.colour == b.colour):
        raise ValueError(f"{text!r}: the two objects must differ in shape (and colour)")
    return spec


def category_of(text: str) -> str:
    return parse_prompt(text).category


# ------------------------------------------------------------------------------ prompt sets


def all_specs(category: str | None = None) -> list[PromptSpec]:
    """Every prompt of the grammar, in a fixed order (one category or all)."""
    O = ObjectSpec
    pairs = list(itertools.permutations(SHAPES, 2))
    cpairs = list(itertools.permutations(COLOURS, 2))
    table = {
        "single_object": [PromptSpec("single_object", (O(s),)) for s in SHAPES],
        "two_object": [PromptSpec("two_object", (O(a), O(b))) for a, b in pairs],
        "counting": [PromptSpec("counting", (O(s, count=n),)) for s in SHAPES for n in range(1, MAX_COUNT + 1)],
        "colors": [PromptSpec("colors", (O(s, c),)) for s in SHAPES for c in COLOURS],
        "position": [PromptSpec("position", (O(a), O(b)), r) for a, b in pairs for r in RELATIONS],
        "color_attr": [PromptSpec("color_attr", (O(a, ca), O(b, cb))) for a, b in pairs for ca, cb in cpairs],
    }
    if category is not None:
        if category not in table:
            raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
        return table[category]
    return [s for c in CATEGORIES for s in table[c]]


def combinations(spec: PromptSpec) -> set[tuple]:
    """The attribute combinations a prompt contains (what the seen / unseen split holds out).
    A relation is normalised ("a square right of a circle" = "a circle left of a square")."""
    o = spec.objects
    if spec.category == "single_object":
        return {("alone", o[0].shape)}
    if spec.category == "two_object":
        return {("pair", tuple(sorted((o[0].shape, o[1].shape))))}
    if spec.category == "counting":
        return {("count", o[0].count, o[0].shape)}
    if spec.category in ("colors", "color_attr"):
        return {("binding", x.colour, x.shape) for x in o}
    a, b, rel = o[0].shape, o[1].shape, spec.relation
    flip = {"right of": "left of", "below": "above"}
    if rel in flip:
        a, b, rel = b, a, flip[rel]
    return {("relation", a, rel, b)}


HELD_OUT: frozenset = frozenset(
    {
        ("alone", "triangle"),
        ("pair", ("square", "triangle")),
        ("count", 4, "circle"),
        ("count", 3, "triangle"),
        ("count", 2, "square"),
        ("binding", "purple", "circle"),
        ("binding", "green", "triangle"),
        ("binding", "yellow", "square"),
        ("relation", "circle", "left of", "triangle"),
        ("relation", "square", "above", "circle"),
    }
)


def is_unseen(spec: PromptSpec) -> bool:
    return bool(combinations(spec) & HELD_OUT)


def seen_prompts(category: str | None = None) -> list[str]:
    """Prompts fine-tuning trains on: every prompt without a held-out combination."""
    return [s.text for s in all_specs(category) if not is_unseen(s)]


def unseen_prompts(category: str | None = None) -> list[str]:
    """Held-out prompts: each contains a combination of :data:`HELD_OUT` no seen prompt has."""
    return [s.text for s in all_specs(category) if is_unseen(s)]


def balanced_prompts(split: str, per_category: int) -> list[str]:
    """``per_category`` prompts of every category of ``split`` (seen | unseen), in category
    order: a category with more prompts gives an evenly spaced subset, one with fewer repeats its
    prompts in turn. Drawing uniformly from the list then weighs the six categories equally, as
    GenEval's prompt set does (the grammar has 78 seen colour-attribution prompts and 2 seen
    single-object ones); the mean over the list is GenEval's overall score."""
    pick = {"seen": seen_prompts, "unseen": unseen_prompts}[split]
    out = []
    for c in CATEGORIES:
        ps = pick(c)
        if len(ps) >= per_category:
            out += [ps[i] for i in np.linspace(0, len(ps) - 1, per_category).round().astype(int)]
        else:
            out += [ps[i % len(ps)] for i in range(per_category)]
    return out


# ------------------------------------------------------------------------------ GenEval's rules


def _relation_holds(first: Obj, second: Obj, relation: str) -> bool:
    axis, sign = RELATION_AXIS[relation]
    d = (first.cx - second.cx) if axis == "x" else (first.cy - second.cy)
    return sign * d > MARGIN


def criteria(spec: PromptSpec, scene: Scene) -> dict[str, bool]:
    """GenEval's rules one by one on a ground-truth scene. Keys: ``present:<shape>``,
    ``count:<shape>`` (counting), ``colour`` (colors: the shape's instances have the colour;
    color_attr: every present prompted object has its colour), ``relation`` (position)."""
    by_shape = {s: [o for o in scene.objects if o.shape == s] for s in SHAPES}
    o = spec.objects
    if spec.category == "counting":
        return {f"count:{o[0].shape}": len(by_shape[o[0].shape]) == o[0].count}
    out = {f"present:{x.shape}": bool(by_shape[x.shape]) for x in o}
    if spec.category in ("colors", "color_attr"):
        out["colour"] = all(ob.colour == x.colour for x in o for ob in by_shape[x.shape])
    if spec.category == "position":
        a, b = by_shape[o[0].shape], by_shape[o[1].shape]
        out["relation"] = bool(a and b) and all(_relation_holds(p, q, spec.relation) for p in a for q in b)
    return out


def strict(spec: PromptSpec, scene: Scene) -> bool:
    return all(criteria(spec, scene).values())


def as_spec(prompt: str | PromptSpec) -> PromptSpec:
    return parse_prompt(prompt) if isinstance(prompt, str) else prompt


_SAMPLERS = ("VIOLATIONS", "random_scene", "sample_scene", "sample_violating_scene")


def __getattr__(name: str):  # the samplers live in compose.sampling; re-exported lazily (no cycle)
    if name in _SAMPLERS:
        from alignzoo.tinyworld.compose import sampling

        return getattr(sampling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
