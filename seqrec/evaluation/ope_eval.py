"""Off-policy estimates of policies on a simulated impression log, beside their true returns, and how well
each estimator picks policies (Spearman, relative error, regret@1).

A policy enters as a `Target`: a deterministic scorer (`policy(histories, None) -> scores [B, N]`, its
top k shown best first), the uniform random policy, or the logging policy itself. The simulator enters
only through the log and the logging policy's preferences. The model-based estimators (direct method,
cascade DR, FQE) see a trained model only as a `Critic`: a callable from histories to item log-probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from seqrec.evaluation import ope
from seqrec.worlds.online import ImpressionLog
from seqrec.worlds.simulator import Simulator

OFFLINE = ("offline-click-ndcg@10", "offline-purchase-ndcg@10")
SEQUENTIAL_CLIP = 100.0      # the plain sequential estimate's cap on a session's product of weights


@dataclass
class Propensities:
    """What the estimators weigh by, for the log's S slates: P(logged item at its position), P(logged item
    anywhere in the slate) and P(logged prefix 1..l), each [S, k]."""
    position: np.ndarray
    item: np.ndarray
    prefix: np.ndarray


@dataclass
class Target:
    kind: str                                   # scores | uniform | logging
    scorer: Callable | None = None              # kind scores: histories [B, H] -> scores [B, N]


@dataclass
class Critic:
    """A trained model as the reward model's eyes: its next-item log-probabilities, histories [B, H] ->
    [B, N] over the simulator's items (-inf: items it never saw). (Its Q values as an FQE feature made
    the clickbait preset's ranking worse on two sets of checkpoints: docs/results.md.)"""
    log_probs: Callable


@dataclass
class CriticView:
    """The critic and the reward model it gives, evaluated once on the log. C = the log's clicks.
    q_hat [S, N]: the reward model's expected reward of showing each item at each logged state,
    P(click | shown) (ope.click_probs of the critic's log-probability) times the item's mean reward per
    click in the log. FQE's features of (state, item): fqe_features."""
    click: np.ndarray           # [2] the click model's parameters
    item_reward: np.ndarray     # [N]
    q_hat: np.ndarray           # [S, N]
    clicked: np.ndarray         # [C] the log's rows with a click
    features: np.ndarray        # [C, 3] at the logged (state, clicked item)
    next_histories: np.ndarray  # [C, H] the state after each click
    done: np.ndarray            # [C] the session ended after the click
    next_lp: np.ndarray         # [C, N] the critic at the next states
    start_lp: np.ndarray        # [1, N] the critic at a session's start (no clicks yet)


def logging_propensities(sim: Simulator, log: ImpressionLog, draws: int, rng: np.random.Generator) -> Propensities:
    """The logging policy's position and slate marginals (Gumbel draws, ope.position_marginals) and exact
    prefix probabilities (the chain rule the log holds)."""
    ope.check_log_propensities(log.log_cond_logp, "impression log")
    prefix = np.exp(np.cumsum(log.log_cond_logp, 1))
    if log.marginals is not None:                # drawn while logging (RecSim: the logging policy reads the user)
        return Propensities(*log.marginals, prefix)
    logits = sim.logging_logits_after(log.histories[:, -1])
    return Propensities(*ope.position_marginals(logits, log.slates, draws, rng), prefix)


def over_chunks(fn: Callable, histories: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """fn over the rows of histories [B, H], `chunk` rows at a time (a scorer's [B, N] stays small)."""
    return np.concatenate([fn(histories[i:i + chunk]) for i in range(0, len(histories), chunk)])


def deterministic_slates(target: Target, histories: np.ndarray, k: int) -> np.ndarray:
    """A scoring target's top-k slate at each state. histories [B, H] -> [B, k]"""
    return over_chunks(lambda h: ope.ranked_top_k(target.scorer(h), k), histories)


def sampled_slates(target: Target, histories: np.ndarray, k: int, num_items: int, logging_logits: Callable,
                   rng: np.random.Generator) -> np.ndarray:
    """One slate per state drawn from the target (its top k when it is deterministic; the logging
    policy's Plackett-Luce draw by the Gumbel trick). histories [B, H] -> [B, k]"""
    if target.kind == "scores":
        return deterministic_slates(target, histories, k)
    if target.kind == "uniform":
        return ope.ranked_top_k(rng.random((len(histories), num_items)), k)
    logits = logging_logits(histories[:, -1])
    return ope.ranked_top_k(logits + rng.gumbel(size=logits.shape), k)


def target_propensities(target: Target, log: ImpressionLog, logging: Propensities, num_items: int,
                        slates: np.ndarray | None = None) -> Propensities:
    """The target policy's probabilities of the log's (item, position) pairs and prefixes (a scoring
    target's slates at the logged states may be passed in)."""
    S, k = log.slates.shape
    if target.kind == "logging":
        return logging
    if target.kind == "uniform":                 # every item equally likely at every position
        prefix = np.cumprod(1.0 / (num_items - np.arange(k)))
        return Propensities(np.full((S, k), 1.0 / num_items), np.full((S, k), k / num_items),
                            np.broadcast_to(prefix, (S, k)).copy())
    slates = deterministic_slates(target, log.histories, k) if slates is None else slates
    return Propensities(ope.deterministic_position_probs(slates, log.slates),
                        ope.deterministic_membership_probs(slates, log.slates),
                        ope.deterministic_prefix_probs(slates, log.slates))


def estimates(log: ImpressionLog, target: Propensities, logging: Propensities, rng: np.random.Generator,
              clip: float = SEQUENTIAL_CLIP, resamples: int = 1000) -> list[dict]:
    """Every estimator's estimate of the target's return per session, with a 95% bootstrap interval."""
    ope.check_support(target.position, logging.position)
    k = log.slates.shape[1]
    rewards = ope.position_rewards(log.click_pos, log.reward, k)
    w_pos, w_item, w_prefix = (target.position / logging.position, target.item / logging.item,
                               target.prefix / logging.prefix)
    parts = {"ips": ope.slate_ips(rewards, w_pos, log.session, log.n_sessions),
             "snips": ope.slate_ips(rewards, w_pos, log.session, log.n_sessions, self_normalised=True),
             "item-ips": ope.slate_ips(rewards, w_item, log.session, log.n_sessions),
             "item-snips": ope.slate_ips(rewards, w_item, log.session, log.n_sessions, self_normalised=True),
             "cascade-ips": ope.slate_ips(rewards, w_prefix, log.session, log.n_sessions),
             "cascade-snips": ope.slate_ips(rewards, w_prefix, log.session, log.n_sessions, self_normalised=True)}
    # Over a session the item weights: the simulator's users do not look at positions, and products of
    # the sparser position weights are zero almost everywhere.
    products, step_rewards = ope.per_decision_tables(rewards, w_item, log.click_pos, log.session, log.step, log.n_sessions)
    num, den, clipped = ope.sequential_ips(products, step_rewards, clip)
    parts["sequential"] = (num, den)
    rows = []
    for name, (num, den) in parts.items():
        lo, hi = ope.bootstrap_interval(num, den, rng, resamples)
        rows.append({"estimator": name, "estimate": ope.estimate(num, den), "ci_low": lo, "ci_high": hi,
                     "clipped": clipped if name == "sequential" else np.nan})
    lo, hi = ope.bootstrap_statistic(lambda rows: ope.weighted_per_decision(products[rows], step_rewards[rows]),
                                     log.n_sessions, rng, resamples)
    rows.append({"estimator": "sequential-weighted", "estimate": ope.weighted_per_decision(products, step_rewards),
                 "ci_low": lo, "ci_high": hi, "clipped": np.nan})
    return rows


# ================================================================================================
# Model-based estimates: direct method, cascade doubly robust, fitted Q evaluation
# ================================================================================================
def finite(x: np.ndarray, floor: float = -30.0) -> np.ndarray:
    """A critic's scores as features: -inf (items it never saw) -> floor."""
    return np.where(np.isfinite(x), x, floor)


def fqe_features(lp: np.ndarray, reward_per_click: np.ndarray) -> np.ndarray:
    """FQE's features of (state, item) pairs from the critic's log-probability of the item and the item's
    reward per click, each [...] -> [..., 3]: 1, log-probability, reward per click."""
    return np.stack([np.ones_like(lp), finite(lp), reward_per_click], -1)


def empty_histories(n: int, width: int) -> np.ndarray:
    """n histories of a session's start: no clicks yet. -> [n, width] of -1"""
    return np.full((n, width), -1, dtype=np.int64)


def next_states(log: ImpressionLog, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The history after each clicked slate, and whether its session ended there (no next slate).
    clicked [C] row indices -> ([C, H], [C])"""
    hist = log.histories[clicked]
    after = np.concatenate([hist[:, 1:], log.slates[clicked, log.click_pos[clicked]][:, None]], axis=1)
    slates_in_session = np.bincount(log.session, minlength=log.n_sessions)     # steps 0 .. count - 1
    return after, log.step[clicked] + 1 >= slates_in_session[log.session[clicked]]


def critic_view(critic: Critic, log: ImpressionLog, num_items: int, reward_prior: float = 1.0) -> CriticView:
    """Fit the click model on every shown (state, item) of the log and evaluate the critic where the
    model-based estimators need it. An item's reward per click is shrunk towards the log's mean by
    `reward_prior` pseudo-clicks."""
    lp = over_chunks(critic.log_probs, log.histories)
    shown_lp = np.take_along_axis(lp, log.slates, 1)
    hit = np.zeros(log.slates.shape, dtype=bool)
    clicked = np.flatnonzero(log.click_pos >= 0)
    hit[clicked, log.click_pos[clicked]] = True
    click = ope.fit_click_model(shown_lp.ravel(), hit.ravel())
    items = log.slates[clicked, log.click_pos[clicked]]
    mean = log.reward[clicked].mean() if len(clicked) else 0.0
    item_reward = ((np.bincount(items, weights=log.reward[clicked], minlength=num_items) + reward_prior * mean)
                   / (np.bincount(items, minlength=num_items) + reward_prior))
    features = fqe_features(lp[clicked, items], item_reward[items])
    after, done = next_states(log, clicked)
    return CriticView(click, item_reward, ope.click_probs(lp, click) * item_reward, clicked, features, after, done,
                      over_chunks(critic.log_probs, after), critic.log_probs(empty_histories(1, log.histories.shape[1])))


def slate_features(view: CriticView, lp: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """FQE's expected features of showing `slates` [B, k] at states with critic log-probabilities lp [B, N]:
    each item's features weighted by its click probability (scaled down where they sum past 1). -> [B, 3]"""
    lp_s = np.take_along_axis(lp, slates, 1)
    p = ope.click_probs(lp_s, view.click)
    p = p / np.maximum(p.sum(1, keepdims=True), 1.0)
    per_item = fqe_features(lp_s, view.item_reward[slates])
    return (p[:, :, None] * per_item).sum(1)


def target_q_hat(target: Target, log: ImpressionLog, view: CriticView, slates: np.ndarray | None,
                 logging_logits: Callable) -> tuple[np.ndarray, np.ndarray]:
    """(DM's expected reward of the target's slate at each logged state [S], the reward model's expectation
    under the target at each position given the logged prefix [S, k]) for cascade DR."""
    S, k = log.slates.shape
    if target.kind == "scores":
        q_target = np.take_along_axis(view.q_hat, slates, 1)
        return q_target.sum(1), q_target
    q_logged = np.take_along_axis(view.q_hat, log.slates, 1)
    before = np.cumsum(q_logged, 1) - q_logged                  # the logged prefix's share, excluded
    if target.kind == "uniform":                                # E over the items not yet shown
        q_target = (view.q_hat.sum(1, keepdims=True) - before) / (view.q_hat.shape[1] - np.arange(k))
        return k * view.q_hat.mean(1), q_target
    logits = logging_logits(log.histories[:, -1])
    w = np.exp(logits - logits.max(1, keepdims=True))           # Plackett-Luce: the rest, by weight
    w_logged = np.take_along_axis(w, log.slates, 1)
    num = (w * view.q_hat).sum(1, keepdims=True) - (np.cumsum(w_logged * q_logged, 1) - w_logged * q_logged)
    den = w.sum(1, keepdims=True) - (np.cumsum(w_logged, 1) - w_logged)
    return q_logged.sum(1), num / np.maximum(den, ope.TINY)     # DM: the logged slate is a draw of it


def model_based_estimates(log: ImpressionLog, target: Target, view: CriticView, prefix_weights: np.ndarray,
                          slates: np.ndarray | None, logging_logits: Callable, rng: np.random.Generator,
                          resamples: int = 1000, start_draws: int = 64, gamma: float = 1.0) -> list[dict]:
    """DM, cascade DR and FQE of the target (undiscounted, as the online return), with 95% bootstrap
    intervals over sessions. FQE fits on the log's clicks: r + gamma * the target's click-weighted next
    features (0 once the session ended), read at the start state."""
    k = log.slates.shape[1]
    dm, q_target = target_q_hat(target, log, view, slates, logging_logits)
    rewards = ope.position_rewards(log.click_pos, log.reward, k)
    parts = {"dm": ope.direct_method(dm, log.session, log.n_sessions),
             "cascade-dr": ope.cascade_dr(rewards, np.take_along_axis(view.q_hat, log.slates, 1), q_target,
                                          prefix_weights, log.session, log.n_sessions)}
    rows = []
    for name, (num, den) in parts.items():
        lo, hi = ope.bootstrap_interval(num, den, rng, resamples)
        rows.append({"estimator": name, "estimate": ope.estimate(num, den), "ci_low": lo, "ci_high": hi,
                     "clipped": np.nan})
    n_start = 1 if target.kind == "scores" else start_draws
    start_hist = empty_histories(n_start, view.next_histories.shape[1])
    start = slate_features(view, np.repeat(view.start_lp, n_start, 0), sampled_slates(target, start_hist, k, view.q_hat.shape[1], logging_logits, rng)).mean(0)
    nxt = slate_features(view, view.next_lp, sampled_slates(target, view.next_histories, k, view.q_hat.shape[1],
                                                            logging_logits, rng))
    nxt[view.done] = 0.0
    A, b, count = ope.lstdq_terms(view.features, nxt, log.reward[view.clicked], gamma, log.session[view.clicked],
                                  log.n_sessions)
    lo, hi = ope.bootstrap_statistic(lambda picks: float(start @ ope.lstdq(A[picks], b[picks], count[picks])),
                                     log.n_sessions, rng, resamples)
    rows.append({"estimator": "fqe", "estimate": float(start @ ope.lstdq(A, b, count)), "ci_low": lo, "ci_high": hi,
                 "clipped": np.nan})
    return rows


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's of the ranks, ties at their mean rank (pandas' own
    method="spearman" needs SciPy, which is not a dependency)."""
    return float(a.rank().corr(b.rank())) if len(a) > 1 else np.nan


def assess(table: pd.DataFrame) -> pd.DataFrame:
    """Per data set and estimator, over policies: Spearman between estimate and truth, mean relative error
    |estimate - truth| / truth (NaN for the offline metrics, which are not returns), and regret@1, the
    true return lost by deploying the policy ranked first, as a share of the best policy's true return.
    table: dataset, policy, estimator, estimate, truth."""
    rows = []
    for (dataset, estimator), g in table.groupby(["dataset", "estimator"], sort=False):
        g = g.dropna(subset=["estimate", "truth"])
        best = g["truth"].max()
        picked = g.loc[g["estimate"].idxmax(), "truth"] if len(g) else np.nan
        rows.append({"dataset": dataset, "estimator": estimator, "n_policies": len(g),
                     "spearman": spearman(g["estimate"], g["truth"]),
                     "relative_error": np.nan if estimator in OFFLINE else float(((g["estimate"] - g["truth"]).abs() / g["truth"].abs()).mean()),
                     "regret_at_1": (best - picked) / best if len(g) else np.nan})
    return pd.DataFrame(rows)
