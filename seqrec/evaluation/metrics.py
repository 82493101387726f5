"""Ranking metrics over full item rankings, as pure functions of tensors.

A target's place in a ranking is given by two counts: `higher`, the items scored above it, and `ties`,
the other items scored the same. Ties are
broken uniformly at random, and every metric is its expectation over that draw: the target's rank is
equally likely to be any of higher + 1 ... higher + ties + 1. So a scorer that gives every item the
same score gets exactly chance level (HR@k = k / N), never the top rank. Callers set the padding item
(and any excluded item) to -inf first; -inf items are never counted, and a -inf target ranks below
every finite item. A NaN score is an error (NaNScores), never a rank.

With ties = 0: HR@k = [r <= k], NDCG@k = [r <= k] / log2(r + 1) (one relevant item, so the ideal DCG
is 1), MRR = 1 / r, for the rank r = higher + 1.
"""
from __future__ import annotations

import math

import torch

class NaNScores(ValueError):
    """Scores that hold NaN. No rank can be read off them: NaN compares False with everything, so a NaN
    target would count no item above it and rank first. Callers name the head and stop."""


def require_no_nan(scores: torch.Tensor) -> None:
    """Raise NaNScores, saying how many rows hold NaN, if any of scores [B, ...] is NaN."""
    bad = torch.isnan(scores).reshape(len(scores), -1).any(1)
    if bad.any():
        raise NaNScores(f"{int(bad.sum())} of {len(scores)} rows hold NaN")


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, N], targets [B] (column indices) -> (higher [B], ties [B]) int64. NaNScores if any
    score is NaN."""
    require_no_nan(scores)
    target_scores = scores.gather(1, targets.view(-1, 1))
    higher = (scores > target_scores).sum(dim=1)
    not_below = ((scores >= target_scores) & torch.isfinite(scores)).sum(dim=1)
    return higher, not_below - higher - torch.isfinite(target_scores[:, 0]).long()   # not the target itself


def hit_rate(higher: torch.Tensor, ties: torch.Tensor, k: int) -> torch.Tensor:
    """P(rank <= k) [B] float: the share of the tied positions higher+1 .. higher+ties+1 within the top k."""
    return ((k - higher).clamp(min=0).minimum(ties + 1) / (ties + 1)).float()


def ndcg(higher: torch.Tensor, ties: torch.Tensor, k: int) -> torch.Tensor:
    """E[1/log2(rank + 1) if rank <= k else 0] [B] float, over the tied positions."""
    gains = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64)), 0)])
    gains = gains.to(higher.device)                                 # gains[p] = sum of the top p positions' gains
    last = torch.clamp(higher + ties + 1, max=k)
    first = torch.clamp(higher, max=k)
    return ((gains[last] - gains[first]) / (ties + 1)).float()


def reciprocal_rank(higher: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    """E[1 / rank] [B] float: (H(higher + ties + 1) - H(higher)) / (ties + 1), H the harmonic numbers."""
    def harmonic(n: torch.Tensor) -> torch.Tensor:                  # H(n) = digamma(n + 1) + Euler's gamma
        return torch.special.digamma(n.double() + 1.0) + 0.5772156649015329
    return ((harmonic(higher + ties + 1) - harmonic(higher)) / (ties + 1)).float()


KINDS = ("all", "click", "purchase")


def summarize(higher: torch.Tensor, ties: torch.Tensor, is_purchase: torch.Tensor, ks) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR over all events, click events and purchase events.

    Keys look like `click/HR@5`, `purchase/NDCG@10`, `all/MRR`; a kind with no events gets NaN.
    """
    out = {}
    for kind, mask in zip(KINDS, (torch.ones_like(is_purchase), ~is_purchase, is_purchase)):
        h, t = higher[mask], ties[mask]
        for k in ks:
            out[f"{kind}/HR@{k}"] = _mean(hit_rate(h, t, k))
            out[f"{kind}/NDCG@{k}"] = _mean(ndcg(h, t, k))
        out[f"{kind}/MRR"] = _mean(reciprocal_rank(h, t))
    return out


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if len(values) else math.nan
