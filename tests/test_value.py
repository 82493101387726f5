"""Value accuracy (seqrec/evaluation/value.py) against hand-computed figures, and the simulator's restored users
and true values (seqrec/worlds/simulator.py, seqrec/worlds/online.py) against the simulator run forward."""
import copy

import numpy as np
import pytest

from helpers import pool_from_sessions, simulator
from seqrec.evaluation.offline import format_value
from seqrec.evaluation.value import (
    ValueReference,
    discounted_returns,
    events_left,
    observed_returns,
    position_means,
    positions,
    reward_scale,
    spearman,
    value_reference,
)


def loop_returns(rewards, offsets, gamma):
    out = []
    for s in range(len(offsets) - 1):
        r = rewards[offsets[s]:offsets[s + 1]]
        out += [sum(gamma ** j * r[t + j] for j in range(len(r) - t)) for t in range(len(r))]
    return np.array(out)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_discounted_returns_equal_a_loop(gamma):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 9, size=30)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rewards = rng.choice([0.2, 1.0], size=offsets[-1])
    np.testing.assert_allclose(discounted_returns(rewards, offsets, gamma), loop_returns(rewards, offsets, gamma))


def test_position_means_pool_the_thin_tail():
    place = np.array([0] * 40 + [1] * 35 + [2] * 3 + [3] * 2)
    g = np.concatenate([np.full(40, 1.0), np.full(35, 0.5), [0.3, 0.3, 0.3], [0.1, 0.2]])
    table = position_means(g, place, np.arange(len(g)))
    np.testing.assert_allclose(table, [1.0, 0.5, (0.9 + 0.3) / 5])      # positions 2+ share a mean


def test_spearman_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 15.0, 40.0])) == pytest.approx(0.8)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


def test_metrics_of_a_perfect_and_a_biased_value_function():
    ref = ValueReference(0.5, returns=np.array([1.0, 0.5, 0.0, 2.0]), baseline=np.array([0.5, 0.5, 0.5, 0.5]),
                         true_events=np.array([1, 3]), true_values=np.array([0.4, 1.9]))
    exact = ref.metrics(np.array([0, 1, 2, 3]), np.array([1.0, 0.5, 0.0, 2.0]))
    assert exact["rmse"] == 0 and exact["bias"] == 0 and exact["spearman"] == pytest.approx(1.0) and exact["n"] == 4
    assert exact["baseline_rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 0.25 + 2.25) / 4))
    shifted = ref.metrics(np.array([3, 1]), np.array([2.2, 0.6]))       # out of order: matched by event
    assert shifted["bias"] == pytest.approx(0.15) and shifted["true_n"] == 2
    # R^2 against the true values 0.4 (event 1), 1.9 (event 3): 1 - (0.04 + 0.09) / (2 * 0.75^2)
    assert shifted["true_r2"] == pytest.approx(1 - 0.13 / 1.125)


def test_value_reference_of_a_pool_fits_the_baseline_on_training_events(tmp_path):
    sessions = [[1, 2, 3]] * 40 + [[4, 5]] * 10
    purchases = [[False, False, True]] * 40 + [[True, False]] * 10
    pool = pool_from_sessions(tmp_path / "p", sessions, purchases, splits=(40, 5))
    ref = value_reference(pool, 0.5)
    np.testing.assert_allclose(ref.returns[:3], [0.2 + 0.1 + 0.25, 0.2 + 0.5, 1.0])
    np.testing.assert_allclose(ref.baseline[:3], ref.returns[:3])           # every training session alike
    np.testing.assert_array_equal(positions(np.asarray(pool.offsets))[:5], [0, 1, 2, 0, 1])


def test_events_left_and_the_observed_horizon_by_hand():
    offsets = np.array([0, 3, 5, 6])
    np.testing.assert_array_equal(events_left(offsets), [3, 2, 1, 2, 1, 1])
    # gamma 0.5: the unseen rest starts 0.125, 0.25, 0.5, 0.25, 0.5, 0.5 down; within 0.2 keeps the first
    np.testing.assert_array_equal(observed_returns(offsets, 0.5, 0.2), [True, False, False, False, False, False])
    np.testing.assert_array_equal(observed_returns(offsets, 0.5, 0.5), [True, True, True, True, True, True])
    assert observed_returns(offsets, 0.0, 0.01).all()                    # gamma 0: only the event's own reward
    long = observed_returns(np.array([0, 500]), 0.9, 0.01)               # 0.9^44 = 0.0097 <= 0.01 < 0.9^43
    assert long.sum() == 500 - 43 and long[:457].all() and not long[457:].any()


def test_truncated_logs_are_scored_only_where_the_return_is_observed(tmp_path):
    """Sessions of 5 and 2 events, gamma 0.5, within 0.1: 0.5^k <= 0.1 needs k >= 4 events left, so only
    the first two events of each 5-event session count, for the scores and for the baseline's fit."""
    sessions = [[1, 2, 3, 4, 5]] * 40 + [[6, 7]] * 40 + [[1, 2, 3, 4, 5], [6, 7]] * 5
    pool = pool_from_sessions(tmp_path / "p", sessions, splits=(80, 0))
    ref = value_reference(pool, 0.5, within=0.1)
    np.testing.assert_array_equal(ref.observed[:200].reshape(40, 5), [[True, True, False, False, False]] * 40)
    assert not ref.observed[200:280].any()                                  # 2-event sessions: never
    g = ref.returns
    assert ref.baseline[0] == pytest.approx(g[0]) and ref.baseline[1] == pytest.approx(g[1])
    test = pool.events("test")
    out = ref.metrics(test, g[test] + 0.1)
    assert out["n"] == 5 * 2 and out["n_held_out"] == 5 * 7 and out["bias"] == pytest.approx(0.1)
    assert "n 10; 25 of 35 left out, their return not observed" in format_value(out)
    everything = value_reference(pool, 0.5).metrics(test, g[test] + 0.1)
    assert everything["n"] == everything["n_held_out"] == 35


def test_restored_users_are_the_users_the_simulator_had():
    """Run sessions forward, keeping each user's state before every click; rebuild it from the
    preferences and the clicks and purchases before it."""
    sim = simulator(num_items=80, num_categories=6, max_session_len=12)
    rng = np.random.default_rng(3)
    users = sim.start_sessions(64, rng)
    prefs = users.prefs.copy()
    items, buys = np.full((64, 12), -1), np.zeros((64, 12), dtype=bool)
    before = []
    for t in range(12):
        before.append(copy.deepcopy(users))
        active = np.flatnonzero(~users.done)
        if not len(active):
            break
        sub = users.subset(active)
        res = sim.step(sub, sim.logging_slates(sub, rng), rng)
        users.update(active, sub)
        items[active, t], buys[active, t] = res.click, res.purchase
    for t in range(1, len(before)):
        rows = np.flatnonzero((items[:, t] >= 0))                       # a click at step t: its state before
        if not len(rows):
            continue
        got = sim.users_after(prefs[rows], np.maximum(items[rows], 0), buys[rows], np.full(len(rows), t))
        np.testing.assert_allclose(got.interest, before[t].interest[rows])
        np.testing.assert_array_equal(got.last_click, before[t].last_click[rows])
        np.testing.assert_array_equal(got.length, before[t].length[rows])


def test_session_prefs_are_those_the_log_was_drawn_with():
    sim = simulator(num_sessions=50, num_items=80)
    rng = np.random.default_rng([sim.p.seed, 1, 32])                    # the chunk of sessions 32..49
    expected = sim.start_sessions(18, rng).prefs
    np.testing.assert_allclose(sim.session_prefs(np.array([40, 33]), chunk=32), expected[[8, 1]])


def test_logging_value_at_gamma_zero_is_the_expected_immediate_reward():
    sim = simulator(num_items=80, num_categories=6)
    users = sim.start_sessions(5, np.random.default_rng(0))
    items = np.arange(5)
    p = sim.purchase_prob(users, items[:, None])[:, 0]
    expected = sim.reward_click * (1 - p) + sim.reward_purchase * p
    choose = lambda sub, _: sim.logging_slates(sub, np.random.default_rng(2))          # noqa: E731
    got, sem = sim.click_value(users, items, choose, gamma=0.0, rollouts=4000, rng=np.random.default_rng(1))
    # within 4 standard errors of the exact value (about 0.01 here: a purchase counted as a click
    # moves the value by 0.8 p, 0.02 to 0.1)
    assert (np.abs(got - expected) <= 4 * sem + 1e-12).all(), (got, expected, sem)
    assert (sem < 0.01).all()
    np.testing.assert_allclose(sim.logging_value(users, items, gamma=0.0, rollouts=4000, rng=np.random.default_rng(1)),
                               got)


def test_true_values_of_logged_events_average_to_their_realized_returns(tmp_path):
    """G_t samples the logging policy's Q(s_t, a_t): over many events the two means agree."""
    from helpers import tiny_overrides
    from replay_buffer import ensure_pool
    from seqrec.running.config import load_config
    from seqrec.worlds.online import logged_event_values, simulator_for
    cfg = load_config(overrides=tiny_overrides(tmp_path) + ["sim.num_sessions=1500"])
    pool = ensure_pool(cfg)
    events = pool.events("train")[:1500]
    kept, values = logged_event_values(simulator_for(cfg), pool, events, 0.5, rollouts=16)
    assert len(kept) > 0.9 * len(events)
    g = value_reference(pool, 0.5).returns[kept]
    assert abs(values.mean() - g.mean()) < 3 * g.std() / np.sqrt(len(g))


def test_reward_scale_by_hand_and_divided_out_of_the_value_figures(tmp_path):
    """Training sessions [1, 2, 3] (0.2, 0.2, 1.0) and [4, 5] (1.0, 0.2), gamma 0.5: returns 0.55, 0.7, 1.0
    and 1.1, 0.2, whose mean is 0.71; auto (0) scales rewards by 1 / 0.71, a set value is kept."""
    pool = pool_from_sessions(tmp_path / "p", [[1, 2, 3], [4, 5], [1, 2]], [[False, False, True], [True, False],
                                                                          [False, False]], splits=(2, 0))
    assert reward_scale(pool, 0.5, 0.0) == pytest.approx(1 / 0.71)
    assert reward_scale(pool, 0.5, 4.0) == 4.0
    ref = value_reference(pool, 0.5, scale=4.0)
    test = pool.events("test")
    out = ref.metrics(test, 4.0 * (ref.returns[test] + 0.1))            # Q in scaled units, figures in rewards
    assert out["bias"] == pytest.approx(0.1) and out["rmse"] == pytest.approx(0.1)
