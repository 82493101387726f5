"""How good a value function is: Q(s_t, a_t) against what really followed, as pure functions of arrays.

For a logged event t, the realized discounted return G_t = sum_{j >= 0} gamma^j r_{t+j} to the
session's end is an unbiased sample of the logging policy's Q(s_t, a_t). A Q head is scored on
held-out events by
- rmse and bias (mean of Q - G): how far, and in which direction, its values lie from the returns;
- spearman: whether it orders events as their returns do;
- baseline_rmse: the rmse of a predictor with no model, the mean G of each position in the session
  (fit on the training split): a value function worth the name beats it;
- true_r2 (simulated data): R^2 of Q against the logging policy's expected return from the same
  simulator state (mean of many rollouts; seqrec/worlds/online.py), the quantity G only samples.

Where a session ends because the log stops, not the user (MovieLens: the data was collected up to a
day), G is cut short: the rest it misses starts gamma^(events left) down, counting the event and those
after it. Such logs are scored only on events whose rest is observed to within a share `within` of
that weight (gamma^(events left) <= within, eval.value_observed): `n` of `n_held_out` events.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_PER_POSITION = 30   # positions with fewer training events share one mean (the tail of long sessions)


def discounted_returns(rewards: np.ndarray, offsets: np.ndarray, gamma: float) -> np.ndarray:
    """G_t of every event to its session's end: rewards [E], session offsets [S+1] -> [E] float64.
    Vectorized over sessions: one pass per distance from the end."""
    rewards = np.asarray(rewards, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    ends = np.repeat(offsets[1:], np.diff(offsets))                 # [E] one past each event's session end
    to_end = ends - 1 - np.arange(len(rewards))                     # 0 for a session's last event
    returns = rewards.copy()
    order = np.argsort(to_end, kind="stable")
    bounds = np.searchsorted(to_end[order], np.arange(1, int(to_end.max(initial=0)) + 2))
    for d in range(1, len(bounds)):
        e = order[bounds[d - 1]:bounds[d]]                          # events d steps before their end
        returns[e] += gamma * returns[e + 1]
    return returns


def events_left(offsets: np.ndarray) -> np.ndarray:
    """How many events each event's session has from it to its end, itself included (1 for the last):
    offsets [S+1] -> [E] int64."""
    offsets = np.asarray(offsets, dtype=np.int64)
    return np.repeat(offsets[1:], np.diff(offsets)) - np.arange(offsets[-1])


def observed_returns(offsets: np.ndarray, gamma: float, within: float) -> np.ndarray:
    """Events whose return the log shows to within `within`: were the session to go on past the log's
    end, the first reward it does not show would count gamma^(events left) <= within. offsets [S+1]
    -> [E] bool."""
    with np.errstate(under="ignore"):
        return np.power(float(gamma), events_left(offsets).astype(np.float64)) <= within


def positions(offsets: np.ndarray) -> np.ndarray:
    """Each event's place in its session (0 = first): offsets [S+1] -> [E] int64."""
    offsets = np.asarray(offsets, dtype=np.int64)
    return np.arange(offsets[-1]) - np.repeat(offsets[:-1], np.diff(offsets))


def position_means(returns: np.ndarray, place: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """The no-model predictor: mean G of each position over the events `fit` [m] (indices), as a
    table [P+1] where entry P (the first position with fewer than MIN_PER_POSITION fitted events)
    is the mean of every fitted event at or beyond it. Predict with table[min(place, P)]."""
    place_fit, g_fit = place[fit], returns[fit]
    counts = np.bincount(place_fit)
    thin = np.flatnonzero(counts < MIN_PER_POSITION)
    cap = int(thin[0]) if len(thin) else len(counts)
    capped = np.minimum(place_fit, cap)
    sums = np.bincount(capped, weights=g_fit, minlength=cap + 1)
    n = np.bincount(capped, minlength=cap + 1)
    overall = g_fit.mean() if len(g_fit) else 0.0
    return np.where(n > 0, sums / np.maximum(n, 1), overall)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (ties share their average rank); NaN when either side is constant."""
    rx, ry = (pd.Series(np.asarray(v, dtype=np.float64)).rank().to_numpy() for v in (x, y))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def r_squared(predicted: np.ndarray, truth: np.ndarray) -> float:
    """1 - SSE / SST of `predicted` against `truth` (can be negative: worse than the mean)."""
    truth = np.asarray(truth, dtype=np.float64)
    if len(truth) == 0:
        return float("nan")
    sst = float(((truth - truth.mean()) ** 2).sum())
    return 1.0 - float(((np.asarray(predicted, dtype=np.float64) - truth) ** 2).sum()) / sst if sst > 0 else float("nan")


@dataclass
class ValueReference:
    """What held-out Q values are compared with, for every event of a pool."""
    gamma: float
    returns: np.ndarray                   # [E] G_t
    baseline: np.ndarray                  # [E] the position-mean prediction of G_t
    true_events: np.ndarray | None = None  # [m] events with a simulated true value
    true_values: np.ndarray | None = None  # [m] the logging policy's expected return after them
    observed: np.ndarray | None = None     # [E] bool: events whose return the log shows (None: all)
    scale: float = 1.0                     # Q is in units of reward * scale (train.reward_scale): divided out


    def metrics(self, events: np.ndarray, q: np.ndarray) -> dict[str, float]:
        """rmse, bias, spearman, r2 (against the realized returns), baseline_rmse, n (events scored), n_held_out (events given) and, where
        true values exist among them, true_r2 and true_n, of Q(s_t, a_t) `q` [n] for `events` [n]; only
        `observed` events are scored."""
        events, q = np.asarray(events, dtype=np.int64), np.asarray(q, dtype=np.float64) / self.scale
        given = len(events)
        if self.observed is not None:
            keep = self.observed[events]
            events, q = events[keep], q[keep]
        g = self.returns[events]
        out = {"rmse": rmse(q, g), "bias": float((q - g).mean()) if len(q) else float("nan"),
               "spearman": spearman(q, g), "r2": r_squared(q, g), "baseline_rmse": rmse(self.baseline[events], g),
               "n": len(q), "n_held_out": given}
        if self.true_events is not None:
            where = {int(e): i for i, e in enumerate(events)}
            rows = [(where[int(e)], v) for e, v in zip(self.true_events, self.true_values) if int(e) in where]
            if rows:
                idx, truth = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
                out.update(true_r2=r_squared(q[idx], truth), true_n=len(rows))
        return out


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(((np.asarray(predicted) - np.asarray(truth)) ** 2).mean())) if len(truth) else float("nan")


def reward_scale(pool, gamma: float, setting: float) -> float:
    """The factor rewards are multiplied by in the TD targets: `setting` (train.reward_scale), or with 0
    one over the mean discounted return of the training events, so that Q's targets are about 1 at any
    gamma and reward unit and alpha weighs the TD loss alike everywhere."""
    if setting > 0:
        return float(setting)
    events = pool.events("train")
    mean = float(np.abs(discounted_returns(np.asarray(pool.rewards), np.asarray(pool.offsets), gamma)[events]).mean()) \
        if len(events) else 0.0
    return 1.0 / mean if mean > 0 else 1.0


def value_reference(pool, gamma: float, within: float | None = None, scale: float = 1.0) -> ValueReference:
    """Returns of every event of `pool` (to the session's end in the log, held-out events included)
    and the position-mean predictor fit on its training events. With `within` (a log whose sessions
    end by truncation), only events whose return is observed to within it count, for the predictor's
    fit as for the scores."""
    offsets = np.asarray(pool.offsets)
    returns = discounted_returns(np.asarray(pool.rewards), offsets, gamma)
    place = positions(offsets)
    observed = observed_returns(offsets, gamma, within) if within is not None else None
    fit = pool.events("train")
    table = position_means(returns, place, fit[observed[fit]] if observed is not None else fit)
    return ValueReference(gamma, returns, table[np.minimum(place, len(table) - 1)], observed=observed, scale=scale)
