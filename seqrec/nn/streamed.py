"""Kernels over a linear layer with a large output axis (the item catalogue), streamed in chunks.

Cross-entropy, argmax and ranking all need the scores features @ weight.T + bias of every item. Written
out whole, that is an [M, N] tensor (200 MB at M = 768 rows and N = 67k items), and the passes over it,
not the matrix products, take most of the time. `chunked_logits` makes the scores `chunk` items at a
time into one small reused buffer that stays in cache, and each kernel consumes a block before the
next is made:

- `linear_cross_entropy`: forward keeps each row's log-sum-exp; backward recomputes a block (one more
  product) and turns it into that block's share of all three gradients at once. Forward and backward
  1.2-1.35x faster than F.cross_entropy at 67k items on the 2-core dev machine, equal at 1k.
- `argmax_linear`: the best item per row (the double-Q bootstrap's argmax over the catalogue).
- `rank_of_targets_linear`: how many items score above each row's target, and how many tie with it
  (full-ranking evaluation, seen items masked).
- `top_k_linear`: each row's k best items and the log-sum-exp of all its scores (recommendations, and
  the candidates the `mix` head reranks), seen items masked.
"""
from __future__ import annotations

import sys
from typing import Iterator

import torch

from seqrec.evaluation.metrics import NaNScores

CHUNK = 512   # items per block: 768 x 512 floats (1.5 MB) fit in cache; 1024 as fast, 256 and 2048 slower at 67k


def chunked_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int,
                   first: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, block) for items first.., `chunk` at a time: block [M, <= chunk] holds the scores
    features @ weight[start:start+chunk].T + bias[start:start+chunk].

    features [M, H], weight [N, H], bias [N]. Every block is written into the same buffer: use it (or
    overwrite it in place) before asking for the next one.
    """
    buffer = features.new_empty(len(features), max(min(chunk, len(bias) - first), 0))
    for start in range(first, len(bias), chunk):
        end = min(start + chunk, len(bias))
        yield start, torch.addmm(bias[start:end], features, weight[start:end].T, out=buffer[:, :end - start])


# ================================================================================================
# Cross-entropy
# ================================================================================================
def logsumexp_update(lse: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """The rows' running log-sum-exp lse [M] after one more block of logits [M, c]."""
    return torch.logaddexp(lse, torch.logsumexp(block, 1))


def softmax_grad_(block: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A block of logits [M, c] turned into grad [M] * softmax over all items (lse [M]): in place here,
    a new tensor from the compiled kernel (compile_kernels), so use what it returns."""
    return block.sub_(lse[:, None]).exp_().mul_(grad[:, None])


def softmax_grad(block: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """softmax_grad_ out of place: the form torch.compile fuses into one loop."""
    return (block - lse[:, None]).exp() * grad[:, None]


def compile_kernels(device: torch.device | str = "cpu") -> bool:
    """train.compile: run each block's elementwise work (the forward's log-sum-exp, the backward's
    subtract-exp-scale) as one torch.compile'd loop (inductor's C++; symbolic shapes, so the session
    path's varying row counts compile once): 1.11-1.12x the cross-entropy's forward+backward at 3.7k
    and 67k items on 2 cores (benchmarks/compile_ce.py), for seconds of compiling. Where compiling
    fails (no C++ compiler, an unsupported build), one warning line and the eager kernels: False."""
    global logsumexp_update, softmax_grad_
    if softmax_grad_ is not _EAGER[1]:
        return True                                              # compiled already
    try:
        fused = torch.compile(logsumexp_update, dynamic=True), torch.compile(softmax_grad, dynamic=True)
        block, lse = torch.zeros(3, 5, device=device), torch.zeros(3, device=device)
        fused[0](lse, block), fused[1](block, lse, lse)          # compile for `device` now, not in a step
    except Exception as e:                                       # inductor raises many kinds: all mean "no"
        first = (str(e).strip().splitlines() or [""])[0][:160]
        print(f"warning: train.compile: torch.compile failed ({type(e).__name__}: {first}); "
              "training runs uncompiled", file=sys.stderr)
        return False
    logsumexp_update, softmax_grad_ = fused
    return True


_EAGER = logsumexp_update, softmax_grad_


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, chunk):
        lse = features.new_full((len(features),), float("-inf"))
        for _, block in chunked_logits(features, weight, bias, chunk):
            lse = logsumexp_update(lse, block)
        target_logits = (features * weight[targets]).sum(1) + bias[targets]
        ctx.save_for_backward(features, weight, bias, targets, lse)
        ctx.chunk = chunk
        return lse - target_logits

    @staticmethod
    def backward(ctx, grad):
        features, weight, bias, targets, lse = ctx.saved_tensors
        d_features, d_weight, d_bias = torch.zeros_like(features), torch.empty_like(weight), torch.empty_like(bias)
        for start, block in chunked_logits(features, weight, bias, ctx.chunk):
            end = start + block.shape[1]
            # d loss / d logits = grad * (softmax - onehot(target)); the softmax part, block by block:
            block = softmax_grad_(block, lse, grad)
            d_features.addmm_(block, weight[start:end])
            torch.mm(block.T, features, out=d_weight[start:end])
            torch.sum(block, 0, out=d_bias[start:end])
        # ... and the one-hot part, at the targets only
        d_features.sub_(grad[:, None] * weight[targets])
        d_weight.index_add_(0, targets, -grad[:, None] * features)
        d_bias.index_add_(0, targets, -grad)
        return d_features, d_weight, d_bias, None, None


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Per-row cross-entropy of the logits features @ weight.T + bias against `targets`, never
    materialising the logits. features [M, H], weight [N, H], bias [N], targets [M] (ids in 0..N-1)
    -> [M]. Equal to F.cross_entropy(F.linear(features, weight, bias), targets, reduction="none")."""
    return _LinearCrossEntropy.apply(features.contiguous(), weight, bias, targets, chunk)


# ================================================================================================
# Argmax
# ================================================================================================
@torch.no_grad()
def argmax_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """argmax over items 1..N of features @ weight.T + bias (column 0, padding, never wins).

    features [..., H], weight [N+1, H], bias [N+1] -> item ids [...] in 1..N; ties go to the lowest id.
    """
    flat = features.reshape(-1, features.shape[-1])
    best_score = flat.new_full((len(flat),), float("-inf"))
    best_item = torch.ones(len(flat), dtype=torch.long, device=flat.device)
    for start, block in chunked_logits(flat, weight, bias, chunk, first=1):
        score, item = block.max(1)
        better = score > best_score                      # strictly: an earlier chunk keeps its ties
        best_score = torch.where(better, score, best_score)
        best_item = torch.where(better, item + start, best_item)
    return best_item.view(features.shape[:-1])


# ================================================================================================
# Ranking
# ================================================================================================
TIE_TOLERANCE = 1e-5   # relative: far above float32 rounding of a 64-term dot product (~1e-7), far below real score gaps


def tie_band(target_scores: torch.Tensor) -> torch.Tensor:
    """How close an item's score must be to the target's to tie with it: [B] -> [B] (0 for -inf).

    The target's score is a dot product, the others' come out of a GEMM block: the same products
    summed in another order, which differ in the last bits. Without a band, a collapsed head (every
    item scored alike) would rank each target first or last by rounding, not by the model.
    """
    finite = torch.isfinite(target_scores)
    return torch.where(finite, TIE_TOLERANCE * (1.0 + target_scores.abs()), torch.zeros_like(target_scores))


@torch.no_grad()
def rank_of_targets_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                           targets: torch.Tensor, seen: torch.Tensor | None = None,
                           chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """metrics.rank_of_targets(features @ weight.T + bias, targets) with the padding column 0 and the
    `seen` items masked, without materialising the [B, N+1] score matrix.

    features [B, H], weight [N+1, H], bias [N+1], targets [B] in 1..N, seen [B, S] item ids to mask
    (0 = none; a masked target ranks below every unmasked item) -> (higher [B], ties [B]) int64: the
    items scored above the target, and the other items tied with it (within `tie_band` of its score).
    metrics.NaNScores if the layer holds NaN or an infinity, from which NaN scores would come.
    """
    if not all(bool(torch.isfinite(part).all()) for part in (features, weight, bias)):
        rows = int((~torch.isfinite(features)).any(1).sum())
        where = f"{rows} of {len(features)} rows' features" if rows else "the item weights"
        raise NaNScores(f"{where} hold NaN or inf")
    target_scores = target_scores_linear(features, weight, bias, targets, seen)
    masked = seen_by_chunk(seen, len(bias), chunk) if seen is not None else None
    band = tie_band(target_scores)
    above, at_least = (target_scores + band)[:, None], (target_scores - band)[:, None]
    higher = torch.zeros(len(targets), dtype=torch.int64, device=features.device)
    not_below = torch.zeros_like(higher)
    rows_b = torch.arange(len(targets), device=features.device)
    spare = features.new_empty(len(targets), max(min(chunk, len(bias) - 1), 0))
    for i, (start, block) in enumerate(chunked_logits(features, weight, bias, chunk, first=1)):
        end = start + block.shape[1]
        inside = (targets >= start) & (targets < end)
        block[rows_b[inside], targets[inside] - start] = float("-inf")   # the target is not its own tie
        if masked is not None:
            mask_block_(block, masked, i, start)
        # Counted as 0/1 floats, the second time in place: no bool or int64 copy of the block (3-5x
        # faster). A masked target (-inf) compares False with every masked item (-inf - -inf = nan).
        higher += torch.gt(block, above, out=spare[:, :end - start]).sum(1).long()
        not_below += block.sub_(at_least).ge_(0).sum(1).long()
    return higher, not_below - higher


def target_scores_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                         seen: torch.Tensor | None = None) -> torch.Tensor:
    """The score of each row's target [B], -inf where `seen` [B, S] holds it (a masked target)."""
    scores = (features * weight[targets]).sum(-1) + bias[targets]
    return scores if seen is None else scores.masked_fill((seen == targets[:, None]).any(1), float("-inf"))


def seen_by_chunk(seen: torch.Tensor, columns: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The nonzero entries of seen [B, S] (item ids, 0 = none) as (rows, items) sorted by item, and
    where each `chunk` of the columns 1..columns-1 starts among them: what `mask_block_` needs."""
    rows, cols = torch.nonzero(seen, as_tuple=True)
    cols = seen[rows, cols]
    by_col = torch.argsort(cols)
    starts = torch.arange(1, columns + chunk, chunk, device=cols.device)
    return rows[by_col], cols[by_col], torch.searchsorted(cols[by_col], starts).tolist()


def mask_block_(block: torch.Tensor, masked: tuple, i: int, start: int) -> None:
    """Set the seen items of block number i (columns start..) to -inf, in place."""
    rows, cols, bounds = masked
    lo, hi = bounds[i], bounds[i + 1]
    block[rows[lo:hi], cols[lo:hi] - start] = float("-inf")


@torch.no_grad()
def top_k_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int,
                 seen: torch.Tensor | None = None, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's k best items of features @ weight.T + bias, the padding column 0 and the `seen` items
    masked, without materialising the [B, N+1] score matrix: memory is B x (chunk + k) whatever N.

    features [B, H], weight [N+1, H], bias [N+1], seen [B, S] (0 = none) -> (scores [B, k'], items
    [B, k'] in 1..N, best first, k' = min(k, N); a row with fewer than k' unmasked items ends in
    -inf), and the log-sum-exp of each row's unmasked scores [B] (log pi = score - lse).
    metrics.NaNScores if the scores hold NaN."""
    k = min(k, len(bias) - 1)
    best = features.new_full((len(features), k), float("-inf"))
    best_items = torch.zeros(len(features), k, dtype=torch.long, device=features.device)
    lse = features.new_full((len(features),), float("-inf"))
    masked = seen_by_chunk(seen, len(bias), chunk) if seen is not None else None
    for i, (start, block) in enumerate(chunked_logits(features, weight, bias, chunk, first=1)):
        if masked is not None:
            mask_block_(block, masked, i, start)
        if torch.isnan(block).any():
            raise NaNScores(f"{int(torch.isnan(block).any(1).sum())} of {len(block)} rows hold NaN")
        lse = logsumexp_update(lse, block)
        values, at = block.topk(min(k, block.shape[1]), 1)
        merged, pick = torch.cat([best, values], 1).topk(k, 1)            # the running best stays first on ties
        best_items = torch.cat([best_items, at + start], 1).gather(1, pick)
        best = merged
    return best, best_items, lse
