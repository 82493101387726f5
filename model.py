"""The network, a GRU state encoder over item embeddings with multi-step self-supervised heads and a
Q head, and its training loss (as nanoGPT's model module computes its own loss):

    loss = sum_k w_k CE(a_{t+k} | s_t)  +  alpha * TD(Q(s_{t+k}, a_{t+k}), G^lambda_k)

with the lambda-returns G^lambda of td_lambda.py bootstrapped from a target network.

Item 0 is padding everywhere: its embedding is zero and its column in every head is masked to -inf
wherever items are ranked or maximised over. The model knows nothing of files or pools.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqrec.batches import Batch, candidate_items
from seqrec.config import load_config
from seqrec.distributed import SINGLE, Dist
from seqrec.errors import UserError
from seqrec.streamed import argmax_linear
from ssl_heads import MultiStepHeads, multi_step_loss
from td_lambda import lambda_returns

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


class SASRecStateEncoder(nn.Module):
    """SASRec (Kang and McAuley, 2018): item plus learned position embeddings, then blocks of causal
    self-attention, each position attending to itself and at most max_len - 1 earlier items. Defaults as
    RecBole's SASRec at hidden 64: 2 blocks, 2 heads, feed-forward 4 x hidden, GELU, N(0, 0.02) init.

    Left padding (item 0) is never attended to, and positions count from a window's first real item,
    so a state depends only on the items before it, not on how much padding precedes them.
    """

    def __init__(self, num_items: int, hidden: int, dropout: float, max_len: int, layers: int, heads: int):
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.embed = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=4 * hidden, dropout=dropout,
                                           activation="gelu", batch_first=True, layer_norm_eps=1e-12)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, W] (left-padded with 0) -> states [B, W, H]; output w depends on items[:, :w+1] only."""
        W = items.shape[1]
        pad = items == 0
        leading = (~pad).int().cumsum(1) == 0                          # [B, W] padding before the first item
        pos = (torch.arange(W, device=items.device) - leading.sum(1, keepdim=True)).clamp(min=0) % self.max_len
        x = self.drop(self.norm(self.embed(items) + self.positions(pos)))
        return self.blocks(x, mask=self._attention_mask(pad))

    def _attention_mask(self, pad: torch.Tensor) -> torch.Tensor:
        """[B * heads, W, W] additive mask: query i sees key j <= i within max_len, never padding keys
        (but always itself, so a padding query still has a finite output)."""
        W = pad.shape[1]
        i = torch.arange(W, device=pad.device)
        allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.max_len)      # [W, W]
        allowed = (allowed[None] & ~pad[:, None, :]) | torch.eye(W, dtype=torch.bool, device=pad.device)[None]
        mask = torch.zeros(allowed.shape, device=pad.device).masked_fill(~allowed, float("-inf"))
        return mask.repeat_interleave(self.heads, dim=0)


def state_encoder(num_items: int, model: dict) -> nn.Module:
    """The encoder named by model.encoder, built from the config's `model` section."""
    if model["encoder"] == "sasrec":
        return SASRecStateEncoder(num_items, model["hidden"], model["dropout"], model["max_len"], model["layers"],
                                  model["heads"])
    return GRUStateEncoder(num_items, model["hidden"], model["dropout"])


class SeqRecQ(nn.Module):
    """State encoder (GRU or SASRec) + K-step self-supervised heads + Q head over all items."""

    def __init__(self, num_items: int, *, hidden: int, dropout: float, ssl_steps: int,
                 encoder: nn.Module | None = None):
        super().__init__()
        self.num_items = num_items
        self.encoder = encoder if encoder is not None else GRUStateEncoder(num_items, hidden, dropout)
        self.ssl = MultiStepHeads(hidden, num_items, ssl_steps)
        self.q_head = nn.Linear(hidden, num_items + 1)

    @classmethod
    def from_config(cls, model: dict, num_items: int) -> "SeqRecQ":
        return cls(num_items, hidden=model["hidden"], dropout=model["dropout"], ssl_steps=model["ssl_steps"],
                   encoder=state_encoder(num_items, model))

    @classmethod
    def from_checkpoint(cls, ckpt: dict, num_items: int) -> "SeqRecQ":
        """The trained network of a checkpoint dict (learner.Learner.state), in eval mode, for a pool of
        `num_items` items (a UserError if the checkpoint scores another catalogue)."""
        if ckpt["num_items"] != num_items:
            raise UserError(f"the checkpoint scores {ckpt['num_items']} items but the pool has {num_items}; "
                            "use the data config the model was trained with")
        # Keys added to config.yaml after the checkpoint was made take their defaults.
        model = cls.from_config(load_config(base=ckpt["config"]).model.to_dict(), ckpt["num_items"])
        model.load_state_dict(ckpt["model"])
        return model.eval()

    def forward(self, state: torch.Tensor, actions: torch.Tensor, candidates: torch.Tensor | None = None,
                log_inclusion: torch.Tensor | None = None,
                with_q: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Everything the training loss differentiates, in one call (what DistributedDataParallel wraps).

        state [B, L], actions [B, T] -> states s_t..s_{t+T} [B, T+1, H], the per-sample cross-entropy
        [B, K] of s_t's K self-supervised heads against a_t..a_{t+K-1} (over all items, or over
        `candidates` [C], logQ-corrected by `log_inclusion` [N+1]), and Q(s_{t+k}, a_{t+k}) of the taken
        actions [B, T] (None without `with_q`).
        """
        states = self.window_states(state, actions)
        ce = self.ssl.cross_entropy(states[:, 0], actions[:, :self.ssl.steps], candidates, log_inclusion)
        return states, ce, self.q_of(states[:, :-1], actions) if with_q else None

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


# ================================================================================================
# The loss
# ================================================================================================
def next_state_values(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor,
                      kind: str, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """V(s') [B, T] from the online and target nets' states of s' [B, T, H]: `double` = the target net's
    Q at the online net's argmax (only that item is scored by the target), `max` = the target's max.
    Over all items 1..N, or over `candidates` [C] (sampled)."""
    if kind == "max":
        return target_net.max_q(target_states, candidates)
    return target_net.q_of(target_states, net.greedy_items(states, candidates))


def compute_losses(model, target_net: SeqRecQ, b: Batch, t, dist: Dist = SINGLE, step: int = 0,
                   log_inclusion: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """CE of the K self-supervised steps + alpha * TD(lambda) loss of the Q head on one batch; `t` is
    the config's `train` section. Returns (loss, stats for the log). With alpha = 0 the Q head, the
    target network and the bootstrap's argmax are skipped altogether (q_mean is then NaN).

    With `train.negatives` > 0 both score a shared candidate set instead of all items (sampled
    softmax, logQ-corrected by `log_inclusion` [N+1] when given; the bootstrap max runs over the
    candidates), which keeps large catalogues cheap.

    Means are taken over the valid steps of the *global* batch (all ranks), and the loss is scaled by
    the number of ranks, so DistributedDataParallel's gradient average is the single-process gradient.
    """
    net = getattr(model, "module", model)                      # the network behind a DDP wrapper
    with_td = t.alpha > 0                                      # alpha = 0: no Q head, target pass or argmax at all
    cand = candidate_items(b.actions, t.negatives, net.num_items, t.seed, step) if t.negatives else None
    states, ssl_ce, q_taken = model(b.state, b.actions, cand, log_inclusion, with_q=with_td)  # [B, T+1, H], [B, K], [B, T]
    K = ssl_ce.shape[1]
    ce = multi_step_loss(ssl_ce, b.valid[:, :K],
                         torch.tensor(t.ssl_weights[:K], dtype=ssl_ce.dtype, device=ssl_ce.device),
                         counts=dist.sum(b.valid[:, :K].to(ssl_ce.dtype).sum(0)))
    if not with_td:
        return ce * dist.world, {"loss": ce.item(), "ce": ce.item(), "td": 0.0, "q_mean": math.nan}
    with torch.no_grad():                                      # over all items, or over the candidates
        target_states = target_net.window_states(b.state, b.actions)[:, 1:]
        next_v = next_state_values(net, target_net, states[:, 1:], target_states, t.value, cand)  # V(s_{t+k+1})
        returns = lambda_returns(b.rewards, next_v, b.dones, t.gamma, t.lam)
    td_fn = F.huber_loss if t.td_loss == "huber" else F.mse_loss
    valid = b.valid.to(q_taken.dtype)
    count = dist.sum(valid.sum()).clamp(min=1.0)
    td = (td_fn(q_taken, returns, reduction="none") * valid).sum() / count

    loss = ce + t.alpha * td
    # Each rank's stats are its share of the global value: summed over ranks they are exact.
    stats = {"loss": loss.item(), "ce": ce.item(), "td": td.item(),
             "q_mean": ((q_taken.detach() * valid).sum() / count).item()}
    return loss * dist.world, stats
