"""Suites, the benchmark runner (resume after a kill) and the evaluation's shared noise."""

import json
import signal
import subprocess
import time
import warnings

import pytest
import tomllib
import torch

from alignzoo.algos import get_algorithm
from alignzoo.benchmarks import evaluation
from alignzoo.benchmarks.runner import BenchmarkRunner
from alignzoo.benchmarks.suites import list_suites, load_suite, parse_suite, suite_to_toml
from alignzoo.rewards import REWARDS
from alignzoo.runlog import read_lines

from helpers import alignzoo_command, subprocess_env, write_suite


def _base(**kw):
    d = {"name": "t", "model": "tiny-sd", "algorithms": ["sdpo"], "rewards": ["jpeg_compressibility"]}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"bogus": 1}, "unknown key(s) bogus"),
        ({"algorithms": ["sdpoo"]}, "unknown algorithm 'sdpoo'"),
        ({"rewards": ["nope"]}, "unknown reward 'nope'"),
        ({"model": "sd-trubo"}, "unknown model 'sd-trubo'"),
        ({"eval": {"prompt_sets": ["unsen"]}}, "unknown prompt set 'unsen'"),
        ({"eval": {"stepz": [1]}}, "[eval]: unknown key(s) stepz"),
        ({"eval": {"rewards": ["tiny_genevl"]}}, "unknown reward 'tiny_genevl'"),
        ({"algo": {"sdpo": {"lamda": 0.9}}}, "unknown config key 'lamda'"),
    ],
)
def test_suite_errors_name_the_problem(change, needle):
    with pytest.raises(ValueError) as err:
        parse_suite(_base(**change))
    assert needle in str(err.value)


def test_shipped_suites_parse():
    names = list_suites()
    assert {"quick", "tiny", "tiny-lcm", "tiny-turbo", "paper-sdturbo", "paper-lcm"} <= set(names)
    quick = load_suite("quick")
    assert quick.model == "tiny-sd-v2" and set(quick.algorithms) == {"ddpo", "rebel", "d3po", "sdpo"}
    assert quick.eval.steps == [1, 2, 4, 8, 16]
    # the compositional world everywhere: its rewards, prompts and calibrated preset
    for name in ("quick", "tiny", "tiny-lcm", "tiny-turbo", "tiny-2step", "tiny-2step-sd"):
        s = load_suite(name)
        assert s.model in ("tiny-sd-v2", "tiny-turbo", "tiny-lcm-v2") and "tiny_geneval" in s.rewards, name
        assert s.train_prompts == "geneval_train" and all(p.startswith("geneval_") for p in s.eval.prompt_sets), name
        policy_gradient = next(a for a in s.algorithms if a != "lasro")  # lasro keeps its own tuned lr
        assert s.algo_config(policy_gradient).learning_rate == 1e-4, name
    turbo = load_suite("tiny-turbo")  # the SDPO paper's protocol: long training trajectories, evaluation 1 ... 50
    assert turbo.algo_config("sdpo").num_steps == 16 and turbo.eval.steps == [1, 2, 4, 8, 16, 50]
    paper = load_suite("paper-sdturbo")
    assert paper.model == "sd-turbo" and set(paper.rewards) == {"aesthetic", "imagereward", "hpsv2", "pickscore"}
    assert paper.algo_config("sdpo").num_steps == 50
    # LaSRO: 2-step everywhere; the tiny suites keep its own tuned lr over [train]'s
    for name, model, others in (
        ("tiny-2step", "tiny-lcm-v2", {"rlcm-ddpo", "rlcm-rebel", "sdpo"}),
        ("tiny-2step-sd", "tiny-turbo", {"ddpo", "rebel", "d3po", "sdpo"}),
    ):
        two = load_suite(name)
        assert two.model == model and set(two.algorithms) == others | {"lasro"} | NEWER
        assert {1, 2, 4} <= set(two.eval.steps)
        assert all(two.algo_config(a).num_steps == 2 for a in two.algorithms)
        assert two.algo_config("lasro").learning_rate == 6e-4 and two.algo_config("sdpo").learning_rate == 1e-4
    for name in ("paper-lcm", "paper-sdturbo"):
        cfg = load_suite(name).algo_config("lasro")
        assert cfg.num_steps == 2 and cfg.lora_rank == 32 and cfg.k_surr == 5
    with pytest.raises(ValueError, match="known suites"):
        load_suite("quik")


NEWER = {"grpo", "dpok", "reward-backprop", "hybrid", "diffusion-dpo", "diffusion-nft"}  # issue 15's algorithms


def test_the_comparison_suites_run_the_newer_algorithms():
    """Every tiny suite and paper-sdturbo run all six; paper-lcm leaves out the two that back-propagate
    the reward (its jpeg_compressibility has no gradient, and a suite runs every algorithm on every reward)."""
    for name in ("tiny", "tiny-turbo", "tiny-lcm", "tiny-2step", "tiny-2step-sd", "paper-sdturbo"):
        assert NEWER <= set(load_suite(name).algorithms), name
    lcm = load_suite("paper-lcm")
    left_out = NEWER - set(lcm.algorithms)
    assert left_out == {"reward-backprop", "hybrid"} and all(get_algorithm(a).needs_reward_grad for a in left_out)
    assert not REWARDS.get("jpeg_compressibility").supports_grad
    # the papers' own values, not the tiny-world defaults of the modules (spot checks)
    paper = load_suite("paper-sdturbo")
    assert paper.algo_config("grpo").clip_range == 1e-4 and paper.algo_config("dpok").reward_weight == 1000
    assert paper.algo_config("diffusion-dpo").beta == 5000 and paper.algo_config("reward-backprop").mode == "alignprop"
    assert paper.algo_config("diffusion-nft").eta == 0 and paper.algo_config("hybrid").num_steps == 4


@pytest.mark.parametrize("name", list_suites())
def test_a_written_suite_reloads_with_the_same_cells_and_configs(name):
    """suite_to_toml (the suite.toml beside a suite's results) round-trips, per-reward sections included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the paper suites' small unseen set
        suite = load_suite(name)
        again = parse_suite(tomllib.loads(suite_to_toml(suite)))
    assert again.cells() == suite.cells() and again.algo_reward == suite.algo_reward
    for algo, reward, _seed in suite.cells():
        assert again.algo_config(algo, reward) == suite.algo_config(algo, reward), (algo, reward)


def test_suites_default_to_three_seeds_and_256_evaluation_images():
    from alignzoo.prompts import get_prompts

    for name in ("tiny", "tiny-lcm", "tiny-turbo", "tiny-2step", "tiny-2step-sd"):
        s = load_suite(name)
        assert len(s.seeds) == 3, name
        for p in s.eval.prompt_sets:
            assert min(len(get_prompts(p)), s.eval.prompts_per_set or 10**9) * s.eval.images_per_prompt >= 256, (name, p)
    with pytest.warns(UserWarning, match="unseen_animals"):
        for name in ("paper-sdturbo", "paper-lcm"):
            assert len(load_suite(name).seeds) == 3
    quick = load_suite("quick")
    assert quick.seeds == [0] and "one seed" in quick.description and quick.eval.images_per_prompt >= 2


def test_small_evaluation_with_several_seeds_warns(recwarn):
    parse_suite(_base(seeds=[0], eval={"prompt_sets": ["unseen"], "images_per_prompt": 1}))  # one seed: no warning
    parse_suite(_base(seeds=[0, 1], eval={"prompt_sets": ["unseen"], "images_per_prompt": 7}))  # 40 x 7 = 280
    assert not [w for w in recwarn if "fewer than 256" in str(w.message)]
    with pytest.warns(UserWarning, match=r"2 seeds but evaluates fewer than 256 images per prompt set: seen \(128\), unseen \(80\)"):
        parse_suite(_base(seeds=[0, 1], eval={"prompt_sets": ["seen", "unseen"], "images_per_prompt": 2}))


def test_evaluation_only_rewards_score_every_cell_without_cells_of_their_own(tmp_path):
    s = parse_suite(_base(rewards=["jpeg_compressibility", "random"], eval={"rewards": ["jpeg_incompressibility", "jpeg_compressibility"]}))
    assert [c[1] for c in s.cells()] == ["jpeg_compressibility", "random"]  # no cells for evaluation-only rewards
    runner = BenchmarkRunner(s, tmp_path, device="cpu", progress=False, log=lambda *_: None)
    assert list(runner.rewards()) == ["jpeg_compressibility", "random", "jpeg_incompressibility"]


def test_eval_points():
    s = parse_suite(_base(samples=100, eval_interval=32))
    assert s.eval_interval_points(16) == [32, 64, 96, 112]
    assert parse_suite(_base(samples=64)).eval_interval_points(16) == [64]


def test_evaluation_uses_identical_noise_for_every_model(tiny_random_folders, monkeypatch):
    from alignzoo.models import load_model

    seen = []
    real = evaluation.sample

    def spy(model, prompts, n, eta=0.0, generator=None, init_noise=None):
        seen.append((id(model), n, init_noise.clone()))
        return real(model, prompts, n, eta=eta, generator=generator, init_noise=init_noise)

    monkeypatch.setattr(evaluation, "sample", spy)
    from alignzoo.rewards import get_reward

    rewards = {"jpeg_compressibility": get_reward("jpeg_compressibility")}
    a = load_model(str(tiny_random_folders["sd"]))
    b = load_model(str(tiny_random_folders["sd"]))
    b.add_lora(4)
    with torch.no_grad():
        for p in b.trainable_parameters():
            p.add_(0.5)
    sets = {"s": ["a red cat", "a blue dog"]}
    ra, _ = evaluation.evaluate(a, rewards, sets, [1, 4], images_per_prompt=2)
    rb, _ = evaluation.evaluate(b, rewards, sets, [1, 4], images_per_prompt=2)
    na = [x for x in seen if x[0] == id(a)]
    nb = [x for x in seen if x[0] == id(b)]
    assert len(na) == len(nb) == 2
    for (_, n1, z1), (_, n2, z2) in zip(na, nb):
        assert n1 == n2 and torch.equal(z1, z2)
    assert not all((x.scores == y.scores).all() for x, y in zip(ra, rb))  # different models, same noise
    # the noise does not depend on the model, only on the seed, prompt set and shape
    assert torch.equal(evaluation.evaluation_noise((4, 8, 8), 2, 2, 1234, "s"), na[0][2])


def _suite_file(tmp_path, folder):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green circle\n")
    return write_suite(
        tmp_path / "mini.toml",
        model=folder,
        prompts=prompts,
        algorithms=["sdpo"],
        rewards=["jpeg_compressibility"],
        samples=48,
        eval_interval=16,
        train=dict(num_steps=3, samples_per_epoch=8, learning_rate=0.01, train_batch_size=2),
        evaluation=dict(steps=[1, 2], images_per_prompt=2, grid_images=2),
    )


@pytest.mark.slow
def test_bench_resume_after_kill_equals_uninterrupted(tiny_random_folders, tmp_path):
    suite = _suite_file(tmp_path, tiny_random_folders["sd"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the uninterrupted run in this process, on one thread like the subprocesses
    try:
        BenchmarkRunner(load_suite(str(suite)), tmp_path / "full", device="cpu", progress=False, log=lambda *_: None).run()
    finally:
        torch.set_num_threads(threads)
    cmd2 = alignzoo_command("bench", str(suite), "--runs", str(tmp_path / "killed"), "--no-progress")
    env = subprocess_env()
    proc = subprocess.Popen(cmd2, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = tmp_path / "killed" / "mini" / "sdpo__jpeg_compressibility__seed0"
    deadline = time.time() + 300
    while not (cell / "checkpoints" / "epoch_00003").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the suite finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cell / "DONE").exists()
    subprocess.run(cmd2, check=True, env=env, capture_output=True, timeout=600)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "eval_seconds"} for r in rows]  # noqa: E731
    full_cell = tmp_path / "full" / "mini" / "sdpo__jpeg_compressibility__seed0"
    a, b = strip(read_lines(full_cell / "eval.jsonl")), strip(read_lines(cell / "eval.jsonl"))
    assert sorted({r["samples"] for r in a}) == [16, 32, 48]
    assert a == b
    assert (cell / "DONE").exists() and (cell / "images" / "steps_2.png").exists()
    pre = read_lines(tmp_path / "full" / "mini" / "pretrained" / "eval.jsonl")
    assert {r["steps"] for r in pre} == {1, 2} and all(r["samples"] == 0 for r in pre)
    # provenance: the same setting in two processes (full, killed + resumed) gives the same
    # hashes (a == b above); LoRA weights differ between points, the setting does not
    by_point = {}
    for r in a:
        by_point.setdefault((r["steps"], r["eval_reward"]), {})[r["samples"]] = r
    for (steps, rew), points in by_point.items():
        assert len({r["hash"] for r in points.values()}) == 3
        assert len({r["setting_hash"] for r in points.values()}) == 1
        base = next(r for r in pre if r["steps"] == steps and r["eval_reward"] == rew)
        assert base["setting_hash"] == points[48]["setting_hash"] and base["hash"] != points[48]["hash"]
        assert base["provenance"]["lora_checksum"] is None and points[48]["provenance"]["lora_checksum"]
    for r in a + pre:  # jpeg has no backbone: the fallback pixel space; 3 prompts x 2 images
        assert r["diversity_space"] == "pixels-16x16" and 0 < r["diversity"] < 2 and r["n"] == 6
    scores = json.loads((full_cell / "scores.json").read_text())
    assert set(scores) == {f"{tmp_path / 'prompts.txt'}|jpeg_compressibility|{n}" for n in (1, 2)}
    final = {r["steps"]: r for r in a if r["samples"] == 48}
    for key, values in scores.items():
        assert len(values) == 6 and abs(sum(values) / 6 - final[int(key.rsplit("|", 1)[1])]["mean"]) < 1e-9
    from alignzoo.reports.results import load_results  # the reports read the new keys alongside the old ones

    evals = load_results(tmp_path / "full" / "mini").evals
    assert evals["diversity"].notna().all() and evals["setting_hash"].nunique() == 2
    # rerunning a finished suite does no work and changes nothing
    logs = []
    BenchmarkRunner(load_suite(str(suite)), tmp_path / "full", device="cpu", progress=False, log=logs.append).run()
    assert "1 of 1 cells finished before (DONE): not rerun" in logs
    assert strip(read_lines(full_cell / "eval.jsonl")) == a


def test_evaluation_due_counts_crossings_and_the_end():
    """Evaluation points: an epoch that crosses a multiple of eval_interval, and the one that spends
    the budget; epochs of uneven size (LaSRO's stage 1 and rollouts count) are evaluated too."""
    suite = parse_suite(_base(samples=1024, eval_interval=256, train={"samples_per_epoch": 64}))
    steps = [(0, 64), (192, 256), (256, 320), (448, 512), (960, 1024)]
    assert [suite.evaluation_due(a, b) for a, b in steps] == [(False, False), (False, True), (False, False), (False, True), (True, True)]
    # uneven epochs: 0 -> 2880 crosses 256 and spends the budget; 100 -> 300 crosses 256
    assert suite.evaluation_due(0, 2880) == (True, True) and suite.evaluation_due(100, 300) == (False, True)
    # the old exact-multiple points are the crossings when samples_per_epoch divides the interval
    ends = list(range(64, 1025, 64))
    due = [b for a, b in zip([0] + ends, ends) if suite.evaluation_due(a, b)[1]]
    assert due == suite.eval_interval_points(64)


def test_the_five_seed_control_suite_is_the_tiny_suites_setting():
    """tiny-controls-5seeds reuses the tiny suite's cells for seeds 0-2 (runs are deterministic per
    seed), which is only sound if every one of its cells has the tiny suite's setting."""
    five, tiny = load_suite("tiny-controls-5seeds"), load_suite("tiny")
    assert five.seeds == [0, 1, 2, 3, 4] and set(tiny.seeds) < set(five.seeds)
    assert {(a, r, s) for a, r, s in five.cells() if s in tiny.seeds} <= set(tiny.cells())
    for algo, reward, _seed in five.cells():
        assert five.algo_config(algo, reward) == tiny.algo_config(algo, reward), (algo, reward)
    same = ("model", "samples", "eval_interval", "train_prompts", "eval", "reward_args", "model_path")
    assert all(getattr(five, k) == getattr(tiny, k) for k in same)
