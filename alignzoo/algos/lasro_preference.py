"""LaSRO's surrogate side (Jia et al., arXiv 2411.15247; LASRO_NOTES.md §3–7): the preference data —
the Bradley–Terry loss over every ranked pair of a (prompt, step kind) group, the pairwise accuracy
that measures the surrogate, the FIFO replay buffer of scored clean latents and the group draws of a
surrogate batch (fresh groups hold the newest generator's samples, the rest are replayed) — the
running normaliser S[·] of surrogate scores in the generator loss, and ``SurrogateFitting``, the
part of LaSRO that collects scored latents (stage 1, every epoch's rollout) and fits R_ψ on them.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from alignzoo.models.sampling import Trajectory


# ------------------------------------------------------------------------------ loss and pairs
def bradley_terry_loss(score_w: torch.Tensor, score_l: torch.Tensor) -> torch.Tensor:
    """−mean log σ(s_w − s_l): the Bradley–Terry negative log-likelihood of the (w, l) pairs,
    L_surr(ψ) = −E log σ(R_ψ(z^w, c) − R_ψ(z^l, c)) (notes §3), over the pairs of the same prompt and
    step kind (z1 with z1, z2 with z2) whose true rewards differ by more than ``tie_margin``: only the
    ranking of r is used."""
    return -F.logsigmoid(score_w - score_l).mean()


def ranked_pairs(groups: torch.Tensor, rewards: torch.Tensor, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (winner, loser) index pair with the same group id and r_w − r_l > margin.

    ``groups`` (N,) long: one id per (prompt, step kind); ``rewards`` (N,). Each unordered
    pair appears at most once, winner first. Returns two (P,) long tensors.
    """
    groups = torch.as_tensor(groups, dtype=torch.long).cpu()
    rewards = torch.as_tensor(rewards, dtype=torch.float64).cpu()
    ws, ls = [], []
    order = torch.argsort(groups, stable=True)
    uniq, counts = torch.unique_consecutive(groups[order], return_counts=True)
    for idx in torch.split(order, counts.tolist()):
        if idx.numel() < 2:
            continue
        r = rewards[idx]
        w, l = torch.nonzero(r[:, None] - r[None, :] > margin, as_tuple=True)
        ws.append(idx[w])
        ls.append(idx[l])
    if not ws:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(ws), torch.cat(ls)


def pairwise_accuracy(scores: torch.Tensor, w: torch.Tensor, l: torch.Tensor) -> float:
    """Share of (w, l) pairs the scores order correctly (ties count half); NaN without pairs."""
    if w.numel() == 0:
        return float("nan")
    d = scores[w] - scores[l]
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


# ------------------------------------------------------------------------------ score normaliser
class ScoreNormalizer:
    """S[·] (notes §5, [O]): μ ← EMA(mean R), m ← max(EMA(max|R − μ|), floor), S = clip((R − μ)/m)."""

    def __init__(self, rate: float = 0.99, floor: float = 1e-3, clip: float | None = 1.0):
        self.rate, self.floor, self.clip = rate, floor, clip
        self.mean: float | None = None
        self.dev: float | None = None

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            bm = float(r.detach().mean())
            self.mean = bm if self.mean is None else self.rate * self.mean + (1 - self.rate) * bm
            bd = float((r.detach() - self.mean).abs().max())
            self.dev = bd if self.dev is None else self.rate * self.dev + (1 - self.rate) * bd
        s = (r - self.mean) / max(self.dev, self.floor)
        return s if self.clip is None else s.clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "dev": self.dev}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.dev = state["mean"], state["dev"]


# ------------------------------------------------------------------------------ replay buffer
class ReplayBuffer:
    """FIFO of scored clean latents: latents (N, C, h, w), rewards, prompt ids, step kind
    (0 = z1, 1 = z2) and version (0 = stage 1, e = the generator after e − 1 epochs)."""

    FIELDS = ("latents", "rewards", "prompt_ids", "kinds", "versions")

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.prompts: list[str] = []
        self._ids: dict[str, int] = {}
        self.latents = self.rewards = self.prompt_ids = self.kinds = self.versions = None

    def __len__(self) -> int:
        return 0 if self.rewards is None else int(self.rewards.shape[0])

    def prompt_id(self, prompt: str) -> int:
        if prompt not in self._ids:
            self._ids[prompt] = len(self.prompts)
            self.prompts.append(prompt)
        return self._ids[prompt]

    def prompts_of(self, items=None) -> list[str]:
        """The prompt of each item (index tensor or array); ``None``: of every item, in order."""
        ids = self.prompt_ids if items is None else self.prompt_ids[torch.as_tensor(items)]
        return [self.prompts[i] for i in ids.tolist()]

    def push(self, latents, rewards, prompts, kinds, version: int) -> None:
        new = {
            "latents": latents.detach().float().cpu(),
            "rewards": rewards.detach().float().cpu(),
            "prompt_ids": torch.tensor([self.prompt_id(p) for p in prompts], dtype=torch.long),
            "kinds": torch.as_tensor(kinds, dtype=torch.long).cpu(),
            "versions": torch.full((len(prompts),), int(version), dtype=torch.long),
        }
        for k, v in new.items():
            old = getattr(self, k)
            setattr(self, k, (v if old is None else torch.cat([old, v]))[-self.capacity :])

    def clear(self) -> None:
        for k in self.FIELDS:
            setattr(self, k, None)

    def group_ids(self) -> torch.Tensor:
        return self.prompt_ids * 2 + self.kinds

    def ranked_groups(self, margin: float) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
        """The (prompt, kind) groups that hold a ranked pair (rewards more than ``margin`` apart):
        every group's item indices (replay), and for the groups with items of the newest samples,
        (newest, older) indices (fresh)."""
        if len(self) == 0:
            return [], []
        keys, rewards, versions = self.group_ids().numpy(), self.rewards.numpy(), self.versions.numpy()
        newest = versions.max()
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        replay, fresh = [], []
        for idx in np.split(order, bounds):
            if len(idx) > 1 and np.ptp(rewards[idx]) > margin:
                replay.append(idx)
                is_new = versions[idx] == newest
                if is_new.any():
                    fresh.append((idx[is_new], idx[~is_new]))
        return replay, fresh

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "prompts": list(self.prompts), **{k: getattr(self, k) for k in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.prompts = list(state["prompts"])
        self._ids = {p: i for i, p in enumerate(self.prompts)}
        for k in self.FIELDS:
            setattr(self, k, state[k])


# ------------------------------------------------------------------------------ surrogate batches
def pick_group_items(group, k: int, rng: np.random.Generator) -> np.ndarray:
    """≤ k items of a group: a replay group at random; a fresh group's newest items (up to
    half, more if it has no older ones) beside older ones of the same prompt, so that the
    newest samples are ranked against earlier generators' (what exposes reward hacking)."""
    if not isinstance(group, tuple):
        return group if len(group) <= k else rng.choice(group, size=k, replace=False)
    new, old = group
    n_new = min(len(new), max(k - len(old), (k + 1) // 2))
    n_old = min(len(old), k - n_new)
    parts = [rng.choice(new, size=n_new, replace=False)]
    if n_old:
        parts.append(rng.choice(old, size=n_old, replace=False))
    return np.concatenate(parts)


def draw_groups(replay, fresh, n_groups: int, fresh_fraction: float, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The item indices of ``n_groups`` groups of a surrogate batch, ≤ k items each: a
    ``fresh_fraction`` of the groups (as far as there are any) without repeats from ``fresh``,
    the rest drawn with repeats from ``replay`` (``ReplayBuffer.ranked_groups``)."""
    n_fresh = min(len(fresh), int(round(n_groups * fresh_fraction)))
    chosen = [fresh[i] for i in rng.choice(len(fresh), size=n_fresh, replace=False)] if n_fresh else []
    chosen += [replay[i] for i in rng.integers(0, len(replay), size=n_groups - n_fresh)]
    return [pick_group_items(grp, k, rng) for grp in chosen]


def group_pairs(chosen: list[np.ndarray], rewards: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The buffer items of the chosen groups, concatenated, and every ranked (w, l) pair inside
    each group, as positions in that concatenation."""
    items = torch.as_tensor(np.concatenate(chosen), dtype=torch.long)
    local = torch.repeat_interleave(torch.arange(len(chosen)), torch.as_tensor([len(x) for x in chosen]))
    w, l = ranked_pairs(local, rewards[items], margin)
    return items, w, l


# ------------------------------------------------------------------------------ fitting the surrogate
class SurrogateFitting:
    """LaSRO's surrogate side, a mixin of :class:`alignzoo.algos.lasro.LaSRO`: the scored data (stage 1's
    frozen samples, every epoch's rollouts), the Bradley–Terry steps of R_ψ and its pairwise accuracies.
    It uses what ``LaSRO.setup`` creates (``surrogate``, ``surrogate_optimizer``, ``buffer``, ``heldout``,
    ``rng``, shared with the generator's regulariser, ``counts``, ``_embed_cache``) and LaSRO's
    ``config`` (its ``group_size``, N_s) and ``query_steps``."""

    def embeds(self, model, prompts) -> torch.Tensor:
        """Prompt embeddings of the generator's (frozen) text encoder, cached per prompt."""
        todo = sorted({p for p in prompts if p not in self._embed_cache})
        if todo:
            for p, e in zip(todo, model.encode_prompts(todo)):
                self._embed_cache[p] = e.detach()
        return torch.stack([self._embed_cache[p] for p in prompts])

    def surrogate_scores(self, ctx, latents: torch.Tensor, prompts, chunk: int = 256) -> torch.Tensor:
        """R_ψ of stored latents, no grad, on CPU."""
        out = []
        with torch.no_grad(), ctx.autocast():
            for i in range(0, latents.shape[0], chunk):
                z = latents[i : i + chunk].to(ctx.device)
                out.append(self.surrogate(z, self.embeds(ctx.model, prompts[i : i + chunk])).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def buffer_accuracy(self, ctx, buf: ReplayBuffer) -> float:
        if len(buf) == 0:
            return float("nan")
        w, l = ranked_pairs(buf.group_ids(), buf.rewards, self.config.tie_margin)
        scores = self.surrogate_scores(ctx, buf.latents, buf.prompts_of())
        return pairwise_accuracy(scores, w, l)

    def _gather_scored(self, ctx, traj: Trajectory, rows, steps, values):
        """(latents, rewards, prompts, kinds) of this epoch's scored samples from every process."""
        t = traj.num_steps
        lat = traj.pred_x0[rows, steps].detach().float()
        prompts = [traj.prompts[i] for i in rows.tolist()]
        kinds = torch.where(steps == t - 1, 1, 0) if t > 1 else torch.ones_like(steps)
        all_lat, all_prompts, _ = ctx.gather(lat, prompts)
        all_vals, _, _ = ctx.gather(values.float(), prompts)
        all_kinds, _, _ = ctx.gather(kinds, prompts)
        return all_lat, all_vals, all_prompts, all_kinds

    def _sample_frozen(self, ctx, n_prompts: int) -> tuple:
        """Stage-1 data: n_prompts prompts (every prompt of the set once before any twice) × N_s
        noises from the pretrained model, scored at z1 and z2."""
        model, k, world = ctx.model, self.config.group_size, ctx.world
        per_proc = math.ceil(n_prompts / world)
        mine = ctx.draw_prompts(per_proc, stratified=True)
        prompts = [p for p in mine for _ in range(k)]
        parts = []
        bs = max(k, self.config.sample_batch_size // k * k)
        with torch.no_grad(), ctx.autocast(), model.reference():
            for i in range(0, len(prompts), bs):
                parts.append(ctx.sample(prompts[i : i + bs], self.config.eta))
        traj = Trajectory.cat(parts)
        queries = self.query_steps(traj, None)  # scored column by column, as the ctx's rollout
        rows, steps = torch.arange(traj.batch_size).repeat(queries.shape[1]), queries.T.reshape(-1)
        values = ctx.score(traj, rows, steps)
        ctx.count(samples=traj.batch_size, unet=traj.batch_size * traj.num_steps, phase="sampling")  # stage-1 images count (budget)
        self.counts["pretrain_samples"] += traj.batch_size * world
        return self._gather_scored(ctx, traj, rows, steps, values)

    def pretrain(self, ctx) -> dict:
        """Stage 1 (notes §4, reconstructed), on the first epoch: ``pretrain_prompts`` prompts × N_s
        noises from the frozen pretrained model, z1 and z2 scored with r (counted as reward queries),
        fill the replay buffer, then ``pretrain_steps`` surrogate steps; another ``heldout_prompts``
        × N_s samples are never trained on and give the held-out pairwise accuracy."""
        c = self.config
        t0 = time.perf_counter()
        lat, vals, prompts, kinds = self._sample_frozen(ctx, c.pretrain_prompts)
        self.buffer.push(lat, vals, prompts, kinds, version=0)
        if c.heldout_prompts > 0:
            lat, vals, prompts, kinds = self._sample_frozen(ctx, c.heldout_prompts)
            self.heldout.push(lat, vals, prompts, kinds, version=0)
        out = self.fit_surrogate(ctx, c.pretrain_steps)
        self.pretrained = True
        out["surr_acc_pretrain"] = self.buffer_accuracy(ctx, self.heldout)
        out["seconds_pretrain"] = time.perf_counter() - t0
        return out

    def surrogate_step(self, ctx, groups) -> dict | None:
        """One Bradley–Terry step: ``groups_per_batch`` prompt groups (a ``fresh_fraction`` of them
        holding the newest samples, the rest from the whole buffer), ≤ N_s items of each, and the
        loss over every ranked pair inside each group. The buffer latents carry no graph, so only
        the surrogate receives gradients."""
        c = self.config
        replay, fresh = groups
        if not replay:
            return None
        chosen = draw_groups(replay, fresh, c.groups_per_batch * ctx.world, c.fresh_fraction, self.config.group_size, self.rng)
        chosen = ctx.local(chosen, c.groups_per_batch)
        items, w, l = group_pairs(chosen, self.buffer.rewards, c.tie_margin)
        z = self.buffer.latents[items].to(ctx.device)
        prompts = self.buffer.prompts_of(items)
        if c.surrogate_noise_aug and c.surrogate_timestep > 0:
            a = ctx.model.alphas_cumprod[c.surrogate_timestep]
            eps = torch.as_tensor(self.rng.standard_normal(z.shape), dtype=torch.float32, device=z.device)
            z = a.sqrt() * z + (1 - a).sqrt() * eps
        scores, loss = self._surrogate_update(ctx, z, prompts, w, l)
        self.counts["surrogate_steps"] += 1
        return {"loss": float(loss.detach()), "acc": pairwise_accuracy(scores.detach().cpu(), w, l), "pairs": float(w.numel())}

    def _surrogate_update(self, ctx, z, prompts, w, l) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of the surrogate on L_surr of the (w, l) pairs of latents ``z``
        (a zero loss without pairs); returns the scores and the loss."""
        s = self.surrogate
        s.train()
        self.surrogate_optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            scores = s(z, self.embeds(ctx.model, prompts)).float()
        loss = bradley_terry_loss(scores[w.to(scores.device)], scores[l.to(scores.device)]) if w.numel() else scores.sum() * 0
        ctx.backward(loss)
        params = [p for p in s.parameters() if p.requires_grad]
        ctx.average_gradients(params)
        if self.config.surrogate_grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.surrogate_grad_clip)
        self.surrogate_optimizer.step()
        s.eval()
        return scores, loss

    def fit_surrogate(self, ctx, steps: int) -> dict:
        groups = self.buffer.ranked_groups(self.config.tie_margin)
        out = [r for r in (self.surrogate_step(ctx, groups) for _ in range(steps)) if r is not None]
        return (
            {}
            if not out
            else {
                "surr_loss": float(np.mean([r["loss"] for r in out])),
                "surr_acc_train": float(np.nanmean([r["acc"] for r in out])),
                "surr_pairs_per_step": float(np.mean([r["pairs"] for r in out])),
            }
        )

    def _rollout_stats(self, ctx, lat, vals, prompts, kinds, version) -> dict[str, list[float]]:
        """The surrogate's mean score and pairwise accuracy per step kind on the newest generator's
        samples, before it sees them (a held-out accuracy)."""
        rollout = ReplayBuffer(10**9)
        rollout.push(lat, vals, prompts, kinds, version)
        scores = self.surrogate_scores(ctx, rollout.latents, prompts)
        w, l = ranked_pairs(rollout.group_ids(), rollout.rewards, self.config.tie_margin)
        stats = {}
        for k, name in ((0, "z1"), (1, "z2")):
            mask = rollout.kinds == k
            if mask.any():
                stats[f"surr_rollout_{name}"] = [float(scores[mask].mean())]
                acc = pairwise_accuracy(scores, w[rollout.kinds[w] == k], l[rollout.kinds[w] == k])
                if not math.isnan(acc):
                    stats[f"surr_acc_fresh_{name}"] = [acc]
        return stats
