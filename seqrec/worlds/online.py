"""Online evaluation: policies show slates to simulated users; returns, click-through and purchases.

A policy is any callable `policy(histories, users) -> scores`: `histories` [B, H] holds each user's
clicked simulator item ids so far, most recent last, left-padded with -1; `scores` [B, num_items]
ranks the simulator's items (-inf = never show). Ordinary policies read only the histories; the
oracle also reads `users`, the simulator's hidden state, which is what makes it an oracle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from seqrec.running.atomic import atomic_write
from seqrec.running.distributed import model_device
from seqrec.running.errors import UserError
from seqrec.evaluation.ope import position_marginals, ranked_top_k
from seqrec.worlds.simulator import NO_CLICK, Simulator, Users, run_sessions, sees_user, seeing, top_k_slates
from seqrec.evaluation.value import discounted_returns

Policy = Callable[[np.ndarray, Users], np.ndarray]


# ================================================================================================
# Policies
# ================================================================================================
def random_policy(num_items: int, seed: int = 0) -> Policy:
    rng = np.random.default_rng([seed, 21])
    return lambda histories, users: rng.random((len(histories), num_items))


def popularity_policy(click_counts: np.ndarray) -> Policy:
    """The same slate for everyone: the items clicked most in the training data. counts [num_items]"""
    scores = click_counts.astype(np.float64)
    return lambda histories, users: np.broadcast_to(scores, (len(histories), len(scores)))


def logging_policy(sim: Simulator, seed: int = 0) -> Policy:
    """The policy that logged the offline data (it reads the last click from the simulator's state)."""
    rng = np.random.default_rng([seed, 22])
    return seeing(lambda histories, users: sim.logging_scores(users, rng))


def oracle_policy(sim: Simulator) -> Policy:
    """Greedy oracle: true preferences and interest, maximal immediate expected reward."""
    return seeing(lambda histories, users: sim.oracle_scores(users))


def lookahead_oracle_policy(sim: Simulator) -> Policy:
    """Lookahead oracle: true preferences and interest, and a click's effect one step on (Simulator.lookahead_scores)."""
    return seeing(lambda histories, users: sim.lookahead_scores(users))


def posterior_oracle_policy(sim: Simulator, particles: int = 4096, keep: int = 32, seed: int = 0) -> Policy:
    """Posterior oracle: knows the world (items, the click and purchase models) but not the user's
    preferences, which it infers from the clicks seen (Simulator.posterior_oracle_scores): about as much
    of the greedy oracle's return as a policy that sees only the history can get. (`keep` 32 of 4,096
    particles did best on held-out users, seed 100: 84% of the oracle, 83% with 128, 81% with 512 of
    16,384, 75% with 8.)"""
    prior = sim.start_sessions(particles, np.random.default_rng([sim.p.seed, 23, seed])).prefs
    return lambda histories, users: sim.posterior_oracle_scores(users, histories, prior, keep)


def simulator_for(cfg):
    """The world that generated a config's data set: the simulator (data.source synthetic) or RecSim
    (recsim); no other source has one."""
    if cfg.data.source == "recsim":
        from seqrec.worlds.recsim import RecSimWorld
        return RecSimWorld.from_config(cfg)
    if cfg.data.source != "synthetic":
        raise UserError(f"online evaluation needs a world's own data (data.source synthetic or recsim), "
                        f"not '{cfg.data.source}'")
    return Simulator.from_config(cfg)


def pool_popularity_policy(sim: Simulator, pool) -> Policy:
    """popularity_policy of the clicks in the pool's training split, over the simulator's items."""
    counts = np.zeros(sim.p.num_items)
    np.add.at(counts, pool.item_ids.astype(np.int64)[np.asarray(pool.items[pool.events("train")]) - 1], 1.0)
    return popularity_policy(counts)


def static_list_policy(sim, pool, gamma: float) -> Policy:
    """The same slate for everyone: the items whose clicks in the pool's training split have the highest
    mean discounted return-to-go (gamma), best first: the value anyone can read off the log, without a model."""
    events = pool.events("train")
    returns = discounted_returns(np.asarray(pool.rewards, dtype=np.float64), np.asarray(pool.offsets), gamma)[events]
    items = pool.item_ids.astype(np.int64)[np.asarray(pool.items[events]) - 1]
    total, count = np.zeros(sim.p.num_items), np.zeros(sim.p.num_items)
    np.add.at(total, items, returns)
    np.add.at(count, items, 1.0)
    scores = np.where(count > 0, total / np.maximum(count, 1.0), -np.inf)
    return lambda histories, users: np.broadcast_to(scores, (len(histories), len(scores)))


def baseline_policies(sim, pool, seed: int, gamma: float) -> dict:
    """The policies beside a world's trained models, by name: random, popular (clicks in the pool's
    training split), static-list (static_list_policy), and those that see the hidden user: in the
    simulator the logging policy and the greedy, lookahead and posterior oracles, in RecSim the myopic
    and the budget-aware oracle."""
    general = {"random": random_policy(sim.p.num_items, seed), "popular": pool_popularity_policy(sim, pool),
               "static-list": static_list_policy(sim, pool, gamma)}
    if not isinstance(sim, Simulator):
        return {**general, **sim.reference_policies(seed)}
    return {**general, "logging": logging_policy(sim, seed), "oracle": oracle_policy(sim),
            "lookahead-oracle": lookahead_oracle_policy(sim), "posterior-oracle": posterior_oracle_policy(sim, seed=seed)}


def sim_to_pool_ids(pool_item_ids: np.ndarray, num_items: int) -> np.ndarray:
    """Simulator item index -> pool item id (1-based; 0 = an item the pool does not know). [num_items]"""
    out = np.zeros(num_items, dtype=np.int64)
    out[np.asarray(pool_item_ids).astype(np.int64)] = np.arange(1, len(pool_item_ids) + 1)
    return out


class ModelPolicy:
    """A trained model as a policy: the last `state_len` clicks (0: all of them), mapped to the pool's
    item ids, ranked by `head` (`mix`: reranked with `beta`, `rerank_top`, see model.rerank). Simulator
    items the pool never saw (filtered out) get -inf."""

    def __init__(self, model, pool_item_ids: np.ndarray, num_items: int, state_len: int, head: str,
                 beta: float = 0.0, rerank_top: int = 1):
        self.model, self.state_len, self.head, self.num_items = model.eval(), state_len, head, num_items
        self.beta, self.rerank_top = beta, rerank_top
        self.pool_to_sim = np.asarray(pool_item_ids).astype(np.int64)           # pool id i -> [i - 1]
        self.sim_to_pool = sim_to_pool_ids(pool_item_ids, num_items)

    @classmethod
    def from_config(cls, model, pool_item_ids: np.ndarray, num_items: int, cfg, head: str | None = None) -> "ModelPolicy":
        """The policy a config deploys: its state length, `eval.head` (or `head`), `eval.beta`, `eval.rerank_top`."""
        return cls(model, pool_item_ids, num_items, cfg.pool.state_len, head or cfg.eval.head,
                   cfg.eval.beta, cfg.eval.rerank_top)

    @torch.no_grad()
    def __call__(self, histories: np.ndarray, users: Users) -> np.ndarray:
        width = self.state_len or max(int((histories >= 0).sum(1).max(initial=0)), 1)
        recent = histories[:, -width:]
        state = np.where(recent >= 0, self.sim_to_pool[np.maximum(recent, 0)], 0)
        state = torch.from_numpy(state).to(model_device(self.model))
        scores = self.model.scores(self.model.last_state(state), self.head, beta=self.beta,
                                   top=self.rerank_top).cpu().numpy()
        out = np.full((len(histories), self.num_items), -np.inf)
        out[:, self.pool_to_sim] = scores[:, 1:]
        return out


# ================================================================================================
# Rollouts
# ================================================================================================
@dataclass
class Rollout:
    returns: np.ndarray      # [n] reward per session
    clicks: np.ndarray       # [n]
    purchases: np.ndarray    # [n]
    slates: np.ndarray       # [n] slates shown
    log: pd.DataFrame | None  # recorded events (session_id, item_id, step, purchase, reward, the slate) if asked for
    distinct_at_10: int = 0  # how many different sets of items the 10th slate was, across the sessions shown one

    def summary(self) -> dict:
        n = len(self.returns)
        return {"return": float(self.returns.mean()),
                "return_ci95": float(1.96 * self.returns.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                "ctr": float(self.clicks.sum() / max(self.slates.sum(), 1)),
                "purchase_rate": float(self.purchases.sum() / max(self.clicks.sum(), 1)),
                "length": float(self.clicks.mean()), "sessions": n, "distinct_at_10": self.distinct_at_10}


def rollout(sim: Simulator, policy: Policy, sessions: int, seed: int = 0, explore: float = 0.0,
            record: bool = False, skip_memory: bool = False) -> Rollout:
    """Run `sessions` fresh users under `policy` until every session ends.

    The users are a function of (sim.seed, seed) alone, so every policy meets the same users. With
    `explore` = eps, each slate is a uniformly random one with probability eps (epsilon-greedy).
    With `skip_memory` (online.skip_memory), a policy that reads only the clicks does not show again an
    item shown since the user's last click: where a slate with no click does not end the session
    (RecSim), the click history has not changed, and a deterministic policy would show the same ignored
    slate until the budget is gone. Policies that see the user (`seeing`) are left alone.
    With `record`, the log holds every click with the slate it was clicked in (shown_0 ..) and that
    slate's log-probability under the epsilon-greedy policy (slate_logp), as the simulator's log does.
    """
    users = sim.start_sessions(sessions, np.random.default_rng([sim.p.seed, 31, seed]))
    rng = np.random.default_rng([sim.p.seed, 32, seed])
    k, H = sim.p.slate_size, sim.p.max_session_len
    histories = np.full((sessions, H), -1, dtype=np.int64)
    returns, clicks, purchases, shown = (np.zeros(sessions) for _ in range(4))
    log_uniform = -(math.lgamma(sim.p.num_items + 1) - math.lgamma(k + 1) - math.lgamma(sim.p.num_items - k + 1))
    propensity = {}
    skipped = np.zeros((sessions, sim.p.num_items), dtype=bool) if skip_memory and not sees_user(policy) else None

    def choose(sub: Users, active: np.ndarray) -> np.ndarray:
        scores = policy(histories[active], sub)
        if skipped is not None:
            mask = skipped[active]
            mask[(~mask).sum(1) < k] = False                  # everything shown once: start again
            scores = np.where(mask, -np.inf, scores)
        slates = top_k_slates(scores, k)
        greedy = np.sort(slates, 1)
        if explore > 0:
            explore_rows = rng.random(len(active)) < explore
            slates[explore_rows] = top_k_slates(rng.random((int(explore_rows.sum()), sim.p.num_items)), k)
        # P(this set of items) under epsilon-greedy: (1 - eps) [it is the greedy set] + eps / C(N, k)
        same = (np.sort(slates, 1) == greedy).all(1)
        propensity["logp"] = np.log(np.where(same, 1 - explore, 0.0) + explore * math.exp(log_uniform))
        propensity["slates"] = slates
        return slates

    parts, distinct_at_10 = [], 0
    for t, active, slates, res in run_sessions(sim, users, choose, rng):
        if t == 9:                                         # personalisation: one list for everyone counts 1
            distinct_at_10 = len(np.unique(np.sort(slates, 1), axis=0))
        hit = res.click != NO_CLICK
        returns[active] += res.reward
        shown[active] += 1
        clicks[active] += hit
        purchases[active] += res.purchase
        rows = active[hit]
        histories[rows] = np.concatenate([histories[rows, 1:], res.click[hit, None]], axis=1)
        if skipped is not None:
            skipped[rows] = False
            missed = active[~hit]
            skipped[missed[:, None], slates[~hit]] = True
        if record:
            parts.append(pd.DataFrame({"session_id": rows, "item_id": res.click[hit], "step": t,
                                       "purchase": res.purchase[hit], "reward": res.reward[hit],
                                       **{f"shown_{j}": propensity["slates"][hit, j] for j in range(k)},
                                       "slate_logp": propensity["logp"][hit]}))
    log = None
    if record:
        log = (pd.concat(parts, ignore_index=True) if parts else
               pd.DataFrame(columns=["session_id", "item_id", "step", "purchase", "reward"]
                            + [f"shown_{j}" for j in range(k)] + ["slate_logp"]))
        log = log.sort_values(["session_id", "step"], kind="stable", ignore_index=True)
    return Rollout(returns, clicks, purchases, shown, log, distinct_at_10)


@dataclass
class ImpressionLog:
    """Every slate the logging policy showed, clicked or not (seqrec/evaluation/ope.py's input). S slates of n sessions."""
    session: np.ndarray        # [S] 0 .. n-1
    step: np.ndarray           # [S] the slate's step in its session
    slates: np.ndarray         # [S, k] simulator item ids, in the logging policy's order (best first)
    log_cond_logp: np.ndarray  # [S, k] log P(item at l | the items above) under the logging policy
    click_pos: np.ndarray      # [S] the position clicked, -1 = none (in the simulator the session ends there)
    reward: np.ndarray         # [S]
    histories: np.ndarray      # [S, H] the session's clicks before the slate, most recent last, -1 padded
    n_sessions: int
    # ([S, k], [S, k]) the logging policy's P(logged item at its position) and P(logged item in the slate),
    # drawn while logging where no history can give them back (RecSim's logging policy reads the hidden user)
    marginals: tuple[np.ndarray, np.ndarray] | None = None


def impression_log(sim: Simulator, sessions: int, seed: int = 0, draws: int = 100) -> ImpressionLog:
    """`sessions` fresh users (a function of (sim.seed, seed), none of them the online evaluation's) under
    the logging policy, every slate recorded with its positions' chain-rule propensities. In RecSim the
    logging policy reads the hidden user, so its position marginals are drawn here (`draws` Plackett-Luce
    draws a slate, ope.position_marginals) while its logits are at hand."""
    users = sim.start_sessions(sessions, np.random.default_rng([sim.p.seed, 51, seed]))
    rng = np.random.default_rng([sim.p.seed, 52, seed])
    H = sim.p.max_session_len
    histories = np.full((sessions, H), -1, dtype=np.int64)
    reads_user = not isinstance(sim, Simulator)
    noise = sim.session_noise(sessions, rng) if reads_user else None
    shown, parts, drawn = {}, [], []

    def choose(sub: Users, active: np.ndarray) -> np.ndarray:
        if reads_user:
            ordered, logp = sim.logging_slates(sub, noise[active], rng)
            drawn.append(position_marginals(sim.logging_logits(sub, noise[active]), ordered, draws, rng))
        else:
            ordered = ranked_top_k(sim.logging_scores(sub, rng), sim.p.slate_size)
            logp = sim.slate_position_log_probs(sub, ordered)
        shown.update(ordered=ordered, logp=logp, histories=histories[active].copy())
        return ordered

    steps = tqdm(run_sessions(sim, users, choose, rng), desc="impression log", unit="step", leave=False)
    for t, active, _, res in steps:
        hit = res.click != NO_CLICK
        position = np.where(hit, (shown["ordered"] == res.click[:, None]).argmax(1), -1)
        parts.append((active, np.full(len(active), t), shown["ordered"], shown["logp"], position,
                      res.reward, shown["histories"]))
        rows = active[hit]
        histories[rows] = np.concatenate([histories[rows, 1:], res.click[hit, None]], axis=1)
    if not parts:
        raise UserError("the impression log is empty: ask for at least one session")
    session, step, slates, logp, click_pos, reward, hist = (np.concatenate(x) for x in zip(*parts))
    marginals = tuple(np.concatenate(x) for x in zip(*drawn)) if reads_user else None
    return ImpressionLog(session, step, slates, logp, click_pos, reward.astype(np.float64), hist, sessions, marginals)


# ================================================================================================
# True values of logged events
# ================================================================================================
def logged_event_values(sim: Simulator, pool, events: np.ndarray, gamma: float, rollouts: int,
                        seed: int = 0, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The logging policy's Q(s_t, a_t) of logged events, from the simulator: each event's user is
    restored as it was before a_t (preferences redrawn, interest replayed from the session's earlier
    clicks), clicks a_t, and the logging policy goes on; the mean discounted return of `rollouts`
    runs. Returns (events kept [m], values [m]): events of sessions the pool's preprocessing changed
    (a rare item filtered out) cannot be restored exactly and are left out."""
    events = np.asarray(events, dtype=np.int64)
    log = sim.generate_log()
    raw_offsets = np.concatenate([[0], np.cumsum(log.groupby("session_id", sort=True).size().to_numpy())])
    raw_sessions = np.unique(log["session_id"].to_numpy())
    raw_items, raw_buys = log["item_id"].to_numpy(np.int64), (log["event"] == "purchase").to_numpy()

    session = pool.session_of(events)
    sid = pool.session_ids[session].astype(np.int64)
    raw = np.searchsorted(raw_sessions, sid)
    to_sim = pool.item_ids.astype(np.int64)
    sessions, first, inverse = np.unique(session, return_index=True, return_inverse=True)
    same = np.array([np.array_equal(to_sim[pool.session_items(s) - 1], raw_items[raw_offsets[r]:raw_offsets[r + 1]])
                     for s, r in zip(sessions, raw[first])], dtype=bool)           # once per session
    keep = np.flatnonzero(same[inverse])
    events, session, sid, raw = events[keep], session[keep], sid[keep], raw[keep]
    place = events - np.asarray(pool.offsets)[session]
    width = int(place.max(initial=0)) + 1
    cols = raw_offsets[raw][:, None] + np.arange(width)
    safe = np.minimum(cols, len(raw_items) - 1)
    users = sim.users_after(sim.session_prefs(sid), raw_items[safe], raw_buys[safe], place)
    taken = raw_items[raw_offsets[raw] + place]
    rng = np.random.default_rng([sim.p.seed, 41, seed])
    values = np.concatenate([sim.logging_value(users.subset(np.arange(i, min(i + chunk, len(keep)))),
                                               taken[i:i + chunk], gamma, rollouts, rng)
                             for i in range(0, len(keep), chunk)]) if len(keep) else np.zeros(0)
    return events, values


def true_event_values(cfg, pool, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """logged_event_values of the first `eval.value_events` events of `split` (None unless the data
    is the simulator's own), cached beside the pool: every run on the pool shares them."""
    n, rollouts, gamma = cfg.eval.value_events, cfg.eval.value_rollouts, cfg.train.gamma
    if cfg.data.source != "synthetic" or n == 0:
        return None
    path = pool.dir / f"true-values-{split}-n{n}-m{rollouts}-g{gamma:g}.npy"
    try:
        events, values = np.load(path)
        return events.astype(np.int64), values
    except (OSError, ValueError):                     # not there yet (or damaged): compute it again
        pass
    events, values = logged_event_values(simulator_for(cfg), pool, pool.events(split)[:n], gamma, rollouts)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.stack([events.astype(np.float64), values]))
    atomic_write(path, save)
    return events, values
