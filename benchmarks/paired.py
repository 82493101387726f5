"""Paired differences between two models on the same test users: per seed, and a bootstrap over users.

Every model is tested on the same queries (leave-one-out: one per user), so the difference of two
models is a mean of per-user differences, and the spread that matters is how those vary over users,
not how two independent means do. For model m against baseline b, with NDCG@10 of user u and seed s:

- per seed: mean_u m_s(u) - mean_u b_s(u), the seeds paired by number (the same data order);
- pooled: d(u) = mean_s m_s(u) - mean_s b_s(u); the difference is mean_u d(u), its 95% interval the
  percentile interval of that mean over resamplings of the users with replacement.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from seqrec.evaluation.ope import bootstrap_interval

COLUMNS = ["dataset", "protocol", "model", "baseline", "metric", "diff", "ci_low", "ci_high"]


def user_means(per_user: pd.DataFrame, model: str) -> pd.Series:
    """A model's value per event (user), averaged over its seeds: per_user has columns model, seed,
    event, value."""
    return per_user[per_user["model"] == model].groupby("event")["value"].mean()


def paired_difference(per_user: pd.DataFrame, model: str, baseline: str, rng: np.random.Generator,
                      resamples: int = 2000) -> tuple[float, float, float]:
    """(mean_u d(u), 95% interval low, high) of `model` minus `baseline` over the users both were tested on."""
    a, b = user_means(per_user, model).align(user_means(per_user, baseline), join="inner")
    if len(a) == 0:
        raise ValueError(f"{model} and {baseline} share no test user")
    d = (a - b).to_numpy()
    low, high = bootstrap_interval(d, np.ones_like(d), rng, resamples)
    return float(d.mean()), low, high


def per_seed_differences(per_user: pd.DataFrame, model: str, baseline: str) -> dict[int, float]:
    """seed -> mean over users of `model` minus `baseline`, for the seeds both ran."""
    means = per_user.groupby(["model", "seed"])["value"].mean()
    seeds = sorted(set(means[model].index) & set(means[baseline].index))
    return {int(s): float(means[model][s] - means[baseline][s]) for s in seeds}


def differences(per_user: pd.DataFrame, dataset: str, protocol: str, metric: str, baseline: str,
                models: list[str], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of COLUMNS, one per model; rows of the per-seed differences) of every model against `baseline`."""
    rng = np.random.default_rng(seed)
    pooled, seeds = [], []
    for model in models:
        diff, low, high = paired_difference(per_user, model, baseline, rng)
        key = {"dataset": dataset, "protocol": protocol, "model": model, "baseline": baseline, "metric": metric}
        pooled.append({**key, "diff": diff, "ci_low": low, "ci_high": high})
        seeds += [{**key, "seed": s, "diff": v} for s, v in per_seed_differences(per_user, model, baseline).items()]
    return pd.DataFrame(pooled, columns=COLUMNS), pd.DataFrame(seeds)
