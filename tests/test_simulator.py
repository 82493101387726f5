"""The simulator: determinism, the step interface, the delayed effect, and policies that differ."""
import numpy as np
import pytest

from helpers import simulator
from seqrec.running.errors import UserError
from seqrec.worlds.simulator import NO_CLICK, SimParams, top_k_slates

SMALL = dict(num_sessions=300, num_items=80, num_categories=6, max_session_len=20)


def test_same_seed_same_log_other_seed_other_log():
    a = simulator(**SMALL).generate_log()
    b = simulator(**SMALL).generate_log()
    c = simulator(**SMALL, seed=1).generate_log()
    assert a.equals(b) and not a.equals(c)
    assert set(a["event"]) == {"click", "purchase"}
    assert a.groupby("session_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()


def test_step_interface():
    sim = simulator(**SMALL)
    rng = np.random.default_rng(0)
    users = sim.start_sessions(50, rng)
    users.done[:5] = True                              # already finished: must be left alone
    slates = np.stack([rng.choice(80, 4, replace=False) for _ in range(50)])
    res = sim.step(users, slates, rng)
    clicked = res.click != NO_CLICK
    assert not clicked[:5].any() and not res.done[:5].any() and (res.reward[:5] == 0).all()
    assert all(res.click[b] in slates[b] for b in np.nonzero(clicked)[0])
    assert not (res.purchase & ~clicked).any()
    np.testing.assert_allclose(res.reward, np.where(res.purchase, 1.0, np.where(clicked, 0.2, 0.0)))
    assert (res.done[5:] | clicked[5:]).all()          # no click means the user left
    assert (users.length[clicked] == 1).all()


def test_interest_builds_purchase_probability_and_purchases_reset_it():
    sim = simulator(**SMALL)
    rng = np.random.default_rng(0)
    users = sim.start_sessions(1, rng)
    item = np.array([[7]])
    p0 = sim.purchase_prob(users, item)[0, 0]
    users.interest[0, sim.item_category[7]] = 3.0
    assert sim.purchase_prob(users, item)[0, 0] > p0 * 5


def test_oracle_beats_random_slates():
    """Online return per session: the greedy oracle must beat random slates by a clear margin."""
    sim = simulator(num_items=300, num_categories=10)

    def run(policy, n=3000, seed=3):
        rng = np.random.default_rng(seed)
        users, total = sim.start_sessions(n, rng), np.zeros(n)
        for _ in range(sim.p.max_session_len):
            scores = policy(users, rng)
            total += sim.step(users, top_k_slates(scores, 10), rng).reward
        return total.mean()

    oracle = run(lambda u, rng: sim.oracle_scores(u))
    random = run(lambda u, rng: rng.random((len(u), sim.p.num_items)))
    assert oracle > 1.5 * random


def test_parameters_come_from_the_config_only():
    """SimParams repeats no default: a missing or unknown parameter is an error, not silently filled or dropped."""
    params = simulator().p.__dict__
    with pytest.raises(UserError, match="unknown simulator parameter 'sim.num_item'"):
        SimParams.from_dict({**params, "num_item": 5})
    with pytest.raises(UserError, match="'sim.dim' is missing"):
        SimParams.from_dict({k: v for k, v in params.items() if k != "dim"})
    with pytest.raises(TypeError):
        SimParams()


def test_after_click_is_what_respond_does_with_the_outcome_given():
    sim = simulator(**SMALL)
    rng = np.random.default_rng(4)
    users = sim.start_sessions(40, rng)
    users.interest += 3 + rng.random(users.interest.shape)       # high enough that some buy
    items = rng.integers(0, 80, 40)
    stepped = users.subset(np.arange(40))
    res = sim.respond(stepped, np.ones(40, dtype=bool), items, rng)
    got = sim.after_click(users, items, res.purchase)
    np.testing.assert_allclose(got.interest, stepped.interest)
    np.testing.assert_array_equal(got.last_click, stepped.last_click)
    np.testing.assert_array_equal(got.length, stepped.length)
    assert res.purchase.any() and (~res.purchase).any()


def test_slate_value_is_the_mean_reward_of_the_greedy_slate():
    """Against sampling: the greedy slate shown to many copies of a user, mean reward within 4 s.e."""
    sim = simulator(**SMALL)
    rng = np.random.default_rng(5)
    users = sim.start_sessions(3, rng)
    users.interest[:, :3] = 1.5
    n = 40_000
    for b in range(3):
        copies = users.subset(np.full(n, b))
        reward = sim.step(copies, top_k_slates(sim.oracle_scores(copies), sim.p.slate_size), rng).reward
        assert abs(reward.mean() - sim.slate_value(users.subset([b]))[0]) < 4 * reward.std() / np.sqrt(n)


@pytest.mark.parametrize("clickbait_exit", [0.0, 0.5])
def test_lookahead_scores_by_a_loop_over_candidates(clickbait_exit):
    """Each of the greedy oracle's top 2k items: log click weight + log(its expected reward + the chance
    the user stays times the greedy slate's value after the click), the two outcomes apart; others -inf.
    Clickbait (appeal above 0.2 here) adds clickbait_exit to the chance of leaving."""
    sim = simulator(**SMALL, clickbait_appeal=0.2, clickbait_exit=clickbait_exit)
    rng = np.random.default_rng(6)
    users = sim.start_sessions(3, rng)
    users.interest += 2 * rng.random(users.interest.shape)
    got = sim.lookahead_scores(users, chunk=2)
    k, p = sim.p.slate_size, sim.p
    for b in range(3):
        user = users.subset([b])
        top = set(np.argsort(-sim.oracle_scores(user)[0])[:2 * k].tolist())
        assert set(np.flatnonzero(np.isfinite(got[b])).tolist()) == top
        for item in top:
            q = sim.purchase_prob(user, np.array([[item]]))[0, 0]
            after = [sim.slate_value(sim.after_click(user, np.array([item]), np.array([bought])))[0] for bought in (False, True)]
            bait = clickbait_exit * (sim.item_appeal[item] > 0.2)
            value = 0.2 * (1 - q) + 1.0 * q + (1 - q) * (1 - p.exit_prob - bait) * after[0] + q * (1 - p.exit_prob_after_purchase - bait) * after[1]
            expected = sim.click_utility(user, np.array([[item]]))[0, 0] + np.log(value)
            assert got[b, item] == pytest.approx(expected)


def test_rollout_scores_two_steps_deep_are_the_lookahead_oracles_within_sampling_error():
    """With sessions capped at 2 clicks, a click now and the greedy slate next is the whole rest of the
    session: the rollout oracle's sampled return of each candidate must match the lookahead oracle's exact
    one (4 standard errors), on the same candidates (the greedy oracle's top 2k)."""
    sim = simulator(**{**SMALL, "max_session_len": 2}, clickbait_appeal=0.2, clickbait_exit=0.5)
    rng = np.random.default_rng(11)
    users = sim.start_sessions(3, rng)
    users.interest += 2 * rng.random(users.interest.shape)
    rollouts = 4000
    got, rel_sem = sim.rollout_scores(users, rollouts, np.random.default_rng(12))
    exact = sim.lookahead_scores(users)
    assert (np.isfinite(got) == np.isfinite(exact)).all()
    cand = top_k_slates(sim.oracle_scores(users), 2 * sim.p.slate_size)     # rollout_scores' candidate order
    utility = np.take_along_axis(sim.click_utility(users), cand, 1)
    value = np.exp(np.take_along_axis(got, cand, 1) - utility)
    expected = np.exp(np.take_along_axis(exact, cand, 1) - utility)
    assert np.all(np.abs(value - expected) < 4 * rel_sem * value + 1e-12)


def test_rollout_scores_of_clicks_that_end_the_session_are_their_expected_reward():
    """Every user leaves after a click: a candidate's return is its click reward, so the rollout oracle
    ranks as the greedy oracle does (its score within sampling error of the greedy criterion)."""
    sim = simulator(**SMALL, exit_prob=1.0, exit_prob_after_purchase=1.0)
    users = sim.start_sessions(4, np.random.default_rng(13))
    got, rel_sem = sim.rollout_scores(users, 2000, np.random.default_rng(14), width=5)
    greedy = sim.oracle_scores(users)
    cand = top_k_slates(greedy, 5)
    assert (np.isfinite(got).sum(1) == 5).all()
    ratio = np.exp(np.take_along_axis(got, cand, 1) - np.take_along_axis(greedy, cand, 1))
    assert np.all(np.abs(ratio - 1) < 4 * rel_sem)


def test_clickbait_makes_users_leave_after_the_click():
    """Clicking clickbait (appeal above clickbait_appeal), the user leaves with exit_prob + clickbait_exit
    (4 s.e.); other items keep exit_prob; no clickbait when clickbait_exit is 0."""
    sim = simulator(**SMALL, exit_prob_after_purchase=0.08, clickbait_exit=0.5)
    bait, plain = np.flatnonzero(sim.item_clickbait)[0], np.flatnonzero(~sim.item_clickbait)[0]
    n = 20_000
    for item, expected in ((bait, 0.58), (plain, 0.08)):
        users = sim.start_sessions(n, np.random.default_rng(9))
        res = sim.respond(users, np.ones(n, dtype=bool), np.full(n, item), np.random.default_rng(10))
        assert abs(res.done.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert 0 < sim.item_clickbait.mean() < 0.5
    assert (simulator(**SMALL).leave_prob(np.arange(80), np.zeros(80, dtype=bool)) == 0.08).all()


def test_posterior_oracle_scores_by_a_loop_over_particles():
    """log sum_p w_p exp(x_pj) E[reward | click j, p] over the `keep` heaviest particles, w_p proportional
    to exp(affinity_weight * sum over clicks of the particle's affinity); one particle at the true
    preferences is the greedy oracle."""
    sim = simulator(**SMALL)
    rng = np.random.default_rng(8)
    users = sim.start_sessions(3, rng)
    users.interest += 2 * rng.random(users.interest.shape)
    histories = np.array([[-1, -1, -1], [-1, 4, 4], [7, 9, 11]])
    particles = sim.start_sessions(20, rng).prefs

    def naive(b: int, keep: int) -> np.ndarray:
        clicks = histories[b][histories[b] >= 0]
        log_w = np.array([2.0 * (p @ sim.item_vecs[clicks].T).sum() for p in particles])
        heaviest = np.argsort(-log_w, kind="stable")[:keep]
        w = np.exp(log_w[heaviest] - log_w[heaviest].max())
        total = np.zeros(sim.p.num_items)
        for p, wp in zip(particles[heaviest], w / w.sum()):
            as_p = users.subset([b])
            as_p.prefs = p[None]
            total += wp * np.exp(sim.oracle_scores(as_p)[0])
        return np.log(total)

    for keep in (20, 5):
        got = sim.posterior_oracle_scores(users, histories, particles, keep=keep, chunk=2)
        for b in (1, 2):                                # b = 0 has no clicks: every particle ties
            np.testing.assert_allclose(got[b], naive(b, keep), rtol=1e-9)
    np.testing.assert_allclose(sim.posterior_oracle_scores(users, histories, particles, keep=20)[0], naive(0, 20), rtol=1e-9)
    exact = sim.posterior_oracle_scores(users, histories, users.prefs[:1], keep=1)
    np.testing.assert_allclose(exact[0], sim.oracle_scores(users)[0], rtol=1e-12)


def test_slate_log_prob_is_the_frequency_of_the_gumbel_top_k_order():
    """Ordered slates of 2 out of 4 items: the Plackett-Luce probabilities sum to 1 over all 12 orders,
    and each matches how often the logging policy's noisy top 2 comes out in that order (4 s.e.)."""
    sim = simulator(num_items=4, num_categories=2, slate_size=2, logging_temperature=0.7)
    rng = np.random.default_rng(7)
    users = sim.start_sessions(1, rng)
    users.last_click[:] = 2
    orders = np.array([(a, b) for a in range(4) for b in range(4) if a != b])
    probs = np.exp(sim.slate_log_prob(users.subset(np.zeros(len(orders), dtype=int)), orders))
    assert probs.sum() == pytest.approx(1.0)
    n = 60_000
    scores = sim.logging_scores(users.subset(np.zeros(n, dtype=int)), rng)
    drawn = np.argsort(-scores, 1)[:, :2]
    for (a, b), p in zip(orders, probs):
        freq = np.mean((drawn[:, 0] == a) & (drawn[:, 1] == b))
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (a, b)


def test_the_logged_slate_holds_the_click_and_k_different_items():
    sim = simulator(**SMALL)
    log = sim.generate_log()
    shown = log[[f"shown_{j}" for j in range(sim.p.slate_size)]].to_numpy()
    assert (shown == log["item_id"].to_numpy()[:, None]).any(1).all()
    assert (np.sort(shown, 1)[:, 1:] != np.sort(shown, 1)[:, :-1]).all()      # k different items
    assert (log["slate_logp"] < 0).all() and np.isfinite(log["slate_logp"]).all()
