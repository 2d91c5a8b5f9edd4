"""The paired bootstrap of alignzoo.reports.pairwise on hand-made scores with known answers.

Each case is checked against a value computed here: a closed form where one exists, otherwise a
straightforward loop implementation of the documented procedure with its own random generator.
"""

import numpy as np
import pytest

from alignzoo.reports.pairwise import format_ci, paired_bootstrap, prompt_means, rng_for, seed_bootstrap

P, K = 32, 2  # prompts × noises per prompt


def _scores(rng, seeds, offset=0.0, seed_sd=0.0, image_sd=0.1, prompts=None):
    """Per-seed score vectors (row = prompt·K + k) around shared prompt difficulties."""
    prompts = np.linspace(0.3, 0.7, P) if prompts is None else prompts
    return [np.repeat(prompts, K) + offset + rng.normal(0, seed_sd) + rng.normal(0, image_sd, P * K) for _ in range(seeds)]


def _loop_bootstrap(a, b, k, n_boot, seed):
    """The documented procedure, written as plain loops (independent of the vectorised code)."""
    rng = np.random.default_rng(seed)
    pa = [x.reshape(-1, k).mean(1) for x in a]
    pb = [x.reshape(-1, k).mean(1) for x in b]
    n_prompts = len(pa[0])
    stats = []
    for _ in range(n_boot):
        sa = rng.integers(0, len(pa), len(pa))
        sb = rng.integers(0, len(pb), len(pb))
        idx = rng.integers(0, n_prompts, n_prompts)  # the same prompts for both algorithms and all seeds
        stats.append(np.mean([pa[s][idx].mean() for s in sa]) - np.mean([pb[s][idx].mean() for s in sb]))
    return np.percentile(stats, [2.5, 97.5])


def test_constant_offset_gives_a_point_interval():
    rng = np.random.default_rng(1)
    b = _scores(rng, 3)
    shared = b[0]
    # every seed identical and A = B + 0.1 image by image: every replicate is exactly 0.1
    d, lo, hi = paired_bootstrap([shared + 0.1] * 3, [shared] * 3, K)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_offset_with_seed_noise_matches_the_loop_implementation():
    rng = np.random.default_rng(2)
    a = _scores(rng, 4, offset=0.1, seed_sd=0.02)
    b = _scores(rng, 3, seed_sd=0.02)
    d, lo, hi = paired_bootstrap(a, b, K, n_boot=4000, rng=np.random.default_rng(5))
    want_d = np.mean([x.mean() for x in a]) - np.mean([x.mean() for x in b])
    ref_lo, ref_hi = _loop_bootstrap(a, b, K, 1500, seed=99)
    assert d == pytest.approx(want_d, abs=1e-12)
    assert lo < 0.1 < hi and lo < d < hi
    tol = 0.15 * (ref_hi - ref_lo)  # Monte Carlo error of the two runs (4,000 and 1,500 replicates)
    assert lo == pytest.approx(ref_lo, abs=tol) and hi == pytest.approx(ref_hi, abs=tol)


def test_pure_noise_covers_zero():
    """A and B from one distribution: the 95% interval contains 0 in (about) 95% of data sets."""
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(40):
        a, b = _scores(rng, 3, seed_sd=0.01), _scores(rng, 3, seed_sd=0.01)
        _, lo, hi = paired_bootstrap(a, b, K, n_boot=1000, rng=np.random.default_rng(i))
        covered += lo <= 0 <= hi
    assert covered >= 34  # 40 × 0.95 = 38 expected; a binomial 1 % lower tail is ~34


def test_width_shrinks_with_more_seeds():
    """Run-to-run drift dominates: quadrupling the seeds about halves the interval."""
    rng = np.random.default_rng(4)
    widths = {}
    for seeds in (3, 12):
        w = []
        for i in range(6):
            a, b = _scores(rng, seeds, seed_sd=0.05, image_sd=0.01), _scores(rng, seeds, seed_sd=0.05, image_sd=0.01)
            _, lo, hi = paired_bootstrap(a, b, K, n_boot=1000, rng=np.random.default_rng(i))
            w.append(hi - lo)
        widths[seeds] = np.mean(w)
    assert widths[12] < 0.7 * widths[3]


def test_prompts_travel_with_their_noises():
    """A − B is +1 on each prompt's first noise and −1 on its second: every prompt's mean
    difference is 0, so resampling prompts (with both noises) gives exactly 0; resampling single
    images (K = 1) would not."""
    base = np.repeat(np.linspace(0, 1, P), K)
    flip = np.tile([1.0, -1.0], P)
    d, lo, hi = paired_bootstrap([base + flip], [base], K)
    assert (d, lo, hi) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    _, lo1, hi1 = paired_bootstrap([base + flip], [base], 1)
    assert hi1 - lo1 > 0.3
    assert prompt_means(np.arange(6.0), 2).tolist() == [0.5, 2.5, 4.5]


def test_seed_bootstrap_closed_form_and_reproducibility():
    """Two seeds each: every extreme (both resamples picking one seed twice) has probability
    1/16 > 2.5 %, so the interval is [min A − max B, max A − min B]."""
    a, b = [0.70, 0.74], [0.60, 0.61]
    d, lo, hi = seed_bootstrap(a, b)
    assert d == pytest.approx(0.115) and lo == pytest.approx(0.70 - 0.61) and hi == pytest.approx(0.74 - 0.60)
    # fixed generator per comparison name: the same call gives the same interval
    rng = np.random.default_rng(0)
    x, y = _scores(rng, 3, seed_sd=0.02), _scores(rng, 3, seed_sd=0.02)
    assert paired_bootstrap(x, y, K, rng=rng_for("seen|ra|1|a|b")) == paired_bootstrap(x, y, K, rng=rng_for("seen|ra|1|a|b"))
    assert format_ci(0.061, 0.032, 0.09) == "+0.061 [+0.032, +0.090]" and format_ci(0.1, np.nan, np.nan) == "–"


def _results(seeds, with_scores):
    """A minimal Results: ddpo and sdpo trained and evaluated on ``r`` at 1 step, ``seeds`` seeds."""
    from pathlib import Path

    import pandas as pd

    from alignzoo.reports.results import Results

    rng = np.random.default_rng(0)
    rows, scores = [], {}
    for algo, off in (("sdpo", 0.2), ("ddpo", 0.0)):
        for s in range(seeds):
            cell = f"{algo}__r__seed{s}"
            x = _scores(rng, 1, offset=off, seed_sd=0.01)[0]
            rows.append(
                {
                    "cell": cell,
                    "algo": algo,
                    "train_reward": "r",
                    "seed": s,
                    "samples": 64,
                    "prompt_set": "seen",
                    "eval_reward": "r",
                    "steps": 1,
                    "mean": float(x.mean()),
                    "n": len(x),
                }
            )
            if with_scores:
                scores[cell] = {"seen|r|1": x}
    return Results(run_dir=Path("."), evals=pd.DataFrame(rows), logs=pd.DataFrame(), suite={"eval": {"images_per_prompt": K}}, scores=scores)


@pytest.mark.parametrize(
    "seeds, with_scores, basis", [(3, True, "seeds × prompts"), (1, True, "prompts (one seed)"), (3, False, "seed means"), (1, False, "none")]
)
def test_basis_falls_back_with_the_data(seeds, with_scores, basis):
    from alignzoo.reports.pairwise import pairwise_frame, pairwise_markdown, ranking_lines

    frame = pairwise_frame(_results(seeds, with_scores), "seen", ["sdpo", "ddpo"], ["r"])
    row = frame.iloc[0]
    assert (row["a"], row["b"], row["basis"]) == ("sdpo", "ddpo", basis)
    assert row["diff"] == pytest.approx(0.2, abs=0.05)
    text, obs = pairwise_markdown(frame, ["r"]), " ".join(ranking_lines(frame))
    if basis == "none":
        cells = [c.strip() for c in text.splitlines()[-1].strip("|").split("|")]
        assert cells == ["sdpo − ddpo", "–"] and "without an interval at 1 step" in obs and not row["separated"]
    elif seeds >= 3:
        assert row["separated"] and "sdpo > ddpo at 1 step: +0.2" in obs
    else:  # one seed: the interval excludes zero, but a ranking needs >= 3 seeds (the project's standard)
        assert row["separated"] and "sdpo > ddpo" not in obs and "sdpo − ddpo at 1 step: +0.2" in obs and "not a ranking" in obs
    if basis != "none":
        assert text.count("‡") == (basis == "prompts (one seed)") and text.count("†") == (basis == "seed means")
