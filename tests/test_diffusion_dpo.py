"""Online Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908): eq. 14 on hand-made errors, the
best/worst pair of each group, the is_turbo timesteps, and the reference = the adapter-disabled UNet."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignzoo.algos import get_algorithm
from alignzoo.algos.diffusion_dpo import DiffusionDPO, DiffusionDPOConfig, best_and_worst, diffusion_dpo_loss, noise_errors


def test_loss_by_hand():
    ew, el, rw, rl = torch.tensor([0.10, 0.30]), torch.tensor([0.20, 0.10]), torch.tensor([0.12, 0.25]), torch.tensor([0.15, 0.12])
    loss, logit = diffusion_dpo_loss(ew, el, rw, rl, beta=50.0)
    for i in range(2):
        inside = (float(ew[i]) - float(rw[i])) - (float(el[i]) - float(rl[i]))
        z = -0.5 * 50.0 * inside  # −β T ω(λ_t) [...], T ω = 1/2 (the released code's scale)
        assert float(logit[i]) == pytest.approx(z, rel=1e-5)
        assert float(loss[i]) == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-5)
    # the winner's error falling below the reference's (and the loser's rising) lowers the loss
    better, _ = diffusion_dpo_loss(ew - 0.01, el + 0.01, rw, rl, beta=50.0)
    assert bool((better < loss).all())


def test_ties_give_log_2_and_no_gradient():
    ew = torch.tensor([0.1, 0.1], requires_grad=True)
    loss, _ = diffusion_dpo_loss(ew, torch.tensor([0.3, 0.3]), torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2]), 100.0, tie=torch.tensor([True, False]))
    loss.sum().backward()
    assert float(loss[0].detach()) == pytest.approx(math.log(2)) and float(ew.grad[0]) == 0.0 and float(ew.grad[1]) != 0.0


def test_best_and_worst_with_deterministic_ties():
    rewards = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [5.0, 1.0, 1.0, 5.0], [0.2, 0.9, 0.4, 0.1]])
    winner, loser, tie = best_and_worst(rewards)
    assert winner.tolist() == [1, 0, 2, 0, 1]  # the first of equal highest rewards
    assert loser.tolist() == [3, 0, 0, 1, 3]  # the first of equal lowest
    assert tie.tolist() == [False, True, False, False, False]
    shuffled = rewards[:, [3, 2, 1, 0]]  # the rule depends on positions only: reversed groups pick the mirrored firsts
    w2, l2, _ = best_and_worst(shuffled)
    assert w2.tolist() == [1, 0, 0, 0, 2] and l2.tolist() == [0, 0, 2, 1, 0]


def test_is_turbo_draws_the_sampling_schedule(tiny_random_sd, tiny_random_lcm):
    for model, turbo in ((tiny_random_sd, {999, 749, 499, 249}), (tiny_random_lcm, set(tiny_random_lcm.timesteps(4).tolist()))):
        ctx = SimpleNamespace(model=model, device=torch.device("cpu"), num_steps=4)
        algo = DiffusionDPO(DiffusionDPOConfig(is_turbo=True))
        algo.rng = np.random.default_rng(0)
        assert set(algo.timesteps(ctx, 400).tolist()) == turbo
        algo.config.turbo_steps = 2
        assert set(algo.timesteps(ctx, 100).tolist()) == set(model.timesteps(2).tolist())
    assert {250 * k + 249 for k in range(4)} == {999, 749, 499, 249}  # the released code's SDXL-Turbo set
    algo = DiffusionDPO()
    algo.rng = np.random.default_rng(0)
    t = algo.timesteps(SimpleNamespace(model=tiny_random_sd, device=torch.device("cpu"), num_steps=4), 4000)
    assert int(t.min()) >= 0 and int(t.max()) <= 999 and len(set(t.tolist())) > 900  # U{0, ..., 999}


def _pair(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(4, *model.latent_shape, generator=g)  # rows 0–1 winners, 2–3 losers
    noise = torch.randn(2, *model.latent_shape, generator=g).repeat(2, 1, 1, 1)  # shared within a pair
    t = torch.tensor([700, 100]).repeat(2)
    embeds = model.encode_prompts(["a red cat", "a blue dog"]).repeat(2, 1, 1)
    return latents, t, noise, embeds


def test_with_a_zero_adapter_the_loss_is_log_2_with_the_dpo_gradient(tiny_random_sd):
    """A fresh LoRA (B = 0) is the pretrained model: policy and reference errors agree, the loss is
    log 2, and its gradient is that of −log σ(z) at z = 0: ½·(β/2)·∇(e_w − e_l)."""
    m, beta = tiny_random_sd, 40.0
    m.add_lora(rank=2, seed=0)
    latents, t, noise, embeds = _pair(m)
    err, ref = noise_errors(m, latents, t, noise, embeds)
    assert torch.equal(err.detach(), ref)
    loss, _ = diffusion_dpo_loss(*err.chunk(2), *ref.chunk(2), beta)
    assert loss.tolist() == pytest.approx([math.log(2)] * 2)
    loss.sum().backward()
    got = [p.grad.clone() for p in m.trainable_parameters()]
    m.unet.zero_grad()
    a = m.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps = m.unet(a.sqrt() * latents + (1 - a).sqrt() * noise, t, encoder_hidden_states=embeds).sample
    e = ((noise - eps) ** 2).flatten(1).mean(1)
    (0.25 * beta * (e[:2] - e[2:])).sum().backward()
    want = [p.grad for p in m.trainable_parameters()]
    assert any(float(w.abs().max()) > 0 for w in want)
    assert all(torch.allclose(g, w, atol=1e-7, rtol=1e-4) for g, w in zip(got, want))


def test_the_reference_is_the_unet_with_its_adapter_disabled(tiny_random_sd):
    m = tiny_random_sd
    m.add_lora(rank=2, seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    latents, t, noise, embeds = _pair(m)
    with torch.no_grad():
        err, ref = noise_errors(m, latents, t, noise, embeds)
        a = m.alphas_cumprod[t].view(-1, 1, 1, 1)
        m.unet.disable_adapters()
        eps = m.unet(a.sqrt() * latents + (1 - a).sqrt() * noise, t, encoder_hidden_states=embeds).sample
        m.unet.enable_adapters()
    assert torch.allclose(ref, ((noise - eps) ** 2).flatten(1).mean(1), rtol=1e-5)
    assert not torch.allclose(err, ref)


def test_plan_reads_whole_groups_and_equal_images_per_update():
    algo = DiffusionDPO(DiffusionDPOConfig(samples_per_epoch=64, train_batch_size=8))
    plan = algo.plan(64, 4, np.random.default_rng(0))
    assert len(plan) == 8 and all(items.rows.shape == (2, 4, 1) for items in plan)  # 8 images = 2 groups of 4 per update
    rows = torch.cat([items.rows.flatten() for items in plan])
    assert sorted(rows.tolist()) == list(range(64))
    assert all(bool((items.rows[:, :, 0] == items.rows[:, :1, 0] + torch.arange(4)).all()) for items in plan)  # prompt-major groups
    ddpo = get_algorithm("ddpo")(get_algorithm("ddpo").Config(samples_per_epoch=64, train_batch_size=8))
    assert algo.update_schedule(4) == ddpo.update_schedule(4) == [8] * 8


@pytest.mark.parametrize("bad, match", [({"group_size": 1}, "group_size must be >= 2"), ({"beta": 0.0}, "beta"), ({"noise_draws": 0}, "noise_draws")])
def test_bad_settings_are_one_line_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        DiffusionDPO(DiffusionDPOConfig(**bad))


@pytest.mark.parametrize("kind", ["sd", "lcm"])
def test_a_run_trains_on_the_best_and_worst_and_counts_its_forwards(kind, tiny_run, tmp_path, monkeypatch):
    from alignzoo.algos import diffusion_dpo
    from alignzoo.algos.trainer import Trainer

    seen = []
    real = diffusion_dpo.noise_errors

    def spy(model, latents, t, noise, embeds):
        seen.append((latents.clone(), t.clone()))
        return real(model, latents, t, noise, embeds)

    monkeypatch.setattr(diffusion_dpo, "noise_errors", spy)
    cfg = DiffusionDPOConfig(num_steps=2, samples_per_epoch=8, train_batch_size=4, learning_rate=1e-2, noise_draws=2, is_turbo=kind == "lcm")
    tr = Trainer(tiny_run("diffusion-dpo", kind, tmp_path, 8), cfg)
    rollouts = []
    real_update = tr.algo.update_epoch
    tr.algo.update_epoch = lambda ctx, rollout: real_update(ctx, rollouts.append(rollout) or rollout)
    rec = tr.train()[-1]
    # 8 images sampled in 2 steps; 2 updates of one group (= one pair) each, 2 noise draws: 4 rows with grad, 4 reference rows
    assert (rec["unet_forward"], rec["unet_backward"], rec["updates"], rec["reward_queries"]) == (8 * 2 + 2 * 8, 2 * 4, 2, 8)
    assert 0.0 <= rec["implicit_acc"] <= 1.0 and math.isfinite(rec["loss"])
    finals, rewards = rollouts[0].traj.final, rollouts[0].final_rewards
    assert len(seen) == 2
    for latents, t in seen:  # each update: [w, w, l, l] (2 draws), the winner and the loser of one group
        w, l = latents[0], latents[2]
        assert torch.equal(latents[1], w) and torch.equal(latents[3], l) and torch.equal(t[:2], t[2:])
        iw = [i for i in range(8) if torch.equal(finals[i], w)]
        il = [i for i in range(8) if torch.equal(finals[i], l)]
        assert len(iw) == 1 and len(il) == 1 and iw[0] // 4 == il[0] // 4
        group = rewards[iw[0] // 4 * 4 : iw[0] // 4 * 4 + 4]
        assert float(rewards[iw[0]]) == float(group.max()) > float(group.min()) == float(rewards[il[0]])
