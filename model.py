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

from seqrec.batches import Batch, Chunk, candidate_items
from seqrec.config import load_config
from seqrec.distributed import SINGLE, Dist
from seqrec.errors import UserError
from seqrec.metrics import NaNScores
from seqrec.streamed import argmax_linear, top_k_linear
from ssl_heads import MultiStepHeads, multi_step_loss
from td_lambda import lambda_returns, sliding_lambda_returns

HEADS = ("ssl", "q", "mix")   # mix: the ssl head's top candidates reranked by the value (rerank)


def ahead(count: int, steps: int, device=None) -> torch.Tensor:
    """Index [count, steps] of the `steps` positions from each of positions 0..count-1: row j is
    j, j+1, ..., j+steps-1. Turns per-session arrays [B, W] into windows [B, count, steps]."""
    return torch.arange(count, device=device)[:, None] + torch.arange(steps, device=device)


def leading_padding(items: torch.Tensor) -> torch.Tensor:
    """How many padding items (0) precede each row's first real item: items [B, W] -> [B, 1]."""
    return ((items != 0).int().cumsum(1) == 0).sum(1, keepdim=True)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with its mask drawn as 16-bit integers, four from each 64-bit random word: on the CPU
    3x faster than F.dropout (whose per-element Bernoulli draws took over a third of a SASRec step).
    p is kept to 1/65536; gradients flow through the product as through F.dropout."""
    if not training or p == 0.0:
        return x
    n = x.numel()
    # the whole int64 range: random_() alone leaves the top bit 0, and with it every fourth int16 non-negative
    words = torch.empty(n // 4 + 1, dtype=torch.int64, device=x.device).random_(-2 ** 63, 2 ** 63 - 1)
    keep = words.view(torch.int16)[:n].view_as(x) >= round(p * 65536) - 32768     # uniform on [-32768, 32767]
    return x * keep * (1.0 / (1.0 - p))


class GRUStateEncoder(nn.Module):
    """GRU4Rec's state: a GRU over item embeddings. The state of the empty history, s_0, is the GRU's
    output after reading one padding item from h = 0; left padding beyond that is not read, so a state
    depends only on the items before it, not on how much padding precedes them (as for SASRec)."""

    def __init__(self, num_items: int, hidden: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def empty_state(self) -> torch.Tensor:
        """s_0 [H]: the output after reading one padding item (a zero embedding) from h = 0."""
        x = torch.zeros(1, 1, self.gru.input_size, device=self.embed.weight.device, dtype=self.embed.weight.dtype)
        return self.gru(x)[0][0, 0]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, W] (left-padded with 0) -> states [B, W, H]; output w is the state after reading
        items[:, :w+1], s_0 at padding positions."""
        B, W = items.shape
        lead = leading_padding(items)                                             # [B, 1]
        cols = torch.arange(W, device=items.device)
        shifted = items.gather(1, (cols + lead) % W)                              # real items first
        s0 = self.empty_state()
        out, _ = self.gru(self.drop(self.embed(shifted)), s0.expand(1, B, -1).contiguous())
        out = out.gather(1, ((cols - lead) % W)[..., None].expand(-1, -1, out.shape[-1]))  # back in place
        return self.drop(torch.where((cols < lead)[..., None], s0, out))

    # ------------------------------------------------------------- the session path: chunk by chunk
    def start(self, lanes: int) -> torch.Tensor:
        """What a lane carries into its first chunk: s_0. [lanes, H]"""
        return self.empty_state().expand(lanes, -1)

    def restart(self, carry: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """carry [B, H] with the lanes where `fresh` [B] (a new session begins) set back to s_0."""
        return torch.where(fresh[:, None], self.empty_state(), carry)

    def read(self, items: torch.Tensor, carry: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue each lane's session by `items` [B, W] (right-padded) from `carry` [B, H] (its state
        before items[:, 0]) -> (states [B, W+1, H]: state before items[:, 0], then after each item;
        the carry for the next chunk, the state after the first `keep` items, detached: gradients
        stop at chunk boundaries)."""
        out, _ = self.gru(self.drop(self.embed(items)), carry[None].contiguous())
        raw = torch.cat([carry[:, None], out], dim=1)
        return self.drop(raw), raw[:, keep].detach()


class SASRecStateEncoder(nn.Module):
    """SASRec (Kang and McAuley, 2018): item plus learned position embeddings, then blocks of causal
    self-attention, each position attending to itself and at most max_len - 1 earlier items. Defaults as
    RecBole's SASRec at hidden 64: 2 blocks, 2 heads, feed-forward 4 x hidden, GELU, N(0, 0.02) init.

    Left padding (item 0) is never attended to, and positions count from a window's first real item,
    so a state depends only on the items before it, not on how much padding precedes them. A position
    index is the item's place in its session modulo max_len.
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
        index = (torch.arange(items.shape[1], device=items.device) - leading_padding(items)).expand_as(items)
        allowed = self._allowed(index, index, items == 0)
        if self.training:
            return self._encode(items, index, allowed)[0]
        # Evaluating: the module's own fused inference kernel is faster than the blocks written out
        # (equal to them to float rounding: tested)
        mask = torch.zeros(allowed.shape, device=items.device).masked_fill(~allowed, float("-inf"))
        return self.blocks(self._inputs(items, index), mask=mask.repeat_interleave(self.heads, dim=0))

    def _encode(self, items: torch.Tensor, index: torch.Tensor, allowed: torch.Tensor, past=None):
        """items [B, W], index [B, W] each item's place in its session (< 0: leading padding), allowed [B, W, P + W]
        which keys each query sees (the P positions of `past` first), past [blocks, 2, B, heads, P, d]: each
        block's keys and values of earlier positions -> (states [B, W, H], each block's (keys, values)
        [B, heads, W, d] of these W positions). The blocks are nn.TransformerEncoderLayer's (post-norm, GELU), their weights read
        directly so that earlier positions' keys and values can be reused instead of recomputed."""
        x = self._inputs(items, index)
        B, W, H = x.shape
        mask, fresh = allowed[:, None], []
        drop = lambda t, module: fast_dropout(t, module.p, self.training)   # noqa: E731
        for b, layer in enumerate(self.blocks.layers):
            attn = layer.self_attn
            q, k, v = (t.view(B, W, self.heads, -1).transpose(1, 2)
                       for t in F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
            fresh.append((k, v))
            if past is not None:
                k, v = torch.cat([past[b][0], k], 2), torch.cat([past[b][1], v], 2)
            if self.training and attn.dropout > 0:            # the attention weights' dropout, written out
                weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
                a = fast_dropout(weights.softmax(-1), attn.dropout, True) @ v
            else:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = layer.norm1(x + drop(attn.out_proj(a.transpose(1, 2).reshape(B, W, H)), layer.dropout1))
            x = layer.norm2(x + drop(layer.linear2(drop(layer.activation(layer.linear1(x)), layer.dropout)), layer.dropout2))
        return x, fresh

    def _inputs(self, items: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The first block's input: item plus position embeddings, normalised. [B, W], [B, W] -> [B, W, H]"""
        return fast_dropout(self.norm(self.embed(items) + self.positions(index.clamp(min=0) % self.max_len)),
                            self.drop.p, self.training)

    def _allowed(self, query_index: torch.Tensor, key_index: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
        """[B, W, P + W]: query i sees key j when j is no later than i and within max_len of it, never a
        padding key, but always itself (the last W keys are the queries), so that a padding query still
        has a finite output. query_index [B, W], key_index, key_pad [B, P + W]."""
        qi, kj = query_index[:, :, None], key_index[:, None, :]
        allowed = (kj <= qi) & (qi - kj < self.max_len) & ~key_pad[:, None, :]
        W, P = query_index.shape[1], key_index.shape[1] - query_index.shape[1]
        itself = torch.arange(P + W, device=kj.device)[None, :] == (P + torch.arange(W, device=kj.device))[:, None]
        return allowed | itself[None]

    def empty_state(self) -> torch.Tensor:
        """s_0 [H]: the output at one padding item, as a state after nothing."""
        items = torch.zeros(1, 1, dtype=torch.long, device=self.embed.weight.device)
        return self(items)[0, 0]

    # ------------------------------------------------------------- the session path: chunk by chunk
    # A lane carries each block's keys and values of the max_len positions before its chunk (attention
    # reaches max_len - 1 items back, so that is all the past a state needs), their places in the session
    # and which of them are padding, and the state before the chunk: what the GRU's h is to the GRU.
    def start(self, lanes: int):
        """What a lane carries into its first chunk: a past of padding, place 0, s_0."""
        p, M = self.embed.weight, self.max_len
        kv = torch.zeros(len(self.blocks.layers), 2, lanes, self.heads, M, p.shape[1] // self.heads,
                         device=p.device, dtype=p.dtype)
        index = torch.arange(-M, 0, device=p.device).expand(lanes, -1)
        pad = torch.ones(lanes, M, dtype=torch.bool, device=p.device)
        return kv, index, pad, torch.zeros(lanes, dtype=torch.long, device=p.device), self.empty_state().expand(lanes, -1)

    def restart(self, carry, fresh: torch.Tensor):
        """carry with the lanes where `fresh` [B] (a new session begins) set back to the start."""
        kv, index, pad, place, last = carry
        return (kv, index, pad | fresh[:, None], place.masked_fill(fresh, 0),
                torch.where(fresh[:, None], self.empty_state(), last))

    def read(self, items: torch.Tensor, carry, keep: int):
        """As GRUStateEncoder.read: items [B, W] continue each lane's session after `carry` ->
        (states [B, W+1, H], the carry after the first `keep` items, detached: gradients stop at chunk
        boundaries). Only the W new positions are encoded; earlier ones enter as cached keys and values."""
        kv, past_index, past_pad, place, last = carry
        index = place[:, None] + torch.arange(items.shape[1], device=items.device)
        keys_index, keys_pad = torch.cat([past_index, index], 1), torch.cat([past_pad, items == 0], 1)
        states, fresh = self._encode(items, index.masked_fill(items == 0, -1), self._allowed(index, keys_index, keys_pad),
                                     kv)
        M = self.max_len
        new_kv = torch.cat([kv, torch.stack([torch.stack(k_v) for k_v in fresh])[..., :keep, :]], 4)[..., -M:, :]
        out = torch.cat([last[:, None], states], 1)
        return out, (new_kv.detach(), keys_index[:, :M + keep][:, -M:], keys_pad[:, :M + keep][:, -M:], place + keep,
                     out[:, keep].detach())


def state_encoder(num_items: int, model: dict) -> nn.Module:
    """The encoder named by model.encoder, built from the config's `model` section."""
    if model["encoder"] == "sasrec":
        return SASRecStateEncoder(num_items, model["hidden"], model["dropout"], model["max_len"], model["layers"],
                                  model["heads"])
    return GRUStateEncoder(num_items, model["hidden"], model["dropout"])


class SeqRecQ(nn.Module):
    """State encoder (GRU or SASRec) + K-step self-supervised heads + Q head over all items."""

    def __init__(self, num_items: int, *, hidden: int, dropout: float, ssl_steps: int,
                 encoder: nn.Module | None = None, q_head: str = "shared", v_head: bool = False,
                 tie_items: bool = False):
        super().__init__()
        self.num_items = num_items
        self.encoder = encoder if encoder is not None else GRUStateEncoder(num_items, hidden, dropout)
        self.ssl = MultiStepHeads(hidden, num_items, ssl_steps)
        if tie_items:           # score items with their input embeddings, as RecBole's GRU4Rec and SASRec do
            self.ssl.items.weight = self.encoder.embed.weight
        # Q(s, a) = (s T + c) . W[a] + b[a] with W the self-supervised heads' item matrix (`shared`): an
        # item owns one value parameter, b[a], instead of H + 1 (`linear`, SQN's head), which regressed
        # on noisy returns with ~100 events per item mostly fits noise.
        self.q_head = nn.Linear(hidden, num_items + 1) if q_head == "linear" else None
        if self.q_head is None:
            self.q_transform = nn.Parameter(torch.zeros(hidden, hidden))
            self.q_shift = nn.Parameter(torch.zeros(hidden))
            self.q_bias = nn.Parameter(torch.zeros(num_items + 1))
        # `dueling`: Q(s, a) = V(s) + A(s, a), A the shared head above and V(s) = v . s + v0 a level of
        # the state's own, which SNQN's negatives do not move (negative_losses): they teach the
        # ranking (A), the logged transitions the level.
        self.q_level = nn.Linear(hidden, 1) if q_head == "dueling" else None
        if self.q_level is not None:
            nn.init.zeros_(self.q_level.weight)
            nn.init.zeros_(self.q_level.bias)
        # `v_head`: a state value V(s) of its own (IQL's; train.bootstrap = expectile), learnt as an
        # expectile of Q over the logged actions and bootstrapped from in Q's targets.
        self.v_head = nn.Linear(hidden, 1) if v_head else None

    @classmethod
    def from_config(cls, model: dict, num_items: int) -> "SeqRecQ":
        return cls(num_items, hidden=model["hidden"], dropout=model["dropout"], ssl_steps=model["ssl_steps"],
                   encoder=state_encoder(num_items, model), q_head=model["q_head"], v_head=model["v_head"],
                   tie_items=model["tie_items"])

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

    def forward(self, state: torch.Tensor | None, actions: torch.Tensor, candidates: torch.Tensor | None = None,
                log_inclusion: torch.Tensor | None = None, with_q: bool = True, carry=None,
                trained: torch.Tensor | None = None):
        """Everything the training loss differentiates, in one call (what DistributedDataParallel wraps).

        Window path: state [B, L], actions [B, T] -> (states s_t..s_{t+T} [B, T+1, H], the per-sample
        cross-entropy [B, K] of s_t's K self-supervised heads against a_t..a_{t+K-1} (over all items,
        or over `candidates` [C], logQ-corrected by `log_inclusion` [N+1]), Q(s_{t+k}, a_{t+k}) of the
        taken actions [B, T] (None without `with_q`)).

        Session path (`carry` given, `state` unused): actions [B, W] are each lane's next items, of
        which the first C are trained where `trained` [B, C] is True -> (states s_p..s_{p+W} [B, W+1, H],
        cross-entropy [n, K] of each trained s_{p+j} against a_{p+j}..a_{p+j+K-1} (n trained positions,
        row-major), Q(s_{p+j}, a_{p+j}) [B, W] or None, the encoder's carry after the C items).
        """
        if carry is not None:
            C = trained.shape[1]
            states, next_carry = self.encoder.read(actions, carry, C)
            targets = actions[:, ahead(C, self.ssl.steps, actions.device)][trained]          # [n, K]
            ce = self.ssl.cross_entropy(states[:, :C][trained], targets, candidates, log_inclusion)
            return states, ce, self.q_of(states[:, :-1], actions) if with_q else None, next_carry
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

    def q_layer(self, states: torch.Tensor, fixed_level: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Q head as a linear layer over items: states [..., H] -> (features [..., F], weight [N+1, F],
        bias [N+1]), Q(s, a) = features . weight[a] + bias[a]. The dueling head appends V(s) to the
        features and a column of ones to the weight (F = H + 1); `fixed_level` detaches V(s)."""
        if self.q_head is not None:
            return states, self.q_head.weight, self.q_head.bias
        features = states @ self.q_transform + self.q_shift
        if self.q_level is None:
            return features, self.ssl.items.weight, self.q_bias
        level = self.q_level(states)
        ones = self.ssl.items.weight.new_ones(len(self.q_bias), 1)
        return (torch.cat([features, level.detach() if fixed_level else level], -1),
                torch.cat([self.ssl.items.weight, ones], 1), self.q_bias)

    def q_values(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """states [..., H] -> Q [..., N+1] (column 0 is padding: mask it before max or ranking), or
        only for the item ids in `candidates` [C] -> [..., C]."""
        features, weight, bias = self.q_layer(states.contiguous())  # a strided slice would make matmul a slow bmm
        if candidates is None:
            return F.linear(features, weight, bias)
        return F.linear(features, weight[candidates], bias[candidates])

    def greedy_items(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """argmax_a Q(s, a) over items 1..N, or over the item ids in `candidates` [C]: states [..., H] ->
        item ids [...]. Over all items it is streamed (argmax_linear): no [..., N+1] Q matrix."""
        if candidates is not None:
            return candidates[self.q_values(states, candidates).argmax(-1)]
        return argmax_linear(*self.q_layer(states))

    def max_q(self, states: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """max_a Q(s, a) over items 1..N (or over `candidates`): states [..., H] -> [...]."""
        q = self.q_values(states, candidates)
        return (q if candidates is not None else q[..., 1:]).max(-1).values

    def state_value(self, states: torch.Tensor) -> torch.Tensor:
        """V(s) of the value head (model.v_head): states [..., H] -> [...]."""
        return self.v_head(states)[..., 0]

    def q_of(self, states: torch.Tensor, actions: torch.Tensor, fixed_level: bool = False) -> torch.Tensor:
        """Q(s, a) of given actions only: states [..., H], actions [...] -> [...].

        Equal to q_values(states).gather(-1, actions), without scoring every item: the TD loss needs
        gradients for the taken actions alone. Broadcasts: states [n, 1, H] with actions [n, m] -> [n, m].
        `fixed_level`: the dueling head's V(s) gets no gradient (only A(s, a) learns).
        """
        features, weight, bias = self.q_layer(states, fixed_level)
        return (features * weight[actions]).sum(-1) + bias[actions]

    def score_layer(self, state: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ranking scores of head `ssl` (next-item logits) or `q` as a linear layer over items:
        state [B, H] -> (features [B, H], weight [N+1, H], bias [N+1]), scores = features @ weight.T + bias.

        Full-ranking evaluation streams this in chunks instead of building the [B, N+1] matrix.
        """
        if head == "ssl":
            return self.ssl.step_features(state, 0), self.ssl.items.weight, self.ssl.items.bias
        return self.q_layer(state)

    def scores(self, state: torch.Tensor, head: str, seen: torch.Tensor | None = None, beta: float = 0.0,
               top: int = 0) -> torch.Tensor:
        """Ranking scores [B, N+1] from state [B, H] by head `ssl` (next-item logits), `q`, or `mix`
        (rerank: the ssl head's `top` candidates by log pi + beta * advantage); padding and the items
        of `seen` [B, L] (0 = none) -inf. Seen items are masked before mix picks its candidates."""
        if head == "mix":
            log_pi = torch.log_softmax(self.scores(state, "ssl", seen), -1)
            return rerank(log_pi, self.scores(state, "q"), beta, top)
        features, weight, bias = self.score_layer(state, head)
        scores = torch.addmm(bias, features, weight.T)
        scores[..., 0] = float("-inf")  # in place: a fresh tensor, and no backward needs a layer's output
        return scores if seen is None else scores.scatter_(1, seen, float("-inf"))

    @torch.no_grad()
    def top_items(self, state: torch.Tensor, head: str, k: int, seen: torch.Tensor | None = None, beta: float = 0.0,
                  top: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The best k items of `scores(state, head, seen, beta, top)`, streamed over the catalogue: memory
        is B x (k + a chunk of items), not B x N. state [B, H] -> (scores [B, k'], items [B, k'], best
        first, k' = min(k, N)); a row with fewer unmasked items ends in -inf. metrics.NaNScores on NaN."""
        if head != "mix":
            values, items, _ = top_k_linear(*self.score_layer(state, head), k, seen)
            return values, items
        # mix: the ssl head's `top` best are the candidates, reranked; the rest follow in the ssl order
        logits, items, lse = top_k_linear(*self.score_layer(state, "ssl"), max(top, k), seen)
        log_pi = torch.where(torch.isfinite(logits), logits - lse[:, None], float("-inf"))
        R = min(top, self.num_items)
        cand_log_pi, cand = log_pi[:, :R], items[:, :R]
        mixed = rerank_candidates(cand_log_pi, self.q_of(state[:, None], cand), beta)
        if torch.isnan(mixed).any():
            raise NaNScores(f"{int(torch.isnan(mixed).any(1).sum())} of {len(mixed)} rows hold NaN")
        order = torch.argsort(mixed, dim=1, descending=True, stable=True)
        scores = torch.cat([mixed.gather(1, order), log_pi[:, R:] + rest_shift(mixed, cand_log_pi)], 1)
        items = torch.cat([cand.gather(1, order), items[:, R:]], 1)
        k = min(k, self.num_items)
        return scores[:, :k], items[:, :k]


def rerank(log_pi: torch.Tensor, q: torch.Tensor, beta: float, top: int) -> torch.Tensor:
    """Value reranking within the log's support: the `top` items of the next-item policy log_pi [B, N+1]
    (-inf: never) score log pi(a | s) + beta * A(s, a), A = Q(s, a) [B, N+1] minus its mean over those
    candidates; every other item keeps log pi's order, below all candidates. -> [B, N+1]"""
    top = min(top, log_pi.shape[-1])
    cand_log_pi, cand = log_pi.topk(top, -1)                                    # [B, R]
    mixed = rerank_candidates(cand_log_pi, q.gather(1, cand), beta)
    return (log_pi + rest_shift(mixed, cand_log_pi)).scatter(1, cand, mixed)


def rerank_candidates(cand_log_pi: torch.Tensor, q_cand: torch.Tensor, beta: float) -> torch.Tensor:
    """The reranked scores log pi + beta * (Q - mean Q over the live candidates) of candidates [B, R]
    (log pi -inf: a dead candidate, masked or padding, which stays -inf). -> [B, R]"""
    live = torch.isfinite(cand_log_pi)
    # A dead candidate's Q may be -inf: zeroed before the mean, as -inf * 0 would make the row NaN.
    q_cand = torch.where(live, q_cand, torch.zeros((), dtype=q_cand.dtype, device=q_cand.device))
    mean = q_cand.sum(1, keepdim=True) / live.sum(1, keepdim=True).clamp(min=1)
    return torch.where(live, cand_log_pi + beta * (q_cand - mean), float("-inf"))


def rest_shift(mixed: torch.Tensor, cand_log_pi: torch.Tensor) -> torch.Tensor:
    """What is added to the log pi of every item that is not a candidate [B, 1]: enough that the best of
    them (at most the last candidate's log pi) falls below the worst candidate; 0 where a candidate is
    dead (then every other item is masked too)."""
    live = torch.isfinite(cand_log_pi)
    lowest = mixed.masked_fill(~live, float("inf")).min(1, keepdim=True).values
    return torch.where(live.all(1, keepdim=True), lowest - cand_log_pi[:, -1:] - 1.0, torch.zeros_like(lowest))


# ================================================================================================
# The loss
# ================================================================================================
def state_values(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor,
                 logged: torch.Tensor, kind: str, candidates: torch.Tensor | None = None,
                 follows_truncation: torch.Tensor | None = None) -> torch.Tensor:
    """V(s) of n states, from the online and target nets' states [n, H] -> [n].

    `double` (and `swap`) = the target's Q at the online argmax (only that item is scored by the
    target); `max` = the target's max; both over items 1..N or over `candidates` [C]. `logged` (SARSA,
    policy evaluation) = the target's Q of the action the log took from s, `logged` [n] (0: none);
    where the data was cut just before s (`follows_truncation` [n]: held-out events follow, so the
    next action is unknown) it is the expectation of the target's Q under the next-item head's policy.
    """
    if kind == "max":
        return target_net.max_q(target_states, candidates)
    if kind != "logged":
        return target_net.q_of(target_states, net.greedy_items(states, candidates))
    values = torch.where(logged > 0, target_net.q_of(target_states, logged), torch.zeros((), device=logged.device))
    cut = (logged == 0) & follows_truncation if follows_truncation is not None else None
    if cut is not None and cut.any():
        values[cut] = policy_value(net, target_net, states[cut], target_states[cut])
    return values


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """IQL's asymmetric square |tau - 1(diff < 0)| * diff^2, elementwise; diff = target - prediction.
    tau 0.5 is half the squared error (the mean); tau -> 1 approaches the maximum of the targets."""
    return torch.where(diff < 0, 1.0 - tau, tau) * diff.square()


def policy_value(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor) -> torch.Tensor:
    """sum_a pi(a | s) Q_target(s, a), pi the online next-item head's softmax over items 1..N: [n, H] -> [n]."""
    pi = torch.softmax(net.scores(states, "ssl")[:, 1:], -1)
    return (pi * target_net.q_values(target_states)[:, 1:]).sum(-1)


def sampled_items(shape: tuple[int, ...], num_items: int, seed: int, step: int, device, stream: int = 0) -> torch.Tensor:
    """Items drawn uniformly from 1..N, of `shape`, from a generator seeded by (seed, step, stream): the
    same after a resume, apart from the dropout stream. Drawn for the global batch, so each rank of a
    distributed run takes the rows one process would."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + 7_777_777 + 1_000_000_007 * stream)
    return torch.randint(1, num_items + 1, shape, generator=g).to(device)


def negative_losses(net: SeqRecQ, states: torch.Tensor, taken: torch.Tensor, q_taken: torch.Tensor,
                    values: torch.Tensor, drawn: torch.Tensor, t, td_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """SNQN's negatives and the CQL penalty for n trained states [n, H] with taken items [n] and their
    Q(s, taken) [n] (the TD loss's, with gradients), the states' own values V(s) [n] (detached) and
    `drawn` [n, m] uniform items per state: each pulled
    towards r_negative + gamma V(s) (the user did not move). Returns per-state (TD loss [n], CQL
    penalty [n]): the mean TD loss over the state's draws other than the taken item, and
    logsumexp(Q over draws + taken) - Q(taken)."""
    q_neg = net.q_of(states[:, None, :], drawn, fixed_level=True)         # [n, m]; dueling: they move A only
    other = (drawn != taken[:, None]).to(q_neg.dtype)
    target = (t.reward_negative + t.gamma * values)[:, None].expand_as(q_neg)
    td = (td_fn(q_neg, target, reduction="none") * other).sum(1) / other.sum(1).clamp(min=1.0)
    both = torch.cat([q_taken[:, None], q_neg.masked_fill(other == 0, float("-inf"))], 1)
    return td, torch.logsumexp(both, 1) - q_taken


def slate_cross_entropy(heads, states: torch.Tensor, slates: torch.Tensor, clicked: torch.Tensor):
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


def advantages(net: SeqRecQ, states: torch.Tensor, actions: torch.Tensor, q_taken: torch.Tensor,
               valid: torch.Tensor, t, dist: Dist, step: int) -> torch.Tensor:
    """SA2C's advantage of every valid step: A(s_j, a_j) = Q(s_j, a_j) - the mean of Q over {a_j} and
    train.q_negatives uniform draws, detached, clipped to [0, train.advantage_clip]; 0 elsewhere.
    states [B, W, H] (the state before each action), actions, q_taken [B, W], valid [B, W] -> [B, W]."""
    n = int(valid.sum())
    first, total = dist.offset(n)
    drawn = sampled_items((total, t.q_negatives), net.num_items, t.seed, step, valid.device, stream=1)[first:first + n]
    with torch.no_grad():
        q_pos = q_taken[valid]
        q_neg = net.q_of(states[valid][:, None, :], drawn)                                     # [n, m]
        mean = (q_pos + q_neg.sum(1)) / (1 + t.q_negatives)
        out = torch.zeros_like(q_taken)
        out[valid] = (q_pos - mean).clamp(0.0, t.advantage_clip)
    return out


def compute_losses(model, target_net: SeqRecQ, b: Batch | Chunk, t, dist: Dist = SINGLE, step: int = 0,
                   log_inclusion: torch.Tensor | None = None, reward_scale: float = 1.0) -> tuple[torch.Tensor, dict]:
    """CE of the K self-supervised steps + alpha * TD(lambda) loss of the Q head on one batch; `t` is
    the config's `train` section. Returns (loss, stats for the log). With alpha = 0 the Q head, the
    target network and the bootstrap are skipped altogether (q_mean is then NaN). Rewards enter the TD
    targets times `reward_scale` (seqrec/value.py reward_scale), so Q is in those units.

    A `Batch` holds T-step windows (the window path): each sample's TD loss covers its T steps, each
    against its lambda-return truncated at the window's end. A `Chunk` holds each lane's next events
    (the session path): each trained event's TD loss is Q(s_p, a_p) against the lambda-return of
    the T steps from p on, so every transition is trained once per epoch; the encoders' carries after
    the chunk are left in `b.next_carry`. Either way the return bootstraps V(s') (`train.bootstrap`,
    see state_values) after the last step, and where the data is truncated (leave-one-out: held-out
    events follow), never past a session's end.

    With `train.q_negatives` each trained state also pulls sampled items towards r_negative + gamma V(s)
    (SNQN), and `train.cql_weight` adds the CQL penalty over them (negative_losses). Where the batch
    carries the logged slates (`b.shown`, train.negatives_from = exposures) those are the items: shown
    and not clicked, true negatives, with uniform draws filling a slate that has fewer.
    With `train.negatives` > 0 CE and the double/max bootstrap score a shared candidate set instead of
    all items (sampled softmax, logQ-corrected by `log_inclusion` [N+1] when given), which keeps
    large catalogues cheap.

    Means are taken over the valid steps of the *global* batch (all ranks), and the loss is scaled by
    the number of ranks, so DistributedDataParallel's gradient average is the single-process gradient.
    """
    net = getattr(model, "module", model)                      # the network behind a DDP wrapper
    with_td = t.alpha > 0                                      # alpha = 0: no Q head, target pass or argmax at all
    chunked = isinstance(b, Chunk)
    actions = b.items if chunked else b.actions
    cand = candidate_items(actions, t.negatives, net.num_items, t.seed, step) if t.negatives else None
    if chunked:
        C = b.train_len
        trained = b.valid[:, :C]                              # padding past a session's end costs no CE
        states, ssl_ce, q_all, next_carry = model(None, actions, cand, log_inclusion, with_q=with_td,
                                                  carry=b.carry[0], trained=trained)   # [B, W+1, H], [n, K], [B, W]
        ssl_valid = b.valid[:, ahead(C, ssl_ce.shape[-1], actions.device)][trained]    # [n, K]
        b.next_carry = (next_carry, b.carry[1])
    else:
        C = actions.shape[1]                                  # every step of a window is trained
        states, ssl_ce, q_all = model(b.state, actions, cand, log_inclusion, with_q=with_td)  # [B, T+1, H], [B, K], [B, T]
        ssl_valid = b.valid[:, :ssl_ce.shape[1]]
    K = ssl_ce.shape[1]
    if t.ssl_softmax == "shown" and b.shown is not None:     # step 0 as the user chose: among the slate shown
        first = (states[:, :C][trained], b.shown[:, :C][trained], actions[:, :C][trained]) if chunked else \
                (states[:, 0], b.shown[:, 0], actions[:, 0])
        slate_ce, known = slate_cross_entropy(net.ssl, *first)
        ssl_ce = torch.cat([torch.where(known, slate_ce, ssl_ce[:, 0])[:, None], ssl_ce[:, 1:]], 1)
    if with_td and t.advantage_weighting and step >= t.advantage_warmup:    # SA2C: CE of step k weighed by A(s_{t+k}, a_{t+k})
        W = actions.shape[1]
        adv = advantages(net, states[:, :W], actions, q_all, b.valid[:, :W], t, dist, step)          # [B, W]
        ssl_ce = ssl_ce * (adv[:, ahead(C, K, actions.device)][trained] if chunked else adv[:, :K])
    ce = multi_step_loss(ssl_ce, ssl_valid, torch.tensor(t.ssl_weights[:K], dtype=ssl_ce.dtype, device=ssl_ce.device),
                         counts=dist.sum(ssl_valid.to(ssl_ce.dtype).sum(0)))
    if not with_td:
        return ce * dist.world, {"loss": ce.item(), "ce": ce.item(), "td": 0.0, "q_mean": math.nan}
    # State j of states [B, W+1] is s after j of the read items; the log's action from it is item j
    # (`after` for the last). V is needed after every step inside the session (the bootstrap) and,
    # with negatives, at every trained state.
    logged = torch.cat([actions, b.after[:, None]], 1)                                          # [B, W+1]
    follows_cut = F.pad(b.truncated, (1, 0))                                                    # [B, W+1]
    need = F.pad(b.valid, (1, 0))
    if t.q_negatives:
        need[:, :C] |= b.valid[:, :C]
    with torch.no_grad():                                      # over all items, or over the candidates
        if chunked:
            target_states, target_carry = target_net.encoder.read(actions, b.carry[1], C)
            b.next_carry = (next_carry, target_carry)
        else:
            target_states = target_net.window_states(b.state, actions)                         # [B, T+1, H]
        values = torch.zeros(need.shape, dtype=states.dtype, device=states.device)              # V(s_j) [B, W+1]
        values[need] = (net.state_value(states[need]) if t.bootstrap == "expectile" else   # IQL: no max, no
                        state_values(net, target_net, states[need], target_states[need],  # out-of-log action
                                     logged[need], t.bootstrap, cand, follows_cut[need]))
        rewards = b.rewards * reward_scale
        returns = (sliding_lambda_returns(rewards, values[:, 1:], b.dones, t.gamma, t.lam, actions.shape[1] - C + 1,
                                          b.truncated) if chunked else
                   lambda_returns(rewards, values[:, 1:], b.dones, t.gamma, t.lam, b.truncated))  # [B, C]
    # Outside no_grad: the TD loss differentiates Q of the trained events
    q_taken, valid = q_all[:, :C], b.valid[:, :C]
    weight = valid.to(q_taken.dtype)
    td_fn = F.huber_loss if t.td_loss == "huber" else F.mse_loss
    count = dist.sum(weight.sum()).clamp(min=1.0)
    td = (td_fn(q_taken, returns, reduction="none") * weight).sum() / count
    loss = ce + t.alpha * td
    stats = {}
    if t.bootstrap == "expectile":     # IQL: V(s) an upper expectile of the target's Q over the logged actions
        with torch.no_grad():
            q_logged = target_net.q_of(target_states[:, :C], actions[:, :C])                   # [B, C]
        v_loss = (expectile_loss(q_logged - net.state_value(states[:, :C]), t.expectile) * weight).sum() / count
        stats["v_loss"] = v_loss.item()
        loss = loss + t.alpha * v_loss
    if t.q_negatives:
        n = int(valid.sum())
        first, total = dist.offset(n)                          # draws follow the global order of trained states
        shown = b.shown[:, :C][valid] if b.shown is not None and t.negatives_from == "exposures" else None  # [n, m]
        width = shown.shape[-1] if shown is not None else t.q_negatives
        drawn = sampled_items((total, width), net.num_items, t.seed, step, valid.device)[first:first + n]
        if shown is not None:                                  # the logged slate's items; uniform where it has fewer
            drawn = torch.where(shown > 0, shown, drawn)
        neg_td, cql = negative_losses(net, states[:, :C][valid], actions[:, :C][valid], q_taken[valid],
                                      values[:, :C][valid], drawn, t, td_fn)
        stats.update(td_negative=neg_td.sum().item() / count.item(), cql=cql.sum().item() / count.item())
        loss = loss + t.alpha * t.negative_weight * neg_td.sum() / count + t.cql_weight * cql.sum() / count
    # Each rank's stats are its share of the global value: summed over ranks they are exact.
    stats = {"loss": loss.item(), "ce": ce.item(), "td": td.item(),
             "q_mean": ((q_taken.detach() * weight).sum() / count).item(), **stats}
    return loss * dist.world, stats
