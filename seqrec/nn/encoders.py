"""Encoders other than the design card's GRU (model.py): SASRec, with the keys and values it carries
from chunk to chunk on the session path, and the helpers both encoders share."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

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
