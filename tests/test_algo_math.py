"""Algorithm math on hand-made tensors; expected values computed independently here."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignzoo.algos import get_algorithm, list_algorithms
from alignzoo.algos.base import EpochData, Items
from alignzoo.algos.d3po import preference_signs
from alignzoo.algos.dense_rewards import adaptive_anchor, discounted_returns, importance_weights, similarity_weighted_rewards
from alignzoo.algos.rollouts import Rollout
from alignzoo.algos.stat_tracking import StatTracker


def test_registry_lists_all_and_unknown_name_lists_known():
    assert {"ddpo", "rebel", "d3po", "sdpo", "rlcm-ddpo", "rlcm-rebel"} <= set(list_algorithms())
    with pytest.raises(KeyError) as err:
        get_algorithm("sdpoo")
    assert "sdpo" in str(err.value) and "ddpo" in str(err.value)


# ---------------------------------------------------------------------------------- DDPO
def test_ddpo_loss_negative_advantage_ratio_one_is_one():
    # TRL's golden check: A = -1, ratio 1 -> loss 1
    algo = get_algorithm("ddpo")()
    items = Items(torch.tensor([[[0]]]), torch.tensor([[[0]]]))  # (M, G, K) = (1, 1, 1)
    data = EpochData(advantages=torch.tensor([[-1.0]]))
    loss, info = algo.loss(items, torch.tensor([[[0.3]]]), torch.tensor([[[0.3]]]), data)
    assert loss.shape == (1,) and float(loss) == pytest.approx(1.0)
    assert float(info["clipfrac"]) == 0.0


def test_ddpo_clipped_surrogate_by_hand():
    algo = get_algorithm("ddpo")(get_algorithm("ddpo").Config(clip_range=0.2))
    new = torch.tensor([math.log(1.5), math.log(0.5), math.log(1.1)]).view(3, 1, 1)
    old = torch.zeros(3, 1, 1)
    adv = torch.tensor([[2.0], [2.0], [-1.0]])
    items = Items(torch.tensor([0, 1, 2]).view(3, 1, 1), torch.zeros(3, 1, 1, dtype=torch.long))
    loss, info = algo.loss(items, new, old, EpochData(advantages=adv))
    # max(-A r, -A clip(r)): r=1.5,A=2 -> max(-3, -2.4) = -2.4; r=0.5,A=2 -> max(-1, -1.6) = -1;
    # r=1.1, A=-1 -> max(1.1, 1.1) = 1.1
    assert torch.allclose(loss, torch.tensor([-2.4, -1.0, 1.1]), atol=1e-6)
    assert info["clipfrac"].tolist() == [1.0, 1.0, 0.0]


def test_ddpo_plan_accumulates_all_steps_of_a_minibatch():
    algo = get_algorithm("ddpo")(get_algorithm("ddpo").Config(train_batch_size=2, gradient_accumulation_steps=1))
    plan = algo.plan(4, 3, np.random.default_rng(0))
    assert len(plan) == 2
    seen = set()
    for items in plan:
        assert items.rows.shape == (4, 1, 1)  # (M, G, K): one trajectory's step per item
        rows = set(items.rows.flatten().tolist())
        assert len(rows) == 2 and len(items) == 4
        for r in rows:  # every action step of each trajectory in the update (not the unrendered last)
            assert sorted(items.steps[items.rows == r].tolist()) == [0, 1]
        seen |= rows
    assert seen == {0, 1, 2, 3}
    # the public code's choice: all T transitions, the last (never rendered) one included
    cfg = get_algorithm("ddpo").Config(train_batch_size=2, train_unrendered_step=True)
    plan = get_algorithm("ddpo")(cfg).plan(4, 3, np.random.default_rng(0))
    assert sorted(plan[0].steps[plan[0].rows == plan[0].rows[0, 0, 0]].tolist()) == [0, 1, 2]


@pytest.mark.parametrize("algo", ["ddpo", "rebel", "d3po", "sdpo", "rlcm-ddpo", "rlcm-rebel"])
def test_one_step_trajectories_have_no_rendered_action(algo):
    cls = get_algorithm(algo)
    with pytest.raises(ValueError, match="never rendered.*num_steps >= 2"):
        cls(cls.Config()).plan(4, 1, np.random.default_rng(0))
    plan = cls(cls.Config(train_unrendered_step=True)).plan(4, 1, np.random.default_rng(0))
    # an empty plan would pass any "all items ..." check: every trajectory's single step, once
    visits = sorted((int(r), int(s)) for items in plan for r, s in zip(items.rows.flatten(), items.steps.flatten()))
    assert visits == [(r, 0) for r in range(4)]


# ---------------------------------------------------------------------------------- REBEL
def test_rebel_regression_by_hand():
    algo = get_algorithm("rebel")(get_algorithm("rebel").Config(rebel_eta=0.5))
    # one pair: rows 0 (a) and 1 (b), steps 0..1 each: (M, G, K) = (1, 2, 2)
    items = Items(torch.tensor([[[0, 0], [1, 1]]]), torch.tensor([[[0, 1], [0, 1]]]))
    new = torch.tensor([[[0.2, 0.1], [-0.1, 0.05]]])
    old = torch.zeros(1, 2, 2)
    adv = torch.tensor([[1.5, 1.5], [-0.5, -0.5]])
    loss, _ = algo.loss(items, new, old, EpochData(advantages=adv))
    log_ratio_a, log_ratio_b = 0.2 + 0.1, -0.1 + 0.05
    want = ((log_ratio_a - log_ratio_b) / 0.5 - (1.5 - (-0.5))) ** 2
    assert float(loss) == pytest.approx(want, rel=1e-6)


def test_rebel_sums_per_trajectory_not_over_the_batch():
    # the RLCM batch-sum bug would mix pairs: with two pairs, each loss must only see its own
    algo = get_algorithm("rebel")()
    items = Items(torch.tensor([[[0], [1]], [[2], [3]]]), torch.zeros(2, 2, 1, dtype=torch.long))  # pairs (0, 1) and (2, 3)
    new = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]]])
    old = torch.zeros(2, 2, 1)
    adv = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    loss, _ = algo.loss(items, new, old, EpochData(advantages=adv))
    assert torch.allclose(loss, torch.tensor([0.0, 0.0]))


def test_rebel_plan_items_are_whole_pairs():
    algo = get_algorithm("rebel")(get_algorithm("rebel").Config(train_batch_size=2))  # 2 images = 1 pair per update
    plan = algo.plan(4, 3, np.random.default_rng(0))
    assert len(plan) == 2
    for items in plan:
        a, b = items.rows[0]  # T = 3: the two rendered action steps of a and b, rows prompt-major
        assert a[0] % 2 == 0 and (b == a + 1).all() and items.steps[0].tolist() == [[0, 1], [0, 1]]
    assert sorted(int(items.rows[0, 0, 0]) for items in plan) == [0, 2]


# ---------------------------------------------------------------------------------- D3PO
def test_d3po_loss_and_ties_by_hand():
    algo = get_algorithm("d3po")()
    s_a, s_b = preference_signs(torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 0.7]))
    assert s_a.tolist() == [1.0, 0.0, -1.0] and s_b.tolist() == [-1.0, 0.0, 1.0]
    signs = torch.stack([s_a, s_b], 1).reshape(6, 1)  # rows prompt-major: pair p is rows 2p (a), 2p + 1 (b)
    ref = torch.zeros(6, 1)
    new = torch.tensor([0.05, -0.04, 0.3, 0.0, 0.02, 0.01]).view(6, 1).requires_grad_(True)
    items = Items(torch.arange(6).view(3, 2, 1), torch.zeros(3, 2, 1, dtype=torch.long))
    n = new[items.rows, items.steps]
    loss, info = algo.loss(items, n, torch.zeros_like(n), EpochData(advantages=signs, ref_log_probs=ref))
    clamp = lambda x: min(max(math.exp(x), 0.9), 1.1)  # noqa: E731
    want0 = -math.log(1 / (1 + math.exp(-0.1 * (math.log(clamp(0.05)) - math.log(clamp(-0.04))))))
    want2 = -math.log(1 / (1 + math.exp(-0.1 * (-math.log(clamp(0.02)) + math.log(clamp(0.01))))))
    assert float(loss[0].detach()) == pytest.approx(want0, rel=1e-5)
    assert float(loss[1].detach()) == pytest.approx(math.log(2), rel=1e-6)  # tie
    assert float(loss[2].detach()) == pytest.approx(want2, rel=1e-5)
    assert info["tie"].tolist() == [0.0, 1.0, 0.0]


def test_d3po_tie_from_rewards_gives_no_gradient():
    # the tie comes from equal rewards through D3PO.advantages (not hand-made signs), and the tie
    # pair's log-ratios lie inside the clamp, so only the zero sign can make its gradient vanish:
    # the same pair with a winner does get one
    from types import SimpleNamespace

    algo = get_algorithm("d3po")()
    traj = SimpleNamespace(batch_size=4, num_steps=2)
    items = Items(torch.tensor([[[0], [1]], [[2], [3]]]), torch.ones(2, 2, 1, dtype=torch.long))  # pairs (0, 1), (2, 3) at step 1
    for rewards, want_tie in ((torch.tensor([0.7, 0.7, 0.2, 0.5]), [1.0, 0.0]), (torch.tensor([0.8, 0.7, 0.2, 0.5]), [0.0, 0.0])):
        data = algo.advantages(Rollout(traj, torch.full((4, 1), 1), rewards[:, None], 2))
        data.ref_log_probs = torch.zeros(4, 2)
        new = torch.tensor([[0.0, 0.05], [0.0, -0.04], [0.0, 0.02], [0.0, 0.01]], requires_grad=True)
        n = new[items.rows, items.steps]
        loss, info = algo.loss(items, n, torch.zeros_like(n), data)
        assert info["tie"].tolist() == want_tie
        loss[0].backward()
        grad = float(new.grad.abs().sum())
        if want_tie[0]:
            assert float(loss[0].detach()) == pytest.approx(math.log(2)) and grad == 0.0
        else:
            assert grad > 0.0  # the log-ratios 0.05 and -0.04 are not clamped


# ---------------------------------------------------------------------------------- SDPO
def _toy_trajectory():
    # 5 steps of 2-d "latents" whose directions make step 2 the most dissimilar to both ends
    x0 = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [0.0, -1.0]]])
    return x0.view(1, 5, 2, 1, 1)


def test_sdpo_anchor_and_eq11_on_a_5_step_toy():
    x0 = _toy_trajectory()
    flat = x0.view(5, 2)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    sums = [cos(flat[i], flat[0]) + cos(flat[i], flat[4]) for i in range(5)]
    want_anchor = 1 + int(np.argmin(sums[1:4]))
    assert int(adaptive_anchor(x0)) == want_anchor
    r_first, r_anchor, r_last = 1.0, 3.0, 2.0
    steps = torch.tensor([[0, want_anchor, 4]])
    dense = similarity_weighted_rewards(x0, steps, torch.tensor([[r_first, r_anchor, r_last]]))
    for i in range(5):
        if i in (0, want_anchor, 4):
            want = {0: r_first, want_anchor: r_anchor, 4: r_last}[i]
        else:
            sf, sa, sl = (max(cos(flat[i], flat[j]), 0.0) for j in (0, want_anchor, 4))
            want = (r_first * sf + r_anchor * sa + r_last * sl) / (sf + sa + sl)
        assert float(dense[0, i]) == pytest.approx(want, rel=1e-5), i


def test_sdpo_eq11_with_positive_similarities_is_exact():
    x0 = torch.tensor([[[1.0, 0.1], [1.0, 0.5], [0.5, 1.0]]]).view(1, 3, 2, 1, 1)
    flat = x0.view(3, 2)
    steps = torch.tensor([[0, 2]])
    dense = similarity_weighted_rewards(x0, steps, torch.tensor([[1.0, 4.0]]))
    c = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    sf, sl = c(flat[1], flat[0]), c(flat[1], flat[2])
    assert float(dense[0, 1]) == pytest.approx((1.0 * sf + 4.0 * sl) / (sf + sl), rel=1e-6)


def test_sdpo_discounted_returns():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    g = discounted_returns(r, 0.9)
    assert torch.allclose(g, torch.tensor([[1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0]]))
    assert torch.equal(discounted_returns(r, None), r)
    assert torch.allclose(discounted_returns(r, 1.0), torch.tensor([[6.0, 5.0, 3.0]]))


def test_sdpo_importance_weights():
    w = importance_weights(4, 0.5)
    assert w.tolist() == [1.0, 0.5, 0.25, 0.125]  # first (noisiest) step weight 1: lambda^(T-t-1)
    assert importance_weights(4, 0.5, "reversed").tolist() == [0.125, 0.25, 0.5, 1.0]


def test_sdpo_clipped_max_loss_by_hand():
    cfg = get_algorithm("sdpo").Config(clip_range=0.1, lam=0.5, log_scale=2.0)
    algo = get_algorithm("sdpo")(cfg)
    adv = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # rows 0 (a) and 1 (b), T = 2
    items = Items(torch.tensor([[[0], [1]]]), torch.tensor([[[1], [1]]]))  # (M, G, K) = (1, 2, 1)
    new, old = torch.tensor([[[0.3], [-0.05]]]), torch.zeros(1, 2, 1)
    loss, info = algo.loss(items, new, old, EpochData(advantages=adv))
    w = 0.5**1 / 2.0
    d_adv = 1.0 - (-1.0)
    unclipped = (w * (0.3 - (-0.05)) - d_adv) ** 2
    clipped = (w * (0.1 - (-0.05)) - d_adv) ** 2
    assert float(loss) == pytest.approx(max(unclipped, clipped), rel=1e-6)
    assert float(info["clipfrac"]) == float(clipped > unclipped)


@pytest.mark.parametrize("order", ["shuffled", "unshuffled", "step_accumulated"])
def test_sdpo_plan_visits_each_step_of_each_pair_once(order):
    cfg = get_algorithm("sdpo").Config(train_batch_size=4, gradient_accumulation_steps=1, update_order=order)  # 4 images = 2 pairs
    algo = get_algorithm("sdpo")(cfg)
    b, t = 10, 6  # 5 pairs
    plan = algo.plan(b, t, np.random.default_rng(3))
    visits = [(int(r) // 2, int(s)) for items in plan for r, s in zip(items.rows[:, 0, 0], items.steps[:, 0, 0])]
    assert sorted(visits) == sorted((p, s) for p in range(5) for s in range(t - 1))  # the T − 1 rendered actions
    for items in plan:  # (M, 2, 1): the pair's rows 2p (a) and 2p + 1 (b) at one step
        assert items.rows.shape[1:] == (2, 1) and (items.rows[:, 0] % 2 == 0).all()
        assert (items.rows[:, 1] == items.rows[:, 0] + 1).all() and (items.steps[:, 0] == items.steps[:, 1]).all()
    if order == "shuffled":
        assert len(plan) == (t - 1) * 3  # one column per update group: ceil(5 pairs / 2) per column
        # each update draws one step per pair; pairs' permutations are independent
        perms = {tuple(s for (r, s) in visits if r == p) for p in range(5)}
        assert len(perms) > 1
    if order == "unshuffled":
        for j in range(t - 1):
            assert set(plan[j * 3].steps.flatten().tolist()) == {j}
    if order == "step_accumulated":
        assert len(plan) == 3


def test_sdpo_reward_prediction_variants_query_counts():
    rng = np.random.default_rng(0)
    x0 = torch.randn(4, 8, 2, 2, 2)
    counts = {}
    for mode in ("adaptive", "random_anchor", "fixed_anchor", "two_similarity", "two_interpolation", "one_copy", "all"):
        algo = get_algorithm("sdpo")(get_algorithm("sdpo").Config(reward_prediction=mode))
        q = algo.query_steps(SimpleNamespace(pred_x0=x0), rng)
        counts[mode] = q.shape[1]
        if mode == "all":
            assert torch.equal(q, torch.arange(8)[None].expand(4, -1))
        else:
            assert (q[:, -1] == 7).all() and (q[:, 0] == 0).all() == (mode != "one_copy")
        if q.shape[1] == 3:
            assert ((q[:, 1] >= 1) & (q[:, 1] <= 6)).all()
    assert counts == {"adaptive": 3, "random_anchor": 3, "fixed_anchor": 3, "two_similarity": 2, "two_interpolation": 2, "one_copy": 1, "all": 8}
    algo = get_algorithm("sdpo")(get_algorithm("sdpo").Config(reward_prediction="two_interpolation"))
    dense = algo.dense_rewards(x0[:1, :5], torch.tensor([[0, 4]]), torch.tensor([[1.0, 3.0]]))
    assert torch.allclose(dense, torch.tensor([[1.0, 1.5, 2.0, 2.5, 3.0]]))


def test_sdpo_adaptive_anchor_is_interior_only():
    # every interior x̂0 lies between the ends (cos(first, last) = 0): each interior step's
    # Sim_first + Sim_last exceeds the ends' 1 + 0, so the public code's argmin over all steps
    # picks step 0, while eq. 10 (t in 1..T-2) picks the most divergent interior step
    x0 = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [1.0, 0.8], [0.7, 1.0], [0.0, 1.0]]]).view(1, 5, 2, 1, 1)
    flat = x0.view(5, 2)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    sums = [cos(flat[i], flat[0]) + cos(flat[i], flat[4]) for i in range(5)]
    all_steps = int(np.argmin(sums))
    interior = 1 + int(np.argmin(sums[1:4]))
    assert (all_steps, interior) == (0, 3)
    assert int(adaptive_anchor(x0)) == interior
    algo = get_algorithm("sdpo")()
    assert algo.query_steps(SimpleNamespace(pred_x0=x0), np.random.default_rng(0)).tolist() == [[0, 3, 4]]


@pytest.mark.parametrize("t, want", [(50, 24), (3, 1), (4, 1), (5, 2), (8, 3)])
def test_sdpo_fixed_anchor_position(t, want):
    # the paper's "fixed anchor at the 25th step" of 50 is sampling-order index 24: the middle, (T-1)//2
    algo = get_algorithm("sdpo")(get_algorithm("sdpo").Config(reward_prediction="fixed_anchor"))
    q = algo.query_steps(SimpleNamespace(pred_x0=torch.zeros(2, t, 1, 1, 1)), np.random.default_rng(0))
    assert q.tolist() == [[0, want, t - 1]] * 2
    for k, clamped in ((0, 1), (t - 1, t - 2), (1, 1)):  # an explicit step is kept interior
        cfg = get_algorithm("sdpo").Config(reward_prediction="fixed_anchor", fixed_anchor_step=k)
        assert get_algorithm("sdpo")(cfg).query_steps(SimpleNamespace(pred_x0=torch.zeros(1, t, 1, 1, 1)), None)[0, 1] == clamped


def test_sdpo_random_anchor_positions_cover_the_interior():
    algo = get_algorithm("sdpo")(get_algorithm("sdpo").Config(reward_prediction="random_anchor"))
    q = algo.query_steps(SimpleNamespace(pred_x0=torch.zeros(400, 6, 1, 1, 1)), np.random.default_rng(0))
    assert (q[:, 0] == 0).all() and (q[:, 2] == 5).all()
    assert set(q[:, 1].tolist()) == {1, 2, 3, 4}  # every interior step, never an end
    counts = np.bincount(q[:, 1].numpy(), minlength=6)[1:5]
    assert counts.min() > 60  # roughly uniform: 100 expected each


def test_sdpo_advantages_end_to_end():
    # 2 pairs (rows 0, 1 and 2, 3: prompt-major), T = 4, hand-made 2-d x̂0; every value below written out here
    from types import SimpleNamespace

    pred = [
        [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]],
        [[1.0, 1.0], [1.0, 0.0], [0.5, 1.0], [0.0, 1.0]],
        [[0.0, 1.0], [1.0, 0.0], [0.9, 0.5], [1.0, 0.2]],
        [[1.0, 0.0], [0.2, 1.0], [1.0, 1.0], [1.0, -0.3]],
    ]
    traj = SimpleNamespace(pred_x0=torch.tensor(pred).view(4, 4, 2, 1, 1), prompts=["a", "a", "b", "b"], batch_size=4, num_steps=4)
    cfg = get_algorithm("sdpo").Config(gamma=0.5, adv_clip=1.2, tracker_min_count=16)
    algo = get_algorithm("sdpo")(cfg)
    queries = algo.query_steps(traj, np.random.default_rng(0))
    cos = lambda a, b: (a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b)  # noqa: E731
    anchors = []
    for p in pred:
        sums = {i: cos(p[i], p[0]) + cos(p[i], p[3]) for i in (1, 2)}
        anchors.append(min(sums, key=sums.get))
    assert queries.tolist() == [[0, a, 3] for a in anchors]
    queried = [[1.0, 2.0, 4.0], [0.0, -1.0, 3.0], [2.0, 2.5, 1.0], [5.0, 1.0, -2.0]]  # R_first, R_anchor, R_last
    tracker = StatTracker("per_step_prompt", 32, 16)
    data = algo.advantages(Rollout(traj, queries, torch.tensor(queried), 2, lambda v, prompts: torch.as_tensor(tracker.update(prompts, v.numpy()))))
    dense = []
    for p, a, (rf, ra, rl) in zip(pred, anchors, queried):
        row = []
        for i in range(4):
            known = {0: rf, a: ra, 3: rl}
            if i in known:
                row.append(known[i])
                continue
            w = [max(cos(p[i], p[j]), 0.0) for j in (0, a, 3)]
            row.append((rf * w[0] + ra * w[1] + rl * w[2]) / sum(w))
        dense.append(row)
    assert np.allclose(data.extra["dense_rewards"].numpy(), dense, atol=1e-6)
    returns = [[sum(0.5**k * row[i + k] for k in range(4 - i)) for i in range(4)] for row in dense]
    # fewer than min_count trajectories per (prompt, step): the batch's stats at that step, then clip ±1.2
    want = [[max(-1.2, min(1.2, _zscore(returns[r][i], [g[i] for g in returns]))) for i in range(4)] for r in range(4)]
    assert np.allclose(data.advantages.numpy(), want, atol=1e-5)
    assert (data.advantages.abs() == 1.2).any()  # the clip took part


def test_unknown_sdpo_option_is_a_clear_error():
    with pytest.raises(ValueError, match="reward_prediction"):
        get_algorithm("sdpo")(get_algorithm("sdpo").Config(reward_prediction="bogus"))


# ---------------------------------------------------------------------------------- trackers
def test_per_step_prompt_tracker_with_batch_fallback():
    tr = StatTracker("per_step_prompt", buffer_size=4, min_count=3)
    v = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    out = tr.update(["p", "p", "q"], v)
    # 'p' has 2 < 3 values at each step: normalised by the whole batch's stats at that step
    for j in range(2):
        col = v[:, j]
        assert np.allclose(out[:, j], (col - col.mean()) / (col.std() + 1e-6))
    out2 = tr.update(["p"], np.array([[7.0, 70.0]]))
    buf0 = np.array([1.0, 3.0, 7.0])  # now 3 values for ('p', 0): its own buffer
    assert np.allclose(out2[0, 0], (7.0 - buf0.mean()) / (buf0.std() + 1e-6))
    state = tr.state_dict()
    tr2 = StatTracker()
    tr2.load_state_dict(state)
    assert np.allclose(tr2.update(["p"], np.array([[2.0, 20.0]])), tr.update(["p"], np.array([[2.0, 20.0]])))


def test_per_prompt_tracker_buffer_is_bounded():
    tr = StatTracker("per_prompt", buffer_size=3, min_count=1)
    for x in [1.0, 2.0, 3.0, 4.0]:
        tr.update(["p"], np.array([x]))
    assert list(tr.buffers[("p",)]) == [2.0, 3.0, 4.0]
    out = tr.update(["p"], np.array([5.0]))
    ref = np.array([3.0, 4.0, 5.0])
    assert np.allclose(out, (5.0 - ref.mean()) / (ref.std() + 1e-6))


def _zscore(x, values, eps=1e-6):
    # (x - mean) / (population std + eps) of a plain list, written out without numpy
    m = sum(values) / len(values)
    sd = math.sqrt(sum((y - m) ** 2 for y in values) / len(values))
    return (x - m) / (sd + eps)


def test_per_prompt_tracker_on_returns_counts_trajectories():
    # SDPO's per-prompt ablation feeds (N, T) returns: buffer size and min_count count trajectories
    tr = StatTracker("per_prompt", buffer_size=3, min_count=2)
    v1 = [[1.0, 2.0], [5.0, 7.0]]
    out = tr.update(["p", "q"], np.array(v1))
    batch = [1.0, 2.0, 5.0, 7.0]  # one trajectory per prompt < 2: the whole batch, all steps
    assert np.allclose(out, [[_zscore(x, batch) for x in row] for row in v1])
    out = tr.update(["p", "p", "q"], np.array([[3.0, 4.0], [0.0, 6.0], [9.0, 9.0]]))
    own_p = [1.0, 2.0, 3.0, 4.0, 0.0, 6.0]  # 'p' now holds 3 trajectories: its own buffer
    own_q = [5.0, 7.0, 9.0, 9.0]
    assert np.allclose(out[:2], [[_zscore(x, own_p) for x in row] for row in ([3.0, 4.0], [0.0, 6.0])])
    assert np.allclose(out[2], [_zscore(x, own_q) for x in (9.0, 9.0)])
    out = tr.update(["p"], np.array([[8.0, 10.0]]))
    # the oldest *trajectory* [1, 2] is evicted, not single values
    assert [list(e) for e in tr.buffers[("p",)]] == [[3.0, 4.0], [0.0, 6.0], [8.0, 10.0]]
    assert np.allclose(out[0], [_zscore(x, [3.0, 4.0, 0.0, 6.0, 8.0, 10.0]) for x in (8.0, 10.0)])
    with pytest.raises(ValueError, match="per trajectory"):
        tr.update(["p"], np.array([[1.0, 2.0, 3.0]]))


def test_global_tracker_on_returns_uses_all_steps():
    tr = StatTracker("global")
    v = [[1.0, 4.0, 2.0], [0.5, -3.0, 8.0]]
    flat = [x for row in v for x in row]
    out = tr.update(["p", "p"], np.array(v))
    assert np.allclose(out, [[_zscore(x, flat, 1e-8) for x in row] for row in v])
    assert tr.buffers == {}
