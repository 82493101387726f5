"""The network: a GRU state encoder over item embeddings, multi-step self-supervised heads and a Q head.

Item 0 is padding everywhere: its embedding is zero and its column in every head is masked to -inf
wherever items are ranked or maximised over. The model knows nothing of files or pools.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ssl_heads import MultiStepHeads

HEADS = ("ssl", "q")


class GRUStateEncoder(nn.Module):
    def __init__(self, num_items: int, hidden: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, W] -> states [B, W, H]; output w is the state after reading items[:, :w+1]."""
        out, _ = self.gru(self.drop(self.embed(items)))
        return self.drop(out)


class SeqRecQ(nn.Module):
    """GRU encoder + K-step self-supervised heads + Q head over all items."""

    def __init__(self, num_items: int, hidden: int = 64, dropout: float = 0.1, ssl_steps: int = 1):
        super().__init__()
        self.num_items = num_items
        self.encoder = GRUStateEncoder(num_items, hidden, dropout)
        self.ssl = MultiStepHeads(hidden, num_items, ssl_steps)
        self.q_head = nn.Linear(hidden, num_items + 1)

    @classmethod
    def from_config(cls, model: dict, num_items: int) -> "SeqRecQ":
        return cls(num_items, hidden=model["hidden"], dropout=model["dropout"], ssl_steps=model["ssl_steps"])

    def forward(self, state: torch.Tensor, actions: torch.Tensor, candidates: torch.Tensor | None = None,
                log_inclusion: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything the training loss differentiates, in one call (what DistributedDataParallel wraps).

        state [B, L], actions [B, T] -> states s_t..s_{t+T} [B, T+1, H], the per-sample cross-entropy
        [B, K] of s_t's K self-supervised heads against a_t..a_{t+K-1} (over all items, or over
        `candidates` [C], logQ-corrected by `log_inclusion` [N+1]), and Q(s_{t+k}, a_{t+k}) of the taken
        actions [B, T].
        """
        states = self.window_states(state, actions)
        ce = self.ssl.cross_entropy(states[:, 0], actions[:, :self.ssl.steps], candidates, log_inclusion)
        return states, ce, self.q_of(states[:, :-1], actions)

    def window_states(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The states s_t .. s_{t+T} of a window, from ONE pass of the GRU over state items + actions.

        state [B, L], actions [B, T] -> [B, T+1, H]. s_{t+k} is the output after a_{t+k-1}.
        """
        L = state.shape[1]
        return self.encoder(torch.cat([state, actions], dim=1))[:, L - 1:]

    def last_state(self, state: torch.Tensor) -> torch.Tensor:
        """state [B, L] -> s_t [B, H], the state after the last item of the history."""
        return self.encoder(state)[:, -1]

    def q_values(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """states [..., H] -> Q [..., N+1] (column 0 is padding: mask it before max or ranking), or
        only for the item ids in `candidates` [C] -> [..., C]."""
        states = states.contiguous()   # a strided slice (states[:, 1:]) would make matmul a slow bmm
        if candidates is None:
            return self.q_head(states)
        return F.linear(states, self.q_head.weight[candidates], self.q_head.bias[candidates])

    def greedy_items(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """argmax_a Q(s, a) over items 1..N, or over the item ids in `candidates` [C]: states [..., H] ->
        item ids [...]. Over all items it is streamed (argmax_linear): no [..., N+1] Q matrix."""
        if candidates is not None:
            return candidates[self.q_values(states, candidates).argmax(-1)]
        return argmax_linear(states, self.q_head.weight, self.q_head.bias)

    def max_q(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """max_a Q(s, a) over items 1..N (or over `candidates`): states [..., H] -> [...]."""
        q = self.q_values(states, candidates)
        return (q if candidates is not None else q[..., 1:]).max(-1).values

    def q_of(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(s, a) of given actions only: states [..., H], actions [...] -> [...].

        Equal to q_values(states).gather(-1, actions), without scoring every item: the TD loss needs
        gradients for the taken actions alone.
        """
        return (states * self.q_head.weight[actions]).sum(-1) + self.q_head.bias[actions]

    def score_layer(self, state: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ranking scores of head `ssl` (next-item logits) or `q` as a linear layer over items:
        state [B, H] -> (features [B, H], weight [N+1, H], bias [N+1]), scores = features @ weight.T + bias.

        Full-ranking evaluation streams this in chunks instead of building the [B, N+1] matrix.
        """
        if head == "ssl":
            return self.ssl.step_features(state, 0), self.ssl.items.weight, self.ssl.items.bias
        return state, self.q_head.weight, self.q_head.bias

    def scores(self, state: torch.Tensor, head: str) -> torch.Tensor:
        """Ranking scores [B, N+1] from state [B, H] by head `ssl` (next-item logits) or `q`; padding -inf."""
        features, weight, bias = self.score_layer(state, head)
        scores = torch.addmm(bias, features, weight.T)
        scores[..., 0] = float("-inf")  # in place: a fresh tensor, and no backward needs a layer's output
        return scores


def model_device(module) -> torch.device:
    """Where a module's parameters (or buffers) live; the CPU for anything without tensors."""
    if isinstance(module, nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def argmax_linear(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """argmax over items 1..N of features @ weight.T + bias (column 0, padding, never wins), `chunk`
    items at a time in one reused buffer, so the [..., N+1] score matrix is never written out.

    features [..., H], weight [N+1, H], bias [N+1] -> item ids [...] in 1..N; ties go to the lowest id.
    """
    flat = features.reshape(-1, features.shape[-1])
    best_score = flat.new_full((len(flat),), float("-inf"))
    best_item = torch.ones(len(flat), dtype=torch.long, device=flat.device)
    buffer = flat.new_empty(len(flat), min(chunk, len(bias) - 1))
    for start in range(1, len(bias), chunk):
        end = min(start + chunk, len(bias))
        block = torch.addmm(bias[start:end], flat, weight[start:end].T, out=buffer[:, :end - start])
        score, item = block.max(1)
        better = score > best_score                      # strictly: an earlier chunk keeps its ties
        best_score = torch.where(better, score, best_score)
        best_item = torch.where(better, item + start, best_item)
    return best_item.view(features.shape[:-1])
