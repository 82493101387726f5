"""The encoder's one-pass window states, the heads' sizes and losses, the TD pieces of the training step,
SA2C's advantage weighting and the value reranking."""
import math

import pytest
import torch

from model import SeqRecQ, compute_losses, rerank
from seqrec.nn.losses import bootstrap_values, expectile_loss, negative_losses, sampled_items
from seqrec.data.batches import Batch, candidate_items, candidate_log_inclusion
from seqrec.running.config import load_config
from seqrec.running.errors import UserError
from seqrec.evaluation.metrics import rank_of_targets
from seqrec.nn.streamed import rank_of_targets_linear
from ssl_heads import MultiStepHeads, multi_step_loss


def test_one_pass_window_states_equal_encoding_each_state_apart():
    torch.manual_seed(0)
    model = SeqRecQ(num_items=30, hidden=8, dropout=0.0, ssl_steps=2).eval()
    L, T = 4, 3
    state = torch.randint(0, 31, (5, L))
    actions = torch.randint(1, 31, (5, T))
    together = model.window_states(state, actions)                   # [B, T+1, H]
    window = torch.cat([state, actions], 1)
    for k in range(T + 1):
        apart = model.last_state(window[:, :L + k])                   # the naive way: encode s_{t+k} alone
        torch.testing.assert_close(together[:, k], apart)


def test_q_of_taken_actions_equals_gathering_all_items():
    torch.manual_seed(2)
    model = SeqRecQ(num_items=25, hidden=8, dropout=0.0, ssl_steps=1)
    states = torch.randn(4, 3, 8)
    actions = torch.randint(0, 26, (4, 3))
    expected = model.q_values(states).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(model.q_of(states, actions), expected)


def test_ssl_head_parameters_do_not_grow_with_items_times_steps():
    def size(k):
        return sum(p.numel() for p in MultiStepHeads(hidden=16, num_items=1000, steps=k).parameters())
    assert size(5) - size(1) == 4 * (16 * 16 + 16)


def test_ssl_heads_start_as_the_same_next_item_head():
    heads = MultiStepHeads(hidden=8, num_items=20, steps=3)
    logits = heads(torch.randn(4, 8))
    torch.testing.assert_close(logits[:, 0], logits[:, 2])
    with torch.no_grad():
        heads.transforms.add_(torch.randn(3, 8, 8))          # trained-looking: the steps now differ
        heads.shifts.add_(torch.randn(3, 8))
    x = torch.randn(4, 8)
    for step in range(3):                                    # what ranking streams = the head's logits
        torch.testing.assert_close(heads.items(heads.step_features(x, step)), heads(x)[:, step])


def test_multi_step_loss_matches_a_loop():
    """The heads' streamed per-sample CE, masked and weighted per step, against -log_softmax of the
    full logits, one sample at a time."""
    torch.manual_seed(1)
    heads = MultiStepHeads(hidden=5, num_items=10, steps=3)
    with torch.no_grad():
        heads.transforms.add_(torch.randn(3, 5, 5))
    state = torch.randn(6, 5)
    targets = torch.randint(1, 11, (6, 3))
    valid = torch.rand(6, 3) < 0.7
    weights = torch.tensor([1.0, 0.5, 0.25])
    logits = heads(state)                                                   # [B, K, N+1]
    expected = 0.0
    for k in range(3):
        terms = [-torch.log_softmax(logits[b, k], 0)[targets[b, k]] for b in range(6) if valid[b, k]]
        expected += weights[k] * (sum(terms) / len(terms) if terms else 0.0)
    got = multi_step_loss(heads.cross_entropy(state, targets.where(valid, 0)), valid, weights)
    torch.testing.assert_close(got, expected)


def random_q(net: SeqRecQ) -> SeqRecQ:
    """A Q head with random values (the shared head starts at Q = 0 everywhere)."""
    with torch.no_grad():
        head = [net.q_head.weight, net.q_head.bias] if net.q_head is not None else \
            [net.ssl.items.weight, net.q_bias, net.q_transform]
        for p in head + (list(net.q_level.parameters()) if net.q_level is not None else []):
            p.normal_()
    return net


@pytest.mark.parametrize("q_head", ["shared", "linear", "dueling"])
@pytest.mark.parametrize("with_candidates", [False, True])
def test_state_values_double_and_max(with_candidates, q_head):
    """Double: the target net's Q at the online net's argmax; max: the target's max. Padding never wins."""
    torch.manual_seed(0)
    online, target = (random_q(SeqRecQ(num_items=10, hidden=8, dropout=0.0, ssl_steps=1, q_head=q_head)) for _ in range(2))
    with torch.no_grad():
        online.q_layer(torch.zeros(1, 8))[2][0] = 100.0                  # padding column: must be skipped
    states, target_states = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    cand = torch.tensor([2, 5, 7, 9]) if with_candidates else torch.arange(1, 11)
    online_q, target_q = online.q_values(states)[..., cand], target.q_values(target_states)[..., cand]
    expected_double = target_q.gather(-1, online_q.argmax(-1, keepdim=True)).squeeze(-1)
    given = cand if with_candidates else None
    unused = torch.zeros(4, 3, dtype=torch.long)
    torch.testing.assert_close(bootstrap_values(online, target, states, target_states, unused, "double", given),
                               expected_double)
    torch.testing.assert_close(bootstrap_values(online, target, states, target_states, unused, "swap", given),
                               expected_double)
    torch.testing.assert_close(bootstrap_values(online, target, states, target_states, unused, "max", given),
                               target_q.max(-1).values)


def test_state_values_logged():
    """Logged (SARSA): the target's Q of the logged next action; 0 past the end; after a truncation
    (next action held out) the target's Q averaged under the next-item head's softmax, by hand."""
    torch.manual_seed(1)
    online, target = (random_q(SeqRecQ(num_items=6, hidden=4, dropout=0.0, ssl_steps=1)) for _ in range(2))
    states, target_states = torch.randn(3, 4), torch.randn(3, 4)
    logged = torch.tensor([5, 0, 0])
    cut = torch.tensor([False, False, True])
    got = bootstrap_values(online, target, states, target_states, logged, "logged", None, cut)
    q = target.q_values(target_states)
    pi = [torch.softmax(online.ssl(states[2:3])[0, 0, 1:], 0)[i] for i in range(6)]
    expected = torch.stack([q[0, 5], torch.tensor(0.0), sum(pi[i] * q[2, i + 1] for i in range(6))])
    torch.testing.assert_close(got, expected)


def test_the_dueling_head_is_the_shared_head_plus_a_level_of_the_state():
    torch.manual_seed(3)
    duel = random_q(SeqRecQ(num_items=7, hidden=4, dropout=0.0, ssl_steps=1, q_head="dueling"))
    states = torch.randn(5, 4)
    shared = (states @ duel.q_transform + duel.q_shift) @ duel.ssl.items.weight.T + duel.q_bias        # A [5, 8]
    level = states @ duel.q_level.weight[0] + duel.q_level.bias                                       # V [5]
    torch.testing.assert_close(duel.q_values(states), shared + level[:, None])
    actions = torch.tensor([1, 3, 7, 2, 2])
    torch.testing.assert_close(duel.q_of(states, actions), (shared + level[:, None]).gather(1, actions[:, None])[:, 0])
    assert (duel.greedy_items(states) == shared[:, 1:].argmax(1) + 1).all()       # V does not change a ranking
    higher, ties = rank_of_targets_linear(*duel.score_layer(states, "q"), actions)
    dense_higher, dense_ties = rank_of_targets(duel.scores(states, "q"), actions)
    assert (higher == dense_higher).all() and (ties == dense_ties).all()


def test_negatives_move_the_dueling_advantage_only_and_logged_transitions_the_level_too():
    cfg = load_config(overrides=["train.q_negatives=3", "model.q_head=dueling"])
    torch.manual_seed(4)
    net = random_q(SeqRecQ(num_items=6, hidden=4, dropout=0.0, ssl_steps=1, q_head="dueling"))
    states, taken = torch.randn(3, 4), torch.tensor([1, 2, 3])
    drawn, values = torch.tensor([[4, 5, 6], [1, 3, 6], [2, 4, 5]]), torch.tensor([0.3, 0.1, 0.5])
    td, cql = negative_losses(net, states, taken, net.q_of(states, taken).detach(), values, drawn, cfg.train,
                              td_fn=torch.nn.functional.mse_loss)
    td.sum().backward()
    assert net.q_level.weight.grad is None or not net.q_level.weight.grad.any()
    assert net.q_bias.grad[[4, 5, 6]].abs().sum() > 0 and net.q_transform.grad.abs().sum() > 0
    net.zero_grad()
    net.q_of(states, taken).sum().backward()                                   # the logged TD's Q: both parts
    assert net.q_level.weight.grad.abs().sum() > 0 and net.q_bias.grad[[1, 2, 3]].abs().sum() > 0


def test_negatives_pull_towards_gamma_v_and_cql_matches_its_definition():
    cfg = load_config(overrides=["train.q_negatives=4", "train.reward_negative=-0.5", "train.cql_weight=0.1"])
    torch.manual_seed(2)
    net = random_q(SeqRecQ(num_items=5, hidden=4, dropout=0.0, ssl_steps=1))
    states, taken, values = torch.randn(3, 4), torch.tensor([1, 2, 3]), torch.tensor([0.4, -0.2, 1.0])
    drawn = torch.tensor([[1, 4, 5, 2], [3, 3, 2, 1], [5, 4, 3, 3]])          # the taken item among them too
    td, cql = negative_losses(net, states, taken, net.q_of(states, taken), values, drawn, cfg.train,
                              td_fn=torch.nn.functional.mse_loss)
    q = net.q_values(states)
    for i in range(3):
        others = [int(a) for a in drawn[i] if a != taken[i]]
        target = -0.5 + cfg.train.gamma * values[i]
        expected_td = sum((q[i, a] - target) ** 2 for a in others) / max(len(others), 1)
        expected_cql = torch.logsumexp(torch.stack([q[i, taken[i]]] + [q[i, a] for a in others]), 0) - q[i, taken[i]]
        torch.testing.assert_close(td[i], torch.as_tensor(expected_td, dtype=td.dtype))
        torch.testing.assert_close(cql[i], expected_cql)


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_training_step_is_finite_and_trains_every_part(encoder):
    cfg = load_config(overrides=["pool.horizon=3", "model.ssl_steps=3", "train.lam=0.8", f"model.encoder={encoder}",
                                 "model.hidden=8", "model.dropout=0.1"])
    torch.manual_seed(0)
    model = SeqRecQ.from_config(cfg.model.to_dict(), 12)
    target = SeqRecQ.from_config(cfg.model.to_dict(), 12).eval()
    # Windows that end early: padding after the session's end must not produce NaN.
    batch = Batch(history=torch.tensor([[0, 0, 3], [4, 5, 6]]), items=torch.tensor([[7, 0, 0], [8, 9, 10]]),
                  rewards=torch.tensor([[1.0, 0, 0], [0.2, 0.2, 1.0]]),
                  dones=torch.tensor([[True, False, False], [False, False, False]]),
                  valid=torch.tensor([[True, False, False], [True, True, True]]))
    loss, stats, _ = compute_losses(model, target, batch, cfg.train)
    loss.backward()
    assert torch.isfinite(loss) and stats["td"] > 0 and stats["ce"] > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.q_transform.grad.abs().sum() > 0 and model.ssl.transforms.grad.abs().sum() > 0


def test_td_target_of_a_one_step_window_is_r_plus_gamma_v():
    """With T=1 and lambda irrelevant, the loss's TD part is (Q(s,a) - (r + gamma (1-d) V(s')))^2."""
    cfg = load_config(overrides=["pool.horizon=1", "model.ssl_steps=1", "train.bootstrap=max", "train.alpha=1.0"])
    torch.manual_seed(0)
    model = SeqRecQ(num_items=5, hidden=4, dropout=0.0, ssl_steps=1)
    batch = Batch(history=torch.tensor([[1, 2]]), items=torch.tensor([[3]]), rewards=torch.tensor([[0.2]]),
                  dones=torch.tensor([[False]]), valid=torch.tensor([[True]]))
    _, stats, _ = compute_losses(model, model, batch, cfg.train)
    h = model.window_states(batch.history, batch.items)
    q = model.q_values(h)
    v = q[0, 1, 1:].max()
    expected = (q[0, 0, 3] - (0.2 + cfg.train.gamma * v)) ** 2
    assert stats["td"] == pytest.approx(expected.item(), rel=1e-5)


def test_expectile_loss_by_hand():
    got = expectile_loss(torch.tensor([-2.0, 1.0, 0.0]), 0.7)
    torch.testing.assert_close(got, torch.tensor([0.3 * 4.0, 0.7 * 1.0, 0.0]))
    diff = torch.randn(50)
    torch.testing.assert_close(expectile_loss(diff, 0.5), 0.5 * diff ** 2)    # tau 0.5: the mean's loss


def test_iql_targets_bootstrap_the_value_head_which_learns_an_expectile_of_the_logged_q():
    """bootstrap expectile, T = 1: TD (Q(s,a) - (r + gamma V(s')))^2 with V the online value head, and
    v_loss the expectile loss of the target net's Q(s, a) - V(s), each by hand."""
    cfg = load_config(overrides=["pool.horizon=1", "model.ssl_steps=1", "train.bootstrap=expectile", "model.v_head=true",
                                 "train.expectile=0.8", "train.q_negatives=0", "train.alpha=1.0"])
    torch.manual_seed(0)
    model = random_q(SeqRecQ.from_config({**cfg.model.to_dict(), "hidden": 4, "dropout": 0.0}, 5))
    target = random_q(SeqRecQ.from_config({**cfg.model.to_dict(), "hidden": 4, "dropout": 0.0}, 5))
    with torch.no_grad():
        model.v_head.weight.normal_()
    batch = Batch(history=torch.tensor([[1, 2], [0, 4]]), items=torch.tensor([[3], [5]]),
                  rewards=torch.tensor([[0.2], [1.0]]), dones=torch.tensor([[False], [True]]),
                  valid=torch.tensor([[True], [True]]))
    loss, stats, _ = compute_losses(model, target, batch, cfg.train)
    h, h_target = model.window_states(batch.history, batch.items), target.window_states(batch.history, batch.items)
    q = model.q_of(h[:, 0], batch.items[:, 0])
    returns = torch.tensor([0.2, 1.0]) + cfg.train.gamma * torch.tensor([1.0, 0.0]) * model.state_value(h[:, 1])
    assert stats["td"] == pytest.approx(((q - returns) ** 2).mean().item(), rel=1e-5)
    diff = target.q_of(h_target[:, 0], batch.items[:, 0]) - model.state_value(h[:, 0])
    assert stats["v_loss"] == pytest.approx(expectile_loss(diff, 0.8).mean().item(), rel=1e-5)
    loss.backward()
    assert model.v_head.weight.grad.abs().sum() > 0


def test_iql_with_negatives_logs_every_term():
    """With q_negatives on (every q-* recipe), the stats keep IQL's v_loss beside the negatives' terms."""
    cfg = load_config(overrides=["pool.horizon=1", "model.ssl_steps=1", "train.bootstrap=expectile", "model.v_head=true",
                                 "train.q_negatives=3", "train.cql_weight=0.5"])
    torch.manual_seed(0)
    model = random_q(SeqRecQ.from_config({**cfg.model.to_dict(), "hidden": 4, "dropout": 0.0}, 5))
    batch = Batch(history=torch.tensor([[1, 2], [0, 4]]), items=torch.tensor([[3], [5]]),
                  rewards=torch.tensor([[0.2], [1.0]]), dones=torch.tensor([[False], [True]]),
                  valid=torch.tensor([[True], [True]]))
    _, stats, _ = compute_losses(model, model, batch, cfg.train)
    assert {"loss", "ce", "td", "q_mean", "v_loss", "td_negative", "cql"} <= set(stats)
    assert all(math.isfinite(v) for v in stats.values())


def test_iql_needs_the_value_head_and_the_value_head_needs_iql():
    with pytest.raises(UserError, match="set both or neither"):
        load_config(overrides=["train.bootstrap=expectile"])
    with pytest.raises(UserError, match="set both or neither"):
        load_config(overrides=["model.v_head=true"])


def test_candidate_scores_equal_the_full_scores_at_those_items():
    torch.manual_seed(3)
    model = SeqRecQ(num_items=30, hidden=8, dropout=0.0, ssl_steps=2).eval()
    state, actions = torch.randint(0, 31, (4, 5)), torch.randint(1, 31, (4, 2))
    cand = torch.tensor([2, 5, 7, 19, 30])
    states = model.window_states(state, actions)
    torch.testing.assert_close(model.ssl(states[:, 0], cand), model.ssl(states[:, 0])[..., cand])
    torch.testing.assert_close(model.q_values(states, cand), model.q_values(states)[..., cand])


def test_candidate_items_cover_the_batch_and_are_reproducible():
    actions = torch.tensor([[3, 0, 9], [9, 4, 0]])
    cand = candidate_items(actions, negatives=6, num_items=50, seed=1, step=7)
    assert {3, 4, 9} <= set(cand.tolist()) and 0 not in cand.tolist()
    assert cand.tolist() == sorted(set(cand.tolist()))
    torch.testing.assert_close(cand, candidate_items(actions, 6, 50, seed=1, step=7))
    assert not torch.equal(cand, candidate_items(actions, 6, 50, seed=1, step=8))


@pytest.mark.parametrize("corrected", [False, True])
def test_sampled_loss_is_the_softmax_over_the_candidates(corrected):
    """With negatives, CE is -log softmax of the target among the candidates, each logit less its
    log inclusion probability when given (logQ correction), checked by a loop."""
    cfg = load_config(overrides=["pool.horizon=2", "model.ssl_steps=2", "train.negatives=4", "train.bootstrap=max",
                                 "train.alpha=0.0"])
    torch.manual_seed(0)
    model = SeqRecQ(num_items=40, hidden=6, dropout=0.0, ssl_steps=2)
    batch = Batch(history=torch.tensor([[0, 5, 6], [7, 8, 9]]), items=torch.tensor([[11, 12], [13, 0]]),
                  rewards=torch.tensor([[0.2, 0.2], [1.0, 0.0]]), dones=torch.tensor([[False, False], [True, False]]),
                  valid=torch.tensor([[True, True], [True, False]]))
    cand = candidate_items(batch.items, 4, 40, cfg.train.seed, step=3)
    log_q = -torch.rand(41) * 3 if corrected else torch.zeros(41)
    _, stats, _ = compute_losses(model, model, batch, cfg.train, step=3, log_inclusion=log_q if corrected else None)
    logits = model.ssl(model.window_states(batch.history, batch.items)[:, 0]) - log_q   # [B, K, N+1]
    weights = cfg.train.ssl_weights
    expected = 0.0
    for k in range(2):
        terms = [-torch.log_softmax(logits[b, k, cand], 0)[cand.tolist().index(batch.items[b, k].item())]
                 for b in range(2) if batch.valid[b, k]]
        expected += weights[k] * sum(terms) / len(terms)
    assert stats["ce"] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_auxiliary_steps_against_uniform_draws():
    """train.ssl_negatives: step 0's CE over all items, each later step's -log softmax of its target among
    itself and the step's shared uniform draws, a draw equal to the target left out; checked by a loop."""
    cfg = load_config(overrides=["pool.horizon=3", "model.ssl_steps=3", "train.ssl_negatives=6", "train.alpha=0.0"])
    torch.manual_seed(0)
    model = SeqRecQ(num_items=12, hidden=6, dropout=0.0, ssl_steps=3)
    with torch.no_grad():
        model.ssl.transforms.add_(torch.randn(3, 6, 6))                 # the steps differ
    batch = Batch(history=torch.tensor([[0, 5, 6], [7, 8, 9]]), items=torch.tensor([[11, 12, 4], [3, 10, 0]]),
                  rewards=torch.full((2, 3), 0.2), dones=torch.tensor([[False, False, False], [False, True, False]]),
                  valid=torch.tensor([[True, True, True], [True, True, False]]))
    drawn = sampled_items((6,), 12, cfg.train.seed, 3, "cpu", stream=2).tolist()
    assert set(drawn) & set(batch.items[:, 1:].flatten().tolist())     # some draw is a target: the mask is tested
    _, stats, _ = compute_losses(model, model, batch, cfg.train, step=3)
    logits = model.ssl(model.window_states(batch.history, batch.items)[:, 0])               # [B, K, N+1]
    expected = 0.0
    for k in range(3):
        terms = []
        for b in range(2):
            if not batch.valid[b, k]:
                continue
            target = batch.items[b, k].item()
            among = list(range(13)) if k == 0 else [target] + [d for d in drawn if d != target]
            terms.append(-torch.log_softmax(logits[b, k, among], 0)[among.index(target)])
        expected += cfg.train.ssl_weights[k] * sum(terms) / len(terms)
    assert stats["ce"] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_candidate_inclusion_probabilities_match_sampling():
    """P(item in a step's candidates), by formula, against drawing batches at the training frequencies."""
    counts = torch.tensor([0, 50, 20, 10, 5, 5, 3, 3, 2, 1, 1]).numpy()     # index 0: padding
    freq = torch.tensor(counts / counts.sum(), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    trials, hits = 4000, torch.zeros(11)
    for step in range(trials):
        actions = torch.multinomial(freq, 6, replacement=True, generator=g).view(2, 3)
        hits[candidate_items(actions, negatives=2, num_items=10, seed=5, step=step)] += 1
    expected = candidate_log_inclusion(counts, actions_per_step=6, negatives=2).exp()
    torch.testing.assert_close(hits[1:] / trials, expected[1:], atol=0.025, rtol=0)


def test_alpha_zero_skips_the_q_head_target_net_and_argmax():
    """With no TD term nothing of the Q side runs: the loss is the self-supervised CE alone."""
    cfg = load_config(overrides=["pool.horizon=3", "model.ssl_steps=2", "train.alpha=0.0"])
    torch.manual_seed(0)
    model = SeqRecQ(num_items=12, hidden=8, dropout=0.0, ssl_steps=2)

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the target net's {name} was used with alpha = 0")
    model.greedy_items = lambda *a, **k: pytest.fail("argmax with alpha = 0")
    batch = Batch(history=torch.tensor([[0, 1, 2], [3, 4, 5]]), items=torch.tensor([[6, 7, 0], [8, 9, 10]]),
                  rewards=torch.tensor([[0.2, 0.2, 0], [1.0, 0.2, 0.2]]),
                  dones=torch.tensor([[False, True, False], [False, False, False]]),
                  valid=torch.tensor([[True, True, False], [True, True, True]]))
    loss, stats, _ = compute_losses(model, Untouchable(), batch, cfg.train)
    loss.backward()
    assert stats["td"] == 0.0 and loss.item() == pytest.approx(stats["ce"])
    assert model.q_transform.grad is None and model.q_bias.grad is None
    del model.greedy_items
    with_td, _, _ = compute_losses(model, model, batch, load_config(overrides=["pool.horizon=3", "model.ssl_steps=2",
                                                                              "train.alpha=1.0"]).train)
    assert with_td.item() > loss.item()                 # the same CE plus a positive TD term


def sasrec(num_items=30, **overrides):
    model = {**load_config().model.to_dict(), "encoder": "sasrec", "hidden": 8, "dropout": 0.0, "ssl_steps": 2,
             **overrides}
    return SeqRecQ.from_config(model, num_items).eval()


def test_sasrec_window_states_equal_encoding_each_state_apart():
    torch.manual_seed(0)
    model = sasrec()
    L, T = 4, 3
    state = torch.tensor([[0, 0, 0, 0], [0, 0, 5, 6], [1, 2, 3, 4], [0, 7, 8, 9]])
    actions = torch.randint(1, 31, (4, T))
    together = model.window_states(state, actions)
    window = torch.cat([state, actions], 1)
    assert torch.isfinite(together).all()                            # an all-padding state too
    for k in range(T + 1):
        torch.testing.assert_close(together[:, k], model.last_state(window[:, :L + k]))


@pytest.mark.parametrize("train", [False, True])
def test_sasrec_blocks_equal_torch_transformer_encoder(train):
    """The encoder reads nn.TransformerEncoder's weights itself (to reuse keys and values between chunks):
    its output equals the module's own, padding and the max_len window masked as an additive mask, in
    eval mode and (dropout 0) in train mode, where the module takes its slow path."""
    torch.manual_seed(2)
    enc = sasrec(max_len=3, layers=2).encoder.train(train)
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 1], [9, 8, 7, 6, 5, 4, 3, 2]])
    index = torch.arange(8) - torch.tensor([[2], [0]])
    x = enc.norm(enc.embed(items) + enc.positions(index.clamp(min=0) % enc.max_len))
    i = torch.arange(8)
    window = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < enc.max_len)
    allowed = (window[None] & (items != 0)[:, None, :]) | torch.eye(8, dtype=torch.bool)[None]
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")).repeat_interleave(enc.heads, 0)
    torch.testing.assert_close(enc(items), enc.blocks(x, mask=mask))
    index = index.expand_as(items)
    torch.testing.assert_close(enc._encode(items, index, enc._allowed(index, index, items == 0))[0], enc.blocks(x, mask=mask))


def test_sasrec_ignores_padding_and_sees_at_most_max_len_items():
    torch.manual_seed(1)
    model = sasrec(max_len=3, layers=1)
    torch.testing.assert_close(model.last_state(torch.tensor([[5, 6, 7]])), model.last_state(torch.tensor([[0, 0, 5, 6, 7]])))
    # One block with max_len 3: the last state sees the last 3 items, and only them.
    last = model.last_state(torch.tensor([[1, 2, 9, 5, 6, 7]]))
    torch.testing.assert_close(last, model.last_state(torch.tensor([[3, 4, 8, 5, 6, 7]])))
    assert not torch.allclose(last, model.last_state(torch.tensor([[1, 2, 9, 4, 6, 7]])))


def test_sa2c_weighs_each_steps_cross_entropy_by_the_advantage_of_that_step():
    """After the warm-up, CE(a_{t+k} | s_t) is multiplied by A(s_{t+k}, a_{t+k}) = Q(s_{t+k}, a_{t+k}) - mean Q
    over a_{t+k} and the draws, clipped to [0, clip]; before it the loss is the plain one. By hand."""
    over = ["pool.horizon=3", "model.ssl_steps=3", "train.q_negatives=4", "train.advantage_warmup=5",
            "train.advantage_clip=0.7", "train.alpha=1.0"]
    plain, sa2c = (load_config(overrides=over + [f"train.advantage_weighting={on}"]).train for on in (False, True))
    torch.manual_seed(3)
    net = random_q(SeqRecQ(num_items=9, hidden=4, dropout=0.0, ssl_steps=3))
    target = random_q(SeqRecQ(num_items=9, hidden=4, dropout=0.0, ssl_steps=3))
    batch = Batch(history=torch.tensor([[0, 2], [3, 4], [5, 1]]), items=torch.tensor([[7, 0, 0], [8, 9, 1], [2, 6, 3]]),
                  rewards=torch.tensor([[1.0, 0, 0], [0.2, 0.2, 1.0], [0.2, 1.0, 0.2]]),
                  dones=torch.tensor([[True, False, False], [False] * 3, [False] * 3]),
                  valid=torch.tensor([[True, False, False], [True] * 3, [True] * 3]))
    warming = compute_losses(net, target, batch, sa2c, step=4)[0]
    torch.testing.assert_close(warming, compute_losses(net, target, batch, plain, step=4)[0])
    _, stats, _ = compute_losses(net, target, batch, sa2c, step=5)
    with torch.no_grad():
        expected = sa2c_by_hand(net, batch, sa2c)
    assert stats["ce"] == pytest.approx(expected, rel=1e-5)


def sa2c_by_hand(net, batch, t) -> float:
    states = net.window_states(batch.history, batch.items)
    drawn = iter(sampled_items((7, 4), 9, t.seed, 5, "cpu", stream=1))      # valid steps in row-major order
    adv = torch.zeros(3, 3)
    for b in range(3):
        for j in range(3):
            if batch.valid[b, j]:
                q = net.q_values(states[b, j])
                both = [q[batch.items[b, j]]] + [q[a] for a in next(drawn)]
                adv[b, j] = (both[0] - sum(both) / 5).clamp(0.0, 0.7)
    logits = net.ssl(states[:, 0])                                                # [B, K, N+1]
    expected = 0.0
    for k, w in enumerate(t.ssl_weights[:3]):
        terms = [adv[b, k] * -torch.log_softmax(logits[b, k], 0)[batch.items[b, k]] for b in range(3) if batch.valid[b, k]]
        expected += w * sum(terms) / len(terms)
    assert 0 < float(adv.max()) <= 0.7 and float(adv[batch.valid].min()) == 0.0      # both clips bite here
    return float(expected)


def naive_rerank_order(log_pi, q, beta, top):
    """Items in the order the reranking should give, by sorting: the top items of log_pi by
    log_pi + beta (q - their mean q), then the rest by log_pi; -inf items left out."""
    items = sorted((i for i in range(len(log_pi)) if log_pi[i] > -math.inf), key=lambda i: -log_pi[i])
    cand, rest = items[:top], items[top:]
    mean = sum(q[i] for i in cand) / len(cand)
    return sorted(cand, key=lambda i: -(log_pi[i] + beta * (q[i] - mean))) + rest


@pytest.mark.parametrize("beta,top", [(0.0, 4), (0.5, 4), (3.0, 4), (2.0, 1), (2.0, 20)])
def test_rerank_orders_items_as_a_sort_would(beta, top):
    torch.manual_seed(4)
    log_pi, q = torch.log_softmax(torch.randn(5, 12), -1), torch.randn(5, 12)
    log_pi[:, 0] = -math.inf                                            # padding
    log_pi[1, 3:9] = -math.inf                                          # seen items, some would be candidates
    got = rerank(log_pi, q, beta, top)
    for b in range(5):
        live = [i for i in torch.argsort(got[b], descending=True).tolist() if got[b, i] > -math.inf]
        assert live == naive_rerank_order(log_pi[b].tolist(), q[b].tolist(), beta, top), b


@pytest.mark.parametrize("top", [7, 12, 50])
def test_rerank_stays_finite_when_its_candidates_reach_past_the_live_items(top):
    """Q of padding is -inf (scores(state, "q") masks it): a candidate list reaching it (top beyond the
    unmasked items, or beyond the catalogue) once made every mixed score NaN (-inf * 0)."""
    torch.manual_seed(4)
    log_pi, q = torch.log_softmax(torch.randn(3, 12), -1), torch.randn(3, 12)
    log_pi[:, 0], q[:, 0] = -math.inf, -math.inf
    log_pi[1, 2:9] = -math.inf                                          # seen: 4 live items left
    got = rerank(log_pi, q, 2.0, top)
    assert not torch.isnan(got).any()
    assert (torch.isfinite(got) == torch.isfinite(log_pi)).all()
    for b in range(3):
        live = [i for i in torch.argsort(got[b], descending=True).tolist() if got[b, i] > -math.inf]
        assert live == naive_rerank_order(log_pi[b].tolist(), q[b].tolist(), 2.0, top), b


def test_mix_scores_mask_seen_items_before_picking_candidates():
    torch.manual_seed(5)
    net = random_q(SeqRecQ(num_items=8, hidden=4, dropout=0.0, ssl_steps=1))
    state, seen = torch.randn(1, 4), torch.tensor([[2, 5, 0]])
    got = net.scores(state, "mix", seen, beta=1.0, top=3)
    log_pi = torch.log_softmax(net.scores(state, "ssl", seen), -1)
    torch.testing.assert_close(got, rerank(log_pi, net.scores(state, "q"), 1.0, 3))
    assert torch.isinf(got[0, [0, 2, 5]]).all() and torch.isfinite(got[0, [1, 3, 4, 6, 7, 8]]).all()


def test_negatives_from_exposures_are_the_slates_other_items_and_uniform_draws_fill_short_ones():
    """td_negative with logged slates equals negative_losses over the slate's items, where a slate
    shorter than the widest is padded with the uniform draws of that step."""
    cfg = load_config(overrides=["pool.horizon=1", "model.ssl_steps=1", "train.q_negatives=3", "train.bootstrap=logged",
                                 "train.negatives_from=exposures"])
    torch.manual_seed(6)
    net, target = (random_q(SeqRecQ(num_items=9, hidden=4, dropout=0.0, ssl_steps=1)) for _ in range(2))
    shown = torch.tensor([[[4, 7, 2]], [[5, 0, 0]], [[9, 1, 0]]])                  # [B, T, m]: slates of 3, 1, 2
    batch = Batch(history=torch.tensor([[0, 2], [3, 4], [5, 1]]), items=torch.tensor([[7], [5], [1]]),
                  rewards=torch.tensor([[0.2], [1.0], [0.2]]), dones=torch.tensor([[False], [True], [False]]),
                  valid=torch.ones(3, 1, dtype=torch.bool), after=torch.tensor([3, 0, 8]), shown=shown)
    _, stats, _ = compute_losses(net, target, batch, cfg.train, step=11)
    uniform = sampled_items((3, 3), 9, cfg.train.seed, 11, "cpu")
    drawn = torch.where(shown[:, 0] > 0, shown[:, 0], uniform)
    with torch.no_grad():
        states = net.window_states(batch.history, batch.items)[:, 0]
        target_states = target.window_states(batch.history, batch.items)[:, 0]
        values = target.q_of(target_states, batch.items[:, 0])              # logged: V(s) = Q_target(s, a)
        td, _ = negative_losses(net, states, batch.items[:, 0], net.q_of(states, batch.items[:, 0]), values, drawn,
                                cfg.train, torch.nn.functional.mse_loss)
    assert stats["td_negative"] == pytest.approx(float(td.sum() / 3), rel=1e-5)


def test_slate_softmax_is_the_choice_among_the_items_shown():
    """train.ssl_softmax=shown: step 0's CE is -log softmax over the slate's items (padding out) of the
    click, by hand; a click outside its slate (nothing recorded) keeps the CE over all items."""
    over = ["pool.horizon=2", "model.ssl_steps=2", "train.alpha=0.0"]
    items_cfg, shown_cfg = (load_config(overrides=over + [f"train.ssl_softmax={m}"]).train for m in ("items", "shown"))
    torch.manual_seed(7)
    net = SeqRecQ(num_items=9, hidden=4, dropout=0.0, ssl_steps=2)
    with torch.no_grad():
        net.ssl.items.weight.normal_()
    shown = torch.tensor([[[4, 7, 2], [1, 0, 0]], [[5, 6, 0], [2, 3, 0]], [[0, 0, 0], [9, 0, 0]]])   # [B, T, m]
    batch = Batch(history=torch.tensor([[0, 2], [3, 4], [5, 1]]), items=torch.tensor([[7, 1], [5, 2], [1, 9]]),
                  rewards=torch.zeros(3, 2), dones=torch.zeros(3, 2, dtype=torch.bool),
                  valid=torch.ones(3, 2, dtype=torch.bool), shown=shown)
    _, plain, _ = compute_losses(net, net, batch, items_cfg)
    _, chosen, _ = compute_losses(net, net, batch, shown_cfg)
    with torch.no_grad():
        logits = net.ssl(net.window_states(batch.history, batch.items)[:, 0])                       # [B, K, N+1]
        full = [-torch.log_softmax(logits[b, k], 0)[batch.items[b, k]] for b in range(3) for k in range(2)]
        in_slate = [-torch.log_softmax(logits[b, 0, [int(i) for i in shown[b, 0] if i > 0]], 0)[j]
                    for b, j in ((0, 1), (1, 0))]
    ws = items_cfg.ssl_weights
    expected_plain = ws[0] * sum(full[0::2]) / 3 + ws[1] * sum(full[1::2]) / 3
    expected_shown = ws[0] * (in_slate[0] + in_slate[1] + full[4]) / 3 + ws[1] * sum(full[1::2]) / 3
    assert plain["ce"] == pytest.approx(float(expected_plain), rel=1e-5)
    assert chosen["ce"] == pytest.approx(float(expected_shown), rel=1e-5)


def test_fast_dropout_keeps_each_element_with_probability_1_minus_p_and_passes_its_mask_to_the_gradient():
    from seqrec.nn.encoders import fast_dropout
    torch.manual_seed(0)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    out = fast_dropout(x, 0.1, training=True)
    kept = out != 0
    for lane in range(4):                    # every 16-bit quarter of the random words, the top one too
        assert abs(kept.flatten()[lane::4].float().mean().item() - 0.9) < 0.006         # 50,000 draws: s.e. 0.0013
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 2.0 / 0.9))
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    assert fast_dropout(x, 0.1, training=False) is x and fast_dropout(x, 0.0, training=True) is x
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.1, training=True), out)           # seeded like every other draw


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_tied_items_score_with_the_input_embeddings_and_survive_a_checkpoint(encoder):
    cfg = load_config(overrides=[f"model.encoder={encoder}", "model.tie_items=true", "model.hidden=8", "model.heads=2"])
    torch.manual_seed(0)
    model = SeqRecQ.from_config(cfg.model.to_dict(), num_items=20)
    untied = SeqRecQ.from_config({**cfg.model.to_dict(), "tie_items": False}, num_items=20)
    assert model.ssl.items.weight is model.encoder.embed.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == 21 * 8
    # a step on the item scores alone moves the input embeddings (one tensor, one update)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = model.encoder.embed.weight[5].clone()
    model.ssl(torch.randn(3, 8))[:, 0, 5].sum().backward()
    opt.step()
    assert not torch.equal(model.encoder.embed.weight[5], before)
    assert torch.equal(model.ssl.items.weight, model.encoder.embed.weight)
    # the checkpoint's state dict restores the tie and the scores
    ckpt = {"num_items": 20, "config": cfg.to_dict(), "model": model.state_dict()}
    loaded = SeqRecQ.from_checkpoint(ckpt, 20)
    assert loaded.ssl.items.weight is loaded.encoder.embed.weight
    x = torch.randint(1, 21, (4, 5))
    torch.testing.assert_close(loaded.ssl(loaded.last_state(x)), model.eval().ssl(model.last_state(x)))


@pytest.mark.parametrize("top,k", [(4, 3), (4, 9), (20, 5), (3, 30)])
@pytest.mark.parametrize("masked", [False, True])
def test_streamed_top_items_equal_the_top_of_the_full_scores(top, k, masked):
    """model.top_items (every head, mix reranking included) against topk of model.scores' [B, N+1] matrix."""
    torch.manual_seed(top + k)
    model = random_q(SeqRecQ(num_items=12, hidden=6, dropout=0.0, ssl_steps=1).double().eval())
    state = torch.randn(5, 6, dtype=torch.float64)
    seen = torch.tensor([[1, 2, 0], [12, 0, 0], [0, 0, 0], [3, 3, 4], [5, 6, 7]]) if masked else None
    for head in ("ssl", "q", "mix"):
        full = model.scores(state, head, seen, beta=1.5, top=top)
        values, items = model.top_items(state, head, k, seen, beta=1.5, top=top)
        expected_values, expected_items = full.topk(min(k, 12), 1)
        torch.testing.assert_close(values, expected_values, msg=head)
        live = torch.isfinite(expected_values)
        assert torch.equal(items[live], expected_items[live]), head


def test_reward_scale_enters_only_through_the_rewards():
    """reward_scale s on rewards r is the loss of rewards s r: the targets are scaled, nothing else."""
    cfg = load_config(overrides=["pool.horizon=3", "model.ssl_steps=2", "train.lam=0.8", "train.bootstrap=max",
                                 "model.hidden=8", "model.dropout=0.0"])
    torch.manual_seed(0)
    model = SeqRecQ.from_config(cfg.model.to_dict(), 12)

    def batch(scale):
        return Batch(history=torch.tensor([[0, 1, 3], [4, 5, 6]]), items=torch.tensor([[7, 2, 0], [8, 9, 10]]),
                     rewards=scale * torch.tensor([[4.0, 3.5, 0], [0.5, 2.0, 4.0]]),
                     dones=torch.tensor([[False, True, False], [False, False, False]]),
                     valid=torch.tensor([[True, True, False], [True, True, True]]))
    scaled, stats, _ = compute_losses(model, model, batch(1.0), cfg.train, reward_scale=0.25)
    plain, plain_stats, _ = compute_losses(model, model, batch(0.25), cfg.train)
    torch.testing.assert_close(scaled, plain)
    assert stats["td"] == pytest.approx(plain_stats["td"])
    unscaled = compute_losses(model, model, batch(1.0), cfg.train)[1]["td"]
    assert unscaled > 2 * stats["td"]
