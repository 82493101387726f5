"""Off-policy estimates of policies on a simulated impression log, beside their true returns, and how well
each estimator picks policies (Spearman, relative error, regret@1).

A policy enters as a `Target`: a deterministic scorer (`policy(histories, None) -> scores [B, N]`, its
top k shown best first), the uniform random policy, or the logging policy itself. The simulator enters
only through the log and the logging policy's preferences; nothing here knows a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from seqrec import ope
from seqrec.online import ImpressionLog
from seqrec.simulator import Simulator

ESTIMATORS = ("ips", "snips", "item-ips", "item-snips", "cascade-ips", "cascade-snips", "sequential",
              "sequential-weighted")
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


def logging_propensities(sim: Simulator, log: ImpressionLog, draws: int, rng: np.random.Generator) -> Propensities:
    """The logging policy's position and slate marginals (Gumbel draws, ope.position_marginals) and exact
    prefix probabilities (the chain rule the log holds)."""
    ope.check_log_propensities(log.log_cond_logp, "impression log")
    last = log.histories[:, -1]
    logits = sim.logging_preference_after(last) / sim.p.logging_temperature
    return Propensities(*ope.position_marginals(logits, log.slates, draws, rng),
                        np.exp(np.cumsum(log.log_cond_logp, 1)))


def target_propensities(target: Target, log: ImpressionLog, logging: Propensities, num_items: int,
                        chunk: int = 4096) -> Propensities:
    """The target policy's probabilities of the log's (item, position) pairs and prefixes."""
    S, k = log.slates.shape
    if target.kind == "logging":
        return logging
    if target.kind == "uniform":                 # every item equally likely at every position
        prefix = np.cumprod(1.0 / (num_items - np.arange(k)))
        return Propensities(np.full((S, k), 1.0 / num_items), np.full((S, k), k / num_items),
                            np.broadcast_to(prefix, (S, k)).copy())
    slates = np.concatenate([ope.ranked_top_k(target.scorer(log.histories[i:i + chunk]), k)
                             for i in range(0, S, chunk)])
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
