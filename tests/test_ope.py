"""Off-policy estimators (seqrec/evaluation/ope.py) against hand computations, loops and the exact value of a one-step log."""
import itertools

import numpy as np
import pytest

from seqrec.running.errors import UserError
from seqrec.evaluation.ope import (bootstrap_interval, cascade_dr, check_log_propensities, check_support, click_probs,
                        deterministic_membership_probs, deterministic_position_probs, deterministic_prefix_probs,
                        direct_method, estimate, fit_click_model, lstdq, lstdq_terms, per_decision_tables,
                        plackett_luce_log_probs, position_marginals, position_rewards, ranked_top_k, sequential_ips,
                        slate_ips)


def ordered_slates(n: int, k: int) -> list:
    return list(itertools.permutations(range(n), k))


def exact_slate_probs(logits: np.ndarray, k: int) -> dict:
    """P(ordered slate) of a Plackett-Luce draw without replacement, by the textbook product, for one row."""
    w = np.exp(logits)
    out = {}
    for slate in ordered_slates(len(w), k):
        p, left = 1.0, w.sum()
        for i in slate:
            p *= w[i] / left
            left -= w[i]
        out[slate] = p
    return out


def test_plackett_luce_log_probs_are_the_textbook_product_and_sum_to_one():
    logits = np.array([[0.3, -1.0, 2.0, 0.0, 0.5]])
    probs = exact_slate_probs(logits[0], 3)
    slates = np.array(list(probs))
    got = plackett_luce_log_probs(np.repeat(logits, len(slates), 0), slates).sum(1)
    np.testing.assert_allclose(np.exp(got), list(probs.values()), rtol=1e-12)
    assert np.exp(got).sum() == pytest.approx(1.0)


def test_ranked_top_k_is_a_stable_descending_sort():
    scores = np.array([[0.1, 0.9, 0.5, 0.9, -1.0], [3.0, 2.0, 1.0, 0.0, 5.0]])
    np.testing.assert_array_equal(ranked_top_k(scores, 3), np.argsort(-scores, 1, kind="stable")[:, :3])


def test_deterministic_probabilities_by_hand():
    target = np.array([[4, 7, 1], [2, 3, 5]])
    logged = np.array([[4, 1, 7], [2, 3, 9]])
    np.testing.assert_array_equal(deterministic_position_probs(target, logged), [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(deterministic_prefix_probs(target, logged), [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(deterministic_prefix_probs(np.array([[1, 2]]), np.array([[3, 2]])), [[0, 0]])


def test_position_and_membership_marginals_by_gumbel_draws_match_enumeration():
    logits = np.array([0.5, -0.5, 1.0, 0.0])
    probs = exact_slate_probs(logits, 2)
    at = {(i, l): sum(p for s, p in probs.items() if s[l] == i) for i in range(4) for l in range(2)}
    anywhere = {i: sum(p for s, p in probs.items() if i in s) for i in range(4)}
    slates = np.array([[2, 0], [1, 3], [0, 2]])
    draws = 20_000
    got_at, got_any = position_marginals(np.repeat(logits[None], 3, 0), slates, draws, np.random.default_rng(0))
    for s in range(3):
        for l in range(2):
            for got, p in ((got_at[s, l], at[(slates[s, l], l)]), (got_any[s, l], anywhere[slates[s, l]])):
                assert got == pytest.approx((p * draws + 1) / (draws + 1), abs=4 * np.sqrt(p * (1 - p) / draws))


def test_deterministic_membership_by_hand():
    np.testing.assert_array_equal(deterministic_membership_probs(np.array([[4, 7, 1]]), np.array([[1, 4, 9]])),
                                  [[1, 1, 0]])


def test_slate_ips_by_hand():
    """Two sessions: session 0 has two slates (a click at position 1, reward 1.0; then at 0, reward 0.2),
    session 1 one slate without a click."""
    session = np.array([0, 0, 1])
    rewards = position_rewards(np.array([1, 0, -1]), np.array([1.0, 0.2, 0.0]), k=2)
    np.testing.assert_array_equal(rewards, [[0, 1.0], [0.2, 0], [0, 0]])
    weights = np.array([[0.5, 2.0], [4.0, 0.0], [1.0, 3.0]])
    num, den = slate_ips(rewards, weights, session, 2)
    assert estimate(num, den) == pytest.approx((2.0 * 1.0 + 4.0 * 0.2) / 2)
    num, den = slate_ips(rewards, weights, session, 2, self_normalised=True)
    mean_weight = weights.mean()                          # (0.5 + 2 + 4 + 0 + 1 + 3) / 6
    assert estimate(num, den) == pytest.approx((3 / 2) * (2.0 + 0.8) / 3 / mean_weight)


def loop_sequential(rewards, weights, click_pos, session, step, n, clip):
    out = np.zeros(n)
    for s in range(n):
        rows = sorted(np.flatnonzero(session == s), key=lambda i: step[i])
        product = 1.0
        for i in rows:
            if click_pos[i] < 0:
                continue
            product *= weights[i, click_pos[i]]
            out[s] += min(product, clip) * rewards[i, click_pos[i]]
    return out


def test_sequential_ips_against_a_loop():
    rng = np.random.default_rng(3)
    S, k, n = 60, 3, 12
    session = rng.integers(0, n, S)
    step = rng.permutation(S)                              # any order within a session
    click_pos = rng.integers(-1, k, S)
    rewards = position_rewards(click_pos, rng.choice([0.2, 1.0], S), k)
    weights = rng.choice([0.0, 0.5, 1.5, 3.0], size=(S, k))
    num, den, clipped = sequential_ips(*per_decision_tables(rewards, weights, click_pos, session, step, n), clip=5.0)
    np.testing.assert_allclose(num, loop_sequential(rewards, weights, click_pos, session, step, n, 5.0))
    assert (den == 1).all() and 0 <= clipped <= 1


@pytest.mark.parametrize("theta,forms", [((0.8, 0.4), ("ip", "cascade")), ((0.7, 0.7), ("ip", "cascade", "item"))])
def test_ips_forms_are_unbiased_on_a_one_step_log_with_a_known_truth(theta, forms):
    """A slate bandit whose clicks follow a position-based model (item i at position l is clicked with
    probability theta_l * a_i, independently): the independence assumption of item-position IPS holds,
    and the reward at l depends on the prefix only, as reward-interaction IPS assumes. With the exact
    logging propensities, the mean of each estimate over many logs is the exact value of the target
    (within 4 standard errors). Where the position does not matter (theta equal), item IPS is unbiased too."""
    rng = np.random.default_rng(7)
    n_items, k = 5, 2
    log_logits = np.array([0.4, 0.0, -0.3, 0.8, -1.0])
    attract, theta = np.array([0.6, 0.2, 0.5, 0.1, 0.9]), np.array(theta)
    log_probs = exact_slate_probs(log_logits, k)
    slates_all = np.array(list(log_probs))
    target = np.array([4, 0])                                            # a deterministic target slate
    truth = float((theta * attract[target]).sum())
    log_marg = {(i, l): sum(p for s, p in log_probs.items() if s[l] == i) for i in range(n_items) for l in range(k)}
    log_member = {i: sum(p for s, p in log_probs.items() if i in s) for i in range(n_items)}

    S, reps = 4000, 60
    results = {name: [] for name in forms}
    for _ in range(reps):
        pick = rng.choice(len(slates_all), size=S, p=list(log_probs.values()))
        slates = slates_all[pick]
        rewards = (rng.random((S, k)) < theta * attract[slates]).astype(float)
        target_slates = np.repeat(target[None], S, 0)
        mu_pos = np.array([[log_marg[(i, l)] for l, i in enumerate(s)] for s in slates])
        mu_member = np.array([[log_member[i] for i in s] for s in slates])
        mu_prefix = np.exp(np.cumsum(plackett_luce_log_probs(np.repeat(log_logits[None], S, 0), slates), 1))
        session = np.arange(S)
        for name, pi, mu in (("ip", deterministic_position_probs(target_slates, slates), mu_pos),
                             ("cascade", deterministic_prefix_probs(target_slates, slates), mu_prefix),
                             ("item", deterministic_membership_probs(target_slates, slates), mu_member)):
            if name in results:
                results[name].append(estimate(*slate_ips(rewards, pi / mu, session, S)))
    for name, values in results.items():
        values = np.array(values)
        assert abs(values.mean() - truth) < 4 * values.std(ddof=1) / np.sqrt(reps), name


def test_bootstrap_interval_of_a_weighted_ratio_against_a_loop():
    """Unequal weights (den): the interval is of sum(num) / sum(den) over resampled sessions, not of the
    mean of num, and equals a loop over the same draws."""
    rng = np.random.default_rng(3)
    num, den = rng.exponential(size=40), rng.choice([0.0, 0.5, 4.0], size=40)
    lo, hi = bootstrap_interval(num, den, np.random.default_rng(5), resamples=200)
    draws = np.random.default_rng(5).integers(0, 40, size=(200, 40))
    ratios = [num[d].sum() / den[d].sum() for d in draws if den[d].sum() > 0]
    expected = np.quantile(ratios, [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(expected))
    assert lo < num.sum() / den.sum() < hi and not lo < num.mean() < hi


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_sessions():
    rng = np.random.default_rng(0)
    small, large = rng.exponential(size=50), rng.exponential(size=5000)
    lo_s, hi_s = bootstrap_interval(small, np.ones(50), np.random.default_rng(1))
    lo_l, hi_l = bootstrap_interval(large, np.ones(5000), np.random.default_rng(1))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 0.5])
def test_bad_logging_propensities_are_refused_in_one_line(bad):
    logp = np.log(np.full((3, 2), 0.5))
    logp[1, 1] = bad
    with pytest.raises(UserError, match="slate 1 has logging log-probability"):
        check_log_propensities(logp)
    check_log_propensities(np.log(np.full((3, 2), 0.5)))


def test_support_violation_is_refused():
    with pytest.raises(UserError, match="support violation"):
        check_support(np.array([[1.0, 0.0]]), np.array([[0.0, 0.1]]))
    check_support(np.array([[1.0, 0.0]]), np.array([[0.2, 0.0]]))


def test_impression_log_records_every_slate_with_its_propensities():
    """Every session's slates, step by step, the last one unclicked unless a click ended the session; the
    positions' log-probabilities sum to the slate's; the clicked position holds the clicked item; the
    history before a slate is the session's earlier clicks."""
    from helpers import simulator
    from seqrec.worlds.online import impression_log
    sim = simulator(num_items=60, num_categories=5, max_session_len=8)
    log = impression_log(sim, 40, seed=1)
    assert set(log.session) == set(range(40))
    for s in range(40):
        rows = np.flatnonzero(log.session == s)
        assert (log.step[rows] == np.arange(len(rows))).all()
        assert (log.click_pos[rows[:-1]] >= 0).all()                 # only a click lets a session go on
        clicks = [log.slates[r, log.click_pos[r]] for r in rows if log.click_pos[r] >= 0]
        for j, r in enumerate(rows):
            before = log.histories[r][log.histories[r] >= 0].tolist()
            assert before == clicks[:j]
    assert (log.reward[log.click_pos < 0] == 0).all() and (log.reward[log.click_pos >= 0] > 0).all()
    from seqrec.worlds.simulator import Users
    stub = Users(prefs=np.zeros((len(log.session), sim.p.dim)), interest=np.zeros((len(log.session), 5)),
                 last_click=np.array([h[h >= 0][-1] if (h >= 0).any() else -1 for h in log.histories]),
                 length=np.zeros(len(log.session), dtype=np.int64), done=np.zeros(len(log.session), dtype=bool))
    np.testing.assert_allclose(log.log_cond_logp.sum(1), sim.slate_log_prob(stub, log.slates), rtol=1e-10)


def test_the_logging_policy_as_target_is_estimated_by_its_own_mean_return():
    """Every weight is 1: each estimator gives the impression log's mean return per session, exactly."""
    from helpers import simulator
    from seqrec.worlds.online import impression_log
    from seqrec.evaluation.ope_eval import Target, estimates, logging_propensities, target_propensities
    sim = simulator(num_items=60, num_categories=5, max_session_len=8)
    log = impression_log(sim, 300, seed=2)
    logging = logging_propensities(sim, log, 10, np.random.default_rng(0))
    rows = estimates(log, target_propensities(Target("logging"), log, logging, 60), logging,
                     np.random.default_rng(1), resamples=50)
    on_policy = log.reward.sum() / 300
    assert {r["estimator"] for r in rows} >= {"ips", "snips", "item-ips", "cascade-ips", "sequential"}
    for r in rows:
        assert r["estimate"] == pytest.approx(on_policy), r["estimator"]
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"]


def test_uniform_target_propensities():
    from seqrec.worlds.online import ImpressionLog
    from seqrec.evaluation.ope_eval import Propensities, Target, target_propensities
    log = ImpressionLog(np.zeros(2, int), np.arange(2), np.array([[0, 1, 2], [3, 4, 5]]), np.zeros((2, 3)),
                        np.array([0, -1]), np.array([1.0, 0.0]), np.full((2, 4), -1), 1)
    got = target_propensities(Target("uniform"), log, None, 10)
    np.testing.assert_allclose(got.position, 0.1)
    np.testing.assert_allclose(got.item, 0.3)
    np.testing.assert_allclose(got.prefix[0], [1 / 10, 1 / 90, 1 / 720])
    assert isinstance(got, Propensities)


def test_assessment_by_hand():
    """Three policies with true returns 1, 2, 3. Estimator a ranks them right but puts policy 3 at 6;
    estimator b ranks policy 1 first: Spearman -1, regret (3 - 1) / 3."""
    import pandas as pd
    from seqrec.evaluation.ope_eval import assess
    table = pd.DataFrame({"dataset": "d", "policy": list("xyz") * 2, "estimator": ["a"] * 3 + ["b"] * 3,
                          "estimate": [1.0, 2.0, 6.0, 3.0, 2.0, 1.0], "truth": [1.0, 2.0, 3.0] * 2})
    got = assess(table).set_index("estimator")
    assert got.loc["a", "spearman"] == pytest.approx(1.0) and got.loc["a", "regret_at_1"] == 0
    assert got.loc["a", "relative_error"] == pytest.approx((0 + 0 + 1.0) / 3)
    assert got.loc["b", "spearman"] == pytest.approx(-1.0)
    assert got.loc["b", "regret_at_1"] == pytest.approx(2 / 3)
    assert (got["n_policies"] == 3).all()


def test_weighted_per_decision_against_a_loop():
    """sum over t of sum_i rho_it r_it / sum_i rho_it, rho_it the product of session i's clicked weights up
    to t (its last product once it has ended, with reward 0 from then on)."""
    from seqrec.evaluation.ope import weighted_per_decision
    rng = np.random.default_rng(5)
    n, k = 15, 3
    lengths = rng.integers(1, 5, n)
    session = np.repeat(np.arange(n), lengths)
    step = np.concatenate([np.arange(m) for m in lengths])
    click_pos = np.where(step < np.repeat(lengths, lengths) - 1, rng.integers(0, k, len(session)), -1)
    rewards = position_rewards(click_pos, rng.choice([0.2, 1.0], len(session)), k)
    weights = rng.choice([0.0, 0.5, 2.0], size=(len(session), k))
    T = lengths.max()
    num, den = np.zeros(T), np.zeros(T)
    for i in range(n):
        rows = np.flatnonzero(session == i)
        product = 1.0
        for t in range(T):
            reward = 0.0
            if t < len(rows):
                r = rows[t]
                if click_pos[r] >= 0:
                    product *= weights[r, click_pos[r]]
                    reward = rewards[r, click_pos[r]]
            num[t] += product * reward
            den[t] += product
    expected = sum(num[t] / den[t] for t in range(T) if den[t] > 0)
    got = weighted_per_decision(*per_decision_tables(rewards, weights, click_pos, session, step, n))
    assert got == pytest.approx(expected)


def test_weighted_per_decision_with_unit_weights_is_the_mean_return():
    from seqrec.evaluation.ope import weighted_per_decision
    session, step = np.array([0, 0, 1]), np.array([0, 1, 0])
    click_pos, reward = np.array([1, -1, 0]), np.array([1.0, 0.0, 0.2])
    rewards = position_rewards(click_pos, reward, 2)
    got = weighted_per_decision(*per_decision_tables(rewards, np.ones((3, 2)), click_pos, session, step, 2))
    assert got == pytest.approx((1.0 + 0.2) / 2)


def test_spearman_with_ties_by_hand():
    """Ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): Pearson of those ranks."""
    import pandas as pd
    from seqrec.evaluation.ope_eval import spearman
    a, b = np.array([1.0, 2.5, 2.5, 4.0]), np.arange(1.0, 5.0)
    expected = np.corrcoef(a, b)[0, 1]
    assert spearman(pd.Series([0.1, 0.5, 0.5, 0.9]), pd.Series([1.0, 2.0, 3.0, 4.0])) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# Model-based estimators: click model, direct method, cascade DR, fitted Q evaluation
# ------------------------------------------------------------------------------------------------
def test_click_model_recovers_known_parameters_and_refuses_a_log_without_both_outcomes():
    rng = np.random.default_rng(0)
    scores = rng.normal(-3.0, 1.0, 200_000)
    clicked = rng.random(len(scores)) < 1 / (1 + np.exp(-(0.7 * scores + 0.5)))
    scores[::50] = -np.inf                                          # items the critic never saw: left out
    np.testing.assert_allclose(fit_click_model(scores, clicked), [0.7, 0.5], atol=0.03)
    assert click_probs(np.array([-np.inf]), np.array([0.7, 0.5]))[0] == 0.0
    with pytest.raises(UserError, match="both clicked and not clicked"):
        fit_click_model(scores, np.zeros(len(scores), dtype=bool))


def test_cascade_dr_by_hand():
    """Two positions, one slate: w_1 (r_1 - q_1) + 1 * E[q_1] + w_12 (r_2 - q_2) + w_1 E[q_2]."""
    rewards, q_logged = np.array([[0.0, 1.0]]), np.array([[0.3, 0.4]])
    q_target, w = np.array([[0.5, 0.2]]), np.array([[2.0, 6.0]])
    num, den = cascade_dr(rewards, q_logged, q_target, w, np.array([0]), 1)
    assert num[0] == pytest.approx(2 * (0 - 0.3) + 0.5 + 6 * (1 - 0.4) + 2 * 0.2) and den[0] == 1
    dm, _ = direct_method(np.array([0.5, 0.25, 1.0]), np.array([0, 1, 0]), 2)
    np.testing.assert_allclose(dm, [1.5, 0.25])


def test_dm_is_exact_with_the_true_reward_model_and_cascade_dr_unbiased_with_a_wrong_one():
    """The position-based slate bandit of the IPS test: DM with the true expected reward is the truth (up
    to its sampling of nothing: it reads no rewards); with a reward model off by a factor, DM is biased
    and cascade DR, corrected by the prefix weights, is unbiased (within 4 standard errors)."""
    rng = np.random.default_rng(3)
    log_logits = np.array([0.4, 0.0, -0.3, 0.8, -1.0])
    attract, theta, k = np.array([0.6, 0.2, 0.5, 0.1, 0.9]), np.array([0.8, 0.4]), 2
    log_probs = exact_slate_probs(log_logits, k)
    slates_all = np.array(list(log_probs))
    target = np.array([4, 0])
    truth = float((theta * attract[target]).sum())
    S, reps, values, dms = 3000, 60, [], []
    wrong = 0.6 * attract                                            # a reward model 40% low, same at every position
    for _ in range(reps):
        slates = slates_all[rng.choice(len(slates_all), size=S, p=list(log_probs.values()))]
        rewards = (rng.random((S, k)) < theta * attract[slates]).astype(float)
        mu_prefix = np.exp(np.cumsum(plackett_luce_log_probs(np.repeat(log_logits[None], S, 0), slates), 1))
        w = deterministic_prefix_probs(np.repeat(target[None], S, 0), slates) / mu_prefix
        q_target = np.repeat((theta * wrong[target])[None], S, 0)
        values.append(estimate(*cascade_dr(rewards, theta * wrong[slates], q_target, w, np.arange(S), S)))
        dms.append(estimate(*direct_method(q_target.sum(1), np.arange(S), S)))
    exact = estimate(*direct_method(np.full(S, truth), np.arange(S), S))
    assert exact == pytest.approx(truth)
    values = np.array(values)
    assert abs(values.mean() - truth) < 4 * values.std(ddof=1) / np.sqrt(reps)
    assert abs(np.mean(dms) - truth) > 0.3 * truth                  # the wrong model alone is far off


def fitted_q_iteration(features, next_features, rewards, gamma, iters):
    """FQE as the loop it abbreviates: regress r + gamma Q(s', pi) on the features, again and again."""
    theta = np.zeros(features.shape[1])
    for _ in range(iters):
        theta = np.linalg.lstsq(features, rewards + gamma * next_features @ theta, rcond=None)[0]
    return theta


def test_lstdq_is_the_fixed_point_of_fitted_q_iteration_and_its_terms_add_over_sessions():
    rng = np.random.default_rng(1)
    m, d, n = 400, 4, 30
    features = rng.normal(size=(m, d))
    next_features = 0.5 * features[rng.permutation(m)] + 0.1 * rng.normal(size=(m, d))
    rewards, session = rng.normal(size=m), rng.integers(0, n, m)
    A, b, count = lstdq_terms(features, next_features, rewards, 0.8, session, n)
    np.testing.assert_allclose(A.sum(0), features.T @ (features - 0.8 * next_features), atol=1e-9)
    np.testing.assert_allclose(lstdq(A, b, count, ridge=0.0),
                               fitted_q_iteration(features, next_features, rewards, 0.8, 300), atol=1e-6)


def test_fqe_with_one_hot_features_gives_the_exact_value_of_a_chain():
    """Tabular FQE is exact: a chain s0 -> s1 -> s2 -> end, one action per state, rewards 1, 2, 3 and a
    user who continues with probability 0.5 after each step (the target's expected next features are
    the next state's one-hot times 0.5): V(s0) = 1 + 0.5 (2 + 0.5 * 3) = 2.75."""
    eye = np.eye(3)
    features = eye[[0, 1, 2] * 50]
    next_features = np.where(np.arange(3)[[0, 1, 2] * 50, None] < 2, 0.5 * eye[[1, 2, 0] * 50], 0.0)
    rewards = np.array([1.0, 2.0, 3.0] * 50)
    A, b, count = lstdq_terms(features, next_features, rewards, 1.0, np.repeat(np.arange(50), 3), 50)
    assert eye[0] @ lstdq(A, b, count, ridge=0.0) == pytest.approx(2.75)


def test_reward_model_expectations_under_each_target_by_enumeration():
    """target_q_hat's closed forms (the uniform and Plackett-Luce logging targets' expected reward at each
    position given the logged items above it; DM's expected reward of a slate) against enumerating every
    ordered slate of a 5-item catalogue."""
    from types import SimpleNamespace

    from seqrec.worlds.online import ImpressionLog
    from seqrec.evaluation.ope_eval import Target, target_q_hat
    rng = np.random.default_rng(4)
    n_items, k = 5, 3
    slates = np.array([[0, 3, 1], [4, 2, 0]])
    log = ImpressionLog(np.array([0, 1]), np.zeros(2, int), slates, np.zeros((2, k)), np.array([0, -1]),
                        np.array([1.0, 0.0]), np.array([[-1, 2], [-1, -1]]), 2)
    view = SimpleNamespace(q_hat=rng.random((2, n_items)))
    logits = rng.normal(size=(2, n_items))
    logging_logits = lambda last: logits[np.where(last == 2, 0, 1)]        # noqa: E731  (rows' last clicks differ)
    for kind, weights in (("uniform", np.ones((2, n_items))), ("logging", np.exp(logits))):
        dm, q_target = target_q_hat(Target(kind), log, view, None, logging_logits)
        for s in range(2):
            probs = exact_slate_probs(np.log(weights[s]), k)
            for l in range(k):
                prefix = tuple(slates[s, :l])
                match = {sl: p for sl, p in probs.items() if sl[:l] == prefix}
                expected = sum(p * view.q_hat[s, sl[l]] for sl, p in match.items()) / sum(match.values())
                assert q_target[s, l] == pytest.approx(expected), (kind, s, l)
            if kind == "uniform":
                assert dm[s] == pytest.approx(sum(p * view.q_hat[s, list(sl)].sum() for sl, p in probs.items()))
            else:                                                        # one draw: the logged slate
                assert dm[s] == pytest.approx(view.q_hat[s, slates[s]].sum())
    scorer = Target("scores", lambda h: np.tile(np.arange(n_items, dtype=float), (len(h), 1)))
    target_slates = np.array([[4, 3, 2], [4, 3, 2]])
    dm, q_target = target_q_hat(scorer, log, view, target_slates, logging_logits)
    np.testing.assert_allclose(q_target, np.take_along_axis(view.q_hat, target_slates, 1))
    np.testing.assert_allclose(dm, q_target.sum(1))
