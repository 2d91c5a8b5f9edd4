"""alignzoo.health: each flag has a log that trips it and one that does not (hand-made records)."""

import json
import math

from alignzoo.health import FLAGS, RATIO_TOL, epoch_sizes, ratio_tolerance, run_flags


def _log(n=6, **over):
    """A healthy run: 64 images per epoch, rising reward, a clip that fires sometimes, ratio ~1."""
    recs = []
    for e in range(1, n + 1):
        r = {"epoch": e, "samples": 64 * e, "reward_mean": 0.5 + 0.01 * e, "reward_std": 0.1, "loss": 0.3 / e, "clipfrac": 0.1, "first_log_ratio_abs": 1e-6}
        for k, v in over.items():
            r[k] = v(e) if callable(v) else v
        recs.append(r)
    return recs


def _names(records, **kw):
    return [f["flag"] for f in run_flags(records, **kw)]


def test_healthy_log_has_no_flags():
    assert run_flags(_log()) == []
    assert run_flags([]) == []


def test_ratio_not_one():
    assert _names(_log(first_log_ratio_abs=lambda e: 0.02 if e == 3 else 1e-6)) == ["ratio_not_one_at_first_update"]
    assert "epoch 3" in run_flags(_log(first_log_ratio_abs=lambda e: 0.02 if e == 3 else 1e-6))[0]["message"]
    assert _names(_log(first_log_ratio_abs=0.5 * RATIO_TOL)) == []
    assert _names(_log(first_log_ratio_abs=None)) == []  # algorithms without log-probs log null
    # a clip range below the tolerance tightens it: 5e-4 is numerical noise for a 0.2 clip, not for ε = 1e-4
    assert ratio_tolerance(1e-4) == 1e-4 and ratio_tolerance(0.2) == RATIO_TOL
    assert _names(_log(first_log_ratio_abs=5e-4), clip_range=0.2) == []
    assert _names(_log(first_log_ratio_abs=5e-4), clip_range=1e-4) == ["ratio_not_one_at_first_update"]


def test_clip_never_and_always():
    assert _names(_log(clipfrac=0.0)) == ["clip_never_fires"]
    assert _names(_log(clipfrac=lambda e: 0.0 if e < 6 else 0.01)) == []  # fired once: not "never"
    assert _names(_log(n=1, clipfrac=0.0)) == []  # one epoch is too little to say
    assert _names(_log(clipfrac=0.995)) == ["clip_always_fires"]
    assert _names(_log(clipfrac=lambda e: 0.995 if e > 1 else 0.9)) == []
    assert _names(_log(clipfrac=None)) == []  # algorithms without a clip


def test_reward_fell_uses_two_standard_errors():
    # SE of one 64-image epoch = 0.1 / 8 = 0.0125; start vs mean of 3 recent epochs: SE = sqrt(1 + 1/3) * 0.0125 = 0.01443
    se = math.sqrt(0.0125**2 * (1 + 1 / 3))
    fell = _log(reward_mean=lambda e: 0.6 if e == 1 else 0.6 - 2.2 * se)
    assert _names(fell) == ["reward_fell"] and "2.2 SE" in run_flags(fell)[0]["message"]
    assert _names(_log(reward_mean=lambda e: 0.6 if e == 1 else 0.6 - 1.8 * se)) == []
    # a bigger epoch (more images) makes the same drop significant
    big = _log(reward_mean=lambda e: 0.6 if e == 1 else 0.6 - 1.8 * se, samples=lambda e: 256 * e)
    assert _names(big) == ["reward_fell"]
    assert epoch_sizes(big)[:2] == [256, 256]
    # a resumed log (starts at epoch 4) takes its first size from the next difference
    assert epoch_sizes([{"epoch": 4, "samples": 256}, {"epoch": 5, "samples": 320}]) == [64, 64]


def test_nonfinite_loss_from_json_strings():
    recs = json.loads(json.dumps(_log(loss=lambda e: "nan" if e == 4 else 0.1)))
    flags = run_flags(recs)
    assert [f["flag"] for f in flags] == ["nonfinite_loss"] and "4 (nan)" in flags[0]["message"]
    assert _names(_log(loss=lambda e: "-inf" if e == 2 else 0.1)) == ["nonfinite_loss"]
    assert _names(_log(loss=float("inf"))) == ["nonfinite_loss"]
    assert _names(_log(loss=1e30)) == []


def test_flag_names_and_order_are_the_contract():
    assert FLAGS == ("ratio_not_one_at_first_update", "clip_never_fires", "clip_always_fires", "reward_fell", "nonfinite_loss")
    recs = _log(first_log_ratio_abs=0.1, clipfrac=0.0, loss=lambda e: "inf" if e == 6 else 0.1, reward_mean=lambda e: 0.9 if e == 1 else 0.1)
    names = _names(recs)
    assert names == ["ratio_not_one_at_first_update", "clip_never_fires", "reward_fell", "nonfinite_loss"]
    assert all(isinstance(f["message"], str) and "\n" not in f["message"] for f in run_flags(recs))
