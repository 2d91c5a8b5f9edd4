"""GRPO (alignzoo/algos/grpo.py) on hand-made tensors: the expected values are computed here
independently (numpy or plain floats), option by option; then the sampler's per-step η and one
short training run on the tiny random model with every option on."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignzoo.algos import get_algorithm
from alignzoo.algos.base import EpochData, Items
from alignzoo.algos.grpo import dppo_mask, gdpo_advantages, group_advantages, noise_weights, window_start
from alignzoo.algos.rollouts import Rollout
from alignzoo.models.sampling import mean_kl

GRPO = get_algorithm("grpo")


def grpo(**kw):
    return GRPO(GRPO.Config(**kw))


def rollout(rewards, group_size, num_steps=3, components=None, weights=None, gatherer=None, stds=None):
    """A Rollout of hand-made final rewards (B,) (one query per row, at its last step)."""
    b = len(rewards)
    traj = SimpleNamespace(batch_size=b, num_steps=num_steps, prompts=["p"] * b, stds=stds, means=None)
    queries = torch.full((b, 1), num_steps - 1)
    comps = None if components is None else torch.as_tensor(components, dtype=torch.float32)[:, None, :]
    return Rollout(traj, queries, torch.as_tensor(rewards, dtype=torch.float32)[:, None], group_size, components=comps, weights=weights, gatherer=gatherer)


# ---------------------------------------------------------------------------------- advantages
REWARDS = [1.0, 2.0, 4.0, 9.0, 0.5, 0.5, 0.7, 0.3]  # two groups of G = 4


def test_group_advantages_use_each_groups_mean_and_std():
    adv = group_advantages(torch.tensor(REWARDS), 4, "group")
    for g in range(2):
        r = np.array(REWARDS[4 * g : 4 * g + 4])
        want = (r - r.mean()) / (r.std() + 1e-4)  # population std, + 1e-4 (Flow-GRPO's tracker)
        assert np.allclose(adv[4 * g : 4 * g + 4].numpy(), want, atol=1e-6)
    # a constant group gets no advantage (not 0/0)
    assert group_advantages(torch.tensor([3.0, 3.0, 3.0]), 3).tolist() == [0.0, 0.0, 0.0]


def test_global_std_is_over_every_process_and_none_only_centres():
    other = torch.tensor([10.0, -10.0, 0.0, 5.0])  # another process's rewards, as Rollout.gather returns them
    adv = group_advantages(torch.tensor(REWARDS), 4, "global", gather=lambda v: torch.cat([v, other]))
    everything = np.array(REWARDS + other.tolist())
    for g in range(2):
        r = np.array(REWARDS[4 * g : 4 * g + 4])
        assert np.allclose(adv[4 * g : 4 * g + 4].numpy(), (r - r.mean()) / (everything.std() + 1e-4), atol=1e-6)
    centred = group_advantages(torch.tensor(REWARDS), 4, "none")  # Dr. GRPO
    assert np.allclose(centred[:4].numpy(), np.array(REWARDS[:4]) - np.mean(REWARDS[:4]))
    with pytest.raises(ValueError, match="unknown advantage_std 'batch'"):
        group_advantages(torch.tensor(REWARDS), 4, "batch")


def test_advantages_are_clipped_and_the_same_at_every_step():
    rewards = [0.0] * 7 + [1.0]  # one outlier in a group of 8: z = √7 ≈ 2.65 before the clip
    data = grpo(adv_clip=2.0).advantages(rollout(rewards, 8, num_steps=3, stds=torch.ones(3)))
    r = np.array(rewards)
    want = np.clip((r - r.mean()) / (r.std() + 1e-4), -2, 2)
    assert data.advantages.shape == (8, 3) and np.allclose(data.advantages.numpy(), want[:, None], atol=1e-6)
    assert float(data.advantages[7, 0]) == 2.0  # the clip did bind


def test_gdpo_normalises_each_reward_in_its_group_before_summing():
    comps = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [5, 0.2], [1, 0.1], [3, 0.4], [2, 0.3]], dtype=np.float64)
    w = np.array([1.0, 0.5])
    got = gdpo_advantages(torch.tensor(comps, dtype=torch.float32), torch.tensor(w, dtype=torch.float32), 4)
    summed = np.zeros(8)
    for g in range(2):
        block = comps[4 * g : 4 * g + 4]
        summed[4 * g : 4 * g + 4] = (((block - block.mean(0)) / np.maximum(block.std(0), 1e-6)) * w).sum(1)
    want = (summed - summed.mean()) / summed.std()
    assert np.allclose(got.numpy(), want, atol=1e-5)
    # GDPO is blind to a reward's scale; the weighted sum is not: multiplying reward 2 by 100
    # changes the sum's advantages and leaves GDPO's unchanged
    scaled = comps * np.array([1.0, 100.0])
    assert np.allclose(gdpo_advantages(torch.tensor(scaled, dtype=torch.float32), torch.tensor(w, dtype=torch.float32), 4).numpy(), want, atol=1e-5)
    sum_adv = lambda c: group_advantages(torch.tensor(c @ w, dtype=torch.float32), 4).numpy()  # noqa: E731
    assert not np.allclose(sum_adv(comps), sum_adv(scaled), atol=1e-2)


def test_gdpo_and_sum_aggregation_through_the_rollout():
    comps = [[1.0, 0.0], [0.0, 0.2], [1.0, 0.1], [0.0, 0.9]]
    w = torch.tensor([1.0, 3.0])
    total = [float(torch.tensor(c) @ w) for c in comps]  # what the reward's forward gives: Σ w_k r_k
    ro = rollout(total, 4, components=comps, weights=w, stds=torch.ones(3))
    as_sum = grpo(group_size=4, adv_clip=None).advantages(ro).advantages[:, 0]
    as_gdpo = grpo(group_size=4, adv_clip=None, reward_aggregation="gdpo").advantages(ro).advantages[:, 0]
    assert torch.allclose(as_sum, group_advantages(torch.tensor(total), 4))
    assert torch.allclose(as_gdpo, gdpo_advantages(torch.tensor(comps), w, 4))
    assert not torch.allclose(as_sum, as_gdpo, atol=1e-3)
    # rewards (1, 0) and (0, 1) sum to 1 and 3 with weights (1, 3), but GDPO with equal weights ties them
    comps = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    tie = grpo(group_size=4, adv_clip=None, reward_aggregation="gdpo").advantages(
        rollout(total, 4, components=comps, weights=torch.ones(2), stds=torch.ones(3))
    )
    assert float(tie.advantages[0, 0]) == pytest.approx(float(tie.advantages[1, 0]), abs=1e-6)


# ---------------------------------------------------------------------------------- the loss
def test_clipped_loss_by_hand():
    algo = grpo(clip_range=0.2)
    # one group of 2 at one step (M, G, K) = (2, 2, 1): item 0 reads rows 0, 1; item 1 rows 2, 3
    items = Items(torch.tensor([[[0], [1]], [[2], [3]]]), torch.zeros(2, 2, 1, dtype=torch.long))
    ratios = [1.5, 0.5, 1.1, 0.7]
    adv = torch.tensor([[2.0], [2.0], [-1.0], [-1.0]])
    new = torch.tensor([math.log(r) for r in ratios]).view(2, 2, 1)
    loss, info = algo.loss(items, new, torch.zeros(2, 2, 1), EpochData(advantages=adv, extra={"stds": torch.ones(1)}))
    # max(-A r, -A clip(r, 0.8, 1.2)): (1.5, 2) -> max(-3, -2.4) = -2.4; (0.5, 2) -> max(-1, -1.6) = -1;
    # (1.1, -1) -> 1.1; (0.7, -1) -> max(0.7, 0.8) = 0.8
    assert torch.allclose(loss, torch.tensor([(-2.4 - 1.0) / 2, (1.1 + 0.8) / 2]), atol=1e-6)
    assert info["clipfrac"].tolist() == [1.0, 0.5]


def test_kl_to_the_reference_in_mean_space_by_hand():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).view(2, 1, 2, 1)  # two transitions, latents (C, h, w) = (1, 2, 1)
    ref = torch.tensor([[0.5, 1.0], [1.0, 1.0]]).view(2, 1, 2, 1)
    std = torch.tensor([0.5, 2.0])
    # ‖μ − μ_ref‖² as a mean over the 2 dimensions, over 2σ²
    want = [((0.5**2 + 0) / 2) / (2 * 0.25), ((1.0**2 + 2.0**2) / 2) / (2 * 4.0)]
    assert torch.allclose(mean_kl(mu, ref, std), torch.tensor(want))
    # through the loss: zero advantages leave β·KL alone; rows 0, 1 at steps 0, 1
    algo = grpo(kl_beta=0.04)
    assert algo.needs_reference and algo.needs_means
    items = Items(torch.tensor([[[0], [1]]]), torch.tensor([[[0], [1]]]))
    ref_means = torch.zeros(2, 2, 1, 2, 1)
    ref_means[0, 0], ref_means[1, 1] = ref[0], ref[1]
    data = EpochData(advantages=torch.zeros(2, 2), ref_means=ref_means, extra={"stds": std})
    new_means = mu.view(1, 2, 1, 1, 2, 1).clone().requires_grad_(True)
    loss, info = algo.loss(items, torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), data, new_means=new_means)
    assert float(loss.detach()) == pytest.approx(0.04 * sum(want) / 2, rel=1e-6) and float(info["kl_ref"]) == pytest.approx(sum(want) / 2, rel=1e-6)
    loss.sum().backward()  # ∂/∂μ of β‖μ − μ_ref‖²/(2σ²·D), averaged over the item's 2 transitions
    assert torch.allclose(new_means.grad[0, 0, 0].flatten(), 0.04 * (mu[0] - ref[0]).flatten() / (2 * 0.25) / 2)  # β(μ − μ_ref)/(Dσ²)/2
    assert not grpo().needs_reference and not grpo().needs_means  # β = 0: no reference pass, no means kept


def test_noise_aware_weights_and_their_normalisation():
    stds = torch.tensor([0.8, 0.4, 0.2, 0.03])
    w = noise_weights(stds, trainable=3)
    assert float(w[:3].mean()) == pytest.approx(1.0) and float(w[0] / w[1]) == pytest.approx(2.0)
    assert torch.allclose(noise_weights(stds, 3, scale=2.25), 2.25 * stds)  # TempFlow's c
    # through the loss: the same per-step term, scaled by its step's weight
    algo, plain = grpo(noise_weighting=True, clip_range=0.2, group_size=2), grpo(clip_range=0.2, group_size=2)
    data = algo.advantages(rollout([0.0, 1.0], 2, num_steps=4, stds=stds))
    assert torch.allclose(data.extra["weights"], w)
    items = Items(torch.tensor([[[0], [1]], [[0], [1]]]), torch.tensor([[[0], [0]], [[2], [2]]]))  # the group at steps 0 and 2
    new = torch.full((2, 2, 1), 0.05)
    weighted, _ = algo.loss(items, new, torch.zeros(2, 2, 1), data)
    unweighted, _ = plain.loss(items, new, torch.zeros(2, 2, 1), plain.advantages(rollout([0.0, 1.0], 2, num_steps=4, stds=stds)))
    assert torch.allclose(weighted, unweighted * w[[0, 2]])


def test_dppo_mask_truth_table_and_its_loss():
    div = torch.tensor([2e-5, 2e-5, 2e-5, 2e-5, 5e-6, 2e-5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0])
    ratio = torch.tensor([1.1, 0.9, 0.9, 1.1, 1.1, 1.1])
    # masked: beyond ε_D and still moving away (A > 0, r > 1) or (A < 0, r < 1)
    assert dppo_mask(div, adv, ratio, 1e-5).tolist() == [True, False, True, False, False, False]
    # through the loss: the divergence from the old means decides; masked steps get no gradient
    algo = grpo(ratio_guard="dppo", dppo_threshold=1e-3)
    items = Items(torch.tensor([[[0], [1]]]), torch.zeros(1, 2, 1, dtype=torch.long))
    old_means = torch.zeros(2, 1, 1, 2, 2)
    new_means = torch.zeros(1, 2, 1, 1, 2, 2)
    new_means[0, 0] += 0.1  # row 0 moved: D = 0.01/(2·1) = 5e-3 > 1e-3; row 1 did not
    data = EpochData(advantages=torch.tensor([[1.0], [1.0]]), extra={"stds": torch.ones(1), "old_means": old_means})
    new = torch.tensor([[[0.2], [0.2]]], requires_grad=True)  # both ratios e^0.2 > 1 with A > 0: both "moving away"
    loss, info = algo.loss(items, new, torch.zeros(1, 2, 1), data, new_means=new_means)
    assert float(info["masked"]) == 0.5
    assert float(loss.detach()) == pytest.approx(-math.exp(0.2) / 2, rel=1e-6)  # row 0 masked, row 1: −A·r, no clip
    loss.sum().backward()
    assert float(new.grad[0, 0, 0]) == 0.0 and float(new.grad[0, 1, 0]) == pytest.approx(-math.exp(0.2) / 2, rel=1e-6)


def test_grpo_guard_recentres_and_scales_the_ratio_and_reweights_each_step():
    """GRPO-Guard on hand-made Gaussian steps: (log r + b_t)·σ_t equals ⟨z, μ_θ − μ_old⟩ averaged
    over dimensions, for x = μ_old + σ·z (RatioNorm, computed from the densities here); the clipped
    term is divided by |∂μ/∂ε̂| of its step."""
    from alignzoo.models.sampling import gaussian_log_prob

    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([0.8, 0.3])
    coefs = torch.tensor([-2.5, -0.5])  # ∂μ/∂ε̂ of the two steps
    old_means = torch.randn(2, 2, 1, 2, 2, generator=g)  # (B, T, C, h, w)
    z = torch.randn(2, 2, 1, 2, 2, generator=g)
    x = old_means + stds.view(1, 2, 1, 1, 1) * z
    shift = 0.05 * torch.randn(2, 2, 1, 2, 2, generator=g)
    new_means = (old_means + shift).requires_grad_(True)
    new_logp = gaussian_log_prob(x.flatten(0, 1), new_means.flatten(0, 1), stds.repeat(2).view(-1, 1, 1, 1)).view(2, 2)
    old_logp = gaussian_log_prob(x.flatten(0, 1), old_means.flatten(0, 1), stds.repeat(2).view(-1, 1, 1, 1)).view(2, 2)
    algo = grpo(ratio_guard="guard", clip_range=1e-3)
    items = Items(torch.tensor([[[0, 1], [1, 0]]]), torch.tensor([[[0, 1], [1, 0]]]))  # (1, G=2, K=2): rows × steps
    data = EpochData(advantages=torch.tensor([[1.0, 1.0], [-2.0, -2.0]]), extra={"stds": stds, "old_means": old_means, "guard_weights": 1 / coefs.abs()})
    r, st = items.rows, items.steps
    loss, info = algo.loss(items, new_logp[r, st], old_logp[r, st], data, new_means=new_means[r, st])
    normed = (z * shift).flatten(2).mean(-1)  # (B, T): ⟨z, Δμ⟩ averaged over dimensions
    ratio = normed[r, st].exp()
    adv = data.advantages[r, st]
    want = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 1e-3, 1 + 1e-3)) / coefs.abs()[st]
    assert torch.allclose(loss, want.flatten(1).mean(1), rtol=1e-4, atol=1e-7)
    bias = (shift**2).flatten(2).mean(-1) / (2 * stds**2)
    assert float(info["ratio_bias"]) == pytest.approx(float(bias[r, st].mean()), rel=1e-4)
    plain, _ = grpo(clip_range=1e-3).loss(items, new_logp[r, st], old_logp[r, st], data, new_means=new_means[r, st])
    assert not torch.allclose(plain, loss)  # the plain ratio exp(log r) differs (left-shifted by −b_t, unscaled)
    assert grpo(ratio_guard="guard").needs_means and not grpo(ratio_guard="guard").needs_reference


# ---------------------------------------------------------------------------------- MixGRPO's window
def test_window_moves_every_tau_epochs_and_stops_at_the_end():
    # A = 3 trainable steps, w = 1, s = 1, τ = 2: l = 0, 0, 1, 1, 2, 2, 2, ...
    assert [window_start(k, 3, 1, 1, 2) for k in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    # stride None = the window size (non-overlapping): w = 2 of A = 5 moves 0 → 2 → 3 (clipped at A − w)
    assert [window_start(k, 5, 2, None, 1) for k in range(4)] == [0, 2, 3, 3]
    with pytest.raises(ValueError, match="sde_window 4 does not fit the 3 trainable steps"):
        window_start(0, 3, 4, None, 1)
    with pytest.raises(ValueError, match="sde_window 5 does not fit the 3 trainable steps"):
        grpo(num_steps=4, sde_window=5)


def test_window_sets_each_steps_eta_and_trains_only_its_steps():
    algo = grpo(sde_window=1, sde_window_stride=1, sde_window_every=2, eta=0.7, group_size=2, train_batch_size=4)
    assert grpo().sampling_eta(4) == 1.0  # no window: one η
    for epoch, step in [(0, 0), (1, 0), (2, 1), (5, 2)]:
        algo._ctx = SimpleNamespace(epoch=epoch)
        assert algo.sampling_eta(4) == [0.7 if i == step else 0.0 for i in range(4)]
        plan = algo.plan(8, 4, np.random.default_rng(0))
        visits = sorted((int(r), int(s)) for items in plan for r, s in zip(items.rows.flatten(), items.steps.flatten()))
        assert visits == [(r, step) for r in range(8)] and len(plan) == 2  # every row once, at the window's step; 4 images per update
    without = grpo(group_size=2, train_batch_size=4).plan(8, 4, np.random.default_rng(0))
    assert sorted(int(s) for items in without for s in items.steps.flatten()) == sorted([0, 1, 2] * 8)


def test_config_values_are_checked():
    for key, value, message in [
        ("advantage_std", "batch", "advantage_std must be one of group, global, none"),
        ("reward_aggregation", "max", "reward_aggregation must be one of sum, gdpo"),
        ("ratio_guard", "mask", "ratio_guard must be one of none, dppo, guard"),
        ("kl_beta", -0.1, "kl_beta must be a number >= 0"),
        ("sde_window_every", 0, "sde_window_every must be an integer >= 1"),
        ("noise_weight_scale", 0.0, "noise_weight_scale must be a number > 0, or none"),
    ]:
        with pytest.raises(ValueError, match=message):
            GRPO.Config(**{key: value}).validate()


# ---------------------------------------------------------------------------------- sampler and trainer
def test_per_step_eta_makes_the_other_steps_deterministic(tiny_random_sd):
    from alignzoo.models.sampling import recompute_log_probs, sample, step_moments

    m, noise = tiny_random_sd, tiny_random_sd.init_noise(2, torch.Generator().manual_seed(3))
    a, b = (sample(m, ["a cat", "a dog"], 4, eta=[0.0, 1.0, 0.0, 0.0], generator=torch.Generator().manual_seed(s), init_noise=noise) for s in (1, 2))
    assert torch.equal(a.latents[:, 1], b.latents[:, 1]) and not torch.equal(a.latents[:, 2], b.latents[:, 2])  # only step 1 draws noise
    assert torch.isnan(a.log_probs[:, [0, 2, 3]]).all() and torch.isfinite(a.log_probs[:, 1]).all()
    assert float(a.stds[0]) == 0.0 and float(a.stds[1]) > 0 and a.etas().tolist() == [0.0, 1.0, 0.0, 0.0]
    with torch.no_grad():
        lp = recompute_log_probs(m, a, torch.tensor([1, 1]))
        lp0, _, std0 = step_moments(m, a, torch.tensor([0, 0]))
    assert (lp - a.log_probs[:, 1]).abs().max() < 1e-5
    assert torch.isnan(lp0).all() and float(std0.abs().max()) == 0.0
    with pytest.raises(ValueError, match="eta has 3 values for 4 steps"):
        sample(m, ["a cat"], 4, eta=[1.0, 1.0, 1.0])
    kept = sample(m, ["a cat"], 2, eta=1.0, generator=torch.Generator().manual_seed(0), keep_means=True)
    with torch.no_grad():
        _, mu0, _ = step_moments(m, kept, torch.tensor([0]))
    assert kept.means.shape == (1, 2, 4, 8, 8) and torch.allclose(mu0, kept.means[:, 0], atol=1e-5)
    assert not torch.allclose(kept.latents[:, 1], kept.means[:, 0], atol=1e-3)  # the sample is the mean plus noise
    assert sample(m, ["a cat"], 2, generator=torch.Generator().manual_seed(0)).means is None  # kept only when asked


@pytest.mark.parametrize("kind, guard", [("sd", "dppo"), ("lcm", "dppo"), ("sd", "guard"), ("lcm", "guard")])
def test_grpo_trains_with_every_option_on(kind, guard, tiny_random_folders, prompt_file, tmp_path):
    from alignzoo.algos.trainer import TrainConfig, Trainer

    cfg = GRPO.Config(
        num_steps=3,
        samples_per_epoch=8,
        group_size=4,
        train_batch_size=4,
        learning_rate=0.01,
        kl_beta=0.1,
        ratio_guard=guard,
        noise_weighting=True,
        sde_window=1,
        sde_window_every=1,
        shared_noise=True,
    )
    tc = TrainConfig(
        algo="grpo",
        reward="jpeg_compressibility+random@0.5",
        model=str(tiny_random_folders[kind]),
        prompts=str(prompt_file),
        out=str(tmp_path / kind),
        samples=16,
        progress=False,
    )
    records = Trainer(tc, cfg).train()
    first, second = records
    for rec in records:
        assert math.isfinite(rec["loss"]) and rec["kl_ref"] >= 0
        assert 0 <= rec["masked"] <= 1 if guard == "dppo" else rec["ratio_bias"] >= 0
        assert rec["reward_mean"] == pytest.approx(rec["reward_mean[jpeg_compressibility]"] + 0.5 * rec["reward_mean[random]"], abs=1e-4)
    assert first["first_log_ratio_abs"] < 1e-4 and second["kl_ref"] > 0  # the LoRA moved away from the reference
    # per epoch: sampling 8 × 3, the reference pass over the 2 trainable steps 8 × 2, training the window alone 8 × 1
    assert first["unet_forward"] == 8 * 3 + 8 * 2 + 8 and second["unet_forward"] == 2 * first["unet_forward"]


@pytest.mark.parametrize("shared", [True, False])
def test_shared_noise_starts_a_group_from_one_x_T(shared, tiny_random_folders, prompt_file, tmp_path):
    from alignzoo.algos.trainer import TrainConfig, Trainer

    tc = TrainConfig(
        algo="grpo", reward="jpeg_compressibility", model=str(tiny_random_folders["sd"]), prompts=str(prompt_file), out=str(tmp_path), samples=8, progress=False
    )
    tr = Trainer(tc, GRPO.Config(num_steps=2, samples_per_epoch=8, group_size=4, train_batch_size=4, shared_noise=shared))
    starts = tr.rollout().latents[:, 0].flatten(1)
    same = torch.cdist(starts, starts) == 0
    groups = torch.arange(8) // 4
    # DanceGRPO: the 4 images of a prompt share x_T, two groups never; Flow-GRPO's default: no two alike
    assert torch.equal(same, groups[:, None] == groups[None] if shared else torch.eye(8, dtype=torch.bool))


def test_a_resumed_run_continues_the_window_where_it_was(tiny_random_folders, prompt_file, tmp_path):
    from alignzoo.algos.trainer import TrainConfig, Trainer

    cfg = GRPO.Config(num_steps=3, samples_per_epoch=8, group_size=4, train_batch_size=4, sde_window=1, sde_window_every=1)

    def trainer(samples):
        tc = TrainConfig(
            algo="grpo",
            reward="jpeg_compressibility",
            model=str(tiny_random_folders["sd"]),
            prompts=str(prompt_file),
            out=str(tmp_path),
            samples=samples,
            progress=False,
        )
        return Trainer(tc, cfg)

    first = trainer(8)
    assert first.algo.window(3) == [0] and first.algo.sampling_eta(3) == [1.0, 0.0, 0.0]
    first.train()
    resumed = trainer(16)  # picks up the checkpoint of epoch 1
    assert resumed.resumed_from is not None and resumed.algo.window(3) == [1] and resumed.algo.sampling_eta(3) == [0.0, 1.0, 0.0]


def test_tempflow_branching_is_a_shared_x_T_with_a_one_step_window(tiny_random_folders, prompt_file, tmp_path):
    """TempFlow-GRPO's trajectory branching (arXiv 2508.04324): a group follows one deterministic
    prefix, branches with noise at one step k, and runs deterministically after it, so the group's
    reward differences belong to step k. Here: shared_noise with sde_window = 1, k moving each epoch."""
    from alignzoo.algos.trainer import TrainConfig, Trainer

    tc = TrainConfig(
        algo="grpo", reward="jpeg_compressibility", model=str(tiny_random_folders["sd"]), prompts=str(prompt_file), out=str(tmp_path), samples=8, progress=False
    )
    cfg = GRPO.Config(num_steps=4, samples_per_epoch=8, group_size=4, train_batch_size=4, shared_noise=True, sde_window=1, sde_window_every=1, eta=1.0)
    tr = Trainer(tc, cfg)
    groups = torch.arange(8) // 4
    same_group = groups[:, None] == groups[None]
    for k in (0, 1, 2):
        tr.epoch = k
        assert tr.algo.window(4) == [k]
        latents = tr.rollout().latents  # (B, T + 1, ...): x_T, then the state after each step
        for j in range(latents.shape[1]):
            x = latents[:, j].flatten(1)
            same = torch.cdist(x, x) < 1e-6
            # before and at the branching step's input a group is one trajectory; after it, G
            assert torch.equal(same, same_group if j <= k else torch.eye(8, dtype=torch.bool)), (k, j)
