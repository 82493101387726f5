"""Online evaluation: rollouts are reproducible, model policies map ids right, exploration explores."""
import numpy as np
import torch

from helpers import simulator
from seqrec.worlds.online import ModelPolicy, oracle_policy, random_policy, rollout

SIM = simulator(num_items=40, num_categories=4, max_session_len=15)


def test_same_seed_same_users_and_outcome():
    a = rollout(SIM, random_policy(40, seed=1), 200, seed=3, record=True)
    b = rollout(SIM, random_policy(40, seed=1), 200, seed=3, record=True)
    np.testing.assert_array_equal(a.returns, b.returns)
    assert a.log.equals(b.log)
    s = a.summary()
    assert s["sessions"] == 200 and 0 < s["ctr"] <= 1 and s["length"] == a.clicks.mean()
    np.testing.assert_allclose(a.returns, 0.2 * (a.clicks - a.purchases) + 1.0 * a.purchases)
    assert len(a.log) == a.clicks.sum()


def test_oracle_beats_random():
    oracle = rollout(SIM, oracle_policy(SIM), 1000, seed=0).summary()
    rand = rollout(SIM, random_policy(40), 1000, seed=0).summary()
    assert oracle["return"] - oracle["return_ci95"] > rand["return"] + rand["return_ci95"]


class FixedModel:
    """Scores pool items 1, 2, 3 as 1, 2, 3 and remembers the state it was given."""

    def eval(self):
        return self

    def last_state(self, state):
        self.state = state
        return torch.zeros(len(state), 1)

    def scores(self, h, head, seen=None, beta=0.0, top=1):
        return torch.tensor([[-np.inf, 1.0, 2.0, 3.0]]).expand(len(h), -1)


def test_model_policy_maps_simulator_and_pool_ids():
    """Pool item i has original (simulator) id pool_ids[i-1]; unknown simulator items get -inf."""
    pool_ids = np.array(["7", "3", "12"])                   # pool items 1, 2, 3 = simulator items 7, 3, 12
    model = FixedModel()
    policy = ModelPolicy(model, pool_ids, num_items=40, state_len=3, head="ssl")
    histories = np.array([[-1, -1, 12, 5, 7]])             # 5 is unknown to the pool -> padding
    scores = policy(histories, None)
    np.testing.assert_array_equal(model.state.numpy(), [[3, 0, 1]])
    assert scores[0, 7] == 1.0 and scores[0, 3] == 2.0 and scores[0, 12] == 3.0
    assert np.isneginf(np.delete(scores[0], [3, 7, 12])).all()


def test_exploration_shows_random_slates():
    fixed_ranking = lambda histories, users: np.tile(np.arange(40, 0, -1.0), (len(histories), 1))  # items 0..9
    greedy = rollout(SIM, fixed_ranking, 300, seed=0, record=True)
    explored = rollout(SIM, fixed_ranking, 300, seed=0, explore=1.0, record=True)
    assert greedy.log["item_id"].max() < 10
    assert explored.log["item_id"].nunique() > 20


def test_recorded_rollouts_hold_each_clicks_slate_and_its_epsilon_greedy_probability():
    import math
    fixed_ranking = lambda histories, users: np.tile(np.arange(40, 0, -1.0), (len(histories), 1))  # greedy: items 0..9
    log = rollout(SIM, fixed_ranking, 300, seed=1, explore=0.3, record=True).log
    shown = log[[f"shown_{j}" for j in range(10)]].to_numpy()
    assert (shown == log["item_id"].to_numpy()[:, None]).any(1).all()
    greedy = (np.sort(shown, 1) == np.arange(10)).all(1)
    log_uniform = -math.log(math.comb(40, 10))
    np.testing.assert_allclose(log["slate_logp"][greedy], math.log(0.7 + 0.3 * math.exp(log_uniform)))
    np.testing.assert_allclose(log["slate_logp"][~greedy], math.log(0.3) + log_uniform)
    assert greedy.any() and (~greedy).any()
