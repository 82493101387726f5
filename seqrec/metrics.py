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


@torch.no_grad()
def rank_of_targets_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           targets: torch.Tensor, seen: torch.Tensor | None = None,
                           chunk: int = 1024) -> torch.Tensor:
    """rank_of_targets(features @ weight.T + bias, targets), padding column 0 and `seen` items masked,
    without materialising the [B, N+1] score matrix.

    features [B, H], weight [N+1, H], bias [N+1], targets [B] in 1..N, seen [B, S] item ids to mask
    (0 = none; a masked target ranks below every unmasked item) -> ranks [B] int64, 1 = best.

    Items are scored `chunk` columns at a time into one reused buffer and counted while the chunk is
    still in cache: full ranking of a large catalogue is then bound by the matmul, not by writing,
    re-reading and freeing a [B, N+1] tensor. The target's own column never counts against it, so the
    rank does not hinge on how a kernel rounds the target's score; other items within rounding
    distance of the target's score may count either way.
    """
    target_scores = (features * weight[targets]).sum(-1) + bias[targets]
    if seen is not None:
        target_scores = target_scores.masked_fill((seen == targets[:, None]).any(1), float("-inf"))
        rows, cols = torch.nonzero(seen, as_tuple=True)
        cols = seen[rows, cols]
        by_col = torch.argsort(cols)
        rows, cols = rows[by_col], cols[by_col]
        starts = torch.arange(1, len(bias) + chunk, chunk, device=cols.device)
        bounds = torch.searchsorted(cols, starts).tolist()          # seen entries of each chunk
    higher = torch.zeros(len(targets), dtype=torch.int64, device=features.device)
    buffer = features.new_empty(len(targets), min(chunk, len(bias) - 1))
    rows_b = torch.arange(len(targets), device=features.device)
    for i, start in enumerate(range(1, len(bias), chunk)):
        end = min(start + chunk, len(bias))
        block = buffer[:, :end - start]
        torch.addmm(bias[start:end], features, weight[start:end].T, out=block)
        inside = (targets >= start) & (targets < end)
        block[rows_b[inside], targets[inside] - start] = float("-inf")   # the target never outranks itself
        if seen is not None:
            lo, hi = bounds[i], bounds[i + 1]
            block[rows[lo:hi], cols[lo:hi] - start] = float("-inf")
        # block > target, in place as 0/1 floats: no bool or int64 copy of the block (3-5x faster).
        # A masked target (-inf) gives -inf - -inf = nan for masked items, and nan > 0 is False.
        higher += block.sub_(target_scores[:, None]).gt_(0).sum(1).long()
    return higher + 1


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
