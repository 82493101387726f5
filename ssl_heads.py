"""Multi-step self-supervised heads: from the state s_t, predict the items a_t, a_{t+1}, ..., a_{t+K-1}.

All K steps share one item output matrix (the expensive [N+1, H] part); step k owns only a small
H x H transform and shift, initialised to the identity, so parameters grow as K*H*H + N*H, not K*N*H.
Step 0 is the usual next-item head.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from seqrec.nn.streamed import linear_cross_entropy


class MultiStepHeads(nn.Module):
    def __init__(self, hidden: int, num_items: int, steps: int):
        super().__init__()
        self.steps = steps
        self.transforms = nn.Parameter(torch.eye(hidden).repeat(steps, 1, 1))  # [K, H, H]
        self.shifts = nn.Parameter(torch.zeros(steps, hidden))                 # [K, H]
        self.items = nn.Linear(hidden, num_items + 1)                          # shared; column 0 = padding

    def forward(self, state: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """state [B, H] -> logits [B, K, N+1] of the K steps, or only for the item ids in `candidates` [C]
        -> [B, K, C] (sampled softmax)."""
        per_step = self.features(state)
        if candidates is None:
            return self.items(per_step)
        return F.linear(per_step, self.items.weight[candidates], self.items.bias[candidates])

    def cross_entropy(self, state: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor | None = None,
                      log_inclusion: torch.Tensor | None = None, drawn: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample cross-entropy of the K steps: state [B, H], targets [B, K] (item ids) -> [B, K].

        Over all items it is streamed (linear_cross_entropy): the [B, K, N+1] logits are never written
        out. Over `candidates` [C] (sampled softmax; every target must be among them) each candidate's
        logit loses its log inclusion probability `log_inclusion` [N+1] (on the heads' device) when given
        (logQ correction). With `drawn` [D] (train.ssl_negatives) step 0 stays over all items and each
        later step's target is scored against those D uniform draws alone (sampled_cross_entropy).
        """
        if candidates is not None:
            logits = self(state, candidates)                                          # [B, K, C]
            if log_inclusion is not None:
                logits = logits - log_inclusion[candidates]
            positions = torch.searchsorted(candidates, targets)                            # target ids -> columns
            return F.cross_entropy(logits.flatten(0, 1), positions.flatten(), reduction="none").view_as(targets)
        per_step = self.features(state)                                               # [B, K, H]
        full = self.steps if drawn is None else 1
        exact = linear_cross_entropy(per_step[:, :full].flatten(0, 1), self.items.weight, self.items.bias,
                                     targets[:, :full].flatten()).view(len(state), full)
        if full == self.steps:
            return exact
        return torch.cat([exact, self.sampled_cross_entropy(per_step[:, full:], targets[:, full:], drawn)], 1)

    def sampled_cross_entropy(self, features: torch.Tensor, targets: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """-log softmax of each target's logit among itself and the `drawn` [D] items (a draw that is the
        target is left out): features [B, K', H] (the item layer's inputs), targets [B, K'] -> [B, K'].
        The draws are uniform, so every item's log proposal probability is the same and the logQ
        correction cancels; the cost is D + 1 products a row instead of N + 1."""
        weight, bias = self.items.weight, self.items.bias
        positive = (features * weight[targets]).sum(-1) + bias[targets]                        # [B, K']
        negative = F.linear(features, weight[drawn], bias[drawn])                              # [B, K', D]
        negative = negative.masked_fill(drawn == targets[..., None], float("-inf"))
        return torch.logsumexp(torch.cat([positive[..., None], negative], -1), -1) - positive

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """state [B, H] -> the inputs [B, K, H] of the shared item layer, one per step."""
        return torch.einsum("bh,khg->bkg", state, self.transforms) + self.shifts

    def step_features(self, state: torch.Tensor, step: int) -> torch.Tensor:
        """state [B, H] -> the input [B, H] of the shared item layer for step `step` (its own transform)."""
        return state @ self.transforms[step] + self.shifts[step]


def multi_step_loss(ce: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor,
                    counts: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k weights[k] * mean cross-entropy of step k over the samples where step k is in the session.

    ce [B, K] per-sample cross-entropy (MultiStepHeads.cross_entropy), valid [B, K] bool, weights [K];
    counts [K], the number of valid samples per step to divide by (default: this batch's; a
    distributed run passes the global batch's).
    """
    valid = valid.to(ce.dtype)
    counts = valid.sum(0) if counts is None else counts
    per_step = (ce * valid).sum(0) / counts.clamp(min=1.0)
    return (weights * per_step).sum()


def slate_cross_entropy(heads: MultiStepHeads, states: torch.Tensor, slates: torch.Tensor, clicked: torch.Tensor):
    """The next-item head as a choice among what was shown: -log softmax over the slate's items
    (conditional logit, the user's choice model given that something was clicked) of the clicked one.
    states [n, H], slates [n, m] (0 = padding), clicked [n] -> (CE [n], whether the click is in its slate [n])."""
    features = heads.step_features(states, 0)                                                # [n, H]
    logits = (features[:, None, :] * heads.items.weight[slates]).sum(-1) + heads.items.bias[slates]   # [n, m]
    hit = (slates == clicked[:, None]) & (slates > 0)
    known = hit.any(1)
    logits = logits.masked_fill(slates == 0, float("-inf"))
    picked = logits.masked_fill(~hit, 0.0).sum(1)                            # the clicked item's logit
    return torch.logsumexp(logits.masked_fill(~known[:, None], 0.0), 1) - picked.where(known, 0.0), known


def with_slate_choice(heads: MultiStepHeads, ce: torch.Tensor, states: torch.Tensor, slates: torch.Tensor,
                      clicked: torch.Tensor) -> torch.Tensor:
    """ce [n, K] with step 0 replaced by the choice among the slate shown (slate_cross_entropy) where
    the click is in its slate: states [n, H], slates [n, m], clicked [n] of the n trained states."""
    slate_ce, known = slate_cross_entropy(heads, states, slates, clicked)
    return torch.cat([torch.where(known, slate_ce, ce[:, 0])[:, None], ce[:, 1:]], 1)
