"""DiffusionNFT: the loss against independent computations (the ε → v conversion by hand), the
optimality map, the gradient at θ = θ_old, group advantages, the old (sampling) policy, eta = 0
accepted where ddpo refuses it, compute counts and exact resume on the tiny random models."""

import math

import numpy as np
import pytest
import torch

from alignzoo.algos.diffusion_nft import DiffusionNFT, DiffusionNFTConfig, flow_velocity, group_advantages, nft_loss, optimality
from alignzoo.algos.trainer import TrainConfig, Trainer, read_log
from alignzoo.models import load_model
from alignzoo.models.sampling import sample_groups


# ----------------------------------------------------------------------------- math (no models)
def test_flow_velocity_on_hand_cases():
    # ᾱ = 1/2: α = σ = 1/√2, x0 = 1, ε = 1 → x_t = √2; z = x_t/(α + σ) = 1, s = 1/2
    x_t = torch.full((1, 1, 1, 1), math.sqrt(2))
    half = torch.tensor([0.5])
    assert torch.allclose(flow_velocity(x_t, torch.ones_like(x_t), half), torch.zeros(1, 1, 1, 1), atol=1e-6)  # v = ε − x0 = 0
    # the network says ε̂ = 0, so x̂0 = x_t/α = 2 and v_θ = ε̂ − x̂0 = −2 = (z − x̂0)/s = (1 − 2)/(1/2)
    assert torch.allclose(flow_velocity(x_t, torch.full_like(x_t, 2.0), half), torch.full_like(x_t, -2.0), atol=1e-6)
    # ᾱ = 0.8, x0 = 0, ε = 1: x_t = √0.2 and v = ε − x0 = 1
    assert torch.allclose(flow_velocity(torch.full((1, 1, 1, 1), math.sqrt(0.2)), torch.zeros(1, 1, 1, 1), torch.tensor([0.8])), torch.ones(1, 1, 1, 1))
    # in general v(x̂0) = ε̂ − x̂0 for x̂0 = (x_t − σ·ε̂)/α
    g = torch.Generator().manual_seed(0)
    ab = torch.tensor([0.9, 0.3, 0.05])
    x0, eps = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    assert torch.allclose(flow_velocity(x_t, x0, ab), eps - x0, atol=1e-5)


def test_optimality_maps_advantages_and_clips_at_the_ends():
    adv = torch.tensor([-9.0, -5.0, -2.5, 0.0, 1.0, 5.0, 7.0])
    assert torch.allclose(optimality(adv, 5.0), torch.tensor([0.0, 0.0, 0.25, 0.5, 0.6, 1.0, 1.0]))
    assert torch.allclose(optimality(torch.tensor([-1.0, 0.5]), 1.0), torch.tensor([0.0, 0.75]))


def _case(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    ab = torch.tensor([0.9, 0.5, 0.02])[:n]
    x0, eps = torch.randn(n, 2, 3, 3, generator=g), torch.randn(n, 2, 3, 3, generator=g)
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    eps_theta, eps_old = eps + 0.3 * torch.randn(n, 2, 3, 3, generator=g), eps + 0.3 * torch.randn(n, 2, 3, 3, generator=g)
    to_x0 = lambda e: (x_t - s * e) / a  # noqa: E731
    return dict(ab=ab, x0=x0, eps=eps, x_t=x_t, eps_theta=eps_theta, eps_old=eps_old, x0_theta=to_x0(eps_theta), x0_old=to_x0(eps_old))


def test_loss_matches_an_independent_computation():
    c, beta, a_max = _case(), 0.7, 5.0
    r = torch.tensor([0.0, 0.3, 1.0])
    # "velocity", computed in ε-space: v^± − v = ((α + σ)/α)·(ε^± − ε) with ε⁺ = (1 − β)ε_old + βε_θ, ε⁻ = (1 + β)ε_old − βε_θ
    ab = c["ab"].numpy()
    expected = []
    for i in range(3):
        e_th, e_old, e = (c[k][i].numpy().astype(np.float64) for k in ("eps_theta", "eps_old", "eps"))
        scale = (math.sqrt(ab[i]) + math.sqrt(1 - ab[i])) / math.sqrt(ab[i])
        lp = np.mean((scale * ((1 - beta) * e_old + beta * e_th - e)) ** 2)
        ln = np.mean((scale * ((1 + beta) * e_old - beta * e_th - e)) ** 2)
        expected.append(a_max * (r[i].item() * lp + (1 - r[i].item()) * ln) / beta)
    got, _ = nft_loss(c["x0_theta"], c["x0_old"], c["x0"], c["x_t"], c["ab"], r, beta, a_max, "velocity")
    assert np.allclose(got.numpy(), expected, rtol=1e-4)
    # "adaptive" (the released code): x0-space errors over sg(mean |error|), each branch its own weight
    expected = []
    for i in range(3):
        x_th, x_old, x0 = (c[k][i].numpy().astype(np.float64) for k in ("x0_theta", "x0_old", "x0"))
        ep, en = (1 - beta) * x_old + beta * x_th - x0, (1 + beta) * x_old - beta * x_th - x0
        expected.append(a_max * (r[i].item() * np.mean(ep**2) / np.mean(np.abs(ep)) + (1 - r[i].item()) * np.mean(en**2) / np.mean(np.abs(en))) / beta)
    got, info = nft_loss(c["x0_theta"], c["x0_old"], c["x0"], c["x_t"], c["ab"], r, beta, a_max, "adaptive")
    assert np.allclose(got.numpy(), expected, rtol=1e-4)
    assert np.allclose(info["old_deviation"].numpy(), ((c["x0_theta"] - c["x0_old"]) ** 2).flatten(1).mean(1).numpy())
    with pytest.raises(ValueError, match="loss_weighting"):
        nft_loss(c["x0_theta"], c["x0_old"], c["x0"], c["x_t"], c["ab"], r, beta, a_max, "x0")


@pytest.mark.parametrize("weighting", ["adaptive", "velocity"])
def test_at_the_old_policy_the_gradient_is_the_advantage_weighted_denoising_gradient(weighting):
    """θ = θ_old: ℓ = (A_max/β)·‖x̂0_old − x0‖²/w and ∂ℓ/∂x̂0_θ = 2A·(x̂0_old − x0)/(w·D), β-free
    (w = mean|x̂0_old − x0| for "adaptive", s² for "velocity")."""
    c, a_max = _case(seed=1), 5.0
    adv = torch.tensor([-3.0, 0.5, 4.0])
    d = c["x0"][0].numel()
    err = c["x0_old"] - c["x0"]
    s = ((1 - c["ab"]).sqrt() / ((1 - c["ab"]).sqrt() + c["ab"].sqrt())).view(-1, 1, 1, 1)
    w = err.abs().flatten(1).mean(1).view(-1, 1, 1, 1) if weighting == "adaptive" else s**2
    grads = []
    for beta in (1.0, 0.1):
        theta = c["x0_old"].clone().requires_grad_(True)
        loss, _ = nft_loss(theta, c["x0_old"], c["x0"], c["x_t"], c["ab"], optimality(adv, a_max), beta, a_max, weighting)
        assert torch.allclose(loss, a_max / beta * ((err**2) / w).flatten(1).mean(1), rtol=1e-4)
        loss.sum().backward()
        expected = 2 * adv.view(-1, 1, 1, 1) * err / (w * d)
        assert torch.allclose(theta.grad, expected, rtol=1e-3, atol=1e-6)
        grads.append(theta.grad)
    assert torch.allclose(*grads, rtol=1e-3, atol=1e-6)  # β-free
    # a zero advantage gives no gradient at the old policy: the plain regression cancels
    theta = c["x0_old"].clone().requires_grad_(True)
    nft_loss(theta, c["x0_old"], c["x0"], c["x_t"], c["ab"], torch.full((3,), 0.5), 1.0, a_max, weighting)[0].sum().backward()
    assert float(theta.grad.abs().max()) < 1e-6


def test_group_advantages_by_hand():
    rewards = np.array([1.0, 3.0, 0.0, 1.0, 2.0])
    prompts = ["a", "a", "b", "b", "b"]
    std = rewards.std()  # the whole batch's (the released code's global_std)
    expected = [(1 - 2) / (std + 1e-4), (3 - 2) / (std + 1e-4), -1 / (std + 1e-4), 0.0, 1 / (std + 1e-4)]
    assert np.allclose(group_advantages(rewards, prompts), expected)
    own = [-1 / (1 + 1e-4), 1 / (1 + 1e-4), -1 / (np.std([0, 1, 2]) + 1e-4), 0.0, 1 / (np.std([0, 1, 2]) + 1e-4)]
    assert np.allclose(group_advantages(rewards, prompts, global_std=False), own)


def test_config_validation_and_plan():
    for bad, match in (({"beta": 0.0}, "beta"), ({"adv_clip": None}, "A_max"), ({"adv_std": "x"}, "adv_std"), ({"group_size": 1}, "group_size")):
        with pytest.raises(ValueError, match=match):
            DiffusionNFT(DiffusionNFTConfig(**bad))
    algo = DiffusionNFT(DiffusionNFTConfig(samples_per_epoch=64, group_size=8, train_batch_size=8))
    plan = algo.plan(64, 4, np.random.default_rng(0))
    assert len(plan) == 8 and all(items.rows.shape == (1, 8, 3) for items in plan)  # one group of 8, ⌊4·0.99⌋ = 3 levels
    rows = torch.cat([i.rows[:, :, 0].reshape(-1) for i in plan])
    assert sorted(rows.tolist()) == list(range(64))  # every image once per epoch
    for items in plan:  # K distinct timestep indices of the sampler's 4 per image
        assert all(len(set(s.tolist())) == 3 and max(s.tolist()) < 4 for s in items.steps.reshape(-1, 3))
    assert algo.update_schedule(4) == [8] * 8
    with pytest.raises(ValueError, match="whole groups of 8"):
        DiffusionNFT(DiffusionNFTConfig(train_batch_size=4)).split_over(1)


# ----------------------------------------------------------------------------- tiny random models
def _trainer(folder, prompts, out, samples=16, model=None, algo="diffusion-nft", cfg=None):
    cfg = cfg if cfg is not None else DiffusionNFTConfig(samples_per_epoch=16, group_size=4, train_batch_size=8, num_steps=4, learning_rate=1e-2)
    tc = TrainConfig(algo=algo, reward="jpeg_compressibility", model=str(folder), out=str(out), samples=samples, prompts=str(prompts), progress=False)
    return Trainer(tc, cfg, model=model or load_model(str(folder)))


def test_eta_zero_is_accepted_here_while_ddpo_refuses_it(tiny_random_folders, prompt_file, tmp_path):
    from alignzoo.algos.ddpo import DDPOConfig

    folder = tiny_random_folders["sd"]
    assert _trainer(folder, prompt_file, tmp_path / "nft").algo.config.eta == 0.0
    with pytest.raises(ValueError, match="ddpo trains on log-probs.*eta > 0"):
        _trainer(folder, prompt_file, tmp_path / "ddpo", algo="ddpo", cfg=DDPOConfig(eta=0.0))
    with pytest.raises(ValueError, match="CFG-free"):
        _trainer(folder, prompt_file, tmp_path / "cfg", model=load_model(str(folder), guidance_scale=3.0))
    with pytest.raises(ValueError, match="G identical images"):
        _trainer(folder, prompt_file, tmp_path / "shared", cfg=DiffusionNFTConfig(samples_per_epoch=16, group_size=4, train_batch_size=8, shared_noise=True))


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_the_old_policy_is_the_adapter_at_rollout_time(tiny_random_folders, prompt_file, tmp_path):
    tr = _trainer(tiny_random_folders["sd"], prompt_file, tmp_path / "run")
    model, algo = tr.model, tr.algo
    _perturb(model, 0)  # a non-trivial adapter (B = 0 at init)
    algo.update_old(model)  # d = 0 before any step: old ← θ
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    t, emb = model.timesteps(4)[:2], model.encode_prompts(["a red cat", "a blue dog"])
    with torch.no_grad():
        at_rollout = model.predict_noise(x, t, emb)[1]
    _perturb(model, 2)  # the live adapter changes after the rollout (the updates)
    live = [p.detach().clone() for p in model.trainable_parameters()]
    with torch.no_grad():
        changed = model.predict_noise(x, t, emb)[1]
        with algo.old_policy(model):
            old = model.predict_noise(x, t, emb)[1]
    assert not torch.allclose(changed, at_rollout) and torch.equal(old, at_rollout)
    assert all(torch.equal(a, b) for a, b in zip(live, model.trainable_parameters()))  # live weights restored
    # the trainer's rollout samples with the old policy: the same images as sampling under old_policy
    state = tr.noise_gen.get_state()
    traj = tr.rollout()
    tr.noise_gen.set_state(state)
    prompts = traj.prompts[:: algo.config.group_size]
    with torch.no_grad(), algo.old_policy(model):
        again = sample_groups(model, prompts, 4, 4, 0.0, tr.noise_gen, shared_noise=False)
    assert torch.equal(traj.final, again.final)
    # the soft update: old ← d·old + (1 − d)·θ, d = min(rate·steps, max)
    algo.config.old_decay_rate, algo.steps_done = 0.1, 3
    before = [o.clone() for o in algo.old]
    assert algo.update_old(model) == pytest.approx(0.3)
    assert all(torch.allclose(o, 0.3 * b + 0.7 * p) for o, b, p in zip(algo.old, before, model.trainable_parameters()))
    algo.steps_done = 100
    assert algo.old_decay() == 0.5  # capped at old_decay_max


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_one_epoch_trains_and_counts(kind, tiny_random_folders, prompt_file, tmp_path):
    tr = _trainer(tiny_random_folders[kind], prompt_file, tmp_path / "run", samples=16)
    before = [p.detach().clone() for p in tr.model.trainable_parameters()]
    tr.train()
    (rec,) = read_log(tmp_path / "run")
    b, t, k = 16, 4, 3
    # rollout B·T; per (image, level): the old policy's forward and θ's forward + backward
    assert rec["unet_forward"] == b * t + 2 * b * k and rec["unet_backward"] == b * k
    assert rec["updates"] == 2 and rec["samples"] == b and rec["reward_queries"] == 2 * b  # final + the logged 1-step reward
    assert math.isfinite(rec["loss"]) and rec["old_decay"] == pytest.approx(0.002) and 0 <= rec["r_mean"] <= 1
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.trainable_parameters()))
    # after the epoch the old policy is d·old + (1 − d)·θ with d = 0.002
    assert all(torch.allclose(o, 0.002 * a + 0.998 * p, atol=1e-7) for o, a, p in zip(tr.algo.old, before, tr.model.trainable_parameters()))


def test_kl_term_costs_a_reference_forward(tiny_random_folders, prompt_file, tmp_path):
    cfg = DiffusionNFTConfig(samples_per_epoch=16, group_size=4, train_batch_size=8, num_steps=4, kl_weight=1e-2, loss_weighting="velocity")
    _trainer(tiny_random_folders["sd"], prompt_file, tmp_path / "run", cfg=cfg).train()
    (rec,) = read_log(tmp_path / "run")
    assert rec["unet_forward"] == 16 * 4 + 3 * 16 * 3 and rec["kl"] >= 0


def test_resume_is_exact(tiny_random_folders, prompt_file, tmp_path):
    folder = tiny_random_folders["sd"]
    full = _trainer(folder, prompt_file, tmp_path / "full", samples=32)
    full.train()
    _trainer(folder, prompt_file, tmp_path / "resumed", samples=16).train()
    resumed = _trainer(folder, prompt_file, tmp_path / "resumed", samples=32)
    assert resumed.resumed_from is not None and resumed.algo.steps_done == 2
    resumed.train()
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}  # noqa: E731
    assert [drop(r) for r in read_log(tmp_path / "full")] == [drop(r) for r in read_log(tmp_path / "resumed")]
    assert all(torch.equal(a, b) for a, b in zip(full.algo.old, resumed.algo.old))
    assert all(torch.equal(a, b) for a, b in zip(full.model.trainable_parameters(), resumed.model.trainable_parameters()))
