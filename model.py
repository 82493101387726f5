"""The network, a GRU state encoder over item embeddings (or SASRec, seqrec/nn/encoders.py) with
multi-step self-supervised heads and a Q head, and its training loss (as nanoGPT's model module
computes its own loss), a sum of named terms:

    loss = sum_k w_k CE(a_{t+k} | s_t)  +  alpha * TD(Q(s_{t+k}, a_{t+k}), G^lambda_k)  [+ the recipe's terms]

the self-supervised loss from ssl_heads.py, the TD target G^lambda = td_lambda.td_targets over the
bootstrap values V(s') of a target network, and IQL's, SNQN's and CQL's terms from seqrec/nn/losses.py.

Item 0 is padding everywhere: its embedding is zero and its column in every head is masked to -inf
wherever items are ranked or maximised over. The model knows nothing of files or pools.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from seqrec.data.batches import Steps, ahead, candidate_items
from seqrec.running.config import load_config
from seqrec.running.distributed import SINGLE, Dist
from seqrec.nn.encoders import SASRecStateEncoder, leading_padding
from seqrec.running.errors import UserError
from seqrec.nn.losses import (advantages, bootstrap_values, negative_items, negative_losses, sampled_items,
                              value_expectile_loss)
from seqrec.evaluation.metrics import NaNScores
from seqrec.nn.streamed import argmax_linear, top_k_linear
from ssl_heads import MultiStepHeads, multi_step_loss, with_slate_choice
from td_lambda import td_targets

HEADS = ("ssl", "q", "mix")   # mix: the ssl head's top candidates reranked by the value (rerank)


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

    def forward(self, items: torch.Tensor, history: torch.Tensor | None, carry, ssl_from: torch.Tensor,
                candidates: torch.Tensor | None = None, log_inclusion: torch.Tensor | None = None, with_q: bool = True,
                drawn: torch.Tensor | None = None):
        """Everything the training loss differentiates, in one call (what DistributedDataParallel wraps),
        for either path (batches.Steps): the logged items [B, W] read after `history` [B, L] (a window)
        or after the encoder's `carry` (a session chunk).

        -> (states [B, W+1, H]: the state before each item and after the last; the per-sample
        cross-entropy [n, K] of the n states where `ssl_from` [B, C'] is True (row-major), each against
        its next K items (over all items, or over `candidates` [C], logQ-corrected by `log_inclusion`
        [N+1]; or with `drawn` [D], step 0 over all items and the later steps against those draws);
        Q(s_j, a_j) of the logged items [B, W] (None without `with_q`); the encoder's carry
        after the first C' items (None for a window)).
        """
        C = ssl_from.shape[1]
        states, next_carry = self.read(items, history, carry, C)
        targets = items[:, ahead(C, self.ssl.steps, items.device)][ssl_from]                 # [n, K]
        ce = self.ssl.cross_entropy(states[:, :C][ssl_from], targets, candidates, log_inclusion, drawn)
        return states, ce, self.q_of(states[:, :-1], items) if with_q else None, next_carry

    def read(self, items: torch.Tensor, history: torch.Tensor | None, carry, keep: int):
        """The states before each of `items` [B, W] and after the last [B, W+1, H], read after
        `history` [B, L] (a window: one pass over history + items) or from `carry` (a chunk: the
        encoder's state before items[:, 0]); and the carry after `keep` items (None for a window)."""
        if carry is None:
            return self.window_states(history, items), None
        return self.encoder.read(items, carry, keep)

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
# The loss: a sum of named terms
# ================================================================================================
def compute_losses(model, target_net: SeqRecQ, batch: Steps, train, dist: Dist = SINGLE, step: int = 0,
                   log_inclusion: torch.Tensor | None = None, reward_scale: float = 1.0):
    """sum_k w_k CE_k (the K self-supervised steps) + alpha * TD(lambda) (the Q head) on one batch of
    either path (batches.Batch windows or Chunk session stretches), plus the recipe's terms: IQL's
    value expectile, SNQN's negatives, CQL's penalty (seqrec/nn/losses.py). `train` is the config's
    `train` section; rewards enter the TD targets times `reward_scale`, so Q is in those units; with alpha 0
    the Q head, the target network and the bootstrap are skipped altogether (q_mean is NaN).

    Means are over the *global* batch's valid steps (all ranks) and the loss is scaled by the number
    of ranks, so DistributedDataParallel's gradient average is the single-process gradient.
    Returns (loss, stats for the log, the encoders' (online, target) carry after the chunk or None).
    """
    net = getattr(model, "module", model)                      # the network behind a DDP wrapper
    with_td = train.alpha > 0
    online_carry, target_carry = batch.carry or (None, None)
    cand = candidate_items(batch.items, train.negatives, net.num_items, train.seed, step) if train.negatives else None
    # train.ssl_negatives: the next item over all items, the later steps against shared uniform draws
    drawn = sampled_items((train.ssl_negatives,), net.num_items, train.seed, step, batch.items.device,
                          stream=2) if train.ssl_negatives else None
    states, ssl_ce, q_all, online_carry = model(batch.items, batch.history, online_carry, batch.ssl_from, cand,
                                                log_inclusion, with_q=with_td, drawn=drawn)   # [B, W+1, H], [n, K], [B, W]
    ce = self_supervised_loss(net, ssl_ce, states, q_all, batch, train, dist, step, with_td)
    if not with_td:
        carry = None if batch.carry is None else (online_carry, target_carry)
        return ce * dist.world, {"loss": ce.item(), "ce": ce.item(), "td": 0.0, "q_mean": math.nan}, carry
    with torch.no_grad():
        target_states, target_carry = target_net.read(batch.items, batch.history, target_carry,
                                                      batch.trained.shape[1])                   # [B, W+1, H]
        values = bootstrapped_values(net, target_net, states, target_states, batch, train, cand)  # V(s_j) [B, W+1]
        returns = td_targets(batch.rewards * reward_scale, values[:, 1:], batch.dones, train.gamma, train.lam,
                             batch.truncated, batch.horizon)                                      # [B, C]
    terms, stats = q_loss_terms(net, target_net, states, target_states, q_all, values, returns, batch, train, dist,
                                step)
    loss = ce
    for term in terms:                                         # alpha * TD, then the recipe's terms
        loss = loss + term
    stats = {"loss": loss.item(), "ce": ce.item(), **stats}
    return loss * dist.world, stats, None if batch.carry is None else (online_carry, target_carry)


def self_supervised_loss(net: SeqRecQ, ssl_ce: torch.Tensor, states: torch.Tensor, q_all: torch.Tensor | None,
                         batch: Steps, train, dist: Dist, step: int, with_td: bool) -> torch.Tensor:
    """sum_k w_k mean CE_k over the n self-supervised states (batch.ssl_from) from their per-sample CE [n, K]:
    step 0 as a choice among the slate shown (train.ssl_softmax: shown), each step weighed by SA2C's
    advantage of its action (train.advantage_weighting, after the warm-up). states [B, W+1, H], q_all [B, W]."""
    K, at = ssl_ce.shape[1], batch.ssl_from                   # at [B, C']: the self-supervised states
    if train.ssl_softmax == "shown" and batch.shown is not None:
        width = at.shape[1]
        ssl_ce = with_slate_choice(net.ssl, ssl_ce, states[:, :width][at], batch.shown[:, :width][at],
                                   batch.items[:, :width][at])
    if with_td and train.advantage_weighting and step >= train.advantage_warmup:
        W = batch.items.shape[1]
        advantage = advantages(net, states[:, :W], batch.items, q_all, batch.valid, train, dist, step)   # [B, W]
        ssl_ce = ssl_ce * batch.ssl_windows(advantage, K)
    valid = batch.ssl_windows(batch.valid, K)                                                    # [n, K]
    return multi_step_loss(ssl_ce, valid, torch.tensor(train.ssl_weights[:K], dtype=ssl_ce.dtype, device=ssl_ce.device),
                           counts=dist.sum(valid.to(ssl_ce.dtype).sum(0)))


def bootstrapped_values(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor,
                        batch: Steps, train, cand: torch.Tensor | None) -> torch.Tensor:
    """V(s_j) [B, W+1] by train.bootstrap (losses.bootstrap_values) where it is needed: after every
    valid step (the TD target's bootstrap) and, with negatives, at every trained state; 0 elsewhere.
    State j is s after j of the items; the log's action from it is item j (batch.after for the last)."""
    need = F.pad(batch.valid, (1, 0))
    if train.q_negatives:
        need[:, :batch.trained.shape[1]] |= batch.trained
    logged = torch.cat([batch.items, batch.after[:, None]], 1)                                          # [B, W+1]
    values = torch.zeros(need.shape, dtype=states.dtype, device=states.device)
    values[need] = bootstrap_values(net, target_net, states[need], target_states[need], logged[need],
                                    train.bootstrap, cand, F.pad(batch.truncated, (1, 0))[need])
    return values


def q_loss_terms(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor,
                 q_all: torch.Tensor, values: torch.Tensor, returns: torch.Tensor, batch: Steps, train, dist: Dist,
                 step: int) -> tuple[list[torch.Tensor], dict]:
    """The Q head's weighted terms, in the order they are added to the loss: alpha * TD of the trained
    steps' Q(s, a) [B, C] against `returns` [B, C], then IQL's value expectile, then SNQN's negatives
    and CQL's penalty; and their stats (each rank's share of the global mean)."""
    trained = batch.trained
    C = trained.shape[1]
    q_taken, weight = q_all[:, :C], trained.to(q_all.dtype)
    td_fn = F.huber_loss if train.td_loss == "huber" else F.mse_loss
    count = dist.sum(weight.sum()).clamp(min=1.0)
    td = (td_fn(q_taken, returns, reduction="none") * weight).sum() / count
    terms = [train.alpha * td]
    stats = {"td": td.item(), "q_mean": ((q_taken.detach() * weight).sum() / count).item()}
    if train.bootstrap == "expectile":                 # IQL: V(s) an upper expectile of the target's Q over the log
        v_loss = value_expectile_loss(net, target_net, states[:, :C], target_states[:, :C], batch.items[:, :C], weight,
                                      train.expectile, count)
        stats["v_loss"] = v_loss.item()
        terms.append(train.alpha * v_loss)
    if train.q_negatives:                              # SNQN's negatives, CQL's penalty over them
        exposures = batch.shown is not None and train.negatives_from == "exposures"
        shown = batch.shown[:, :C][trained] if exposures else None                                # [n, m]
        drawn = negative_items(int(trained.sum()), train.q_negatives, shown, net.num_items, train.seed, step, dist,
                               trained.device)
        neg_td, cql = negative_losses(net, states[:, :C][trained], batch.items[:, :C][trained], q_taken[trained],
                                      values[:, :C][trained], drawn, train, td_fn)
        stats.update(td_negative=neg_td.sum().item() / count.item(), cql=cql.sum().item() / count.item())
        terms += [train.alpha * train.negative_weight * neg_td.sum() / count, train.cql_weight * cql.sum() / count]
    return terms, stats
