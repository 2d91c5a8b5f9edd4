"""Prompt sets, by name: the tiny world's ``seen``/``unseen`` and the SDPO paper's prompts."""

from __future__ import annotations

from pathlib import Path

from alignzoo.registry import Registry

PROMPT_SETS: Registry = Registry("prompt set")

# The 45 training animals of DDPO/SDPO (simple_animals.txt) and SDPO's 4 unseen prompts (from DPOK).
SIMPLE_ANIMALS = (
    "cat dog horse monkey rabbit zebra spider bird sheep deer cow goat lion tiger bear raccoon fox wolf lizard "
    "beetle ant butterfly fish shark whale dolphin squirrel mouse rat snake turtle frog chicken duck goose bee pig "
    "turkey fly llama camel bat gorilla hedgehog kangaroo"
).split()
UNSEEN_ANIMALS = ["A green colored rabbit", "Four wolves in the park", "A cat and a dog", "A dog on the moon"]


def _grammar_prompts(module: str, which: str):
    """Loads ``seen_prompts`` / ``unseen_prompts`` of a tiny-world grammar module on first use."""

    def load():
        import importlib

        grammar = importlib.import_module(module)
        return list(grammar.seen_prompts() if which == "seen" else grammar.unseen_prompts())

    return load


def _tiny(which: str):
    return _grammar_prompts("alignzoo.tinyworld.grammar", which)


PROMPT_SETS.register("seen", "the first tiny world's training prompts (tiny_alignment, tiny-sd, tiny-lcm)")(_tiny("seen"))
PROMPT_SETS.register("unseen", "the first tiny world's held-out combinations (colour, count, composition, location)")(_tiny("unseen"))


def _compose(which: str, per_category: int):
    def load():
        from alignzoo.tinyworld.compose.grammar import balanced_prompts

        return balanced_prompts(which, per_category)

    return load


# Category-balanced lists (compose.grammar.balanced_prompts): training draws every category
# equally often, and an evaluation's mean is GenEval's overall score (the mean over categories).
PROMPT_SETS.register("geneval_train", "compositional tiny world: every seen prompt, categories balanced (78 entries each)")(_compose("seen", 78))
PROMPT_SETS.register("geneval_seen", "compositional tiny world: seen prompts, 24 per category (evaluation)")(_compose("seen", 24))
PROMPT_SETS.register("geneval_unseen", "compositional tiny world: held-out combinations, 12 per category (evaluation)")(_compose("unseen", 12))
# Smaller slices of the same lists (a smoke run's evaluation: `quick`, the learning tests)
PROMPT_SETS.register("geneval_seen_small", "compositional tiny world: seen prompts, 8 per category (quick evaluation)")(_compose("seen", 8))
PROMPT_SETS.register("geneval_unseen_small", "compositional tiny world: held-out combinations, 6 per category (quick evaluation)")(_compose("unseen", 6))
PROMPT_SETS.register("simple_animals", "the 45 animal names of DDPO/SDPO training")(lambda: list(SIMPLE_ANIMALS))
PROMPT_SETS.register("unseen_animals", "SDPO's 4 unseen prompts (DPOK): colour, count, composition, location")(lambda: list(UNSEEN_ANIMALS))


def get_prompts(name_or_file: str) -> list[str]:
    """A registered prompt set, or a text file with one prompt per line."""
    if name_or_file in PROMPT_SETS:
        return PROMPT_SETS.get(name_or_file)()
    path = Path(name_or_file)
    if path.is_file():
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {name_or_file!r} holds no prompts")
        return prompts
    PROMPT_SETS.get(name_or_file)  # raises with the known names
    raise AssertionError


def list_prompt_sets() -> list[str]:
    return PROMPT_SETS.names()
