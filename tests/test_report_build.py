"""The report builder on a synthetic results folder: values, bold marks, files, errors."""
import json

import numpy as np
import pytest
from PIL import Image

from alignzoo.cli import main as cli_main
from alignzoo.reports.build import load_results, write_report

STEPS = [1, 2, 4]
ALGOS = ["ddpo", "sdpo"]
REWARDS = ["ra", "rb"]


def _mean(algo, reward, seed, steps, samples):
    base = {"ra": 0.5, "rb": -1.0}[reward] + 0.01 * steps
    if algo == "pretrained":
        return base
    return base + (0.1 if algo == "sdpo" else 0.05) * samples / 64 + 0.01 * seed


def _strip(path, k=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8 * k, 3), 128, np.uint8)).save(path)


@pytest.fixture()
def results(tmp_path):
    root = tmp_path / "suite"
    (root / "pretrained").mkdir(parents=True)
    (root / "suite.toml").write_text('name = "synthetic"\nmodel = "tiny-sd"\nalgorithms = ["sdpo", "ddpo"]\nseeds = [0, 1]\n')
    lines = []
    for ps in ("seen", "unseen"):
        for r in REWARDS:
            for n in STEPS:
                lines.append({"cell": "pretrained", "algo": "pretrained", "train_reward": None, "seed": None, "samples": 0, "prompt_set": ps,
                              "eval_reward": r, "steps": n, "mean": _mean("pretrained", r, 0, n, 0), "std": 0.1, "n": 16, "diff_mean": None, "diff_se": None})
    (root / "pretrained" / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for n in STEPS:
        _strip(root / "pretrained" / "images" / f"steps_{n}.png")
    for algo in ALGOS:
        for r in REWARDS:
            for seed in (0, 1):
                cell = root / f"{algo}__{r}__seed{seed}"
                cell.mkdir()
                ev = []
                for samples in (32, 64):
                    for ps in ("seen", "unseen"):
                        for er in REWARDS:
                            for n in STEPS:
                                m = _mean(algo, er, seed, n, samples)
                                ev.append({"cell": cell.name, "algo": algo, "train_reward": r, "seed": seed, "samples": samples, "prompt_set": ps, "eval_reward": er,
                                           "steps": n, "mean": m, "std": 0.1, "n": 16, "diff_mean": m - _mean("pretrained", er, 0, n, 0), "diff_se": 0.01})
                text = "".join(json.dumps(x) + "\n" for x in ev) + '{"cut": \n'  # a line cut by a kill
                (cell / "eval.jsonl").write_text(text)
                log = [{"epoch": e, "samples": 32 * e, "reward_mean": 0.1 * e, "reward_std": 0.1, "loss": 1.0, "seconds_total": 10.0 * e, "seconds_sampling": 4.0 * e,
                        "seconds_decoding": 1.0 * e, "seconds_reward": 1.0 * e, "seconds_update": 4.0 * e, "unet_evals_sampling": 100 * e, "unet_evals_training": 200 * e,
                        "vae_decodes": 32 * e, "reward_queries": (96 if algo == "sdpo" else 32) * e, "log_reward_queries": 0} for e in (1, 2)]
                (cell / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
                for n in STEPS:
                    _strip(cell / "images" / f"steps_{n}.png")
                (cell / "DONE").write_text("ok")
    return root


def test_table_values_bold_and_files(results, tmp_path):
    with pytest.warns(UserWarning, match="malformed"):
        path = write_report(results)
    md = (results / "table_seen.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()[2:]}
    assert list(rows) == ["pretrained", "sdpo", "ddpo"]  # suite order
    # sdpo, reward ra, 1 step: mean over seeds 0/1 of the final (64-sample) evaluation, std over seeds
    vals = [_mean("sdpo", "ra", s, 1, 64) for s in (0, 1)]
    want = f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"
    header = [c.strip() for c in md.splitlines()[0].split("|")[2:-1]]
    col = header.index("ra 1s")
    assert rows["sdpo"][col] == f"**{want}**" and not rows["ddpo"][col].startswith("**")
    dvals = [_mean("ddpo", "ra", s, 1, 64) for s in (0, 1)]
    assert rows["ddpo"][col] == f"{np.mean(dvals):.3f} ± {np.std(dvals, ddof=1):.3f}"
    assert rows["pretrained"][col] == f"{_mean('pretrained', 'ra', 0, 1, 0):.3f} ± {0.1 / 4:.3f}"  # one seed: std/sqrt(n)
    tex = (results / "table_seen.tex").read_text()
    assert f"\\textbf{{{np.mean(vals):.3f} $\\pm$" in tex and "\\multicolumn{3}{c}{ra}" in tex
    import pandas as pd

    csv = pd.read_csv(results / "table_seen.csv")
    got = csv[(csv.algo == "sdpo") & (csv.reward == "ra") & (csv.steps == 1)]["mean"].item()
    assert got == pytest.approx(np.mean(vals))
    for f in ("report.md", "table_unseen.md", "gain_seen.md", "cost.md", "learning_curves.png", "final_vs_steps_seen.png", "stepgen_ra_seen.png", "grid_ra.png"):
        assert (results / f).exists(), f
    Image.open(results / "grid_ra.png").verify()
    assert path.read_text().count("| pretrained") >= 2


def test_cost_table_per_thousand(results):
    write_report(results)
    cost = (results / "cost.md").read_text()
    sdpo_ra = next(line for line in cost.splitlines() if line.startswith("| sdpo") and "| ra " in line)
    cells = [c.strip() for c in sdpo_ra.split("|")[1:-1]]
    # final log line: 64 samples, 20 s, 192 reward queries -> 312.5 s and 3,000 queries per 1k samples
    assert cells[2] == "20.0" and cells[7] == "312.5" and cells[9] == "3,000"


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results folder"):
        load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no evaluation results"):
        load_results(tmp_path / "empty")


def test_cli(results, capsys):
    assert cli_main(["report", str(results)]) == 0
    assert "report.md" in capsys.readouterr().out
