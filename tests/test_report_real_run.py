"""`alignzoo report` on a real 3-seed run (issue 12): the runner trains and evaluates 2 algorithms
× 2 rewards × 3 seeds on the tiny random pipeline, then the report is built from that folder. The
synthetic-folder tests (test_reports_seeds.py) check every formula; this one checks that a run the
runner really wrote carries everything those sections need, with the run's own numbers."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from alignzoo.benchmarks.runner import BenchmarkRunner
from alignzoo.benchmarks.suites import load_suite
from alignzoo.cli import main as cli_main
from alignzoo.runlog import read_lines

from helpers import write_suite

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("report-real-run")]
ALGOS, REWARDS, SEEDS, STEPS = ("ddpo", "rebel"), ("jpeg_compressibility", "jpeg_incompressibility"), (0, 1, 2), (1, 2)


@pytest.fixture(scope="module")
def run(tiny_random_folders, prompt_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("real3")
    f = write_suite(
        root / "real3.toml",
        model=tiny_random_folders["sd"],
        prompts=prompt_file,
        algorithms=ALGOS,
        rewards=REWARDS,
        seeds=SEEDS,
        samples=8,
        eval_interval=8,
        train=dict(num_steps=2, samples_per_epoch=8, learning_rate=0.01, train_batch_size=4),
        evaluation=dict(steps=list(STEPS), images_per_prompt=2, grid_images=1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer than 256 evaluation images: a test-sized run
        folder = BenchmarkRunner(load_suite(str(f)), root / "runs", device="cpu", progress=False, log=lambda *_: None).run()
    out = root / "report"
    assert cli_main(["report", str(folder), "--out", str(out)]) == 0
    return {"folder": folder, "out": out, "md": (out / "report.md").read_text()}


def _final(folder, algo, reward, seed, eval_reward, steps):
    lines = read_lines(folder / f"{algo}__{reward}__seed{seed}" / "eval.jsonl")
    last = max(r["samples"] for r in lines)
    return next(r for r in lines if r["samples"] == last and r["eval_reward"] == eval_reward and r["steps"] == steps)


def test_table_is_the_mean_and_se_across_the_three_seeds(run):
    csv = pd.read_csv(run["out"] / next(p.name for p in run["out"].glob("table_*.csv")))
    rows = csv[(csv["method"] == "rebel") & (csv["reward"] == "jpeg_compressibility") & (csv["steps"] == 2)]
    assert len(rows) == 1
    vals = [_final(run["folder"], "rebel", "jpeg_compressibility", s, "jpeg_compressibility", 2)["mean"] for s in SEEDS]
    row = rows.iloc[0]
    assert (row["mean"], row["std"]) == pytest.approx((np.mean(vals), np.std(vals, ddof=1) / math.sqrt(3)), abs=1e-9)
    assert row["seeds"] == 3 and row["error"] == "standard error across seeds"


def test_pairwise_heldout_compute_and_provenance_sections(run):
    out, md = run["out"], run["md"]
    pw = pd.read_csv(next(out.glob("pairwise_*.csv")))
    assert len(pw) == len(REWARDS) * len(STEPS)  # one pair (ddpo, rebel) per reward and step count
    assert set(pw["basis"]) == {"seeds × prompts"} and (pw["lo"] <= pw["diff"]).all() and (pw["diff"] <= pw["hi"]).all()
    heldout = next(out.glob("heldout_*_jpeg_compressibility.md")).read_text()
    assert "jpeg_incompressibility (held-out) 1s" in heldout and "diversity 2s" in heldout
    compute = pd.read_csv(out / "compute.csv").set_index(["method", "reward"])
    last = [json.loads((run["folder"] / f"ddpo__jpeg_compressibility__seed{s}" / "log.jsonl").read_text().splitlines()[-1]) for s in SEEDS]
    for col in ("samples", "updates", "unet_forward", "unet_backward", "vae_decodes", "reward_queries"):
        assert compute.loc[("ddpo", "jpeg_compressibility"), col] == pytest.approx(np.mean([x[col] for x in last])), col
    assert compute.loc[("ddpo", "jpeg_compressibility"), "updates_per_epoch"] == compute.loc[("rebel", "jpeg_compressibility"), "updates_per_epoch"] == 2
    prov = pd.read_csv(out / "provenance.csv")
    line = _final(run["folder"], "ddpo", "jpeg_incompressibility", 1, "jpeg_compressibility", 1)
    assert line["setting_hash"] in set(prov["setting_hash"]) and f"`{line['setting_hash']}`" in md
    assert (prov["runs"] == 1 + len(ALGOS) * len(REWARDS) * len(SEEDS)).all()  # every cell and the pretrained model, one setting
    for section in ("## Observations", "## Health"):
        assert section in md
