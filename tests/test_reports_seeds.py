"""`alignzoo report` on a synthetic 3-seed results folder with the issue-12 keys.

3 algorithms × 2 rewards × 3 seeds (+ a random-reward control of ddpo), steps 1 and 4, one
prompt set of 8 prompts × 2 noises; per-image scores (scores.json), log counters, provenance,
diversity and a health.json. The designed effects: sdpo gains most on ra while hacking rb and
collapsing diversity; ddpo's gain on rb equals its random-reward control's; sdpo and rebel are
close on rb; rebel__ra__seed1's clip never fires; sdpo__rb__seed2 logged a NaN loss. Expected
numbers are recomputed here from what the helper wrote.
"""

import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from test_pairwise import _loop_bootstrap

from alignzoo.cli import main as cli_main
from alignzoo.reports.compute import evals_with_x, logs_with_x
from alignzoo.reports.results import load_results

ALGOS = ["sdpo", "ddpo", "rebel"]
REWARDS = ["ra", "rb"]
SEEDS = [0, 1, 2]
STEPS = [1, 4]
PS = "seen"
P, K = 8, 2
POINTS = [64, 192]  # evaluation points; 192 (epoch 3) is final
GAIN = {
    ("sdpo", "ra"): {"ra": 0.20, "rb": -0.10},
    ("ddpo", "ra"): {"ra": 0.05},
    ("rebel", "ra"): {"ra": 0.06},
    ("sdpo", "rb"): {"rb": 0.10},
    ("ddpo", "rb"): {"rb": 0.02},
    ("rebel", "rb"): {"rb": 0.09},
    ("ddpo", "random"): {"rb": 0.02},
}
SHIFT = {0: -0.01, 1: 0.0, 2: 0.012}  # run-to-run drift of seed s (× 1, 2, 3 for sdpo, ddpo, rebel)
JITTER = {0: -0.004, 1: 0.001, 2: 0.003}  # diversity drift per seed (mean 0)
DIV_PRE = {1: 0.40, 4: 0.50}


def _hash(prov):
    return hashlib.sha256(json.dumps(prov, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _line(cell, algo, train, seed, samples, reward, n, scores, pre, diversity, lora):
    prov = {
        "model": "tiny-sd",
        "model_checksum": "m0",
        "lora_checksum": lora,
        "reward": reward,
        "reward_checksum": None,
        "reward_args": {},
        "steps": n,
        "eta": 0.0,
        "guidance": 1.0,
        "resolution": 32,
        "prompts_checksum": "p0",
        "images_per_prompt": K,
        "noise_seed": 1234,
        "scheduler": "ddim-trailing",
    }
    d = scores - pre if pre is not None else None
    return {
        "cell": cell,
        "algo": algo,
        "train_reward": train,
        "seed": seed,
        "samples": samples,
        "epoch": samples // 64,
        "prompt_set": PS,
        "eval_reward": reward,
        "steps": n,
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=1)),
        "n": len(scores),
        "diff_mean": None if d is None else float(d.mean()),
        "diff_se": None if d is None else float(d.std(ddof=1) / math.sqrt(len(d))),
        "provenance": prov,
        "hash": _hash(prov),
        "setting_hash": _hash({k: v for k, v in prov.items() if k != "lora_checksum"}),
        "diversity": diversity,
        "diversity_space": "tiny_alignment.backbone",
        # drift: none for the pretrained model (its own reference), per seed and step count otherwise
        "drift": None if pre is None else 0.05 * n + JITTER[seed],
        "drift_se": None if pre is None else 0.01,
    }


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _log(algo, a_i, seed, clip_never=False, nan_at=None):
    recs = []
    for e in (1, 2, 3):
        recs.append(
            {
                "epoch": e,
                "samples": 64 * e,
                "reward_mean": 0.5 + 0.02 * e,
                "reward_std": 0.1,
                "loss": "nan" if e == nan_at else 0.1,
                "clipfrac": 0.0 if clip_never else 0.1,
                "first_log_ratio_abs": 1e-7,
                "reward_queries": (192 if algo == "sdpo" else 128) * e,
                "unet_forward": (256 + 64 * a_i) * e,
                "unet_backward": 128 * e,
                "vae_decodes": 64 * e * (3 if algo == "sdpo" else 1),
                "updates": (8 if algo == "sdpo" else 4) * e,
                "seconds_total": (10.0 + a_i + seed) * e,
            }
        )
    return "".join(json.dumps(r) + "\n" for r in recs)


def build(root):
    """Write the folder; returns {"pre": {(reward, n): scores}, "runs": {(algo, train, seed, reward, n): (scores, line)}, "logs": ...}."""
    rng = np.random.default_rng(7)
    _write(
        root / "suite.toml",
        'name = "seeds3"\nmodel = "tiny-sd"\nalgorithms = ["sdpo", "ddpo", "rebel"]\nrewards = ["ra", "rb", "random"]\n'
        'seeds = [0, 1, 2]\n[train]\nnum_steps = 4\n[eval]\nsteps = [1, 4]\nprompt_sets = ["seen"]\nimages_per_prompt = 2\n',
    )
    prompts = np.repeat(np.linspace(0.3, 0.7, P), K)
    pre = {(r, n): prompts + 0.02 * math.log2(n) + rng.normal(0, 0.05, P * K) for r in REWARDS for n in STEPS}
    _write(
        root / "pretrained" / "eval.jsonl",
        "".join(json.dumps(_line("pretrained", "pretrained", None, None, 0, r, n, s, None, DIV_PRE[n], None)) + "\n" for (r, n), s in pre.items()),
    )
    _write(root / "pretrained" / "scores.json", {f"{PS}|{r}|{n}": s.tolist() for (r, n), s in pre.items()})
    runs, logs = {}, {}
    cells = [(a, r, s) for a in ALGOS for r in REWARDS for s in SEEDS] + [("ddpo", "random", s) for s in SEEDS]
    for algo, train, seed in cells:
        a_i, cell = ALGOS.index(algo), f"{algo}__{train}__seed{seed}"
        lines, final = [], {}
        for samples in POINTS:
            for n in STEPS:
                div = (0.3 if (algo, train) == ("sdpo", "ra") else DIV_PRE[n]) + JITTER[seed]
                for r in REWARDS:
                    g = GAIN.get((algo, train), {}).get(r, 0.0) * samples / POINTS[-1]
                    s = pre[(r, n)] + g + SHIFT[seed] * (1 + a_i) + rng.normal(0, 0.01, P * K)
                    line = _line(cell, algo, train, seed, samples, r, n, s, pre[(r, n)], div, f"{cell}@{samples}")
                    lines.append(line)
                    if samples == POINTS[-1]:
                        final[f"{PS}|{r}|{n}"] = s.tolist()
                        runs[(algo, train, seed, r, n)] = (s, line)
        _write(root / cell / "eval.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        _write(root / cell / "scores.json", final)
        logs[(algo, train, seed)] = _log(algo, a_i, seed, clip_never=cell == "rebel__ra__seed1", nan_at=3 if cell == "sdpo__rb__seed2" else None)
        _write(root / cell / "log.jsonl", logs[(algo, train, seed)])
        _write(root / cell / "DONE", "ok")
    _write(root / "sdpo__rb__seed2" / "health.json", {"flags": [{"flag": "nonfinite_loss", "message": "non-finite loss at epoch(s) 3 (nan)"}]})
    return {"pre": pre, "runs": runs, "logs": logs}


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds3") / "seeds3"
    data = build(root)
    out = root.parent / "out"
    assert cli_main(["report", str(root), "--out", str(out), "--x", "unet"]) == 0
    return {"root": root, "out": out, "data": data, "md": (out / "report.md").read_text()}


def _means(data, algo, train, reward, n):
    return [data["runs"][(algo, train, s, reward, n)][1]["mean"] for s in SEEDS]


def _pm(vals):
    return float(np.mean(vals)), float(np.std(vals, ddof=1) / math.sqrt(len(vals)))


def test_table_shows_mean_and_se_across_seeds(rep):
    csv = pd.read_csv(rep["out"] / "table_seen.csv")
    for row in csv[csv["method"] != "pretrained"].itertuples():
        mean, se = _pm(_means(rep["data"], row.method, row.reward, row.reward, row.steps))
        assert (row.mean, row.std) == pytest.approx((mean, se), abs=1e-12)
        assert row.error == "standard error across seeds" and row.seeds == 3
    assert "standard error across seeds (run-to-run" in (rep["out"] / "table_seen.md").read_text()


def test_pairwise_intervals(rep):
    data, pw = rep["data"], pd.read_csv(rep["out"] / "pairwise_seen.csv")
    assert len(pw) == len(REWARDS) * len(STEPS) * 3  # 3 pairs of 3 algorithms
    row = pw[(pw["reward"] == "ra") & (pw["steps"] == 1) & (pw["a"] == "sdpo") & (pw["b"] == "ddpo")].iloc[0]
    a = [data["runs"][("sdpo", "ra", s, "ra", 1)][0] for s in SEEDS]
    b = [data["runs"][("ddpo", "ra", s, "ra", 1)][0] for s in SEEDS]
    lo, hi = _loop_bootstrap(a, b, K, 1500, seed=3)
    assert row["diff"] == pytest.approx(np.mean(_means(data, "sdpo", "ra", "ra", 1)) - np.mean(_means(data, "ddpo", "ra", "ra", 1)))
    assert row["lo"] == pytest.approx(lo, abs=0.15 * (hi - lo)) and row["hi"] == pytest.approx(hi, abs=0.15 * (hi - lo))
    assert row["basis"] == "seeds × prompts" and row["separated"]
    close = pw[(pw["reward"] == "rb") & (pw["a"] == "sdpo") & (pw["b"] == "rebel")]
    assert not close["separated"].any()  # 0.01 apart with run-to-run drift of ~0.02
    text = (rep["out"] / "pairwise_seen.md").read_text()
    assert f"{row['diff']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}] *" in text
    obs = rep["md"].split("## Observations", 1)[1].split("\n## ", 1)[0]
    assert f"sdpo > ddpo at 1 step: {row['diff']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]" in obs
    assert "sdpo vs rebel not separated at 1 and 4 steps" in obs and "Best" not in obs


def test_bold_only_where_intervals_separate_the_top(rep):
    """Table 1 bolds a column's top algorithm only when its intervals (3 seeds a side) exclude zero
    against every other algorithm: sdpo on ra; on rb sdpo and rebel are not separated, so nothing."""
    pw = pd.read_csv(rep["out"] / "pairwise_seen.csv")
    table = (rep["out"] / "table_seen.md").read_text().splitlines()
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.strip().strip("|").split("|")] for line in table if line.startswith("|"))}
    header = rows.pop("method") if "method" in rows else next(iter(rows.values()))
    for k, col in enumerate(header):
        reward, n = col.split()[0], int(col.split()[1].rstrip("s"))
        means = {a: np.mean(_means(rep["data"], a, reward, reward, n)) for a in ALGOS}
        top = max(means, key=means.get)
        p = pw[(pw["reward"] == reward) & (pw["steps"] == n) & ((pw["a"] == top) | (pw["b"] == top))]
        expect_bold = bool(p["separated"].all()) and len(p) == len(ALGOS) - 1
        assert rows[top][k].startswith("**") == expect_bold, col
        assert not any(rows[a][k].startswith("**") for a in ALGOS if a != top)
    assert rows["sdpo"][0].startswith("**") and not any(rows[a][2].startswith("**") for a in ALGOS)


def test_heldout_rewards_and_diversity(rep):
    data = rep["data"]
    text = (rep["out"] / "heldout_seen_ra.md").read_text()
    lines = [x for x in text.splitlines() if x.startswith("|")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    assert headers == ["method", "ra 1s", "ra 4s", "rb (held-out) 1s", "rb (held-out) 4s", "diversity 1s", "diversity 4s", "drift 1s", "drift 4s"]
    sdpo = [c.strip() for c in next(x for x in lines if x.startswith("| sdpo")).strip("|").split("|")]
    m, se = _pm(_means(data, "sdpo", "ra", "rb", 4))
    assert sdpo[headers.index("rb (held-out) 4s")] == f"{m:.3f} ± {se:.3f}"
    dm, dse = _pm([0.3 + JITTER[s] for s in SEEDS])
    assert sdpo[headers.index("diversity 4s")] == f"{dm:.3f} ± {dse:.3f}"
    drift_m, drift_se = _pm([0.2 + JITTER[s] for s in SEEDS])
    assert sdpo[headers.index("drift 4s")] == f"{drift_m:.3f} ± {drift_se:.3f}"
    pre = [c.strip() for c in next(x for x in lines if x.startswith("| pretrained")).strip("|").split("|")]
    assert pre[headers.index("drift 1s")] == "–" and "RMS pixel distance" in text
    assert "tiny_alignment.backbone" in text


def test_compute_table_and_x_axes(rep):
    csv = pd.read_csv(rep["out"] / "compute.csv").set_index(["method", "reward"])
    last = [json.loads(rep["data"]["logs"][("sdpo", "ra", s)].splitlines()[-1]) for s in SEEDS]
    for col in ("samples", "reward_queries", "unet_forward", "unet_backward", "vae_decodes", "updates", "seconds_total"):
        assert csv.loc[("sdpo", "ra"), col] == pytest.approx(np.mean([x[col] for x in last])), col
    assert csv.loc[("sdpo", "ra"), "updates_per_epoch"] == 8 and csv.loc[("ddpo", "random"), "updates_per_epoch"] == 4
    assert "most make 4.0, while sdpo (8.0)" in (rep["out"] / "compute.md").read_text()
    # evaluation points joined to the log record of the same cell and samples
    res = load_results(rep["root"])
    ev = evals_with_x(res.evals, res.logs, "unet")
    rec = json.loads(rep["data"]["logs"][("rebel", "rb", 2)].splitlines()[0])
    pick = ev[(ev["cell"] == "rebel__rb__seed2") & (ev["samples"] == 64)]
    assert (pick["x"] == rec["unet_forward"] + rec["unet_backward"]).all() and (ev.loc[ev["algo"] == "pretrained", "x"] == 0).all()
    assert logs_with_x(res.logs, "seconds")["x"].equals(res.logs["seconds_total"].astype(float))
    assert "UNet evaluations (forward + backward)" in rep["md"] and (rep["out"] / "learning_curves.png").is_file()


def test_provenance_table(rep):
    prov = pd.read_csv(rep["out"] / "provenance.csv")
    assert len(prov) == len(REWARDS) * len(STEPS)  # one setting per column
    cells = len(ALGOS) * len(REWARDS) * len(SEEDS) + len(SEEDS)
    assert (prov["lines"] == 1 + cells * len(POINTS)).all() and (prov["runs"] == 1 + cells).all()  # + pretrained
    assert (prov["hashes"] == 1 + cells * len(POINTS)).all()  # a checkpoint per evaluation point, plus pretrained
    line = rep["data"]["runs"][("ddpo", "ra", 0, "rb", 4)][1]
    assert prov.loc[(prov["eval_reward"] == "rb") & (prov["steps"] == 4), "setting_hash"].item() == line["setting_hash"]
    assert f"`{line['setting_hash']}`" in rep["md"] and "carry no provenance" not in rep["md"]
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in (rep["out"] / "provenance.md").read_text().splitlines() if x.startswith("| ")]
    assert len(rows) == 1 + len(prov)  # header + one line per row
    want = [
        "seen",
        "rb",
        "4",
        f"`{line['setting_hash']}`",
        str(1 + cells * len(POINTS)),
        str(1 + cells),
        str(1 + cells * len(POINTS)),
        "tiny-sd",
        "ddim-trailing",
        "0.0",
        "1.0",
        "32",
        "2",
        "1234",
        "p0",
        "–",
    ]
    assert want in rows


def test_flags(rep):
    flags = pd.read_csv(rep["out"] / "flags.csv")
    assert set(zip(flags["scope"], flags["flag"])) == {
        ("rebel__ra__seed1", "clip_never_fires"),
        ("sdpo__rb__seed2", "nonfinite_loss"),
        ("ddpo on rb", "gain_not_above_control"),
        ("sdpo on ra", "heldout_fell"),
    }
    hack = flags.loc[flags["flag"] == "heldout_fell", "message"].item()
    assert "at 1 step (ra +0.2): rb -0.0" in hack and "at 4 steps (ra +0.2): rb -0.1" in hack and "diversity -0.1" in hack
    ctl = flags.loc[flags["flag"] == "gain_not_above_control", "message"].item()
    assert "4 steps" in ctl and "1 step" not in ctl  # checked at the training trajectory length
    md = (rep["out"] / "flags.md").read_text()
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in md.splitlines() if x.startswith("| sdpo__rb__seed2")]
    assert rows == [["sdpo__rb__seed2", "`nonfinite_loss`", "non-finite loss at epoch(s) 3 (nan)", "health.json"]]
    assert "| rebel__ra__seed1 " in md and "log.jsonl" in md
    assert "## Health" in rep["md"]


def test_gain_over_the_random_reward_control(rep):
    """control.csv: ddpo's gain minus its random-reward control's, SEs across seeds in quadrature;
    only ddpo has control runs, so only ddpo has rows."""
    data, ctl = rep["data"], pd.read_csv(rep["out"] / "control.csv")
    assert set(ctl["algo"]) == {"ddpo"} and len(ctl) == len(REWARDS) * len(STEPS)
    for reward in REWARDS:
        for n in STEPS:
            pre = float(np.mean(data["pre"][(reward, n)]))
            g, se_g = _pm([m - pre for m in _means(data, "ddpo", reward, reward, n)])
            c, se_c = _pm([m - pre for m in _means(data, "ddpo", "random", reward, n)])
            row = ctl[(ctl["reward"] == reward) & (ctl["steps"] == n)].iloc[0]
            assert (row.gain, row.control, row.margin) == pytest.approx((g, c, g - c), abs=1e-12)
            assert row.z == pytest.approx((g - c) / math.hypot(se_g, se_c), rel=1e-9) and row.seeds == "3/3"
    ra, rb = (ctl[(ctl["reward"] == r) & (ctl["steps"] == 4)].iloc[0] for r in ("ra", "rb"))
    assert ra.z > 2 > rb.z  # ddpo gains +0.05 on ra, its control none; on rb both gain +0.02 (flagged)
    md = (rep["out"] / "control.md").read_text()
    assert "### Trained on ra, seen prompts" in md and f"({ra.z:+.1f})" in md
    table = "".join(line for line in md.splitlines() if line.startswith("|"))
    assert table.count("✓") == int((ctl["z"] > 3).sum())  # ✓ marks z > 3 only
    assert "## Gain over the random-reward control" in rep["md"]
    # the observation, at the training length (4 steps): neither ddpo cell is 3 SE above its control
    line = next(x for x in rep["md"].splitlines() if x.startswith("- Gain over the random-reward control"))
    assert "(seen prompts, 4 steps): above by more than 3 SE for 0 of 2" in line
    assert f"ddpo on ra at 4 ({ra.margin:+.3f}, z {ra.z:+.1f})" in line and "ddpo on rb at 4" in line


def test_mixed_settings_are_refused(rep, tmp_path, capsys):
    root = tmp_path / "mixed"
    shutil.copytree(rep["root"], root)
    path = root / "ddpo__ra__seed1" / "eval.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for x in lines:
        if x["eval_reward"] == "ra" and x["steps"] == 1:
            x["provenance"]["eta"] = 1.0
            x["setting_hash"] = _hash({k: v for k, v in x["provenance"].items() if k != "lora_checksum"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert cli_main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (root / "report.md").exists()
    assert "column (prompt set 'seen', reward 'ra', 1 steps) mixes evaluation settings" in err
    assert "eta: 0.0 vs 1.0" in err and "ddpo__ra__seed1" in err and lines[0]["setting_hash"] in err


def test_one_seed_diversity_uses_the_evaluation_se():
    """One seed: the diversity change's SE is sqrt(se_run² + se_pretrained²) from the lines' diversity_se."""
    from alignzoo.reports.heldout import _diversity_diff

    run = pd.DataFrame([{"cell": "a__r__seed0", "diversity": 0.30, "diversity_se": 0.03}] * 2)  # two reward lines, one run
    pre = pd.DataFrame([{"cell": "pretrained", "diversity": 0.50, "diversity_se": 0.04}])
    assert _diversity_diff(run, pre) == pytest.approx((-0.2, 0.05))
    d, se = _diversity_diff(run.drop(columns="diversity_se"), pre)
    assert d == pytest.approx(-0.2) and np.isnan(se)  # no SE recorded: nothing to flag with
    three = pd.DataFrame([{"cell": f"a__r__seed{s}", "diversity": v} for s, v in enumerate([0.3, 0.32, 0.34])])
    assert _diversity_diff(three, pre) == pytest.approx((-0.18, 0.02 / math.sqrt(3)))


def test_images_note_names_algorithms_with_other_budgets():
    """Equal images is the default: an algorithm that generated more (LaSRO's stage 1 counts) is named."""
    from alignzoo.reports.compute import images_note

    frame = pd.DataFrame({"method": ["ddpo", "rebel", "lasro", "ddpo"], "samples": [512.0, 512.0, 2880.0, 512.0]})
    note = images_note(frame)
    assert "most generated 512, while lasro (2,880)" in note and "rebel" not in note
    assert images_note(frame[frame["method"] != "lasro"]) is None


def test_control_table_marks_only_margins_above_3_se():
    from alignzoo.reports.control import COLUMNS, control_markdown

    rows = [["a", "r", "seen", 4, "3/3", 0.2, 0.02, 0.05, 0.03, 0.15, 0.04, 3.75], ["b", "r", "seen", 4, "3/3", 0.1, 0.02, 0.06, 0.03, 0.04, 0.04, 1.0]]
    lines = [x for x in control_markdown(pd.DataFrame(rows, columns=COLUMNS)).splitlines() if x.startswith(("| a ", "| b "))]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["a", "3/3", "+0.150 ± 0.040 (+3.8) ✓"]
    assert [c.strip() for c in lines[1].strip("|").split("|")] == ["b", "3/3", "+0.040 ± 0.040 (+1.0)"]
