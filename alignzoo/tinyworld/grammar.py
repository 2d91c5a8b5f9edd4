"""The tiny world's prompt grammar: coloured shapes, counted and placed.

A prompt is ``<count> <colour> <shape>[s] [<position phrase>]``::

    "a red circle"                      count 1, centre (no position phrase)
    "two blue squares on the left"
    "three yellow triangles at the top"

``make_prompt`` and ``parse_prompt`` are inverses on every :class:`Scene`. The prompt sets
``seen_prompts()`` (what fine-tuning trains on) and ``unseen_prompts()`` (held-out
combinations, the analogue of the SDPO paper's unseen colour / count / composition / location
prompts) are deterministic and disjoint; every prompt in the unseen set contains exactly one
attribute combination that never occurs in the seen set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNTS: tuple[int, ...] = (1, 2, 3)
POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")

COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
# the phrase each position adds to a prompt; the centre adds none
POSITION_PHRASES: dict[str, str] = {"center": "", "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# phrases parse_prompt accepts for the centre as well (make_prompt never writes them)
_CENTER_PHRASES = ("in the center", "at the center")
_FUNCTION_WORDS = ("on", "at", "in", "the")


@dataclass(frozen=True)
class Scene:
    """One tiny-world scene: ``count`` objects of one ``colour`` and ``shape`` in a region."""

    colour: str
    shape: str
    count: int = 1
    position: str = "center"

    def __post_init__(self):
        for field, value, known in (
            ("colour", self.colour, COLOURS),
            ("shape", self.shape, SHAPES),
            ("count", self.count, COUNTS),
            ("position", self.position, POSITIONS),
        ):
            if value not in known:
                raise ValueError(f"unknown {field} {value!r}; known {field}s: {', '.join(map(str, known))}")

    def labels(self) -> dict[str, int]:
        """Class indices of the four attributes (the order of COLOURS, SHAPES, COUNTS, POSITIONS)."""
        return {
            "colour": COLOURS.index(self.colour),
            "shape": SHAPES.index(self.shape),
            "count": COUNTS.index(self.count),
            "position": POSITIONS.index(self.position),
        }


ATTRIBUTES: dict[str, tuple] = {"colour": COLOURS, "shape": SHAPES, "count": COUNTS, "position": POSITIONS}


def vocabulary() -> list[str]:
    """Every word a tiny-world prompt can contain (sorted)."""
    words = set(COLOURS) | set(SHAPES) | set(PLURALS.values()) | set(COUNT_WORDS.values())
    words |= set(_FUNCTION_WORDS) | {p for p in POSITIONS}
    return sorted(words)


def make_prompt(scene: Scene) -> str:
    noun = scene.shape if scene.count == 1 else PLURALS[scene.shape]
    words = [COUNT_WORDS[scene.count], scene.colour, noun]
    phrase = POSITION_PHRASES[scene.position]
    if phrase:
        words.append(phrase)
    return " ".join(words)


def parse_prompt(prompt: str) -> Scene:
    """Inverse of :func:`make_prompt`. Unknown words or a wrong word order raise ValueError."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    words = prompt.strip().lower().split()
    known = vocabulary()
    for w in words:
        if w not in known:
            raise ValueError(f"unknown word {w!r} in tiny-world prompt {prompt!r}; known words: {', '.join(known)}")
    form = "<a|two|three> <colour> <shape[s]> [on the left|on the right|at the top|at the bottom]"
    if len(words) < 3:
        raise ValueError(f"tiny-world prompt {prompt!r} is too short; expected {form}")
    count_of = {w: c for c, w in COUNT_WORDS.items()}
    if words[0] not in count_of:
        raise ValueError(f"tiny-world prompt {prompt!r} must start with a count word (a, two, three); expected {form}")
    count = count_of[words[0]]
    if words[1] not in COLOURS:
        raise ValueError(f"second word of {prompt!r} must be a colour ({', '.join(COLOURS)}); expected {form}")
    colour = words[1]
    singular = {s: s for s in SHAPES}
    plural = {p: s for s, p in PLURALS.items()}
    noun = words[2]
    if count == 1 and noun in singular:
        shape = singular[noun]
    elif count > 1 and noun in plural:
        shape = plural[noun]
    else:
        want = "singular" if count == 1 else "plural"
        raise ValueError(f"third word of {prompt!r} must be a {want} shape noun for count {words[0]!r}; expected {form}")
    rest = " ".join(words[3:])
    position = None
    for pos, phrase in POSITION_PHRASES.items():
        if rest == phrase:
            position = pos
    if rest in _CENTER_PHRASES:
        position = "center"
    if position is None:
        phrases = [p for p in POSITION_PHRASES.values() if p] + list(_CENTER_PHRASES)
        raise ValueError(f"unknown position phrase {rest!r} in {prompt!r}; known: {', '.join(phrases)} (or none)")
    return Scene(colour, shape, count, position)


def all_scenes() -> list[Scene]:
    """All 270 scenes in a fixed order."""
    return [Scene(c, s, n, p) for c, s, n, p in itertools.product(COLOURS, SHAPES, COUNTS, POSITIONS)]


# --- seen / unseen split ----------------------------------------------------------------------
# Each unseen category holds out pairs of attribute values that never occur together in the seen
# prompts (the model has seen each value, never the combination).
HELD_OUT: dict[str, tuple[tuple[str, str], tuple]] = {
    # new colour x shape pairs
    "colour": (("colour", "shape"), (("purple", "triangle"), ("orange", "circle"), ("green", "square"))),
    # new count x shape pairs
    "count": (("count", "shape"), ((3, "circle"), (2, "square"))),
    # new colour x position pairs
    "location": (("colour", "position"), (("red", "bottom"), ("blue", "left"), ("yellow", "right"))),
    # new count x position layouts
    "composition": (("count", "position"), ((3, "left"), (2, "top"))),
}
UNSEEN_CATEGORIES: tuple[str, ...] = tuple(HELD_OUT)
_SPLIT_SEED = 20261122
_N_SEEN = 64
_N_UNSEEN_PER_CATEGORY = 10


def held_out_categories(scene: Scene) -> list[str]:
    """The unseen categories whose held-out combination ``scene`` contains."""
    out = []
    for cat, ((a, b), pairs) in HELD_OUT.items():
        if (getattr(scene, a), getattr(scene, b)) in pairs:
            out.append(cat)
    return out


def _pairs(scene: Scene) -> set[tuple]:
    d = {"colour": scene.colour, "shape": scene.shape, "count": scene.count, "position": scene.position}
    return {(a, d[a], b, d[b]) for a, b in itertools.combinations(d, 2)}


def _split() -> tuple[list[Scene], dict[str, list[Scene]]]:
    rng = np.random.default_rng(_SPLIT_SEED)
    scenes = all_scenes()
    pool = [s for s in scenes if not held_out_categories(s)]
    order = [pool[i] for i in rng.permutation(len(pool))]
    # greedy: first cover every attribute pair that may occur in seen, then fill up
    seen: list[Scene] = []
    covered: set[tuple] = set()
    needed = set().union(*(_pairs(s) for s in pool))
    while covered != needed:
        best = max(order, key=lambda s: len(_pairs(s) - covered))
        seen.append(best)
        order.remove(best)
        covered |= _pairs(best)
    seen += order[: max(0, _N_SEEN - len(seen))]
    unseen: dict[str, list[Scene]] = {}
    for cat in UNSEEN_CATEGORIES:
        cands = [s for s in scenes if held_out_categories(s) == [cat]]
        idx = rng.permutation(len(cands))[:_N_UNSEEN_PER_CATEGORY]
        unseen[cat] = [cands[i] for i in sorted(idx)]
    return seen, unseen


_CACHE: dict[str, object] = {}


def _cached_split():
    if "split" not in _CACHE:
        _CACHE["split"] = _split()
    return _CACHE["split"]


def seen_scenes() -> list[Scene]:
    return list(_cached_split()[0])


def unseen_scenes(category: str | None = None) -> list[Scene]:
    split = _cached_split()[1]
    if category is None:
        return [s for cat in UNSEEN_CATEGORIES for s in split[cat]]
    if category not in split:
        raise ValueError(f"unknown unseen category {category!r}; known: {', '.join(UNSEEN_CATEGORIES)}")
    return list(split[category])


def seen_prompts() -> list[str]:
    """The prompts fine-tuning trains on (64, deterministic; every attribute pair that is not
    held out occurs at least once)."""
    return [make_prompt(s) for s in seen_scenes()]


def unseen_prompts(category: str | None = None) -> list[str]:
    """Held-out prompts (10 per category of :data:`UNSEEN_CATEGORIES`, deterministic); each holds
    exactly one attribute combination that no seen prompt contains."""
    return [make_prompt(s) for s in unseen_scenes(category)]


def all_prompts() -> list[str]:
    return [make_prompt(s) for s in all_scenes()]
