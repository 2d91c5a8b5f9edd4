"""The shared sampler: step kernels checked against independent Gaussian densities."""

import math

import pytest
import torch

from alignzoo.models import decode_steps, recompute_log_probs, sample, sample_groups
from alignzoo.models.sampling import gaussian_log_prob, previous_timesteps, step_distribution


def _independent_logprob(x, mean, std):
    # log N(x; mean, std^2) from torch.distributions, averaged over C,H,W
    return torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).mean(dim=(1, 2, 3))


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    std = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1, 1)
    assert torch.allclose(gaussian_log_prob(x, mean, std), _independent_logprob(x, mean, std), atol=1e-5)


def test_ddim_kernel_mean_std_and_logprob_by_hand(tiny_random_sd):
    m = tiny_random_sd
    ac = m.scheduler.alphas_cumprod.double()
    t, tp = 749, 499
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    x0 = (x - math.sqrt(1 - ac[t]) * eps) / math.sqrt(ac[t])
    eta = 0.7
    mean, std = step_distribution(m, x, torch.tensor([t, t]), torch.tensor([tp, tp]), eps, x0, eta)
    # DDIM (Song et al. eq. 12/16), written out independently in float64
    sigma = math.sqrt((1 - ac[tp]) / (1 - ac[t]) * (1 - ac[t] / ac[tp]))
    want_std = eta * sigma
    want_mean = math.sqrt(ac[tp]) * x0.double() + math.sqrt(1 - ac[tp] - want_std**2) * eps.double()
    assert torch.allclose(std.flatten(), torch.full((2,), want_std, dtype=torch.float32), rtol=1e-5)
    assert torch.allclose(mean.double(), want_mean, atol=1e-5)
    nxt = want_mean.float() + want_std * torch.randn(2, 4, 8, 8, generator=g)
    want_lp = torch.distributions.Normal(want_mean, want_std).log_prob(nxt.double()).mean(dim=(1, 2, 3))
    assert torch.allclose(gaussian_log_prob(nxt, mean, std).double(), want_lp, atol=1e-4)


def test_lcm_kernel_by_hand(tiny_random_lcm):
    m = tiny_random_lcm
    ac = m.scheduler.alphas_cumprod.double()
    ts = m.timesteps(4)
    prev = previous_timesteps(m, ts)
    assert prev[:-1].tolist() == ts[1:].tolist() and prev[-1] == ts[-1]  # last step re-noises to itself
    g = torch.Generator().manual_seed(0)
    x, denoised = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    tp = int(prev[0])
    mean, std = step_distribution(m, x, ts[:1], prev[:1], None, denoised, eta=1.0)
    assert torch.allclose(mean.double(), math.sqrt(ac[tp]) * denoised.double(), atol=1e-6)
    assert abs(float(std) - math.sqrt(1 - ac[tp])) < 1e-6


def test_lcm_boundary_coefficients(tiny_random_lcm):
    c_skip, c_out = tiny_random_lcm.boundary_coefficients(torch.tensor([0, 999]))
    s = 999 * 10.0
    assert abs(float(c_skip[0]) - 1.0) < 1e-6 and abs(float(c_out[0])) < 1e-6  # f(x, 0) = x
    assert abs(float(c_skip[1]) - 0.25 / (s**2 + 0.25)) < 1e-9
    assert abs(float(c_out[1]) - s / math.sqrt(s**2 + 0.25)) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 50])
def test_trailing_timesteps_start_at_999(tiny_random_sd, n):
    ts = tiny_random_sd.timesteps(n)
    assert ts.shape == (n,) and int(ts[0]) == 999
    assert bool((ts[:-1] > ts[1:]).all())
    prev = previous_timesteps(tiny_random_sd, ts)
    assert int(prev[-1]) == 0 and int(prev.min()) >= 0


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_same_seed_bit_identical_and_recompute_matches(kind, tiny_random_sd, tiny_random_lcm):
    m = tiny_random_sd if kind == "sd" else tiny_random_lcm
    prompts = ["a red cat", "a blue dog", "a green circle"]
    t1 = sample(m, prompts, 4, eta=1.0, generator=torch.Generator().manual_seed(7))
    t2 = sample(m, prompts, 4, eta=1.0, generator=torch.Generator().manual_seed(7))
    t3 = sample(m, prompts, 4, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(t1.latents, t2.latents) and torch.equal(t1.log_probs, t2.log_probs)
    assert not torch.equal(t1.latents, t3.latents)
    assert t1.latents.shape == (3, 5, 4, 8, 8) and t1.pred_x0.shape == (3, 4, 4, 8, 8) and t1.log_probs.shape == (3, 4)
    rows = torch.arange(3).repeat_interleave(4)
    steps = torch.arange(4).repeat(3)
    with torch.no_grad():
        lp = recompute_log_probs(m, t1, steps, rows)
    assert (lp - t1.log_probs[rows, steps]).abs().max() < 1e-5


def test_recompute_has_gradients_to_lora(tiny_random_sd):
    m = tiny_random_sd
    m.add_lora(rank=2, init=True)
    traj = sample(m, ["a red cat", "a dog"], 2, eta=1.0, generator=torch.Generator().manual_seed(0))
    lp = recompute_log_probs(m, traj, torch.tensor([0, 1]))
    lp.sum().backward()
    grads = [p.grad for p in m.trainable_parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_eta_zero_is_deterministic(tiny_random_sd):
    m = tiny_random_sd
    noise = m.init_noise(2, torch.Generator().manual_seed(3))
    a = sample(m, ["a cat", "a dog"], 4, eta=0.0, generator=torch.Generator().manual_seed(1), init_noise=noise)
    b = sample(m, ["a cat", "a dog"], 4, eta=0.0, generator=torch.Generator().manual_seed(2), init_noise=noise)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="eta > 0"):
        recompute_log_probs(m, a, torch.tensor([0, 0]))


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_first_step_x0_is_the_one_step_sample(kind, tiny_random_sd, tiny_random_lcm):
    m = tiny_random_sd if kind == "sd" else tiny_random_lcm
    noise = m.init_noise(2, torch.Generator().manual_seed(5))
    one = sample(m, ["a cat", "a dog"], 1, eta=0.0, init_noise=noise)
    for n in (2, 4, 8):
        many = sample(m, ["a cat", "a dog"], n, eta=1.0, generator=torch.Generator().manual_seed(0), init_noise=noise)
        assert torch.allclose(many.pred_x0[:, 0], one.final, atol=1e-6)


@pytest.mark.parametrize("group_size", [2, 3])
def test_groups_are_prompt_major_and_share_initial_noise_only(tiny_random_sd, group_size):
    m, g = tiny_random_sd, group_size
    tr = sample_groups(m, ["a cat", "a dog"], g, 3, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert tr.batch_size == 2 * g and tr.prompts == ["a cat"] * g + ["a dog"] * g  # row = p·G + g
    x_t = tr.latents[:, 0].view(2, g, *tr.latents.shape[2:])
    assert all(torch.equal(x_t[:, 0], x_t[:, k]) for k in range(1, g))  # one x_T per prompt
    assert not torch.allclose(x_t[0, 0], x_t[1, 0])  # prompts differ
    after = tr.latents[:, 1].view(2, g, *tr.latents.shape[2:])
    assert not torch.allclose(after[:, 0], after[:, 1])  # the per-step noise differs within a group


def test_independent_groups_draw_one_initial_noise_per_row(tiny_random_sd):
    tr = sample_groups(tiny_random_sd, ["a cat", "a dog"], 2, 2, eta=1.0, generator=torch.Generator().manual_seed(0), shared_noise=False)
    assert tr.prompts == ["a cat", "a cat", "a dog", "a dog"]
    assert not torch.allclose(tr.latents[0, 0], tr.latents[1, 0])
    same = sample(tiny_random_sd, ["a cat", "a cat", "a dog", "a dog"], 2, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tr.latents, same.latents)  # exactly sample() on the repeated prompts


def test_decode_only_requested_steps(tiny_random_sd):
    m = tiny_random_sd
    tr = sample(m, ["a cat", "a dog"], 4, eta=1.0, generator=torch.Generator().manual_seed(0))
    calls = []
    orig = m.vae.decode
    m.vae.decode = lambda z, *a, **k: (calls.append(z.shape[0]), orig(z, *a, **k))[1]
    imgs = decode_steps(m, tr, [0, 2, -1])
    m.vae.decode = orig
    assert imgs.shape == (2, 3, 3, 16, 16) and sum(calls) == 6 and len(calls) == 1  # one batched call
    assert float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    want = m.decode(tr.pred_x0[:, 2])
    assert torch.allclose(imgs[:, 1], want, atol=1e-6)


@pytest.mark.parametrize("n", [4, 3])
def test_ddim_kernel_matches_diffusers_ddim_step(tiny_random_sd, n):
    # diffusers' DDIMScheduler.step with a given variance_noise z is x_t' = mean + std·z; with
    # z = 0 it returns the mean itself. set_alpha_to_one=False: its last step then uses ᾱ[0],
    # as our clamped previous timestep does (the DDPO/SDPO convention, previous_timesteps).
    from diffusers import DDIMScheduler

    m = tiny_random_sd
    sched = DDIMScheduler.from_config(m.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=False)
    sched.set_timesteps(n)
    ts = m.timesteps(n)
    assert sched.timesteps.tolist() == ts.tolist()
    prev = previous_timesteps(m, ts)
    ac = sched.alphas_cumprod
    eta = 0.8
    g = torch.Generator().manual_seed(2)
    for i, t in enumerate(ts.tolist()):
        x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        x0 = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        mean, std = step_distribution(m, x, torch.tensor([t, t]), prev[i].expand(2), eps, x0, eta)
        want = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        want_mean = sched.step(eps, t, x, eta=eta, variance_noise=torch.zeros_like(z)).prev_sample
        assert torch.allclose(mean + std * z, want, atol=1e-5), i
        assert torch.allclose(mean, want_mean, atol=1e-5), i
        want_std = ((want - want_mean) * z).flatten(1).sum(1) / (z * z).flatten(1).sum(1)  # least squares of (want − mean) = std·z
        assert torch.allclose(std.flatten(), want_std, rtol=1e-4), i
        assert float(std.min()) > 0  # eta > 0: the log-prob is defined at every step, the last too
        lp = gaussian_log_prob(want, mean, std)
        assert torch.allclose(lp, _independent_logprob(want, want_mean, want_std.view(2, 1, 1, 1)), atol=1e-3), i


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_eps_coefficient_is_how_far_the_mean_moves_per_unit_of_the_unets_output(kind, tiny_random_sd, tiny_random_lcm):
    """Shift the UNet's output by δ·u through the real predict path: every step's mean moves by
    c_t·δ·u, c_t = eps_coefficient (the GRPO-Guard reweighting and the DPOK/GRPO KL's scale)."""
    from alignzoo.models.sampling import denoising_step, eps_coefficient

    m = tiny_random_sd if kind == "sd" else tiny_random_lcm
    traj = sample(m, ["a red cat"], 4, eta=0.8, generator=torch.Generator().manual_seed(0))
    u = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    forward = m.unet.forward

    def shifted(*args, **kwargs):
        out = forward(*args, **kwargs)
        return type(out)(sample=out.sample + 1e-2 * u)

    coefs = eps_coefficient(m, traj.timesteps, traj.prev_timesteps, traj.stds)
    assert torch.allclose(traj.eps_coefs, coefs) and bool((coefs.abs() > 0.05).all())
    for i in range(4):
        x, t, tp, z = traj.latents[:, i], traj.timesteps[i : i + 1], traj.prev_timesteps[i : i + 1], torch.zeros_like(u)
        with torch.no_grad():
            _, _, mean, _ = denoising_step(m, x, t, tp, traj.prompt_embeds, traj.neg_embeds, 0.8, z)
            m.unet.forward = shifted
            try:
                _, _, moved, _ = denoising_step(m, x, t, tp, traj.prompt_embeds, traj.neg_embeds, 0.8, z)
            finally:
                m.unet.forward = forward
        assert torch.allclose((moved - mean) / 1e-2, coefs[i] * u, rtol=1e-3, atol=1e-3), i
