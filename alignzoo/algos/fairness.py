"""Equal compute, checked from the algorithms' plans alone (no model, no run).

The zoo's default (SDPO paper, Appendix A): every algorithm of a suite generates the same images
per epoch and makes the same number of optimiser updates per epoch, each over the same number of
images; paired methods therefore update on half as many pairs. An algorithm whose paper says
otherwise declares a named :class:`~alignzoo.algos.base.ComputeException` (SDPO's one update per
shuffled step column; LaSRO's surrogate-gradient generator steps), which the compute table shows.
"""

from __future__ import annotations

import math

from alignzoo.algos.base import Algorithm


def epoch_compute(algo: Algorithm, num_steps: int, world_size: int = 1) -> dict:
    """One epoch's optimiser updates and their global images, from ``algo.update_schedule``."""
    schedule = algo.update_schedule(num_steps, world_size)
    exc = algo.compute_exception()
    return {
        "updates_per_epoch": len(schedule),
        "images_per_update": sorted(set(schedule)),
        "images_per_epoch": algo.images_per_epoch(world_size),
        "images_before_training": algo.images_before_training(world_size),
        "exception": None if exc is None else exc.name,
        "exception_reason": None if exc is None else exc.reason,
    }


def run_compute(algo: Algorithm, num_steps: int, budget: int, world_size: int = 1) -> dict:
    """A whole run under a sample budget, as the trainer spends it: epochs until every generated
    image (stage-1 and per-epoch, all of them) reaches the budget; at least one epoch."""
    e = epoch_compute(algo, num_steps, world_size)
    epochs = max(1, math.ceil((budget - e["images_before_training"]) / e["images_per_epoch"]))
    return {**e, "epochs": epochs, "images": e["images_before_training"] + epochs * e["images_per_epoch"], "updates": epochs * e["updates_per_epoch"]}


def unequal_compute(entries: dict[str, dict]) -> list[str]:
    """Problems among ``{algorithm: epoch_compute(...)}`` of one setting (suite, reward): the
    algorithms without a declared exception must agree on images per epoch, updates per epoch and
    images per update; an exception must carry a name and a reason. Empty when fair."""
    problems = [
        f"{a}: a compute exception needs a name and a reason"
        for a, e in entries.items()
        if e["exception"] is not None and not (e["exception"] and e["exception_reason"])
    ]
    equal = {a: (e["images_per_epoch"], e["updates_per_epoch"], tuple(e["images_per_update"])) for a, e in entries.items() if e["exception"] is None}
    if len(set(equal.values())) > 1:
        problems.append(
            "unequal compute (images per epoch, updates per epoch, images per update): "
            + "; ".join(f"{a} {v[0]}, {v[1]}, {list(v[2])}" for a, v in equal.items())
            + " — make the batch numbers agree or declare a ComputeException"
        )
    return problems
