"""DPOK (Fan et al. 2023, arXiv 2305.16381): the clamped-ratio policy gradient, the per-step KL
to the pretrained model and the value baseline, against values computed independently here."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignzoo.algos import get_algorithm
from alignzoo.algos.base import EpochData, Items
from alignzoo.algos.dpok import DPOK, DPOKConfig, ValueHead
from alignzoo.algos.rollouts import Rollout
from alignzoo.models.sampling import mean_kl, sample, step_moments


def _items(m: int) -> Items:
    return Items(torch.arange(m).view(m, 1, 1), torch.zeros(m, 1, 1, dtype=torch.long))


STD = 0.5  # σ of the one step in the hand-made epochs below


def _epoch(adv) -> EpochData:
    """m trajectories of one step, one latent dimension: pretrained means 0, σ = STD."""
    m = len(adv)
    return EpochData(advantages=torch.tensor(adv, dtype=torch.float32)[:, None], ref_means=torch.zeros(m, 1, 1, 1, 1), extra={"stds": torch.tensor([STD])})


def _means_for(kls) -> torch.Tensor:
    """Current means (M, 1, 1, 1, 1, 1) whose KL to the zero pretrained means is ``kls``: μ = σ·√(2·KL)."""
    return torch.tensor([STD * math.sqrt(2 * k) for k in kls]).view(-1, 1, 1, 1, 1, 1)


def test_clamped_ratio_loss_and_kl_by_hand():
    algo = DPOK(DPOKConfig(reward_weight=10.0, kl_weight=0.5, ratio_clip=0.2))
    ratios = [1.5, 0.5, 1.1, 0.95]
    adv = [2.0, 2.0, -1.0, 0.5]
    kls = [0.1, 0.0, 0.3, 0.02]
    new = torch.tensor([math.log(r) for r in ratios]).view(4, 1, 1)
    loss, info = algo.loss(_items(4), new, torch.zeros(4, 1, 1), _epoch(adv), new_means=_means_for(kls))
    # −α·A·clamp(r, 0.8, 1.2) + β·KL: the ratio itself is clamped (1.5 → 1.2, 0.5 → 0.8), on both sides
    want = [-10 * a * min(max(r, 0.8), 1.2) + 0.5 * k for r, a, k in zip(ratios, adv, kls)]
    assert loss.tolist() == pytest.approx(want, rel=1e-6)
    assert info["ratio_clipfrac"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert info["kl"].tolist() == pytest.approx(kls)


def test_the_clamp_stops_the_policy_gradient_outside_the_range_only():
    """Unlike PPO's min of clipped and unclipped surrogates (which keeps the gradient of r = 1.5
    with A < 0), a clamped ratio carries no gradient outside [1 − ε, 1 + ε]; inside, ∂L/∂log r = −α·A·r."""
    algo = DPOK(DPOKConfig(reward_weight=3.0, kl_weight=0.0, ratio_clip=0.2))
    ratios, adv = [1.5, 0.5, 1.1], [-1.0, 1.0, 2.0]
    new = torch.tensor([math.log(r) for r in ratios]).view(3, 1, 1).requires_grad_(True)
    loss, _ = algo.loss(_items(3), new, torch.zeros(3, 1, 1), _epoch(adv), new_means=_means_for([0, 0, 0]))
    loss.sum().backward()
    assert new.grad.flatten().tolist() == pytest.approx([0.0, 0.0, -3.0 * 2.0 * 1.1], abs=1e-6)


def test_kl_gradient_is_beta_times_the_kl_gradient():
    """∂(β·KL)/∂μ_θ = β·(μ_θ − μ_pre)/σ², with the pretrained means of the epoch."""
    algo = DPOK(DPOKConfig(kl_weight=0.25))
    means = _means_for([0.4, 0.1]).requires_grad_(True)
    loss, info = algo.loss(_items(2), torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), _epoch([0.0, 0.0]), new_means=means)
    loss.sum().backward()
    assert info["kl"].tolist() == pytest.approx([0.4, 0.1])
    assert means.grad.flatten().tolist() == pytest.approx([0.25 * STD * math.sqrt(2 * k) / STD**2 for k in (0.4, 0.1)])


def test_mean_kl_is_the_gaussian_kl_averaged_over_dimensions():
    g = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    std = torch.tensor([0.3, 1.0, 2.5]).view(3, 1, 1, 1)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu_p, std.expand_as(mu_p)), torch.distributions.Normal(mu_q, std.expand_as(mu_q)))
    assert torch.allclose(mean_kl(mu_p, mu_q, std.view(3)), want.flatten(1).mean(1), rtol=1e-5)


def log_probs_and_reference_kl(model, traj, steps, rows):
    """What the trainer computes for DPOK: the current log-probs and means, the pretrained model's
    means (the LoRA disabled: EpochData.ref_means), and their KL (DPOK.loss)."""
    logp, mean, std = step_moments(model, traj, steps, rows)
    with model.reference():
        _, ref_mean, _ = step_moments(model, traj, steps, rows)
    return logp, mean_kl(mean, ref_mean, std)


def _perturb_lora(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_reference_kl_is_zero_for_a_zero_adapter_and_matches_the_disabled_unet(tiny_random_sd):
    """The reference is the same UNet with its LoRA disabled: with a fresh adapter (B = 0) the KL is
    exactly 0; with a non-zero one it equals ‖μ_θ − μ_ref‖²/(2σ²) computed here from the raw UNet's
    ε with the adapter on and off (DDIM: μ_θ − μ_ref = (√(1−ᾱ'−σ²) − √ᾱ'·√(1−ᾱ)/√ᾱ)·(ε_θ − ε_ref))."""
    m = tiny_random_sd
    m.add_lora(rank=2, seed=0)
    traj = sample(m, ["a red cat", "a blue dog"], 3, eta=1.0, generator=torch.Generator().manual_seed(0))
    rows, steps = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        logp, kl = log_probs_and_reference_kl(m, traj, steps, rows)
    assert kl.tolist() == [0.0, 0.0, 0.0] and torch.allclose(logp, traj.log_probs[rows, steps], atol=1e-5)
    _perturb_lora(m)
    with torch.no_grad():
        logp, kl = log_probs_and_reference_kl(m, traj, steps, rows)
        x, t, tp = traj.latents[rows, steps], traj.timesteps[steps], traj.prev_timesteps[steps]
        emb = traj.prompt_embeds[rows]
        eps = m.unet(x, t, encoder_hidden_states=emb).sample
        m.unet.disable_adapters()
        eps_ref = m.unet(x, t, encoder_hidden_states=emb).sample
        m.unet.enable_adapters()
    a, ap = m.alphas_cumprod[t].view(-1, 1, 1, 1), m.alphas_cumprod[tp].view(-1, 1, 1, 1)
    var = (1 - ap) / (1 - a) * (1 - a / ap)
    coef = (1 - ap - var).sqrt() - ap.sqrt() * (1 - a).sqrt() / a.sqrt()
    want = ((coef * (eps - eps_ref)) ** 2 / (2 * var)).flatten(1).mean(1)
    assert bool((kl > 0).all()) and torch.allclose(kl, want, rtol=1e-3)  # float32 rounding of 1 − ᾱ' − σ² at the last step


def test_reference_kl_on_the_lcm_kernel(tiny_random_lcm):
    """LCM step: x' ~ N(√ᾱ'·f_θ(x, t), (1−ᾱ')I), so μ_θ − μ_ref = √ᾱ'·c_out·(−√(1−ᾱ)/√ᾱ)·(ε_θ − ε_ref)."""
    m = tiny_random_lcm
    m.add_lora(rank=2, seed=0)
    traj = sample(m, ["a red cat"], 3, generator=torch.Generator().manual_seed(0))
    _perturb_lora(m)
    steps = torch.tensor([0, 1])
    rows = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        _, kl = log_probs_and_reference_kl(m, traj, steps, rows)
        x, t, tp, emb = traj.latents[rows, steps], traj.timesteps[steps], traj.prev_timesteps[steps], traj.prompt_embeds[rows]
        eps = m.predict_noise(x, t, emb)[0]
        m.unet.disable_adapters()
        eps_ref = m.predict_noise(x, t, emb)[0]
        m.unet.enable_adapters()
    a, ap = m.alphas_cumprod[t].view(-1, 1, 1, 1), m.alphas_cumprod[tp].view(-1, 1, 1, 1)
    _, c_out = m.boundary_coefficients(t)
    want = ((ap.sqrt() * c_out * (1 - a).sqrt() / a.sqrt() * (eps - eps_ref)) ** 2 / (2 * (1 - ap))).flatten(1).mean(1)
    assert bool((kl > 0).all()) and torch.allclose(kl, want, rtol=1e-3)  # float32 rounding of 1 − ᾱ' − σ² at the last step


# ---------------------------------------------------------------------------------- the value baseline
def _rollout(rewards, prompts, t=3, shape=(2, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(rewards)
    traj = SimpleNamespace(
        batch_size=b,
        num_steps=t,
        prompts=prompts,
        latents=torch.randn(b, t + 1, *shape, generator=g),
        prompt_embeds=torch.randn(b, 5, 6, generator=g),
        stds=torch.linspace(0.9, 0.3, t),
    )
    identity = lambda values, prompts: values.float()  # noqa: E731  (the trainer's normaliser, here the identity)
    return Rollout(traj, torch.full((b, 1), t - 1), torch.tensor(rewards)[:, None], 1, identity)


def _with_value(algo, t=3, shape=(2, 2, 2), text=6):
    algo.ctx = SimpleNamespace(average_gradients=lambda params: None)
    algo.value = ValueHead(int(np.prod(shape)), text, t, algo.config.value_hidden, torch.Generator().manual_seed(0))
    algo.value_optimizer = torch.optim.AdamW(algo.value.parameters(), lr=algo.config.value_lr)
    return algo


def test_without_a_baseline_the_advantage_is_the_normalised_reward_at_every_step():
    algo = DPOK(DPOKConfig(value_baseline=False, adv_clip=1.0))
    data = algo.advantages(_rollout([0.5, -2.0, 3.0], ["a", "b", "c"]))
    assert data.advantages.tolist() == [[0.5] * 3, [-1.0] * 3, [1.0] * 3]  # clipped to ±1


def test_the_baseline_is_read_before_the_value_head_is_fitted():
    algo = _with_value(DPOK(DPOKConfig(value_steps=5, value_lr=1e-2, adv_clip=None)))
    rollout = _rollout([1.0, -1.0, 0.5, 2.0], list("abcd"))
    inputs = algo.value_inputs(rollout.traj)
    with torch.no_grad():
        before = algo.value(*inputs).view(4, 3)
    data = algo.advantages(rollout)
    target = torch.tensor([1.0, -1.0, 0.5, 2.0])[:, None].expand(4, 3)
    assert torch.allclose(data.advantages, target - before, atol=1e-6)
    with torch.no_grad():
        after = algo.value(*inputs).view(4, 3)
    assert not torch.allclose(after, before)  # fitted after the advantages were formed
    assert data.extra["log"]["value_loss"] == pytest.approx(float(((before - target) ** 2).mean()), rel=1e-5)


def test_the_value_head_learns_a_state_dependent_reward():
    """V_ψ(x_t, z, t) fitted on rewards that depend on the state (the first latent value) and the
    step: its MSE falls well below the rewards' variance."""
    algo = _with_value(DPOK(DPOKConfig(value_steps=200, value_lr=3e-3, adv_clip=None)), t=2)
    rollout = _rollout([0.0] * 32, ["p"] * 32, t=2)
    inputs = algo.value_inputs(rollout.traj)
    target = inputs[0].flatten(1)[:, 0] * (1 + inputs[2])
    info = algo.fit_value(inputs, target)
    with torch.no_grad():
        mse = float(((algo.value(*inputs) - target) ** 2).mean())
    assert mse < 0.05 * float(target.var()) < info["value_loss"]


def test_value_head_state_round_trips():
    a, b = _with_value(DPOK()), _with_value(DPOK())
    with torch.no_grad():
        for p in b.value.parameters():
            p.add_(1.0)
    a.fit_value(a.value_inputs(_rollout([1.0, 0.0], ["a", "b"]).traj), torch.tensor([1.0, 0.0]).repeat_interleave(3))
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.value.parameters(), b.value.parameters()))
    assert b.value_optimizer.state_dict()["state"].keys() == a.value_optimizer.state_dict()["state"].keys()
    with pytest.raises(ValueError, match="value_baseline=true"):
        DPOK(DPOKConfig(value_baseline=False)).load_state_dict(a.state_dict())


@pytest.mark.parametrize("bad, match", [({"ratio_clip": 1.5}, "ratio_clip"), ({"kl_weight": -1.0}, "kl_weight"), ({"value_steps": -1}, "value_steps")])
def test_bad_settings_are_one_line_errors(bad, match):
    from alignzoo.algos.validation import validate_algo_config

    with pytest.raises(ValueError, match=match):
        validate_algo_config(DPOKConfig(**bad))


def test_loss_without_the_means_is_a_clear_error():
    with pytest.raises(ValueError, match="needs_means, needs_reference"):
        DPOK().loss(_items(1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), EpochData(advantages=torch.zeros(1, 1)))


def test_plan_is_ddpos():
    cfg = dict(train_batch_size=2, samples_per_epoch=4)
    a = get_algorithm("dpok")(get_algorithm("dpok").Config(**cfg)).plan(4, 3, np.random.default_rng(0))
    b = get_algorithm("ddpo")(get_algorithm("ddpo").Config(**cfg)).plan(4, 3, np.random.default_rng(0))
    assert [(x.rows.tolist(), x.steps.tolist()) for x in a] == [(x.rows.tolist(), x.steps.tolist()) for x in b]


# ---------------------------------------------------------------------------------- in the trainer
@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_a_run_counts_the_reference_forwards(kind, tiny_run, tmp_path):
    from alignzoo.algos.trainer import Trainer

    cfg = DPOKConfig(num_steps=3, samples_per_epoch=4, train_batch_size=2, learning_rate=1e-2, value_steps=2)
    tr = Trainer(tiny_run("dpok", kind, tmp_path, 4), cfg)
    rec = tr.train()[-1]
    # sampling 4 × 3; the reference at the epoch's 4 images × 2 rendered steps; the two updates' 2 images × 2 steps with grad
    assert (rec["unet_forward"], rec["unet_backward"], rec["updates"]) == (4 * 3 + 2 * 4 * 2, 4 * 2, 2)
    assert rec["kl"] > 0 and math.isfinite(rec["value_loss"]) and rec["first_log_ratio_abs"] < 1e-4
    assert len(tr.algo.replicated_parameters()) == 8  # 2 layers, 2 gates, the output layer: the checked extra state


@pytest.mark.parametrize("algo", ["dpok", "diffusion-dpo"])
def test_a_resumed_run_repeats_the_uninterrupted_one(algo, tiny_run, tmp_path):
    """Both keep state beyond the LoRA (DPOK's value head and its optimiser, Diffusion-DPO's draws
    of groups, t and ε): a run stopped after its first epoch and resumed ends where an
    uninterrupted one does."""
    from safetensors.torch import load_file

    from alignzoo.algos.trainer import Trainer, read_log

    cls = get_algorithm(algo)
    cfg = cls.Config(num_steps=2, samples_per_epoch=4, train_batch_size=4, learning_rate=1e-2, group_size=2 if algo == "diffusion-dpo" else 1)

    def run(out, samples):
        Trainer(tiny_run(algo, "sd", out, samples), cfg).train()

    run(tmp_path / "full", 8)
    run(tmp_path / "resumed", 4)
    run(tmp_path / "resumed", 8)
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}  # noqa: E731
    assert [drop(r) for r in read_log(tmp_path / "full")] == [drop(r) for r in read_log(tmp_path / "resumed")]
    a, b = (load_file(str(tmp_path / d / "final" / "pytorch_lora_weights.safetensors")) for d in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
