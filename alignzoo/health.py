"""Training-health checks over a run's log records (``log.jsonl``, one dict per epoch).

Pure functions of the records: no torch, nothing from the trainer, so the trainer can call
:func:`run_flags` at the end of ``train()`` (and after a non-finite loss) and the reports can
call it on any stored log. Each flag is ``{"flag": name, "message": one line}``:

``ratio_not_one_at_first_update``
    ``first_log_ratio_abs`` (max |log π_new − log π_old| over the transitions of an epoch's first
    update, before its optimiser step) above :func:`ratio_tolerance`. The sampling policy and the
    recomputation are the same network with the same weights, so the importance ratio must be 1
    up to float rounding; a larger value means the recomputation differs from sampling (batch
    shape or dtype under bf16, a dropout left on, a scheduler mismatch), and PPO-style clipping
    then acts on numerical error instead of policy change (DDPO, Black et al. 2023, eq. 4).
``clip_never_fires`` / ``clip_always_fires``
    ``clipfrac`` 0 in every epoch (at least :data:`MIN_CLIP_EPOCHS` logged) or ≥ 0.99 in every
    epoch. With mean-over-dimension log-probs a 0.2 clip can stay silent for a whole run (the
    trust region is never enforced); a clip that always fires means almost no sample passes
    gradient (the clip range is far below the per-step ratio noise).
``reward_fell``
    the mean ``reward_mean`` of the last :data:`RECENT_EPOCHS` epochs more than 2 SE below the
    first epoch's, SE = sqrt(SE_start² + SE_recent²) with each epoch's SE = reward_std / √n and n
    the epoch's sample count (difference of the cumulative ``samples``).
``nonfinite_loss``
    a ``loss`` logged as NaN/±inf (the trainer writes the JSON strings "nan", "inf", "-inf").
"""

from __future__ import annotations

import math

FLAGS = ("ratio_not_one_at_first_update", "clip_never_fires", "clip_always_fires", "reward_fell", "nonfinite_loss")
# fp32 recomputation of one step's log-prob (a mean over the latent's dimensions) by the same
# network agrees with sampling to ~1e-6; 1e-3 (a 0.1 % ratio error) leaves room for kernel
# differences between batch shapes while catching bf16/dtype or scheduler mismatches (~1e-2 and up).
RATIO_TOL = 1e-3
ALWAYS_CLIPPED = 0.99
MIN_CLIP_EPOCHS = 2  # one logged epoch is too little to call a clip "never firing"
RECENT_EPOCHS = 3
Z_FALL = 2.0


def as_float(value) -> float | None:
    """A logged number as float: JSON strings "nan"/"inf"/"-inf" become the float; None/other → None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(value.strip().lower())
    return None


def ratio_tolerance(clip_range: float | None = None) -> float:
    """:data:`RATIO_TOL`, or the clip range when that is smaller: a first-update mismatch above the
    clip range (DDPO's ε = 1e-4 here) would make the clip fire on numerical error alone."""
    return min(RATIO_TOL, float(clip_range)) if clip_range is not None and clip_range > 0 else RATIO_TOL


def _series(records: list[dict], key: str) -> list[tuple[object, float]]:
    """(epoch, finite value) of every record that logged ``key`` as a finite number."""
    out = []
    for i, r in enumerate(records):
        v = as_float(r.get(key))
        if v is not None and math.isfinite(v):
            out.append((r.get("epoch", i + 1), v))
    return out


def _flag(name: str, message: str) -> dict:
    return {"flag": name, "message": message}


def ratio_flags(records: list[dict], clip_range: float | None = None) -> list[dict]:
    tol = ratio_tolerance(clip_range)
    bad = [(e, v) for e, v in _series(records, "first_log_ratio_abs") if v > tol]
    if not bad:
        return []
    e, v = max(bad, key=lambda x: x[1])
    return [
        _flag(
            "ratio_not_one_at_first_update",
            f"importance ratio ≠ 1 at the first update of {len(bad)} epoch(s) (max |log ratio| {v:.2e} at epoch {e} > {tol:g}): "
            f"the recomputed log-probs differ from the sampling ones (dtype, batch shape or scheduler mismatch)",
        )
    ]


def clip_flags(records: list[dict]) -> list[dict]:
    fracs = _series(records, "clipfrac")
    if not fracs:
        return []
    values = [v for _, v in fracs]
    if len(values) >= MIN_CLIP_EPOCHS and all(v == 0 for v in values):
        return [
            _flag(
                "clip_never_fires",
                f"the ratio clip never fired (clipfrac 0 in all {len(values)} epochs): the trust region is never "
                f"enforced; check the clip range against the per-step log-ratio scale",
            )
        ]
    if all(v >= ALWAYS_CLIPPED for v in values):
        return [
            _flag(
                "clip_always_fires",
                f"the ratio clip fired on ≥ {ALWAYS_CLIPPED:.0%} of samples in all {len(values)} epochs "
                f"(min clipfrac {min(values):.3f}): almost no sample passes gradient",
            )
        ]
    return []


def epoch_sizes(records: list[dict]) -> list[float | None]:
    """Each record's sample count: the difference of the cumulative ``samples`` (the first record:
    its ``samples`` when it is epoch 1, else the next difference); None where unknown."""
    cum = [as_float(r.get("samples")) for r in records]
    sizes: list[float | None] = []
    for i, c in enumerate(cum):
        prev = cum[i - 1] if i > 0 else (0.0 if records[0].get("epoch", 1) == 1 else None)
        sizes.append(c - prev if c is not None and prev is not None and c > prev else None)
    if sizes and sizes[0] is None and len(sizes) > 1:
        sizes[0] = sizes[1]
    return sizes


def reward_fell_flags(records: list[dict]) -> list[dict]:
    sizes = epoch_sizes(records)
    rows = []
    for r, n in zip(records, sizes):
        m, s = as_float(r.get("reward_mean")), as_float(r.get("reward_std"))
        if m is not None and s is not None and n and math.isfinite(m) and math.isfinite(s):
            rows.append((r.get("epoch"), m, s * s / n))  # (epoch, mean, SE²)
    if len(rows) < 2:
        return []
    start = rows[0]
    recent = rows[1:][-RECENT_EPOCHS:]
    k = len(recent)
    rec_mean = sum(m for _, m, _ in recent) / k
    se = math.sqrt(start[2] + sum(v for _, _, v in recent) / k**2)
    drop = start[1] - rec_mean
    if se > 0 and drop > Z_FALL * se or se == 0 and drop > 0:
        return [
            _flag(
                "reward_fell",
                f"training reward fell from {start[1]:.4g} (epoch {start[0]}) to {rec_mean:.4g} (mean of the last {k} "
                f"epoch(s)), {drop / se if se > 0 else math.inf:.1f} SE below its start",
            )
        ]
    return []


def nonfinite_flags(records: list[dict]) -> list[dict]:
    bad = []
    for i, r in enumerate(records):
        v = as_float(r.get("loss"))
        if v is not None and not math.isfinite(v):
            bad.append(f"{r.get('epoch', i + 1)} ({r.get('loss')})")
    if not bad:
        return []
    return [_flag("nonfinite_loss", f"non-finite loss at epoch(s) {', '.join(bad)}")]


def run_flags(records: list[dict], clip_range: float | None = None) -> list[dict]:
    """Every health flag of one run's epoch records, in :data:`FLAGS` order (empty list: healthy).
    ``clip_range``: the algorithm's ratio clip ε, which tightens the first-update tolerance."""
    records = [r for r in records if isinstance(r, dict)]
    return ratio_flags(records, clip_range) + clip_flags(records) + reward_fell_flags(records) + nonfinite_flags(records)
