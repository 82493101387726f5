"""Event-level evaluation as in SQN, vectorized and full-ranking.

Every event of every session of a split is a query: the state is the `state_len` items before it (in
its session), the target is the event's item, and all items are ranked. HR@k and NDCG@k are reported
for click events and purchase events apart, for both heads in one pass. With `exclude_seen`, every
item earlier in the query's session (not only those in the state) is masked, as RecBole masks a
user's history.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from seqrec.distributed import model_device
from seqrec.metrics import KINDS, summarize
from seqrec.streamed import rank_of_targets_linear


@torch.no_grad()
def evaluate(model, pool, split: str, state_len: int, ks, batch_size: int, exclude_seen: bool, *,
             heads: tuple[str, ...], progress: bool = True, limit: int | None = None) -> dict[str, dict[str, float]]:
    """{head: {"click/HR@5": ..., "purchase/NDCG@20": ...}} for every event of `split` (or its first
    `limit` events), for each of `heads`.

    `model` needs `last_state(state [B, L]) -> [B, H]` and `score_layer(states, head)` (see model.py).
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    events = pool.events(split)[:limit]
    ranks = {head: ([], []) for head in heads}
    purchase = []
    chunks = range(0, len(events), batch_size)
    for start in tqdm(chunks, desc=f"evaluating {split}", unit="batch", leave=False, disable=not progress):
        batch = events[start:start + batch_size]
        w = pool.windows(batch, state_len, 1)
        state = torch.from_numpy(w.state).to(device)
        target = torch.from_numpy(w.actions[:, 0]).to(device)
        seen = torch.from_numpy(pool.histories(batch)).to(device) if exclude_seen else None
        h = model.last_state(state)
        for head in heads:
            higher, ties = rank_of_targets_linear(*model.score_layer(h, head), target, seen)
            ranks[head][0].append(higher.cpu())
            ranks[head][1].append(ties.cpu())
        purchase.append(torch.from_numpy(np.ascontiguousarray(w.purchase[:, 0])))
    model.train(was_training)
    is_purchase = torch.cat(purchase) if purchase else torch.zeros(0, dtype=torch.bool)
    return {head: summarize(_cat(higher), _cat(ties), is_purchase, ks) for head, (higher, ties) in ranks.items()}


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def format_table(results: dict[str, dict[str, float]], ks, title: str) -> str:
    """A small text table: one row per head and event kind, HR@k and NDCG@k columns."""
    cols = [f"{m}@{k}" for m in ("HR", "NDCG") for k in ks] + ["MRR"]
    lines = [title, f"  {'head':5s} {'events':9s}" + "".join(f"{c:>9s}" for c in cols)]
    for head, metrics in results.items():
        for kind in KINDS:
            lines.append(f"  {head:5s} {kind:9s}" + "".join(f"{metrics[f'{kind}/{c}']:9.4f}" for c in cols))
    return "\n".join(lines)
