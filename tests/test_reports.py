"""The report generator (alignzoo.reports) on a synthetic results folder written in the runner's layout.

2 algorithms × 2 rewards × 2 seeds + pretrained, steps 1–50, 2 prompt sets, 2 evaluation points.
Every expected number is recomputed here from the values the fixture wrote.
"""

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alignzoo.cli import main as cli_main
from alignzoo.reports.report import write_report
from alignzoo.reports.results import load_results

STEPS = [1, 2, 4, 8, 16, 50]
ALGOS = ["sdpo", "ddpo"]  # suite order (not alphabetical): the tables must keep it
REWARDS = ["ra", "rb"]
SETS = ["seen", "unseen"]
SEEDS = [0, 1]
POINTS = [128, 256]  # evaluation points (cumulative training samples); 256 is final
N_IMG = 16
DECIMALS = {"ra": 3, "rb": 2}  # rb lives around 20 (like HPSv2 / PickScore): 2 decimals


def _strip(path, color, k=4, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size * k, 3), np.uint8)
    for i in range(k):
        arr[:, i * size : (i + 1) * size] = [(color[0] + 40 * i) % 256, color[1], color[2]]
    Image.fromarray(arr).save(path)


def _lines(path, rows, trailing=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + trailing)


def _build(root, seeds=SEEDS):
    """Write the folder; return {"pre": {(set, reward, steps): (mean, std)}, "final": {(algo, reward, seed, set, steps): row}, "logs": {...}}."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "suite.toml").write_text(
        'name = "synthetic"\nmodel = "tiny-sd"\nalgorithms = ["sdpo", "ddpo"]\nrewards = ["ra", "rb"]\n'
        '[train]\nnum_steps = 4\n[eval]\nsteps = [1, 2, 4, 8, 16, 50]\nprompt_sets = ["seen", "unseen"]\n'
    )
    base = {"ra": 0.5, "rb": 20.0}
    pre, pre_rows = {}, []
    for ps in SETS:
        for r in REWARDS:
            for n in STEPS:
                m, s = base[r] + 0.02 * math.log2(n) + rng.normal(0, 0.01), 0.1 + 0.01 * rng.random()
                pre[(ps, r, n)] = (m, s)
                pre_rows.append(
                    {
                        "cell": "pretrained",
                        "algo": "pretrained",
                        "train_reward": None,
                        "seed": None,
                        "samples": 0,
                        "prompt_set": ps,
                        "eval_reward": r,
                        "steps": n,
                        "mean": m,
                        "std": s,
                        "n": N_IMG,
                        "diff_mean": None,
                        "diff_se": None,
                    }
                )
    _lines(root / "pretrained" / "eval.jsonl", pre_rows)
    for n in STEPS:
        _strip(root / "pretrained" / "images" / f"steps_{n}.png", (10, 10, 10))
    final, logs = {}, {}
    for a_i, algo in enumerate(ALGOS):
        for r in REWARDS:
            for seed in seeds:
                cell = root / f"{algo}__{r}__seed{seed}"
                rows = []
                for samples in POINTS:
                    for ps in SETS:
                        for er in REWARDS:
                            for n in STEPS:
                                # sdpo gains most on ra everywhere; on rb ddpo wins at <= 4 steps, sdpo above
                                gain = {("sdpo", "ra"): 0.2, ("ddpo", "ra"): 0.05}.get((algo, er), 0.0)
                                if er == "rb":
                                    gain = (0.3 if n <= 4 else 0.1) if algo == "ddpo" else (0.1 if n <= 4 else 0.3)
                                m = pre[(ps, er, n)][0] + gain * samples / POINTS[-1] + rng.normal(0, 0.02)
                                row = {
                                    "cell": cell.name,
                                    "algo": algo,
                                    "train_reward": r,
                                    "seed": seed,
                                    "samples": samples,
                                    "epoch": samples // 64,
                                    "prompt_set": ps,
                                    "eval_reward": er,
                                    "steps": n,
                                    "mean": m,
                                    "std": 0.1 + 0.01 * rng.random(),
                                    "n": N_IMG,
                                    "diff_mean": m - pre[(ps, er, n)][0],
                                    "diff_se": 0.01 + 0.02 * rng.random(),
                                }
                                rows.append(row)
                                if samples == POINTS[-1]:
                                    final[(algo, r, seed, ps, er, n)] = row
                # a line cut by a kill at the end of one cell's eval.jsonl
                _lines(cell / "eval.jsonl", rows, trailing='{"cell": "cut' if (algo, r, seed) == ("ddpo", "rb", seeds[-1]) else "")
                log = []
                for e in (1, 2, 3, 4):
                    t = (10.0 + 3 * a_i + seed) * e
                    log.append(
                        {
                            "epoch": e,
                            "samples": 64 * e,
                            "reward_mean": 0.5 + 0.05 * e * (a_i + 1) + 0.01 * seed,
                            "reward_std": 0.1,
                            "reward_1step_mean": 0.4 + 0.01 * e,
                            "loss": 1.0 / e,
                            "seconds_total": t,
                            "seconds_sampling": 0.4 * t,
                            "seconds_decoding": 0.1 * t,
                            "seconds_reward": 0.1 * t,
                            "seconds_update": 0.4 * t,
                            "unet_evals_sampling": 256 * e,
                            "unet_evals_training": (256 + 128 * a_i) * e,
                            "vae_decodes": 64 * e * (1 + a_i),
                            "reward_queries": (192 if algo == "sdpo" else 64) * e,
                            "log_reward_queries": (0 if algo == "sdpo" else 64) * e,
                        }
                    )
                logs[(algo, r, seed)] = log
                _lines(cell / "log.jsonl", log)
                for n in STEPS:
                    _strip(cell / "images" / f"steps_{n}.png", (60 + 50 * a_i, 100, 30 * seed))
                (cell / "DONE").write_text("ok")
    return {"pre": pre, "final": final, "logs": logs}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports") / "synthetic"
    data = _build(root)
    out = root.parent / "out"
    with pytest.warns(UserWarning, match="malformed"):
        path = write_report(root, out)
    return {"root": root, "out": out, "path": path, "data": data}


def _md_table(text):
    """Markdown pipe table → (headers, {row label: [cells]})."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    headers = split(lines[0])[1:]
    return headers, {split(line)[0]: split(line)[1:] for line in lines[2:]}


def _expected(data, ps, algo, r, n):
    """(mean, ± value) of one table cell, recomputed from the written values."""
    if algo == "pretrained":
        m, s = data["pre"][(ps, r, n)]
        return m, s / math.sqrt(N_IMG)
    seeds = sorted({k[2] for k in data["final"]})
    vals = [data["final"][(algo, r, s, ps, r, n)]["mean"] for s in seeds]
    if len(vals) == 1:
        row = data["final"][(algo, r, seeds[0], ps, r, n)]
        return vals[0], row["std"] / math.sqrt(row["n"])
    return float(np.mean(vals)), float(np.std(vals, ddof=1) / math.sqrt(len(vals)))  # SE across seeds


def _seed_values(data, ps, algo, r, n):
    seeds = sorted({k[2] for k in data["final"]})
    return [data["final"][(algo, r, s, ps, r, n)]["mean"] for s in seeds]


def _bold(data, ps, r, n):
    """The algorithm the table should bold: the top mean, when separated from the other. Without
    per-image scores and with 2 seeds the seed-means bootstrap puts ≥ 1/16 of its mass on each
    extreme, so its 95% interval is [min A − max B, max A − min B]: separated iff the ranges of the
    seed means do not overlap. A ranking (bold) also needs >= 3 seeds a side: with this fixture's
    2 seeds nothing is bold."""
    vals = {a: _seed_values(data, ps, a, r, n) for a in ALGOS}
    if min(len(v) for v in vals.values()) < 3:
        return None
    top = max(vals, key=lambda a: np.mean(vals[a]))
    other = next(a for a in ALGOS if a != top)
    return top if min(vals[top]) > max(vals[other]) else None


def test_markdown_values_order_and_bold(report):
    data = report["data"]
    for ps in SETS:
        headers, rows = _md_table((report["out"] / f"table_{ps}.md").read_text())
        assert list(rows) == ["pretrained"] + ALGOS  # pretrained first, then suite order
        assert headers == [f"{r} {n}s" for r in REWARDS for n in STEPS]
        for r in REWARDS:
            d = DECIMALS[r]
            for n in STEPS:
                col = headers.index(f"{r} {n}s")
                expect = {m: _expected(data, ps, m, r, n) for m in ["pretrained"] + ALGOS}
                best = _bold(data, ps, r, n)
                for m, (mean, err) in expect.items():
                    text = f"{mean:.{d}f} ± {err:.{d}f}"
                    assert rows[m][col] == (f"**{text}**" if m == best else text), (ps, r, n, m)
    # the designed winners (sdpo on ra everywhere, ddpo on rb at 1-4 steps) are apart, but from 2 seeds: nothing bold
    _, rows = _md_table((report["out"] / "table_seen.md").read_text())
    assert not any(c.startswith("**") for cells in rows.values() for c in cells)
    text = (report["out"] / "table_seen.md").read_text()
    assert "standard error across seeds" in text and "pairwise 95% bootstrap interval" in text


def test_csv_round_trips_the_numbers(report):
    data = report["data"]
    csv = pd.read_csv(report["out"] / "table_unseen.csv")
    assert set(csv["method"]) == {"pretrained", *ALGOS} and len(csv) == 3 * len(REWARDS) * len(STEPS)
    assert csv["mean"].dtype == float and csv["std"].dtype == float
    for row in csv.itertuples():
        mean, err = _expected(data, "unseen", row.method, row.reward, row.steps)
        assert row.mean == pytest.approx(mean, abs=1e-12) and row.std == pytest.approx(err, abs=1e-12)
        assert not str(row.mean).startswith("*")


def test_latex_bold_and_groups(report):
    data = report["data"]
    tex = (report["out"] / "table_seen.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\multicolumn{6}{c}{ra}" in tex and "\\multicolumn{6}{c}{rb}" in tex
    rows = {
        line.split(" & ")[0]: [c.strip().removesuffix("\\\\").strip() for c in line.split(" & ")[1:]]
        for line in tex.splitlines()
        if line.startswith(("pretrained &", "sdpo &", "ddpo &"))
    }
    for k, (r, n) in enumerate((r, n) for r in REWARDS for n in STEPS):
        best = _bold(data, "seen", r, n)
        for m, cells in rows.items():
            assert cells[k].startswith("\\textbf{") == (m == best), (r, n, m)
    d = DECIMALS["ra"]
    mean, err = _expected(data, "seen", "sdpo", "ra", 1)
    assert rows["sdpo"][0] == f"{mean:.{d}f} $\\pm$ {err:.{d}f}"  # apart, but 2 seeds: not bold (a ranking needs >= 3)


def test_gain_table(report):
    data = report["data"]
    headers, rows = _md_table((report["out"] / "gain_seen.md").read_text())
    assert list(rows) == ALGOS
    for algo, r, n in [("sdpo", "ra", 1), ("ddpo", "ra", 16), ("ddpo", "rb", 2)]:
        fin = [data["final"][(algo, r, s, "seen", r, n)] for s in SEEDS]
        diffs = [f["diff_mean"] for f in fin]
        d, se = np.mean(diffs), np.std(diffs, ddof=1) / math.sqrt(len(diffs))  # SE across seeds
        want = f"{d:+.3f} ± {se:.3f}" + (" *" if abs(d / se) > 2 else "")  # gains below 10 in size: 3 decimals
        assert rows[algo][headers.index(f"{r} {n}s")] == want


def test_files_exist_and_images_open(report):
    out = report["out"]
    names = ["report.md", "cost.md", "cost.csv", "learning_curves.png", "grid_ra.png", "grid_rb.png"]
    for ps in SETS:
        names += [f"table_{ps}.md", f"table_{ps}.tex", f"table_{ps}.csv", f"gain_{ps}.md", f"final_vs_steps_{ps}.png"]
        names += [f"stepgen_{r}_{ps}.png" for r in REWARDS]
    for name in names:
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100, png
    with Image.open(out / "grid_ra.png") as im:  # 3 rows of upscaled 2x2 blocks of 32-px images
        assert im.size[1] > 3 * 2 * 96
    md = report["path"].read_text()
    assert md.startswith("# Benchmark report: synthetic") and "`tiny-sd`" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(links) == {n for n in names if n.endswith(".png")}
    assert md.count("| pretrained ") == len(SETS) * (1 + len(REWARDS))  # Table 1 and the held-out tables are inline
    assert sum(f.stat().st_size for f in out.iterdir()) < 2_000_000
    assert not any(p.name.startswith(("table_", "report")) for p in report["root"].iterdir())  # --out respected


def test_observations_are_computed(report):
    md = report["path"].read_text()
    obs = md.split("## Observations", 1)[1].split("\n## ", 1)[0]
    assert "Best mean" not in obs and "Highest" not in obs  # no ranking without an interval
    data = report["data"]
    for r, n in [("ra", 1), ("rb", 2), ("rb", 16)]:
        a, b = _seed_values(data, "seen", "sdpo", r, n), _seed_values(data, "seen", "ddpo", r, n)
        d, lo, hi = np.mean(a) - np.mean(b), min(a) - max(b), max(a) - min(b)  # 2 seeds, no scores: see _bold
        if d < 0:
            d, lo, hi = -d, -hi, -lo
        first, second = ("sdpo", "ddpo") if np.mean(a) > np.mean(b) else ("ddpo", "sdpo")
        step = f"{n} step" + ("s" if n > 1 else "")
        if lo > 0:  # apart, but from 2 seeds: stated without a ranking
            assert f"{first} − {second} at {step}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}], from 2 seeds: not a ranking" in obs, (r, n)
            assert f"{first} > {second} at {step}" not in obs
    assert "Trained on **ra**, seen prompts (95% paired bootstrap): sdpo − ddpo at 1 step" in obs
    assert "8 training runs found, 8 finished." in obs
    gains = pd.concat([pd.read_csv(report["out"] / f"gain_{ps}.csv") for ps in SETS], ignore_index=True)
    top = gains.loc[gains["diff_mean"].idxmax()]
    assert f"Largest gain over pretrained: {top['method']} on {top['reward']} at {int(top['steps'])} steps" in obs


def test_cost_table_per_thousand(report):
    data = report["data"]
    text = (report["out"] / "cost.md").read_text()
    per = text.split("Per 1,000 training samples:", 1)[1]
    lines = [line for line in per.splitlines() if line.startswith("| sdpo ") and "| ra " in line]
    cells = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    last = [data["logs"][("sdpo", "ra", s)][-1] for s in SEEDS]
    wall = np.mean([x["seconds_total"] / x["samples"] * 1000 for x in last])
    unet = np.mean([(x["unet_evals_sampling"] + x["unet_evals_training"]) / x["samples"] * 1000 for x in last])
    queries = np.mean([x["reward_queries"] / x["samples"] * 1000 for x in last])
    assert cells[2:6] == [f"{wall:,.1f}", f"{unet:,.0f}", f"{np.mean([x['vae_decodes'] for x in last]) / 256 * 1000:,.0f}", f"{queries:,.0f}"]
    assert cells[6] == "0"  # sdpo logs no extra queries
    csv = pd.read_csv(report["out"] / "cost.csv").set_index(["method", "reward"])
    assert csv.loc[("ddpo", "rb"), "log_reward_queries_per_1k"] == pytest.approx(1000.0)
    assert csv.loc[("sdpo", "ra"), "seconds_total"] == pytest.approx(np.mean([x["seconds_total"] for x in last]))
    assert csv.loc[("sdpo", "ra"), "seconds_total_per_1k"] == pytest.approx(wall)


def test_loader_skips_malformed_line(report, tmp_path):
    with pytest.warns(UserWarning, match=r"eval\.jsonl:\d+: skipped a malformed line"):
        res = load_results(report["root"])
    per_cell = len(POINTS) * len(SETS) * len(REWARDS) * len(STEPS)
    assert len(res.evals) == len(ALGOS) * len(REWARDS) * len(SEEDS) * per_cell + len(SETS) * len(REWARDS) * len(STEPS)
    assert res.algorithms == ALGOS and res.rewards == REWARDS and res.steps == STEPS and res.prompt_sets == SETS
    assert len(res.logs) == len(ALGOS) * len(REWARDS) * len(SEEDS) * 4 and res.cells["done"].all()
    # a malformed line in a training log is skipped as well
    root = tmp_path / "copy"
    shutil.copytree(report["root"], root)
    log = root / "sdpo__ra__seed0" / "log.jsonl"
    log.write_text(log.read_text() + "not json\n")
    with pytest.warns(UserWarning) as caught:
        assert len(load_results(root).logs) == len(res.logs)
    assert any(re.search(r"sdpo__ra__seed0/log\.jsonl:5: skipped a malformed line", str(w.message)) for w in caught)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_suite"
    with pytest.raises(FileNotFoundError, match="no_such_suite"):
        load_results(missing)
    empty = tmp_path / "empty_suite"
    (empty / "pretrained").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty_suite.*no evaluation results"):
        load_results(empty)
    assert cli_main(["report", str(missing)]) == 2


def test_one_seed_uses_standard_error_and_cli(tmp_path, capsys):
    root = tmp_path / "one_seed"
    data = _build(root, seeds=[0])
    with pytest.warns(UserWarning, match="malformed"):
        assert cli_main(["report", str(root), "--grid-images", "1"]) == 0
    assert "report.md" in capsys.readouterr().out
    text = (root / "table_seen.md").read_text()
    headers, rows = _md_table(text)
    mean, err = _expected(data, "seen", "ddpo", "rb", 8)
    assert rows["ddpo"][headers.index("rb 8s")].strip("*") == f"{mean:.2f} ± {err:.2f}"
    assert "one seed" in text and "standard error" in text
    # one seed and no per-image scores: no pairwise interval, so nothing is ranked or bold
    assert set(pd.read_csv(root / "pairwise_seen.csv")["basis"]) == {"none"} and "**" not in text
    assert "without an interval" in (root / "report.md").read_text()
    for name in ("report.md", "grid_ra.png", "learning_curves.png", "cost.md"):
        assert (root / name).is_file()


def test_old_folder_gets_the_new_sections(report):
    """A folder without the issue-12 keys (no scores.json, counters, provenance, diversity, health.json)
    still reports: pairwise from seed means (†), compute from the old counters, provenance noted."""
    out, md = report["out"], report["path"].read_text()
    for name in ("pairwise_seen.md", "pairwise_seen.csv", "heldout_seen_ra.md", "compute.md", "provenance.md", "flags.md"):
        assert (out / name).is_file(), name
    pw = pd.read_csv(out / "pairwise_seen.csv")
    assert set(pw["basis"]) == {"seed means"} and "†" in (out / "pairwise_seen.md").read_text()
    comp = pd.read_csv(out / "compute.csv").set_index(["method", "reward"])
    last = [report["data"]["logs"][("sdpo", "ra", s)][-1] for s in SEEDS]
    fwd = np.mean([x["unet_evals_sampling"] + x["unet_evals_training"] for x in last])
    assert comp.loc[("sdpo", "ra"), "unet_forward"] == pytest.approx(fwd) and np.isnan(comp.loc[("sdpo", "ra"), "unet_backward"])
    assert comp.loc[("sdpo", "ra"), "reward_queries"] == pytest.approx(np.mean([x["reward_queries"] + x["log_reward_queries"] for x in last]))
    assert "carry no provenance" in md and "No run-level health flag in 8 run(s) checked." in md
    heldout = (out / "heldout_seen_ra.md").read_text()
    assert "rb (held-out) 1s" in heldout and "No diversity was recorded." in heldout
    with pytest.warns(UserWarning, match="malformed"), pytest.raises(ValueError, match="--x unet needs the training-log counter"):
        write_report(report["root"], out / "x", x="unet")
    assert not (out / "x").exists()  # refused before anything was written
