"""Ranking metrics over full item rankings, as pure functions of tensors.

The rank of a target is 1 + the number of items scored strictly higher (ties count in the target's
favour); callers set the padding item (and any excluded item) to -inf first. With rank r from 1:
HR@k = [r <= k], NDCG@k = [r <= k] / log2(r + 1) (one relevant item, so the ideal DCG is 1), MRR = 1/r.
"""
from __future__ import annotations

import math

import torch


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores [B, N], targets [B] (column indices) -> ranks [B] int64, 1 = best."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores > target_scores).sum(dim=1) + 1


def hit_rate(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[B] ranks -> [B] float, 1 where the target is in the top k."""
    return (ranks <= k).float()


def ndcg(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[B] ranks -> [B] float, 1/log2(rank + 1) inside the top k, else 0."""
    return torch.where(ranks <= k, 1.0 / torch.log2(ranks.double() + 1.0), 0.0).float()


def reciprocal_rank(ranks: torch.Tensor) -> torch.Tensor:
    return 1.0 / ranks.float()


KINDS = ("all", "click", "purchase")


def summarize(ranks: torch.Tensor, is_purchase: torch.Tensor, ks) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR over all events, click events and purchase events.

    Keys look like `click/HR@5`, `purchase/NDCG@10`, `all/MRR`; a kind with no events gets NaN.
    """
    out = {}
    for kind, mask in zip(KINDS, (torch.ones_like(is_purchase), ~is_purchase, is_purchase)):
        selected = ranks[mask]
        for k in ks:
            for name, fn in (("HR", hit_rate), ("NDCG", ndcg)):
                out[f"{kind}/{name}@{k}"] = _mean(fn(selected, k))
        out[f"{kind}/MRR"] = _mean(reciprocal_rank(selected))
    return out


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if len(values) else math.nan
