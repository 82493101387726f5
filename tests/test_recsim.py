"""RecSim's interest evolution as a world: the stock environment's sessions draw for draw, a fixed
catalogue, exact logging propensities, reproducible and independent worlds, the oracles' order."""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import pool_from_sessions
from replay_buffer import Pool
from seqrec.running.config import check_trained_here, load_config
from seqrec.running.errors import UserError
from seqrec.evaluation.ope import plackett_luce_log_probs
from seqrec.worlds.online import random_policy, rollout, static_list_policy
from seqrec.worlds.recsim import RecSimParams, RecSimWorld, keyed_uniforms, stock_interest_evolution
from test_train_integration import ROOT, run


def params(**kw) -> RecSimParams:
    base = dict(seed=0, num_sessions=40, num_items=500, slate_size=5, time_budget=200.0, no_click_mass=1.0,
                logging_temperature=0.2, logging_noise=0.5)
    return RecSimParams(**{**base, **kw})


@pytest.fixture(scope="module")
def world() -> RecSimWorld:
    return RecSimWorld(params())


def stock_environment(seed: int, num_items: int = 500, slate_size: int = 5):
    """RecSim's own interest-evolution environment, as create_environment builds it, without the gym wrapper."""
    ie = stock_interest_evolution()
    from recsim import choice_model
    from recsim.simulator import environment
    user_model = ie.IEvUserModel(slate_size, choice_model_ctor=choice_model.MultinomialProportionalChoiceModel,
                                 response_model_ctor=ie.IEvResponse, user_state_ctor=ie.IEvUserState, seed=seed)
    sampler = ie.UtilityModelVideoSampler(doc_ctor=ie.IEvVideo, seed=seed)
    return environment.Environment(user_model, sampler, num_items, slate_size, resample_documents=False)


def test_catalogue_is_recsims_and_keeps_its_ids_across_resets(world):
    env = stock_environment(0)
    first = list(env.reset()[1])
    docs = env.candidate_set.get_documents(first)
    assert first == [str(i) for i in range(500)]
    np.testing.assert_array_equal(world.topic, [d.cluster_id for d in docs])
    np.testing.assert_array_equal(world.quality, [d.quality for d in docs])
    for _ in range(3):
        assert list(env.reset()[1]) == first
    again = RecSimWorld(params())
    np.testing.assert_array_equal(again.quality, world.quality)
    assert not np.array_equal(RecSimWorld(params(seed=1)).quality, world.quality)


def test_step_gives_the_stock_environments_sessions_draw_for_draw(world):
    """Each user of the stock environment runs a whole session on global NumPy draws; the same user in
    the world, fed the same stream (choice first, then the interest's flip only after a click), must click
    the same items and keep the same budget and interests at every step."""
    env = stock_environment(0)
    slates_rng = np.random.default_rng(5)
    steps = clicks = 0
    for session in range(25):
        env.reset()
        state = env._user_model._user_state
        users = world.users_from(state.user_interests.copy()[None, :], np.zeros(1, dtype=np.uint64))
        np.random.seed(1000 + session)
        stream = np.random.RandomState(1000 + session).random_sample(5000)
        at, done = 0, False
        while not done:
            slate = slates_rng.choice(500, 5, replace=False)
            _, _, responses, done = env.step(slate)
            result = world.respond(users, slate[None, :], stream[at:at + 1], stream[at + 1:at + 2])
            clicked = [i for i, r in enumerate(responses) if r.clicked]
            at += 2 if clicked else 1
            assert result.click[0] == (slate[clicked[0]] if clicked else -1)
            assert result.reward[0] == (responses[clicked[0]].watch_time if clicked else 0.0)
            assert users.budget[0] == state.time_budget
            np.testing.assert_array_equal(users.interests[0], state.user_interests)
            assert bool(users.done[0]) == done
            steps, clicks = steps + 1, clicks + bool(clicked)
    assert steps > 1000 and 0.3 < clicks / steps < 0.9


def test_keyed_draws_are_uniform_and_depend_only_on_key_and_step():
    keys = np.arange(200_000, dtype=np.uint64) * np.uint64(7919)
    u = keyed_uniforms(keys, np.full(len(keys), 3), 0)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(u))
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 0.095 * len(u)
    np.testing.assert_array_equal(keyed_uniforms(keys[::-1], np.full(len(keys), 3), 0), u[::-1])
    assert not np.array_equal(keyed_uniforms(keys, np.full(len(keys), 4), 0), u)
    assert not np.array_equal(keyed_uniforms(keys, np.full(len(keys), 3), 1), u)


def test_logged_log_probabilities_match_the_samplers_frequencies():
    """A small catalogue, one user: the frequency of each ordered slate over many draws against exp(logp),
    and the exact probabilities of all 30 ordered slates sum to 1."""
    small = RecSimWorld(params(num_items=6, slate_size=2, logging_temperature=0.5))
    n = 40_000
    users = small.users_from(np.tile(np.linspace(-0.9, 0.9, 20), (n, 1)), np.zeros(n, dtype=np.uint64))
    noise = np.tile(np.array([0.3, -0.2, 0.0, 0.5, -0.4, 0.1]), (n, 1))
    ordered, logp = small.logging_slates(users, noise, np.random.default_rng(0))
    exact = {tuple(o): math.exp(lp) for o, lp in zip(ordered, logp.sum(1))}
    every = np.array(list(itertools.permutations(range(6), 2)))
    logits = small.logging_logits(users.subset(np.arange(len(every))), noise[:len(every)])
    assert np.exp(plackett_luce_log_probs(logits, every).sum(1)).sum() == pytest.approx(1.0, abs=1e-12)
    seen = Counter(map(tuple, ordered))
    assert len(seen) > 15
    for slate, count in seen.items():
        p = exact[slate]
        assert abs(count / n - p) < 4 * math.sqrt(p * (1 - p) / n), slate


def test_log_and_rollouts_are_pure_functions_of_the_config_and_leave_numpy_alone(world):
    state = np.random.get_state()[1].copy()
    log = world.generate_log(30)
    np.testing.assert_array_equal(np.random.get_state()[1], state)           # the global stream is not touched
    other = RecSimWorld(params(seed=3))
    other.generate_log(30)                                                    # another world in between
    again = RecSimWorld(params()).generate_log(30)
    assert log.equals(again)
    assert set(log.columns) >= {"session_id", "item_id", "timestamp", "reward", "shown_0", "shown_4", "slate_logp"}
    assert (log["reward"] > 0).all() and (log["reward"] <= 4.0).all()
    assert (log["slate_logp"] < 0).all()
    a = rollout(world, random_policy(500, 0), 50, seed=2).returns
    b = rollout(RecSimWorld(params()), random_policy(500, 0), 50, seed=2).returns
    np.testing.assert_array_equal(a, b)


def test_ratio_slate_is_the_brute_force_best():
    small = RecSimWorld(params(num_items=9, slate_size=3))
    rng = np.random.default_rng(1)
    users = small.users_from(rng.uniform(-1, 1, (40, 20)), np.zeros(40, dtype=np.uint64))
    users.budget = rng.uniform(1, 200, 40)
    for scores_of, base, cost_of in (
            (small.myopic_scores, small.no_click_weight, lambda w, t, c: w),
            (small.budget_scores, small.no_click_weight * small.step_penalty, lambda w, t, c: w * c)):
        top = np.argsort(-scores_of(users), 1)[:, :3]
        w = small.choice_weights(users)
        t = small.watch_time(users, np.arange(9)[None, :])
        c = small.click_cost(t, np.arange(9)[None, :])
        for b in range(40):
            def ratio(s):
                s = list(s)
                return (w[b, s] * t[b, s]).sum() / (base + cost_of(w[b, s], t[b, s], c[b, s]).sum())
            best = max(ratio(s) for s in itertools.combinations(range(9), 3))
            assert ratio(top[b]) == pytest.approx(best, rel=1e-12)


def test_oracles_rank_as_measured(world):
    """1,000 users (random 167.6 over 61 slates, myopic 222-231, budget-aware 775-792 when measured)."""
    rets = {}
    policies = {"random": random_policy(500, 0), **world.reference_policies()}
    for name, policy in policies.items():
        r = rollout(world, policy, 400, seed=0)
        rets[name] = (r.returns.mean(), r.returns.std(ddof=1) / math.sqrt(400), r.slates.mean())
    assert abs(rets["random"][0] - 167.6) < 4 * rets["random"][1] + 1 and 55 < rets["random"][2] < 67
    assert rets["random"][0] + 30 < rets["myopic-oracle"][0] < 260
    assert rets["budget-oracle"][0] > 3 * rets["myopic-oracle"][0] and rets["budget-oracle"][2] > 200


def test_static_list_ranks_items_by_their_clicks_mean_discounted_return_by_hand(tmp_path):
    """Training sessions [1, 2, 3] (0.2, 0.2, 1.0) and [2, 1] (1.0, 0.2), gamma 0.5: returns 0.55, 0.7, 1.0
    and 1.1, 0.2; item 1 (0.55 + 0.2) / 2, item 2 (0.7 + 1.1) / 2, item 3 1.0; item 4 (test only) never."""
    pool = pool_from_sessions(tmp_path / "p", [[1, 2, 3], [2, 1], [4, 4]],
                              [[False, False, True], [True, False], [False, False]], splits=(2, 0))
    pool = SimpleNamespace(events=pool.events, rewards=pool.rewards, offsets=pool.offsets, items=pool.items,
                           item_ids=np.arange(4))          # world item index = pool id - 1, as a world's log has it
    world = SimpleNamespace(p=SimpleNamespace(num_items=5))
    scores = static_list_policy(world, pool, 0.5)(np.zeros((3, 1)), None)
    np.testing.assert_allclose(scores[0], [0.375, 0.9, 1.0, -np.inf, -np.inf])
    assert scores.shape == (3, 5) and (scores == scores[0]).all()


def test_train_and_online_eval_on_recsim_as_the_readme_runs_them(tmp_path):
    extra = ["recsim.num_sessions=80", "train.epochs=1", "online.sessions=60", "eval.value_events=0"]
    run("train_offline.py", "--config", str(ROOT / "configs/recsim.yaml"), tmp=tmp_path, extra=extra)
    pool = Pool(tmp_path / "pool")
    assert pool.meta["num_purchases"] == 0 and 0 < float(np.max(pool.rewards)) <= 4.0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["value"]["n"] == final["value"]["n_held_out"] > 0       # whole sessions: every event is scored
    online = run("online_eval.py", "--config", str(ROOT / "configs/recsim.yaml"), tmp=tmp_path, extra=extra)
    table = pd.read_csv(tmp_path / "run" / "online.csv").set_index("policy")
    assert {"random", "popular", "static-list", "myopic-oracle", "budget-oracle"} <= set(table.index)
    assert {f"{tmp_path / 'run' / 'best.pt'}:{h}" for h in ("ssl", "q", "mix")} <= set(table.index)
    assert table.loc["budget-oracle", "of_oracle"] == 1.0 and "of budget-oracle's return" in online.stdout
    assert table.loc["budget-oracle", "return"] > table.loc["random", "return"]
    assert "Gym has been unmaintained" not in online.stdout + online.stderr


def test_a_checkpoint_of_another_world_is_refused():
    cfg = load_config(ROOT / "configs/recsim.yaml")
    check_trained_here("mine.pt", {"config": cfg.to_dict()}, cfg)
    for other in (load_config(), load_config(ROOT / "configs/recsim.yaml", ["recsim.seed=4"])):
        with pytest.raises(UserError, match="trained on other data than this world's"):
            check_trained_here("theirs.pt", {"config": other.to_dict()}, cfg)


def test_skip_memory_moves_down_a_fixed_ranking_after_each_ignored_slate_and_spares_the_oracles(world):
    """A fixed ranking with online.skip_memory: j slates ignored since the last click, the next slate is
    the ranking's items 5j .. 5j + 4; after a click it starts at the top again. Oracles are left alone."""
    order = np.random.default_rng(3).permutation(500)
    scores = np.empty(500)
    scores[order] = -np.arange(500.0)
    log = rollout(world, lambda h, u: np.tile(scores, (len(h), 1)), 60, seed=1, record=True, skip_memory=True).log
    assert len(log) > 100
    for _, session in log.groupby("session_id"):
        since = np.diff(np.concatenate([[-1], session["step"].to_numpy()])) - 1     # slates ignored before each click
        assert since.max() > 0
        for j, (_, row) in zip(since, session.iterrows()):
            shown = {row[f"shown_{i}"] for i in range(5)}
            assert shown == set(order[5 * (j % 100): 5 * (j % 100) + 5])
    oracle = world.reference_policies()["budget-oracle"]
    np.testing.assert_array_equal(rollout(world, oracle, 30, seed=1, skip_memory=True).returns,
                                  rollout(world, oracle, 30, seed=1).returns)


def test_distinct_at_10_counts_the_different_tenth_slates(world):
    """A policy that shows every user a slate of their own, except at the 10th step, where user i gets
    ranking i mod 7: 7 different tenth slates. One ranking for everyone: 1."""
    scores = np.random.default_rng(3).random((80, 500))
    calls = []

    def own_slates_but_seven_at_the_tenth(histories, users):
        calls.append(len(histories))
        return scores[np.arange(len(histories)) % (7 if len(calls) == 10 else 80)]

    run = rollout(world, own_slates_but_seven_at_the_tenth, 80, seed=2)
    assert calls[9] >= 7 and run.distinct_at_10 == 7 and run.summary()["distinct_at_10"] == 7
    assert rollout(world, lambda h, u: np.tile(scores[0], (len(h), 1)), 80, seed=2).distinct_at_10 == 1


def test_the_impression_log_records_every_slate_and_draws_the_logging_marginals():
    """Every slate of every session, clicked or not (a slate with no click does not end a RecSim session);
    the history before a slate is the session's earlier clicks; the marginals drawn while logging agree
    with the exact first-position probability (exp of the first conditional log-probability), and the
    logging policy as a target is estimated by the log's own mean return, exactly."""
    from seqrec.worlds.online import impression_log
    from seqrec.evaluation.ope_eval import Target, estimates, logging_propensities, target_propensities
    tiny = RecSimWorld(params(time_budget=20.0))
    log = impression_log(tiny, 30, seed=1, draws=400)
    assert set(log.session) == set(range(30)) and (log.click_pos < 0).any()
    for s in range(30):
        rows = np.flatnonzero(log.session == s)
        assert (log.step[rows] == np.arange(len(rows))).all()
        clicks = [log.slates[r, log.click_pos[r]] for r in rows if log.click_pos[r] >= 0]
        seen = [int((log.click_pos[rows[:j]] >= 0).sum()) for j in range(len(rows))]
        for j, r in enumerate(rows):
            assert log.histories[r][log.histories[r] >= 0].tolist() == clicks[:seen[j]]
    position, item = log.marginals
    assert position.shape == item.shape == log.slates.shape and (item >= position).all()
    exact = np.exp(log.log_cond_logp[:, 0])
    assert abs((position[:, 0] - exact).mean()) < 0.01 and np.corrcoef(position[:, 0], exact)[0, 1] > 0.95
    logging = logging_propensities(tiny, log, 0, np.random.default_rng(0))
    assert logging.position is position
    rows = estimates(log, target_propensities(Target("logging"), log, logging, 500), logging,
                     np.random.default_rng(1), resamples=20)
    for r in rows:
        assert r["estimate"] == pytest.approx(log.reward.sum() / 30), r["estimator"]
