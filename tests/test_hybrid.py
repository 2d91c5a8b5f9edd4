"""Hybrid (GRPO + reward backprop through the last x̂0 step): the loss equals the sum of its two
terms computed independently, the reward term's gradient reaches only the last UNet call, λ_rb = 0
is GRPO exactly, the counters, and the clear errors. The hand-made tiny denoiser of
test_reward_backprop records every UNet call; Trainer.update runs over its stand-in trainer."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_reward_backprop import LinearReward, TinyModel, grad_calls, independent_grad, rollout, tiny_context

from alignzoo.algos.base import EpochData
from alignzoo.algos.grpo import GRPO, GRPOConfig, clipped_surrogate, group_advantages
from alignzoo.algos.hybrid import Hybrid, HybridConfig, hybrid_loss, reward_term, update_rows
from alignzoo.algos.trainer import TrainConfig, Trainer
from alignzoo.algos.validation import check_reward_gradients

B, T = 2, 4  # one group of two trajectories, four steps


def test_combined_loss_on_hand_made_tensors_is_the_sum_of_its_terms():
    adv = group_advantages(torch.tensor([1.0, 3.0]), 2)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0]) / (1 + 1e-4))  # mean 2, population std 1
    a, ratio = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([1.2, 0.8, 1.05])
    policy = clipped_surrogate(a, ratio, 0.1)
    assert torch.allclose(policy, torch.tensor([-1.1, 0.9, -0.525]))  # max(−Â·ρ, −Â·clip(ρ, 0.9, 1.1)) by hand
    rewards = torch.tensor([0.2, 0.6])
    assert math.isclose(float(reward_term(rewards, 0.5)), -0.2, abs_tol=1e-7)
    assert math.isclose(float(hybrid_loss(policy, rewards, 0.5)), (-1.1 + 0.9 - 0.525) / 3 - 0.2, abs_tol=1e-6)
    assert float(hybrid_loss(policy, rewards, 0.0)) == float(policy.mean())


def _setup(kind="sd", **kw):
    model = TinyModel(kind)
    traj = rollout(model, T, b=B)
    cfg = dict(group_size=B, samples_per_epoch=B, train_batch_size=B, num_steps=T)
    return model, traj, cfg


def _trainer_update(algo, model, traj):
    """Trainer.update of one GRPO plan update over the stand-in trainer; (its info, the gradients, pending counts)."""
    ctx, grads, t = tiny_context(model, T)
    t.algo, t.context, t._first_ratio = algo, ctx, None
    t.config = SimpleNamespace(seed=0, algo=algo.name, max_transitions_per_forward=256)
    items = algo.plan(B, T, np.random.default_rng(0))[0]
    data = EpochData(advantages=torch.tensor([[1.0] * T, [-1.0] * T]), extra={"stds": traj.stds, "old_means": traj.means})
    model.unet.calls.clear()
    info = Trainer.update(t, traj, items, data)
    return info, grads[0], t.pending, items


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_the_update_is_grpo_plus_the_last_steps_reward_gradient(kind):
    model, traj, cfg = _setup(kind)
    lam = 0.7
    info, got, pending, items = _trainer_update(Hybrid(HybridConfig(rb_weight=lam, **cfg)), model, traj)
    base, want_pg, base_pending, _ = _trainer_update(GRPO(GRPOConfig(**cfg)), model, traj)
    assert sorted(update_rows(items).tolist()) == [0, 1] and items.steps.unique().tolist() == [0, 1, 2]  # the T − 1 rendered transitions
    ts = model.timesteps(T).tolist()
    want_rb = independent_grad(model, lambda: model.predict_noise(traj.latents[:, T - 1], torch.full((B,), ts[-1]), traj.prompt_embeds)[1])
    for g, p, r in zip(got, want_pg, want_rb):
        assert torch.allclose(g, p + lam * r, atol=1e-5)
    reward = float(LinearReward()(model.decode(traj.pred_x0[:, -1]), None).mean())
    assert math.isclose(info["reward_bp"], reward, rel_tol=1e-5) and math.isclose(info["loss_rb"], -lam * reward, rel_tol=1e-5)
    assert math.isclose(info["loss"], base["loss"] - lam * reward, rel_tol=1e-5, abs_tol=1e-6)
    # counted: GRPO's forwards plus one UNet call with gradient, one decode, one reward query per trajectory
    assert pending["unet_forward"] == base_pending["unet_forward"] + B and pending["unet_backward"] == base_pending["unet_backward"] + B
    assert pending["reward_queries"] == B and pending["vae_decodes"] == B and "reward_queries" not in base_pending


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_the_reward_term_reaches_only_the_last_unet_call(kind):
    model, traj, cfg = _setup(kind)
    a = Hybrid(HybridConfig(rb_weight=1.0, **cfg))
    ctx, _, t = tiny_context(model, T)
    items = a.plan(B, T, np.random.default_rng(0))[0]
    model.unet.zero_grad()
    info = a.update_extra(ctx, traj, items)
    last = model.timesteps(T).tolist()[-1]
    assert [c[0] for c in model.unet.calls] == [last] and grad_calls(model) == [last]  # from the stored x_{T−1}: one call, trained
    assert math.isclose(info["loss"], -info["reward_bp"]) and t.pending["unet_backward"] == B


def test_rb_weight_zero_is_grpo_exactly():
    model, traj, cfg = _setup()
    info, got, pending, _ = _trainer_update(Hybrid(HybridConfig(rb_weight=0.0, **cfg)), model, traj)
    base, want, base_pending, _ = _trainer_update(GRPO(GRPOConfig(**cfg)), model, traj)
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and info == base and pending == base_pending


@pytest.mark.parametrize("reward", ["jpeg_compressibility", "random"])
def test_a_reward_without_gradients_is_a_clear_one_line_error(reward, tmp_path):
    with pytest.raises(ValueError) as err:
        Trainer(TrainConfig(algo="hybrid", reward=reward, model="tiny-sd-v2", out=str(tmp_path)))  # before the model loads
    msg = str(err.value)
    assert "\n" not in msg and f"hybrid back-propagates the reward into the model, but reward {reward!r} is not differentiable" in msg
    with pytest.raises(ValueError, match="built without gradients"):
        check_reward_gradients(Hybrid, "linear", LinearReward(differentiable=False))


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"rb_weight must be a finite number >= 0, got -1.0; set it with --set rb_weight=VALUE"):
        Hybrid(HybridConfig(rb_weight=-1.0))
    with pytest.raises(ValueError, match="clip_range"):
        Hybrid(HybridConfig(clip_range=0.0))  # GRPO's checks still apply
