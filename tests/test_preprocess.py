"""Ordering, iterative filtering, id remapping, splitting and the pool layout."""
import numpy as np
import pandas as pd
import pytest

from seqrec.running.config import load_config
from seqrec.running.errors import UserError
from seqrec.data.preprocess import filter_mask, prepare, split_sessions


def events(rows):
    """rows: (session, item, timestamp[, purchase])"""
    rows = [r + (False,) * (4 - len(r)) for r in rows]
    df = pd.DataFrame(rows, columns=["session", "item", "timestamp", "purchase"])
    df["reward"] = np.where(df["purchase"], 1.0, 0.2).astype(np.float32)
    df["timestamp"] = df["timestamp"].astype(float)
    return df


def prep(df, *overrides):
    data = load_config(overrides=["data.min_item_count=1", "data.min_session_len=1", "data.split=[1.0, 0.0, 0.0]",
                                  *overrides]).data.to_dict()
    return prepare(df, data)


def sessions_of(p):
    """{original session id: [original item ids in pool order]}"""
    return {sid: list(p.item_ids[p.items[p.offsets[s]:p.offsets[s + 1]] - 1]) for s, sid in enumerate(p.session_ids)}


def test_orders_by_session_then_time_stably():
    df = events([("b", 1, 5), ("a", 2, 9), ("a", 3, 1), ("a", 4, 1)])
    p = prep(df)
    assert list(p.session_ids) == ["a", "b"]
    assert sessions_of(p) == {"a": [3, 4, 2], "b": [1]}  # a: t=1 (3 then 4, file order), t=9; then b


def test_filtering_is_iterative():
    # min_item_count 2, min_session_len 2. x occurs once -> A shrinks to [y] and goes, C is [z] alone
    # and goes; then B and D keep y twice and z twice: a fixed point.
    df = events([("A", "x", 1), ("A", "y", 2), ("B", "y", 1), ("B", "z", 2), ("C", "z", 1),
                 ("D", "y", 1), ("D", "z", 2)])
    p = prep(df, "data.min_item_count=2", "data.min_session_len=2")
    assert sessions_of(p) == {"B": ["y", "z"], "D": ["y", "z"]}
    assert list(p.item_ids) == ["y", "z"]
    # Without D the cascade empties everything.
    with pytest.raises(UserError, match="no events left"):
        prep(df[df["session"] != "D"], "data.min_item_count=2", "data.min_session_len=2")


def test_filter_mask_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    sessions, items = rng.integers(0, 60, 2000), rng.zipf(1.5, 2000) % 300
    keep = filter_mask(sessions, items, min_item_count=4, min_session_len=5)
    alive = list(range(2000))
    while True:   # the definition, one rule at a time, with Python counters
        counts = {}
        for e in alive:
            counts[items[e]] = counts.get(items[e], 0) + 1
        after_items = [e for e in alive if counts[items[e]] >= 4]
        lengths = {}
        for e in after_items:
            lengths[sessions[e]] = lengths.get(sessions[e], 0) + 1
        after = [e for e in after_items if lengths[sessions[e]] >= 5]
        if after == alive:
            break
        alive = after
    assert np.flatnonzero(keep).tolist() == alive and 0 < len(alive) < 2000


def test_item_ids_round_trip():
    originals = ["9", "apple", "9", "42", "zz", "apple"]
    df = events([(f"s{i}", o, i) for i, o in enumerate(originals)])
    p = prep(df)
    assert sorted(p.items.tolist()) == sorted([2, 3, 2, 1, 4, 3])  # 1..N in sorted-id order: 42, 9, apple, zz
    assert list(p.item_ids) == ["42", "9", "apple", "zz"]
    back = {sid: items for sid, items in sessions_of(p).items()}
    assert [back[f"s{i}"][0] for i in range(6)] == originals


def test_sample_keeps_whole_sessions():
    df = events([(f"s{s}", i, i) for s in range(50) for i in range(4)])
    p = prep(df, "data.max_sessions=10")
    assert len(p.session_ids) == 10 and len(p.items) == 40
    assert p.session_ids.tolist() == prep(df, "data.max_sessions=10").session_ids.tolist()   # seeded


def test_random_split_is_seeded_and_covers_all():
    codes = np.repeat(np.arange(100), 3)
    times = np.arange(300, dtype=float)
    a = split_sessions(codes, times, [0.8, 0.1, 0.1], "random", seed=1)
    b = split_sessions(codes, times, [0.8, 0.1, 0.1], "random", seed=1)
    c = split_sessions(codes, times, [0.8, 0.1, 0.1], "random", seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert np.bincount(a).tolist() == [80, 10, 10]


def test_temporal_split_puts_latest_sessions_in_test():
    codes = np.array([0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9])
    times = np.array([50, 95, 10, 20, 21, 99, 30, 40, 60, 70, 80, 90], dtype=float)
    split = split_sessions(codes, times, [0.8, 0.1, 0.1], "temporal", seed=0)
    last = np.array([95, 10, 21, 99, 30, 40, 60, 70, 80, 90])
    assert last[split == 0].max() < last[split == 1].min() <= last[split == 2].min()
    assert split[3] == 2 and split[0] == 1


def test_too_few_sessions_for_the_split_is_a_user_error():
    with pytest.raises(UserError, match="too few"):
        split_sessions(np.array([0, 0, 1]), np.zeros(3), [0.8, 0.1, 0.1], "random", 0)


def test_prepare_lays_out_sessions_by_split_and_time():
    data = load_config(overrides=["data.min_item_count=1", "data.min_session_len=1",
                                  "data.split=[0.5, 0.25, 0.25]"]).data.to_dict()
    rng = np.random.default_rng(0)
    rows = [(f"s{s}", int(rng.integers(0, 20)), float(rng.integers(0, 1000)), bool(rng.random() < 0.2))
            for s in range(8) for _ in range(int(rng.integers(1, 6)))]
    df = events(rows).sample(frac=1, random_state=0)     # shuffled input
    p = prepare(df, data)
    assert len(p.items) == len(df) and p.purchase.sum() == df["purchase"].sum()
    assert p.split_sessions == {"train": [0, 4], "valid": [4, 6], "test": [6, 8]}
    for sid, got in sessions_of(p).items():
        mine = df[df["session"] == sid].sort_values("timestamp", kind="stable")   # ties: input order
        assert got == mine["item"].tolist()


def test_prepare_rejects_data_empty_after_filtering():
    data = load_config(overrides=["data.min_session_len=10"]).data.to_dict()
    with pytest.raises(UserError, match="no events left after filtering"):
        prepare(events([("a", 1, 1), ("a", 2, 2)]), data)


def test_sessions_left_out_of_the_sample_are_said_to_be_so():
    """A session the filters keep but data.max_sessions does not draw is filtered as 'sample', one the
    filters drop as 'short' or 'rare' (the sample once overwrote the filters' mask and called them rare)."""
    rows = [(f"s{s:02d}", k % 2, s * 10 + k) for s in range(40) for k in range(3)] + [("lone", 9, 1)]
    p = prep(events(rows), "data.max_sessions=30", "data.min_session_len=2")
    why = dict(zip(p.filtered_ids, p.filtered_why))
    assert why.pop("lone") == "short"
    assert len(why) == 10 and set(why.values()) == {"sample"}
    assert not set(why) & set(p.session_ids)
