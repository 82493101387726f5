"""Full-ranking evaluation against a naive loop: one query per event, scored and ranked on its own."""
import math

import numpy as np
import pytest
import torch

from helpers import pool_from_sessions
from model import SeqRecQ
from seqrec.running.errors import UserError
from seqrec.evaluation.offline import evaluate

# Long sessions (longer than the state) with repeated items, so masking the whole history differs
# from masking the state alone. Sessions 0-1 train, 2-3 valid, 4-5 test.
SESSIONS = [[1, 2, 3], [4, 5, 6, 7],
            [2, 9, 2, 4, 11, 12, 9, 3, 5], [8, 8, 1],
            [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], [7, 10, 12]]
PURCHASES = [[i % 3 == 2 for i in range(len(s))] for s in SESSIONS]


def naive_metrics(model, sessions, purchases, head, state_len, exclude_seen, k=10, top=4):
    """NDCG@k and HR@k of clicks and purchases, by a loop over events."""
    sums = {}
    for items, buys in zip(sessions, purchases):
        for j, (target, bought) in enumerate(zip(items, buys)):
            history = items[:j]
            state = ([0] * state_len + history)[-state_len:]
            seen = torch.tensor([history]) if exclude_seen and history else None   # mix picks candidates after masking
            with torch.no_grad():
                scores = model.scores(model.last_state(torch.tensor([state])), head, seen, beta=1.5, top=top)[0].tolist()
            if exclude_seen:
                for item in history:
                    scores[item] = -math.inf
            t = scores[target]
            higher = sum(s > t for s in scores)
            ties = sum(s == t and s != -math.inf for s in scores) - (t != -math.inf)
            ranks = range(higher + 1, higher + ties + 2)          # each equally likely
            kind = "purchase" if bought else "click"
            for name, value in ((f"{kind}/HR@{k}", np.mean([r <= k for r in ranks])),
                                (f"{kind}/NDCG@{k}", np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]))):
                sums.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in sums.items()}


def pool_and_model(tmp_path, seed: int):
    """The sessions' pool (2 train, 2 valid, 2 test) and a double-precision model with random heads
    (untrained heads would tie everywhere)."""
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, splits=(2, 2))
    torch.manual_seed(seed)
    model = SeqRecQ(pool.num_items, hidden=8, dropout=0.0, ssl_steps=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return pool, model


@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("head", ["ssl", "q", "mix"])
def test_evaluate_matches_a_loop_over_events(tmp_path, exclude_seen, head):
    pool, model = pool_and_model(tmp_path, seed=0)
    got = evaluate(model, pool, "test", state_len=3, ks=[10], batch_size=4,
                   exclude_seen=exclude_seen, progress=False, heads=(head,), beta=1.5, rerank_top=4)[head]
    expected = naive_metrics(model, SESSIONS[4:], PURCHASES[4:], head, 3, exclude_seen)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name



@pytest.mark.parametrize("exclude_seen", [False, True])
def test_heads_evaluated_together_equal_each_head_alone(tmp_path, exclude_seen):
    """mix reuses the ssl head's rank counts when both are evaluated: the figures must be mix's own."""
    pool, model = pool_and_model(tmp_path, seed=1)
    kw = dict(state_len=3, ks=[10], batch_size=4, exclude_seen=exclude_seen, progress=False, beta=1.5, rerank_top=4)
    together = evaluate(model, pool, "test", heads=("mix", "q", "ssl"), **kw)
    assert list(together) == ["mix", "q", "ssl"]
    for head in ("ssl", "q", "mix"):
        assert together[head] == evaluate(model, pool, "test", heads=(head,), **kw)[head], head

@pytest.mark.parametrize("exclude_seen", [False, True])
def test_mix_reranking_more_items_than_the_catalogue_matches_the_loop(tmp_path, exclude_seen):
    """eval.rerank_top beyond the live items (12 items, 40 candidates) once gave NaN scores, which the
    ranking then put first: HR = NDCG = 1."""
    pool, model = pool_and_model(tmp_path, seed=0)
    got = evaluate(model, pool, "test", state_len=3, ks=[10], batch_size=4, exclude_seen=exclude_seen,
                   progress=False, heads=("mix",), beta=1.5, rerank_top=40)["mix"]
    expected = naive_metrics(model, SESSIONS[4:], PURCHASES[4:], "mix", 3, exclude_seen, top=40)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    assert got["click/HR@10"] < 1.0


@pytest.mark.parametrize("head", ["ssl", "q", "mix"])
def test_a_head_with_nan_scores_gets_no_metric(tmp_path, head):
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, splits=(2, 2))
    model = SeqRecQ(pool.num_items, hidden=8, dropout=0.0, ssl_steps=2)
    with torch.no_grad():
        model.encoder.embed.weight[3] = math.nan                     # one item's embedding: its sessions' states
    with pytest.raises(UserError, match=f"the {head} head's scores on the test split are NaN"):
        evaluate(model, pool, "test", state_len=3, ks=[10], batch_size=4, exclude_seen=False, progress=False,
                 heads=(head,), beta=1.5, rerank_top=4)


def test_histories_hold_every_earlier_item_of_the_session(tmp_path):
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, splits=(2, 2))
    events = pool.events("test")[[0, 3, 11, 12]]
    np.testing.assert_array_equal(pool.histories(events), [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [3, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])


def test_the_selection_score_is_higher_for_the_better_checkpoint():
    from seqrec.evaluation.offline import selection_score
    valid = {"ssl": {"purchase/NDCG@10": 0.25}, "q": {"purchase/NDCG@10": 0.1},
             "value": {"rmse": 0.3, "bias": -0.1}}
    assert selection_score(valid, "q", "purchase/NDCG@10") == 0.1
    assert selection_score(valid, "ssl", "value/rmse") == -0.3                # lower RMSE, higher score
    with pytest.raises(UserError, match="eval.select_metric value/rmse is undefined"):
        selection_score({**valid, "value": {"rmse": math.nan}}, "ssl", "value/rmse")


def test_a_validation_sample_is_seeded_sorted_and_ranks_each_query_as_the_whole_split_does(tmp_path):
    from seqrec.evaluation.offline import query_events, rank_queries
    events = np.arange(100, 130)
    picked = query_events(events, 7, seed=3)
    assert len(picked) == 7 and len(set(picked)) == 7 and set(picked) <= set(events)
    assert list(picked) == sorted(picked) and np.array_equal(picked, query_events(events, 7, seed=3))
    assert not np.array_equal(picked, query_events(events, 7, seed=4))
    assert np.array_equal(query_events(events, 0, 3), events) and np.array_equal(query_events(events, 30, 3), events)
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, splits=(2, 2))
    torch.manual_seed(0)
    net = SeqRecQ(13, hidden=8, dropout=0.0, ssl_steps=1).eval()
    whole_events, whole, _ = rank_queries(net, pool, "valid", 0, 4, False, heads=("ssl",), progress=False)
    some_events, some, _ = rank_queries(net, pool, "valid", 0, 4, False, heads=("ssl",), progress=False, sample=5, seed=1)
    assert sorted(some_events) == sorted(query_events(pool.events("valid"), 5, 1))
    rank = {int(e): (int(h), int(t)) for e, h, t in zip(whole_events, *whole["ssl"])}
    assert [rank[int(e)] for e in some_events] == [(int(h), int(t)) for h, t in zip(*some["ssl"])]
