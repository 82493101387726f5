"""Event-level evaluation as in SQN, vectorized and full-ranking.

Every event of every session of a split is a query: the state is the `state_len` items before it (in
its session), or with state_len 0 all of them (each session read once, in chunks); the target is the
event's item, and all items are ranked. HR@k and NDCG@k are reported for click events and purchase
events apart, for both heads in one pass. With `exclude_seen`, every item earlier in the query's
session (not only those in the state) is masked, as RecBole masks a user's history.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from seqrec.running.allocator import release_freed_memory
from seqrec.running.distributed import model_device
from seqrec.running.errors import UserError
from seqrec.evaluation.metrics import KINDS, NaNScores, summarize
from seqrec.nn.streamed import rank_of_targets_linear, target_scores_linear, tie_band
from seqrec.evaluation.value import ValueReference

EVAL_CHUNK = 64   # session path: items per encoder call (any value gives the same states; memory vs calls)


@torch.no_grad()
def evaluate(model, pool, split: str, state_len: int, ks, batch_size: int, exclude_seen: bool, *,
             heads: tuple[str, ...], progress: bool = True, limit: int | None = None,
             value: ValueReference | None = None, beta: float = 1.0, rerank_top: int = 50, sample: int = 0,
             seed: int = 0) -> dict[str, dict[str, float]]:
    """{head: {"click/HR@5": ..., "purchase/NDCG@20": ...}} for every event of `split` (or its first
    `limit` events, or a seeded `sample` of them: query_events), for each of `heads`; with `value`,
    also {"value": {"rmse": ...}}: the Q head's Q(s_t, a_t) of every query against its realized
    return (seqrec/evaluation/value.py). state_len 0: the state is the whole session so far. Every head is streamed over the catalogue (no [b, N+1] matrix), so
    memory stays flat in the number of queries and items; `mix` is model.rerank with `beta` and
    `rerank_top` (rank_of_targets_mix).

    `model` needs `last_state(state [B, L]) -> [B, H]` (window path) or an `encoder` with
    `start`/`read` (session path), and `score_layer(states, head)` (see model.py).
    """
    events, ranks, q_taken = rank_queries(model, pool, split, state_len, batch_size, exclude_seen, heads=heads,
                                          progress=progress, limit=limit, with_q=value is not None, beta=beta,
                                          rerank_top=rerank_top, sample=sample, seed=seed)
    is_purchase = torch.from_numpy(np.asarray(pool.purchase[events], dtype=bool))
    results = {head: summarize(higher, ties, is_purchase, ks) for head, (higher, ties) in ranks.items()}
    if value is not None:
        results["value"] = value.metrics(events, q_taken.double().numpy())
    return results


@torch.no_grad()
def rank_queries(model, pool, split: str, state_len: int, batch_size: int, exclude_seen: bool, *,
                 heads: tuple[str, ...], progress: bool = True, limit: int | None = None, with_q: bool = False,
                 beta: float = 1.0, rerank_top: int = 50, sample: int = 0, seed: int = 0):
    """Where each query's target ranks: (events [n], the queries' event ids in the order ranked (the
    session path yields them out of order), {head: (higher [n], ties [n])} as metrics.rank_of_targets
    counts them, Q(s, a) of each query's target [n] with `with_q`, else None). Arguments as `evaluate`'s."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    events = query_events(pool.events(split)[:limit], sample, seed)
    ranks = {head: ([], []) for head in heads}
    q_taken = []
    states = (session_query_states(model.encoder, pool, events, batch_size, device) if state_len == 0 else
              window_query_states(model, pool, events, state_len, batch_size, device))
    bar = tqdm(total=len(events), desc=f"evaluating {split}", unit="query", leave=False, disable=not progress)
    done = []
    for batch, h in states:
        done.append(batch)
        target = torch.from_numpy(np.asarray(pool.items[batch], dtype=np.int64)).to(device)
        seen = torch.from_numpy(pool.histories(batch)).to(device) if exclude_seen else None
        counted = {}
        for head in sorted(heads, key=lambda name: name == "mix"):      # mix reuses the ssl head's ranks
            try:
                counted[head] = higher, ties = (
                    rank_of_targets_mix(model, h, target, seen, beta, rerank_top, counted.get("ssl")) if head == "mix"
                    else rank_of_targets_linear(*model.score_layer(h, head), target, seen))
            except NaNScores as e:   # a NaN target would rank first: no metric at all is honest
                raise UserError(f"the {head} head's scores on the {split} split are NaN ({e}), so it has no "
                                f"metrics; the model diverged (lower train.lr) or the head is broken") from None
            ranks[head][0].append(higher.cpu())
            ranks[head][1].append(ties.cpu())
        if with_q:
            q_taken.append(model.q_of(h, target).cpu())
        release_freed_memory()              # batches of unlike sizes would otherwise pile up freed pages
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    order = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
    ranks = {head: (_cat(higher), _cat(ties)) for head, (higher, ties) in ranks.items()}
    return order, ranks, (_cat(q_taken) if q_taken else torch.zeros(0)) if with_q else None


def query_events(events: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """The queries to rank: all `events` [n], or with 0 < `sample` < n a sample of that many drawn without
    replacement by (seed, sample), in event order: the same queries at every epoch and after a resume."""
    if not 0 < sample < len(events):
        return events
    return np.sort(np.random.default_rng([seed, 300, sample]).choice(events, sample, replace=False))


def window_query_states(model, pool, events: np.ndarray, state_len: int, batch_size: int, device):
    """Yields (events [b], their states [b, H]): each from the `state_len` items before it."""
    for start in range(0, len(events), batch_size):
        batch = events[start:start + batch_size]
        yield batch, model.last_state(torch.from_numpy(pool.windows(batch, state_len, 1).state).to(device))


def session_query_states(encoder, pool, events: np.ndarray, batch_size: int, device, chunk: int = EVAL_CHUNK):
    """Yields (events [b], their states [b, H]) with b <= batch_size, reading each session once: sessions
    sorted by how far they must be read, `batch_size` at a time, `chunk` items per encoder call with
    the encoder's carry in between; every query's state s_p (after the p items before it) is picked
    on the way."""
    events = np.asarray(events, dtype=np.int64)
    session = pool.session_of(events)
    place = events - np.asarray(pool.offsets)[session]                      # p: items read before the query
    sessions, inverse = np.unique(session, return_inverse=True)
    reach = np.zeros(len(sessions), dtype=np.int64)
    np.maximum.at(reach, inverse, place)                                   # read this far in each session
    order = np.argsort(-reach, kind="stable")
    for first in range(0, len(order), batch_size):
        lanes = order[first:first + batch_size]                           # indices into `sessions`
        lane_of = np.full(len(sessions), -1)
        lane_of[lanes] = np.arange(len(lanes))
        mine = np.flatnonzero(lane_of[inverse] >= 0)                      # this batch's queries
        carry = encoder.start(len(lanes))
        for c0 in range(0, int(reach[lanes].max()) + 1, chunk):
            here = mine[(place[mine] >= c0) & (place[mine] < c0 + chunk)]
            span = pool.spans(sessions[lanes], np.full(len(lanes), c0), chunk)
            states, carry = encoder.read(torch.from_numpy(span.actions).to(device), carry, chunk)
            lane = torch.from_numpy(lane_of[inverse[here]]).to(device)
            picked = states[lane, torch.from_numpy(place[here] - c0).to(device)]
            for part in range(0, len(here), batch_size):
                yield events[here[part:part + batch_size]], picked[part:part + batch_size]


def rank_of_targets_mix(model, states: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None, beta: float,
                        top: int, ssl_ranks: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """metrics.rank_of_targets of model.scores(states, "mix", seen, beta, top) without its [B, N+1] matrix.

    The reranked candidates are the ssl head's `top` best and all rank above every other item, which
    keep the ssl order. So a target among the candidates ranks among them by its reranked score; any
    other target ranks after all live candidates, at its ssl rank among the rest: its ssl rank
    (streamed) less the candidates counted above or tied with it there. states [B, H], targets [B]
    -> (higher [B], ties [B]) int64. `ssl_ranks`: the ssl head's (higher, ties) of these queries, when
    already counted (one pass over the catalogue fewer)."""
    features, weight, bias = model.score_layer(states, "ssl")
    higher, ties = ssl_ranks if ssl_ranks is not None else rank_of_targets_linear(features, weight, bias, targets, seen)
    mixed, cand = model.top_items(states, "mix", top, seen, beta, top)              # [B, R], reranked order
    live = torch.isfinite(mixed)
    hit = (cand == targets[:, None]) & live
    target_mixed = mixed.masked_fill(~hit, 0.0).sum(1, keepdim=True)
    among_higher = ((mixed > target_mixed) & live).sum(1)
    among_ties = ((mixed == target_mixed) & live).sum(1) - 1
    # a target outside them: the ssl counts less the candidates, then every live candidate above it
    target_logit = target_scores_linear(features, weight, bias, targets, seen)[:, None]
    band = tie_band(target_logit)
    cand_logit = (features[:, None] * weight[cand]).sum(-1) + bias[cand]            # as the target's is computed
    cand_above = ((cand_logit > target_logit + band) & live).sum(1)
    cand_tied = ((cand_logit >= target_logit - band) & live).sum(1) - cand_above
    inside = hit.any(1)
    return (torch.where(inside, among_higher, live.sum(1) + higher - cand_above),
            torch.where(inside, among_ties, ties - cand_tied))


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


# Validation figures that can pick the best checkpoint besides the ranking metrics (eval.select_metric),
# with the sign that makes higher better.
VALUE_SELECTION = {"value/rmse": -1.0}


def selection_score(valid: dict[str, dict[str, float]], head: str, metric: str) -> float:
    """The figure that picks the best checkpoint, higher = better: `metric` (e.g. purchase/NDCG@10) of
    `head`, or a value figure of VALUE_SELECTION (value/rmse, negated). A UserError where it is
    undefined (NaN: no held-out return observed, or no event of that kind)."""
    if metric in VALUE_SELECTION:
        score = VALUE_SELECTION[metric] * valid["value"][metric.removeprefix("value/")]
    else:
        score = valid[head][metric]
    if math.isnan(score):
        raise UserError(f"eval.select_metric {metric} is undefined on this validation split (NaN: no event it "
                        "scores); pick another, e.g. eval.select_metric=all/NDCG@10")
    return score


def format_selection(valid: dict[str, dict[str, float]], metric: str) -> str:
    """The selection metric on one line: of every head, or the value figure."""
    if metric in VALUE_SELECTION:
        return f"{metric} {valid['value'][metric.removeprefix('value/')]:.4f}"
    return f"{metric} " + " ".join(f"{head} {ms[metric]:.4f}" for head, ms in valid.items() if head != "value")


def format_table(results: dict[str, dict[str, float]], ks, title: str) -> str:
    """A small text table: one row per head and event kind, HR@k and NDCG@k columns."""
    cols = [f"{m}@{k}" for m in ("HR", "NDCG") for k in ks] + ["MRR"]
    lines = [title, f"  {'head':5s} {'events':9s}" + "".join(f"{c:>9s}" for c in cols)]
    for head, metrics in results.items():
        if head == "value":
            continue
        for kind in KINDS:
            lines.append(f"  {head:5s} {kind:9s}" + "".join(f"{metrics[f'{kind}/{c}']:9.4f}" for c in cols))
    return "\n".join(lines)


def format_value(value: dict[str, float]) -> str:
    """One line on the Q head against realized returns (and the simulator's true values)."""
    true = f", R^2 against true values {value['true_r2']:.3f} (n {value['true_n']})" if "true_r2" in value else ""
    cut = value.get("n_held_out", value["n"]) - value["n"]
    scored = f"n {value['n']}" + (f"; {cut} of {value['n_held_out']} left out, their return not observed" if cut else "")
    return (f"value of Q(s, a) against realized returns ({scored}): rmse {value['rmse']:.4f} (position mean "
            f"{value['baseline_rmse']:.4f}), bias {value['bias']:+.4f}, spearman {value['spearman']:.3f}{true}")
