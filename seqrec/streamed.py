"""Cross-entropy of a linear layer over a large output axis (the item catalogue), streamed in chunks.

F.cross_entropy(features @ weight.T + bias, targets) writes the [M, N] logits out, then log-softmax
passes over them, then backward writes an [M, N] gradient and passes over that: with N = 67k items and
M = 768 rows that is 200 MB a tensor, and the passes, not the matrix products, take most of the time.
Here the logits are made `chunk` items at a time into one small buffer that stays in cache: forward
keeps only each row's log-sum-exp, backward recomputes a chunk's logits (one more product) and turns
them into that chunk's share of every gradient at once. Same values as the unstreamed loss up to float
rounding (tested against it); forward and backward 1.2-1.35x faster at 67k items on the 2-core dev
machine, equal at 1k.
"""
from __future__ import annotations

import torch

CHUNK = 512   # items per block: 768 x 512 floats (1.5 MB) fit in cache; 1024 as fast, 256 and 2048 slower at 67k


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, chunk):
        buffer = features.new_empty(len(features), min(chunk, len(bias)))
        lse = features.new_full((len(features),), float("-inf"))
        for start in range(0, len(bias), chunk):
            block = _logits(features, weight, bias, start, chunk, buffer)
            lse = torch.logaddexp(lse, torch.logsumexp(block, 1))
        target_logits = (features * weight[targets]).sum(1) + bias[targets]
        ctx.save_for_backward(features, weight, bias, targets, lse)
        ctx.chunk = chunk
        return lse - target_logits

    @staticmethod
    def backward(ctx, grad):
        features, weight, bias, targets, lse = ctx.saved_tensors
        d_features, d_weight, d_bias = torch.zeros_like(features), torch.empty_like(weight), torch.empty_like(bias)
        buffer = features.new_empty(len(features), min(ctx.chunk, len(bias)))
        for start in range(0, len(bias), ctx.chunk):
            end = min(start + ctx.chunk, len(bias))
            # d loss / d logits = grad * (softmax - onehot(target)); the softmax part, chunk by chunk:
            block = _logits(features, weight, bias, start, ctx.chunk, buffer).sub_(lse[:, None]).exp_().mul_(grad[:, None])
            d_features.addmm_(block, weight[start:end])
            torch.mm(block.T, features, out=d_weight[start:end])
            torch.sum(block, 0, out=d_bias[start:end])
        # ... and the one-hot part, at the targets only
        d_features.sub_(grad[:, None] * weight[targets])
        d_weight.index_add_(0, targets, -grad[:, None] * features)
        d_bias.index_add_(0, targets, -grad)
        return d_features, d_weight, d_bias, None, None


def _logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, start: int, chunk: int,
            buffer: torch.Tensor) -> torch.Tensor:
    """The logits of items start..start+chunk: [M, <=chunk], written into `buffer`."""
    end = min(start + chunk, len(bias))
    return torch.addmm(bias[start:end], features, weight[start:end].T, out=buffer[:, :end - start])


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Per-row cross-entropy of the logits features @ weight.T + bias against `targets`, never
    materialising the logits. features [M, H], weight [N, H], bias [N], targets [M] (ids in 0..N-1)
    -> [M]. Equal to F.cross_entropy(F.linear(features, weight, bias), targets, reduction="none")."""
    return _LinearCrossEntropy.apply(features.contiguous(), weight, bias, targets, chunk)
