"""The session path (pool.state_len = 0): lanes that read each session once, chunk by chunk.

Its states equal encoding each prefix apart; its losses equal the window path's where the two define
the same thing; its lambda-returns equal a loop; evaluation, recommendation and a resumed epoch agree."""
import copy

import numpy as np
import pytest
import torch

from helpers import pool_from_sessions, tiny_config
from model import SeqRecQ, compute_losses
from seqrec.data.batches import Batch, Chunk, lane_schedule
from seqrec.running.config import load_config
from seqrec.evaluation.offline import evaluate, session_query_states
from seqrec.running.learner import Learner, train_epoch
from seqrec.running.recommend import top_k
from td_lambda import sliding_lambda_returns
from test_td_lambda import naive_lambda_returns

SESSIONS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [2, 7], [1, 8, 2, 8, 1, 8, 2], [9], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4],
            [6, 2, 6], [5, 3, 5, 8, 9, 7, 9]]
PURCHASES = [[i % 3 == 0 for i in range(len(s))] for s in SESSIONS]
LONGEST = max(map(len, SESSIONS))


def network(encoder: str, **model) -> SeqRecQ:
    torch.manual_seed(0)
    settings = {**load_config().model.to_dict(), "encoder": encoder, "hidden": 8, "dropout": 0.0, "ssl_steps": 2,
                "max_len": 4, "layers": 1, **model}            # max_len 4 < sessions: the carried context matters
    net = SeqRecQ.from_config(settings, 9).eval()
    with torch.no_grad():
        net.q_transform.normal_(std=0.3)                       # the shared Q head starts at Q = 0: give it values
    return net


def read_in_chunks(net: SeqRecQ, sessions: list[list[int]], chunk: int) -> list[torch.Tensor]:
    """States s_0 .. s_n of each session from the encoder's read/carry, `chunk` items per call."""
    width = max(map(len, sessions))
    items = torch.tensor([s + [0] * (width - len(s)) for s in sessions])
    carry, parts = net.encoder.start(len(sessions)), []
    for c0 in range(0, width, chunk):
        states, carry = net.encoder.read(items[:, c0:c0 + chunk], carry, min(chunk, width - c0))
        parts.append(states[:, :-1])
    parts.append(states[:, -1:])
    together = torch.cat(parts, 1)
    return [together[i, :len(s) + 1] for i, s in enumerate(sessions)]


@pytest.mark.parametrize("encoder,layers", [("gru", 1), ("sasrec", 1), ("sasrec", 2)])
@pytest.mark.parametrize("chunk", [1, 3, LONGEST])
def test_session_states_equal_encoding_each_prefix_apart(encoder, layers, chunk):
    """With two blocks a state reaches past max_len through the earlier positions' states: reading in
    chunks is exact only because each block's keys and values are carried, not re-encoded."""
    net = network(encoder, layers=layers) if encoder == "sasrec" else network(encoder)
    with torch.no_grad():
        states = read_in_chunks(net, SESSIONS, chunk)
        for s, session in enumerate(SESSIONS):
            for p in range(len(session) + 1):                  # s_p: the state after the first p items
                prefix = torch.tensor([[0] * 3 + session[:p]])   # some left padding, which must not matter
                torch.testing.assert_close(states[s][p], net.last_state(prefix)[0])


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_left_padding_does_not_change_a_state(encoder):
    net = network(encoder)
    with torch.no_grad():
        short, padded = net.last_state(torch.tensor([[5, 6, 7]])), net.last_state(torch.tensor([[0, 0, 0, 5, 6, 7]]))
        torch.testing.assert_close(short, padded)
        torch.testing.assert_close(net.last_state(torch.tensor([[0]])), net.last_state(torch.tensor([[0, 0, 0]])))


def test_lane_schedule_reads_every_chunk_once_in_order_on_one_lane():
    lengths = np.array([5, 0, 9, 3, 1, 17, 2, 8])
    session, start = lane_schedule(lengths, lanes=3, chunk=4, seed=1, epoch=2)
    seen = {}
    for step, lane in zip(*np.nonzero(session >= 0)):
        seen.setdefault(session[step, lane], []).append((step, lane, start[step, lane]))
    assert sorted(seen) == [s for s in range(len(lengths)) if lengths[s] > 0]
    for s, visits in seen.items():
        steps, lanes, starts = zip(*visits)
        assert list(starts) == list(range(0, lengths[s], 4))            # every chunk once, in order
        assert len(set(lanes)) == 1 and list(steps) == list(range(steps[0], steps[0] + len(steps)))
    again = lane_schedule(lengths, lanes=3, chunk=4, seed=1, epoch=2)
    assert all((a == b).all() for a, b in zip(again, (session, start)))
    assert not np.array_equal(lane_schedule(lengths, 3, 4, seed=1, epoch=3)[0], session)


@pytest.mark.parametrize("horizon", [1, 2, 4])
@pytest.mark.parametrize("gamma,lam", [(0.5, 0.8), (0.9, 0.0), (1.0, 1.0)])
def test_sliding_lambda_returns_equal_a_loop_over_each_window(horizon, gamma, lam):
    g = torch.Generator().manual_seed(horizon)
    rewards = torch.rand(3, 9, generator=g, dtype=torch.float64)
    values = torch.randn(3, 9, generator=g, dtype=torch.float64)
    dones = torch.rand(3, 9, generator=g) < 0.2
    truncated = torch.rand(3, 9, generator=g) < 0.2
    got = sliding_lambda_returns(rewards, values, dones, gamma, lam, horizon, truncated)
    for j in range(9 - horizon + 1):
        window = slice(j, j + horizon)
        expected = naive_lambda_returns(rewards[:, window], values[:, window], dones[:, window], gamma, lam,
                                        truncated[:, window])[:, 0]
        torch.testing.assert_close(got[:, j], expected)


def one_chunk_of_everything(pool, net, target, horizon, shown=False):
    """The whole training split as one session-path step: a lane per session, a chunk per session."""
    lanes = pool.num_sessions
    carry = (net.encoder.start(lanes), target.encoder.start(lanes))
    spans = pool.spans(np.arange(lanes), np.zeros(lanes, dtype=np.int64), LONGEST + horizon - 1, training=True,
                       shown=shown)
    return Chunk.from_spans(spans, LONGEST, carry)


# Each event's logged slate: the clicked item among up to 3 others (some slates shorter than others).
SHOWN = [[[a] + [(a + d) % 9 + 1 for d in range(1, 1 + (i + j) % 4)] for j, a in enumerate(s)] for i, s in enumerate(SESSIONS)]


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
@pytest.mark.parametrize("split,bootstrap,negatives,sa2c,exposures", [
    ("random", "double", 0, False, False), ("loo", "double", 0, False, False), ("loo", "logged", 0, False, False),
    ("random", "logged", 3, False, False), ("loo", "max", 3, False, False), ("random", "double", 3, True, False),
    ("loo", "logged", 3, False, True)])
def test_losses_equal_the_window_paths_when_the_state_covers_every_session(tmp_path, encoder, split, bootstrap,
                                                                          negatives, sa2c, exposures):
    """At horizon 1 the two paths train the same terms: CE(a_p | s_p) and (Q(s_p, a_p) - r_p - gamma V(s_{p+1}))^2
    for every training event; with states as long as the longest session they are the same states.
    Leave-one-out truncates sessions before their held-out events; negatives add SNQN's and CQL's terms
    (uniform draws, or the logged slates, which also make the next-item CE a choice among them), SA2C
    weighs the CE by the advantage."""
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, split_mode=split, shown=SHOWN)
    net = network(encoder, ssl_steps=1)
    target = copy.deepcopy(net)
    with torch.no_grad():
        target.q_transform.mul_(0.5)                            # a target net that differs from the online one
    t = load_config(overrides=["train.alpha=1.0", "train.gamma=0.7", f"train.bootstrap={bootstrap}",
                               f"train.q_negatives={negatives}", f"train.cql_weight={0.1 if negatives else 0}",
                               f"train.advantage_weighting={sa2c}", "train.advantage_warmup=0",
                               f"train.negatives_from={'exposures' if exposures else 'uniform'}",
                               f"train.ssl_softmax={'shown' if exposures else 'items'}"]).train
    window = Batch.from_windows(pool.windows(pool.events("train"), LONGEST + 1, 1, training=True, shown=exposures))
    by_windows, stats_w, _ = compute_losses(net, target, window, t)
    grads_w = torch.autograd.grad(by_windows, list(net.parameters()))
    by_sessions, stats_s, _ = compute_losses(net, target, one_chunk_of_everything(pool, net, target, 1, exposures), t)
    grads_s = torch.autograd.grad(by_sessions, list(net.parameters()))
    assert stats_s["ce"] == pytest.approx(stats_w["ce"], rel=1e-5)
    assert stats_s["td"] == pytest.approx(stats_w["td"], rel=1e-5)
    assert stats_s["q_mean"] == pytest.approx(stats_w["q_mean"], rel=1e-5)
    if negatives:
        assert stats_s["cql"] == pytest.approx(stats_w["cql"], rel=1e-5)
        assert stats_s["td_negative"] == pytest.approx(stats_w["td_negative"], rel=1e-5)
    torch.testing.assert_close(by_sessions, by_windows)
    for (name, _), g_s, g_w in zip(net.named_parameters(), grads_s, grads_w):   # the same training signal
        torch.testing.assert_close(g_s, g_w, rtol=1e-4, atol=1e-6, msg=name)
    assert grads_s[[n for n, _ in net.named_parameters()].index("q_transform")].abs().sum() > 0


def test_multi_step_targets_and_returns_equal_the_window_paths_first_step(tmp_path):
    """At horizon 3 and K = 3: the same K-step cross-entropy, and each event's TD target is the
    window path's G^lambda_0 of the window starting there."""
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES)
    net = network("gru", ssl_steps=3)
    target = copy.deepcopy(net)
    t = load_config(overrides=["train.alpha=0.0", "pool.horizon=3"]).train
    window = Batch.from_windows(pool.windows(pool.events("train"), LONGEST + 1, 3, training=True))
    _, stats_w, _ = compute_losses(net, target, window, t)
    _, stats_s, _ = compute_losses(net, target, one_chunk_of_everything(pool, net, target, 3), t)
    assert stats_s["ce"] == pytest.approx(stats_w["ce"], rel=1e-5)


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_streamed_evaluation_equals_the_window_path_with_whole_histories(tmp_path, encoder, exclude_seen):
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS, PURCHASES, splits=(3, 2))
    net = network(encoder)
    for split in ("valid", "test"):
        whole = evaluate(net, pool, split, 0, [1, 3], 2, exclude_seen, heads=("ssl", "q"), progress=False)
        windows = evaluate(net, pool, split, LONGEST, [1, 3], 2, exclude_seen, heads=("ssl", "q"), progress=False)
        for head in whole:
            assert whole[head] == pytest.approx(windows[head], rel=1e-5)


def test_streamed_query_states_are_each_querys_prefix_state(tmp_path):
    pool = pool_from_sessions(tmp_path / "pool", SESSIONS)
    net = network("sasrec")
    events = np.array([0, 5, 10, 11, 13, 20, 35, 36, 38])
    got = {}
    with torch.no_grad():
        for batch, states in session_query_states(net.encoder, pool, events, batch_size=2, device="cpu", chunk=3):
            assert len(batch) <= 2
            got.update(zip(batch.tolist(), states))
        assert sorted(got) == sorted(events.tolist())
        for e in events:
            s = int(pool.session_of([e])[0])
            prefix = np.asarray(pool.items[pool.offsets[s]:e], dtype=np.int64)
            torch.testing.assert_close(got[int(e)], net.last_state(torch.from_numpy(np.r_[0, prefix])[None])[0])


def test_recommending_from_the_whole_history_equals_a_long_enough_state():
    net = network("gru")
    history = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    whole = top_k(net, history, 0, 5, "ssl", exclude_seen=True)
    long = top_k(net, history, 20, 5, "ssl", exclude_seen=True)
    assert (whole[0] == long[0]).all() and np.allclose(whole[1], long[1])


@pytest.mark.parametrize("encoder,state_len", [("gru", 0), ("sasrec", 0), ("gru", 4)])   # and the window path
def test_an_epoch_stopped_mid_way_and_resumed_equals_an_uninterrupted_one(tmp_path, encoder, state_len):
    settings = [f"pool.state_len={state_len}", "train.chunk_len=4", "train.batch_size=32", f"model.encoder={encoder}",
                "model.max_len=5"]
    cfg = tiny_config(tmp_path, *settings)
    pool = pool_from_sessions(tmp_path / "pool", [s * 2 for s in SESSIONS] * 3, [p * 2 for p in PURCHASES] * 3)

    def learner():
        torch.manual_seed(0)
        return Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg)

    straight = learner()
    assert train_epoch(straight, pool, cfg, compute_losses, progress=False)
    stopped = learner()
    assert not train_epoch(stopped, pool, tiny_config(tmp_path, *settings, "train.max_steps=3"), compute_losses,
                           progress=False)
    saved = copy.deepcopy(stopped.state(cfg, pool, best={}))
    assert (saved["carry"] is not None) == (state_len == 0) and saved["batch"] == 3
    resumed = learner()
    resumed.restore(saved)
    assert_restored(resumed, saved)
    assert train_epoch(resumed, pool, cfg, compute_losses, progress=False)
    assert resumed.step == straight.step > 3
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_mid_epoch_checkpoint_with_an_older_sasrec_carry_is_refused_in_one_line():
    from seqrec.running.errors import UserError
    from seqrec.running.learner import Learner
    net = network("sasrec")
    learner = Learner.create(net, load_config())
    old = (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long))    # (context, place): before the cache
    ckpt = {"model": net.state_dict(), "target": learner.target_net.state_dict(), "optimizer": learner.opt.state_dict(),
            "step": 3, "epoch": 0, "batch": 3, "sums": {}, "rng": torch.get_rng_state(), "carry": (old, old)}
    with pytest.raises(UserError, match="cannot be resumed"):
        learner.restore(ckpt)
    ckpt["carry"] = tuple(enc.start(2) for enc in (net.encoder, learner.target_net.encoder))
    learner.restore(ckpt)


def assert_restored(learner, ckpt):
    """What resuming means: the learner holds the checkpoint's counters, weights (online and target),
    optimizer state and RNG state, not a fresh start that a deterministic rerun would make look alike."""
    assert (learner.step, learner.epoch, learner.batch, learner.sums) == (ckpt["step"], ckpt["epoch"], ckpt["batch"],
                                                                          ckpt["sums"])
    for got, saved in ((learner.net.state_dict(), ckpt["model"]), (learner.target_net.state_dict(), ckpt["target"])):
        for name, tensor in saved.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    moments = [s["exp_avg"] for s in learner.opt.state_dict()["state"].values()]
    saved_moments = [s["exp_avg"] for s in ckpt["optimizer"]["state"].values()]
    assert len(moments) == len(saved_moments) > 0
    for got, saved in zip(moments, saved_moments):
        torch.testing.assert_close(got, saved, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), ckpt["rng"])
