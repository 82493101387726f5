"""Top-k recommendations for a user (their latest history in the pool) or for a given history."""
from __future__ import annotations

import numpy as np
import torch

from seqrec.errors import UserError
from seqrec.distributed import model_device


def history_of_user(pool, user: str) -> np.ndarray:
    """Internal item ids of the session/user with original id `user`, in time order. [n]"""
    matches = np.flatnonzero(pool.session_ids == str(user).strip())
    if len(matches) == 0:
        examples = ", ".join(pool.session_ids[:3])
        raise UserError(f"unknown user '{user}': not among the {pool.num_sessions:,} sessions in the pool "
                        f"(e.g. {examples}); pass an id from the data, or --history")
    return pool.session_items(int(matches[-1]))


def history_from_ids(pool, text: str) -> np.ndarray:
    """Internal ids of a comma-separated list of original item ids. [n]"""
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    if not wanted:
        raise UserError("--history is empty; give original item ids, e.g. --history '12,7,42'")
    lookup = {orig: i + 1 for i, orig in enumerate(pool.item_ids)}
    unknown = [w for w in wanted if w not in lookup]
    if unknown:
        raise UserError(f"unknown item '{unknown[0]}' in --history: not among the {pool.num_items:,} items "
                        f"in the pool (e.g. {', '.join(pool.item_ids[:3])})")
    return np.array([lookup[w] for w in wanted], dtype=np.int64)


def example_user(pool) -> str:
    """The first test session (or the first session at all) as a default user."""
    first, last = pool.session_range("test")
    return str(pool.session_ids[first if last > first else 0])


@torch.no_grad()
def top_k(model, history: np.ndarray, state_len: int, k: int, head: str, exclude_seen: bool, beta: float = 0.0,
          rerank_top: int = 1):
    """(internal item ids [k], scores [k]) for a history of internal ids: its last `state_len` items
    (left-padded if fewer), or all of them with state_len 0. Head `mix` reranks with `beta`, `rerank_top`."""
    model.eval()
    device = model_device(model)
    state_len = state_len or max(len(history), 1)
    state = np.zeros(state_len, dtype=np.int64)
    tail = history[-state_len:]
    state[state_len - len(tail):] = tail
    seen = torch.from_numpy(np.asarray(history, dtype=np.int64))[None].to(device) if exclude_seen and len(history) else None
    scores = model.scores(model.last_state(torch.from_numpy(state)[None].to(device)), head, seen, beta, rerank_top)
    k = min(k, int(torch.isfinite(scores).sum()))
    values, items = torch.topk(scores[0], k)
    return items.cpu().numpy(), values.cpu().numpy()


def format_recommendations(pool, who: str, history: np.ndarray, items, scores, head: str) -> str:
    shown = ", ".join(pool.item_ids[history[-5:] - 1])
    more = "... " if len(history) > 5 else ""
    lines = [f"top-{len(items)} for {who} (history of {len(history)} items: {more}{shown}), ranked by the {head} head:",
             f"  {'rank':>4s}  {'score':>9s}  item"]
    lines += [f"  {r:4d}  {s:9.4f}  {pool.item_ids[i - 1]}" for r, (i, s) in enumerate(zip(items, scores), 1)]
    return "\n".join(lines)
