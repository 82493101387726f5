"""Pool windows, padding and end flags against a hand-built pool and a naive per-event loop."""
import json

import numpy as np
import pytest

from helpers import pool_from_sessions, tiny_config
from replay_buffer import ensure_pool, pool_fingerprint, stale_reason

SESSIONS = [[5, 6, 7, 8], [9], [3, 4]]
PURCHASES = [[False, False, True, False], [True], [False, False]]


@pytest.fixture
def pool(tmp_path):
    return pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES)


def test_hand_built_windows(pool):
    w = pool.windows(np.array([1, 3, 4, 5]), state_len=3, horizon=2)
    # event 1 = item 6 of session 0: two items of padding, then 5; actions 6, 7 (7 is a purchase)
    np.testing.assert_array_equal(w.state[0], [0, 0, 5])
    np.testing.assert_array_equal(w.actions[0], [6, 7])
    np.testing.assert_allclose(w.rewards[0], [0.2, 1.0])
    np.testing.assert_array_equal(w.dones[0], [False, False])
    np.testing.assert_array_equal(w.purchase[0], [False, True])
    # event 3 = item 8, the session's last: done at step 0, step 1 is padding outside the session
    np.testing.assert_array_equal(w.state[1], [5, 6, 7])
    np.testing.assert_array_equal(w.actions[1], [8, 0])
    np.testing.assert_allclose(w.rewards[1], [0.2, 0.0])
    np.testing.assert_array_equal(w.dones[1], [True, False])
    np.testing.assert_array_equal(w.valid[1], [True, False])
    # event 4 = the one-item session: nothing of session 0 leaks into its state or actions
    np.testing.assert_array_equal(w.state[2], [0, 0, 0])
    np.testing.assert_array_equal(w.actions[2], [9, 0])
    np.testing.assert_allclose(w.rewards[2], [1.0, 0.0])
    np.testing.assert_array_equal(w.dones[2], [True, False])
    # event 5 = first item of the last session: session 1's item 9 must not appear in its state
    np.testing.assert_array_equal(w.state[3], [0, 0, 0])
    np.testing.assert_array_equal(w.actions[3], [3, 4])
    np.testing.assert_array_equal(w.dones[3], [False, True])


def naive_window(sessions, purchases, event, L, T, rc=0.2, rp=1.0):
    """One event's window, by walking the sessions in Python."""
    flat = [(s, j) for s, items in enumerate(sessions) for j in range(len(items))]
    s, j = flat[event]
    items, buys = sessions[s], purchases[s]
    state = [items[j - L + i] if j - L + i >= 0 else 0 for i in range(L)]
    actions, rewards, dones, valid = [], [], [], []
    for k in range(T):
        inside = j + k < len(items)
        actions.append(items[j + k] if inside else 0)
        rewards.append((rp if buys[j + k] else rc) if inside else 0.0)
        dones.append(j + k == len(items) - 1)
        valid.append(inside)
    after = items[j + T] if j + T < len(items) else 0
    return state, actions, rewards, dones, valid, after


@pytest.mark.parametrize("L,T", [(1, 1), (3, 2), (10, 3), (4, 7)])
def test_vectorized_windows_match_naive_loop(tmp_path, L, T):
    rng = np.random.default_rng(L * 10 + T)
    sessions = [list(rng.integers(1, 30, size=rng.integers(1, 9))) for _ in range(40)]
    purchases = [list(rng.random(len(s)) < 0.2) for s in sessions]
    pool = pool_from_sessions(tmp_path / "p", sessions, purchases)
    events = rng.permutation(sum(map(len, sessions)))
    w = pool.windows(events, L, T)
    for row, e in enumerate(events):
        state, actions, rewards, dones, valid, after = naive_window(sessions, purchases, e, L, T)
        np.testing.assert_array_equal(w.state[row], state)
        np.testing.assert_array_equal(w.actions[row], actions)
        np.testing.assert_allclose(w.rewards[row], rewards, rtol=1e-6)
        np.testing.assert_array_equal(w.dones[row], dones)
        np.testing.assert_array_equal(w.valid[row], valid)
        assert w.after[row] == after
    assert not w.truncated.any()                                 # a session split: the data is whole


def test_storage_is_flat(pool):
    """On disk: per event one item, one reward, one flag; nothing per window position."""
    e = pool.meta["num_events"]
    arrays = {name: np.load(pool.dir / f"{name}.npy") for name in ("items", "rewards", "purchase")}
    assert all(a.shape == (e,) for a in arrays.values())
    assert np.load(pool.dir / "offsets.npy").shape == (len(SESSIONS) + 1,)


def test_split_events_are_contiguous(tmp_path):
    pool = pool_from_sessions(tmp_path / "p", [[1, 2], [3], [4, 5, 6], [7]], splits=(2, 1))
    np.testing.assert_array_equal(pool.events("train"), [0, 1, 2])
    np.testing.assert_array_equal(pool.events("valid"), [3, 4, 5])
    np.testing.assert_array_equal(pool.events("test"), [6])


def test_pool_is_rebuilt_only_when_its_inputs_change(tmp_path):
    cfg = tiny_config(tmp_path)
    pool = ensure_pool(cfg)
    assert json.loads((pool.dir / "meta.json").read_text())["config_hash"] == pool_fingerprint(cfg)
    # Windows are cut at read time: state_len and horizon do not make the pool stale.
    assert stale_reason(tiny_config(tmp_path, "pool.state_len=4", "pool.horizon=1", "model.ssl_steps=1")) is None
    changed = tiny_config(tmp_path, "data.reward_purchase=2.0")
    assert stale_reason(changed) is not None
    rebuilt = ensure_pool(changed)
    assert stale_reason(changed) is None
    assert rebuilt.meta["num_events"] == pool.meta["num_events"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pool")], "temporary folders left behind"


def test_leave_one_out_splits_and_training_windows(tmp_path):
    sessions = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    pool = pool_from_sessions(tmp_path / "p", sessions, split_mode="loo")
    # test = each session's last event, valid = the one before; a 2-event session has neither.
    np.testing.assert_array_equal(pool.events("test"), [4, 9])
    np.testing.assert_array_equal(pool.events("valid"), [3, 8])
    np.testing.assert_array_equal(pool.events("train"), [0, 1, 2, 5, 6, 7])
    # Training windows end where training data ends: no validation or test item is ever an action.
    w = pool.windows(pool.events("train"), state_len=2, horizon=3, training=True)
    assert not np.isin(w.actions, [4, 5, 9, 10]).any()
    np.testing.assert_array_equal(w.actions[2], [3, 0, 0])       # event 2: its session's training end
    # Its last training event is not the session's end (held-out events follow): truncated, not done.
    np.testing.assert_array_equal(w.dones[2], [False, False, False])
    np.testing.assert_array_equal(w.truncated[2], [True, False, False])
    np.testing.assert_array_equal(w.after, [0] * 6)             # what follows a 3-step window is never trainable here
    one = pool.windows(pool.events("train"), state_len=2, horizon=1, training=True)
    np.testing.assert_array_equal(one.after, [2, 3, 0, 7, 0, 0])
    # A session too short to hold anything out ends where its data ends.
    np.testing.assert_array_equal(w.dones[4], [True, False, False])
    assert not w.truncated[4].any()
    # Queries see the whole history before them, held-out events included.
    q = pool.windows(pool.events("test"), state_len=4, horizon=1)
    np.testing.assert_array_equal(q.state[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(q.actions[:, 0], [5, 10])
    assert pool.meta["splits"]["test"] == {"sessions": 2, "events": 2, "purchases": 0}


def test_append_train_sessions_keeps_validation_and_test(tmp_path):
    from replay_buffer import append_train_sessions
    pool = pool_from_sessions(tmp_path / "p", [[1, 2], [3], [4, 5, 6], [7]], splits=(2, 1))
    before = {s: pool.windows(pool.events(s), 3, 2) for s in ("valid", "test")}
    # The vocabulary stays 1..7.
    grown = append_train_sessions(pool, items=np.array([5, 6, 5]), rewards=np.array([0.2, 1.0, 0.2]),
                                  purchase=np.array([False, True, False]), lengths=np.array([2, 1]),
                                  session_ids=np.array(["n1", "n2"]), folder=tmp_path / "grown")
    assert grown.meta["splits"]["train"]["events"] == 6 and grown.meta["num_sessions"] == 6
    np.testing.assert_array_equal(np.asarray(grown.items)[grown.events("train")], [1, 2, 3, 5, 6, 5])
    w = grown.windows(np.array([3]), 2, 2, training=True)
    np.testing.assert_array_equal(w.actions[0], [5, 6])
    np.testing.assert_array_equal(w.dones[0], [False, True])
    for split, old in before.items():
        new = grown.windows(grown.events(split), 3, 2)
        np.testing.assert_array_equal(new.state, old.state)
        np.testing.assert_array_equal(new.actions, old.actions)
    assert list(grown.session_ids) == ["s0", "s1", "n1", "n2", "s2", "s3"]


# ------------------------------------------------------------------------------------------------
# Exposures: the slates each event was clicked in
# ------------------------------------------------------------------------------------------------
SLATE_SESSIONS = [[1, 2, 3], [4, 5], [2, 6, 1, 3]]
SLATES = [[[1, 4, 5], [2, 6], [3, 1, 2, 6]], [[4], [5, 2, 1]], [[2, 3], [6, 1, 5], [1, 2, 3], [3, 4]]]


@pytest.mark.parametrize("L,T", [(2, 1), (1, 3)])
def test_windows_and_spans_read_each_steps_slate(tmp_path, L, T):
    pool = pool_from_sessions(tmp_path / "p", SLATE_SESSIONS, shown=SLATES)
    flat = [slate for per in SLATES for slate in per]
    events = np.arange(len(flat))
    w = pool.windows(events, L, T, training=True, shown=True)
    assert w.shown.shape == (len(flat), T, 4)
    session = pool.session_of(events)
    for e in events:
        for k in range(T):
            inside = e + k < pool.offsets[session[e] + 1]
            expected = flat[e + k] if inside else []
            assert list(w.shown[e, k]) == expected + [0] * (4 - len(expected)), (e, k)
    spans = pool.spans(np.array([2, 0, -1]), np.array([1, 0, 0]), 3, training=True, shown=True)
    assert [list(s[s > 0]) for s in spans.shown[0]] == [[6, 1, 5], [1, 2, 3], [3, 4]]
    assert [list(s[s > 0]) for s in spans.shown[1]] == [[1, 4, 5], [2, 6], [3, 1, 2, 6]]
    assert not spans.shown[2].any()                                    # an idle lane


def test_a_pool_without_exposures_says_so(tmp_path):
    from seqrec.running.errors import UserError
    pool = pool_from_sessions(tmp_path / "p", SLATE_SESSIONS)
    assert pool.shown_offsets is None and pool.windows(np.arange(3), 2, 1).shown is None
    with pytest.raises(UserError, match="has no exposures"):
        pool.windows(np.arange(3), 2, 1, shown=True)


def test_append_train_sessions_splices_exposures(tmp_path):
    from replay_buffer import append_train_sessions
    pool = pool_from_sessions(tmp_path / "p", SLATE_SESSIONS, splits=(1, 1), shown=SLATES)
    grown = append_train_sessions(pool, items=np.array([5, 6]), rewards=np.array([0.2, 0.2]),
                                  purchase=np.array([False, False]), lengths=np.array([2]),
                                  session_ids=np.array(["n1"]), folder=tmp_path / "grown",
                                  shown=np.array([[5, 1, 0], [6, 0, 0]]), slate_logp=np.array([-2.0, -3.0]))
    expected = SLATES[0] + [[5, 1], [6]] + SLATES[1] + SLATES[2]
    offsets = np.asarray(grown.shown_offsets)
    assert [list(grown.shown_items[a:b]) for a, b in zip(offsets[:-1], offsets[1:])] == expected
    np.testing.assert_allclose(np.asarray(grown.slate_logp)[3:5], [-2.0, -3.0])


def test_simulated_pool_keeps_the_logged_slates_in_pool_ids(tmp_path):
    """The pool's exposures are the log's shown_* columns, mapped to pool ids; filtered items are left out."""
    from seqrec.data.loaders import load_events
    from seqrec.worlds.simulator import Simulator, SimParams
    cfg = tiny_config(tmp_path, "data.min_item_count=5")
    pool = ensure_pool(cfg)
    log = Simulator(SimParams.from_dict(cfg.sim.to_dict()), 0.2, 1.0).generate_log()
    assert len(load_events(cfg.data.to_dict(), cfg.sim.to_dict())) == len(log)
    first = pool.offsets[0]
    sid = int(pool.session_ids[0])
    raw = log[log["session_id"] == sid]
    to_pool = {int(orig): i + 1 for i, orig in enumerate(pool.item_ids)}
    offsets = np.asarray(pool.shown_offsets)
    for j, row in enumerate(raw.itertuples()):
        slate = [to_pool[int(getattr(row, f"shown_{c}"))] for c in range(cfg.sim.slate_size)
                 if int(getattr(row, f"shown_{c}")) in to_pool]
        assert list(pool.shown_items[offsets[first + j]:offsets[first + j + 1]]) == slate
        assert pool.slate_logp[first + j] == pytest.approx(row.slate_logp, rel=1e-5)
    assert len(pool.shown_items) < cfg.sim.slate_size * len(pool.items)     # some shown items were filtered out
