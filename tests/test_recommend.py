"""Recommendations: a batch of histories ranks as each history alone; every session to a CSV; the
Python Recommender; NaN scores refused; batches bounded in memory."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import pool_from_sessions
from model import SeqRecQ
from seqrec.running.errors import UserError
from seqrec.running.learner import Learner
from seqrec.running.config import load_config
from seqrec.running.recommend import (
    MAX_ATTENTION,
    MAX_CELLS,
    Recommender,
    length_batches,
    recommend_all,
    top_k,
    top_k_batch,
)
from seqrec.running.runs import save_checkpoint

SESSIONS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [2, 7], [1, 8, 2, 8, 1, 8, 2], [9], [4, 4, 4, 4, 4, 4],
            [6, 2, 6], [5, 3, 5, 8, 9, 7, 9]]


def network(encoder: str, num_items: int = 9) -> SeqRecQ:
    torch.manual_seed(0)
    settings = {**load_config().model.to_dict(), "encoder": encoder, "hidden": 8, "dropout": 0.0, "ssl_steps": 1,
                "max_len": 4}
    net = SeqRecQ.from_config(settings, num_items).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)                  # untrained heads would tie everywhere
    return net


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
@pytest.mark.parametrize("state_len", [0, 3])
@pytest.mark.parametrize("head,exclude_seen", [("ssl", True), ("q", False), ("mix", True)])
def test_a_batch_ranks_each_history_as_it_would_alone(encoder, state_len, head, exclude_seen):
    net = network(encoder)
    histories = [np.array(s) for s in SESSIONS] + [np.zeros(0, dtype=np.int64)]
    items, scores = top_k_batch(net, histories, state_len, 5, head, exclude_seen, beta=2.0, rerank_top=4)
    assert items.shape == (len(histories), 5)
    for row, h in enumerate(histories):
        alone_items, alone_scores = top_k(net, h, state_len, 5, head, exclude_seen, 2.0, 4)
        live = np.isfinite(scores[row])
        np.testing.assert_array_equal(items[row][live], alone_items)
        np.testing.assert_allclose(scores[row][live], alone_scores, rtol=1e-5, atol=1e-5)   # float32 sums in another order
        if exclude_seen:
            assert not set(alone_items) & set(h.tolist())


def test_a_history_that_has_seen_almost_everything_gets_fewer_items():
    net = network("gru")
    items, scores = top_k_batch(net, [np.arange(1, 8), np.array([1])], 0, 5, "ssl", True)
    assert np.isfinite(scores[0]).sum() == 2 and set(items[0][:2]) == {8, 9}
    assert np.isfinite(scores[1]).all()


def test_nan_scores_are_refused_not_ranked_first():
    net = network("gru")
    with torch.no_grad():
        net.ssl.items.bias[3] = math.nan
    with pytest.raises(UserError, match="the ssl head's scores are NaN"):
        top_k(net, np.array([1, 2]), 0, 5, "ssl", False)


def test_length_batches_keep_rows_times_width_under_the_budget():
    lengths = np.array([3, 5, 2, 4000, 6, 1, 1, 9000, 2])
    parts = list(length_batches(lengths, 0, max_rows=4))
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(len(lengths)))
    for p in parts:
        rows, width = p.stop - p.start, int(lengths[p].max())
        assert rows <= 4 and (rows == 1 or (rows * width <= MAX_CELLS and rows * width ** 2 <= MAX_ATTENTION))
    assert [(p.start, p.stop) for p in parts][:2] == [(0, 3), (3, 4)]       # 4 x 4000^2 is over the budget
    assert all(p.stop - p.start == 4 for p in list(length_batches(lengths, 10, max_rows=4))[:2])  # windows: width 10


@pytest.fixture
def saved_run(tmp_path):
    """A pool of SESSIONS (original ids i1..i9, sessions s0..s6) and an untrained-but-random checkpoint."""
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, splits=(4, 1))
    cfg = load_config(overrides=[f"pool.dir={tmp_path / 'pool'}", "model.hidden=8", "model.dropout=0.0",
                                 "eval.head=ssl", "recommend.exclude_seen=true"])
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg)
    with torch.no_grad():
        for p in learner.net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_checkpoint(tmp_path / "best.pt", learner.state(cfg, pool, {"value": 0.0, "epoch": 0}))
    return pool, tmp_path / "best.pt"


def assert_scores_close(actual, expected) -> None:
    """Batched and one-at-a-time products sum in another order: a score near 0 moved by ~4e-7 (AVX-512)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_recommend_all_writes_every_sessions_list_as_top_k_gives_it(saved_run, tmp_path):
    pool, ckpt_path = saved_run
    rec = Recommender.load(ckpt_path, SeqRecQ)
    out = tmp_path / "recs.csv"
    rows = recommend_all(rec.model, pool, out, "all", 0, 3, "ssl", True)
    table = pd.read_csv(out, dtype={"session_id": str, "item_id": str})
    assert list(table.columns) == ["session_id", "rank", "item_id", "score"] and rows == len(table)
    assert list(table["session_id"].unique()) == [f"s{s}" for s in range(len(SESSIONS))]
    for s, session in enumerate(SESSIONS):
        mine = table[table["session_id"] == f"s{s}"]
        items, scores = top_k(rec.model, np.array(session), 0, 3, "ssl", True)
        assert list(mine["rank"]) == list(range(1, len(items) + 1))
        assert list(mine["item_id"]) == [f"i{i}" for i in items]
        assert_scores_close(mine["score"], scores)
    test_only = tmp_path / "test.csv"
    recommend_all(rec.model, pool, test_only, "test", 0, 3, "ssl", True)
    assert set(pd.read_csv(test_only, dtype=str)["session_id"]) == {"s5", "s6"}
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_recommender_ranks_histories_of_original_ids(saved_run):
    _, ckpt_path = saved_run
    rec = Recommender.load(ckpt_path, SeqRecQ, overrides=["recommend.exclude_seen=false"])
    assert not rec.exclude_seen and rec.head == "ssl" and rec.state_len == 0
    table = rec.top_k([["i3", "i1", "i4"], [], ["i9"]], k=4)
    assert list(table.columns) == ["query", "rank", "item_id", "score"] and len(table) == 12
    for q, history in enumerate([[3, 1, 4], [], [9]]):
        items, scores = top_k(rec.model, np.array(history, dtype=np.int64), 0, 4, "ssl", False)
        mine = table[table["query"] == q]
        assert list(mine["item_id"]) == [f"i{i}" for i in items]
        assert_scores_close(mine["score"], scores)
    with pytest.raises(UserError, match="unknown item 'i99' in history 1"):
        rec.top_k([["i1"], ["i99"]])
    with pytest.raises(UserError, match="model.encoder is 'sasrec' here"):
        Recommender.load(ckpt_path, SeqRecQ, overrides=["model.encoder=sasrec"])
