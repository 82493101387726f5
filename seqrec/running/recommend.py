"""Top-k recommendations: for one user or history (printed), for every session of a pool (a CSV,
streamed in batches), and from Python (`Recommender.load`: a checkpoint loaded once).

Every path ranks a batch of histories with `top_k_batch`, so a user's list is the same whichever way
it was asked for.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from seqrec.running.allocator import release_freed_memory
from seqrec.running.atomic import atomic_write
from seqrec.running.config import load_config
from seqrec.running.distributed import model_device
from seqrec.running.errors import UserError
from seqrec.data.loaders import typed_ids
from seqrec.evaluation.metrics import NaNScores
from seqrec.data.preprocess import FILTERED, read_original_ids, vocabulary_digest
from seqrec.running.runs import check_network_unchanged, check_same_items, load_checkpoint

SPLITS = ("all", "train", "valid", "test")
# A batch of whole histories is padded to its longest: cap rows x width (the encoder's activations)
# and rows x width^2 (SASRec's attention mask), so memory stays flat whatever the sessions' lengths.
MAX_CELLS, MAX_ATTENTION = 1 << 18, 1 << 24
CSV_COLUMNS = ["session_id", "rank", "item_id", "score"]


# ================================================================================================
# Histories: original ids in, internal ids out
# ================================================================================================
def history_of_user(pool, user: str) -> np.ndarray:
    """Internal item ids of the session/user with original id `user`, in time order. [n]"""
    user = str(user).strip()
    matches = np.flatnonzero(pool.session_ids == user)
    if len(matches) == 0:
        filtered = pool.filtered_sessions()
        why = filtered["filter"][filtered["original_id"] == user]
        if len(why):
            raise UserError(f"user '{user}' is in the log but was filtered out of the pool: "
                            f"{FILTERED.get(why.iloc[0], why.iloc[0])}; lower that key and rebuild, or pass --history")
        examples = ", ".join(pool.session_ids[:3])
        raise UserError(f"unknown user '{user}': not among the {pool.num_sessions:,} sessions in the pool "
                        f"(e.g. {examples}); pass an id from the data, or --history")
    return pool.session_items(int(matches[-1]))


def history_from_ids(pool, text: str, unknown_items: str = "error") -> np.ndarray:
    """Internal ids of a comma-separated list of original item ids. [n]"""
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    if not wanted:
        raise UserError("--history is empty; give original item ids, e.g. --history '12,7,42'")
    return internal_ids(pool.item_ids, wanted, "--history", unknown_items)


def internal_ids(item_ids: np.ndarray, wanted: Sequence, where: str, unknown_items: str = "error") -> np.ndarray:
    """Original item ids (any type; compared as text) -> internal ids [n] in 1..N. An unknown one is a
    UserError naming it, or with unknown_items `skip` left out, with one warning line (a live session
    often holds an item newer than the model). item_ids [N] are the pool's original ids."""
    lookup = {str(orig): i + 1 for i, orig in enumerate(item_ids)}
    unknown = [w for w in wanted if str(w).strip() not in lookup]
    if unknown and unknown_items != "skip":
        raise UserError(f"unknown item '{unknown[0]}' in {where}: not among the {len(item_ids):,} items "
                        f"in the pool (e.g. {', '.join(map(str, item_ids[:3]))}); "
                        "recommend.unknown_items=skip leaves such items out")
    if unknown:
        print(f"warning: skipped {len(unknown)} item{'s' if len(unknown) > 1 else ''} of {where} the model does not "
              f"know (e.g. '{unknown[0]}'; recommend.unknown_items=skip)", file=sys.stderr)
    return np.array([lookup[str(w).strip()] for w in wanted if str(w).strip() in lookup], dtype=np.int64)




def example_user(pool) -> str:
    """The first test session (or the first session at all) as a default user."""
    first, last = pool.session_range("test")
    return str(pool.session_ids[first if last > first else 0])


# ================================================================================================
# Ranking a batch of histories
# ================================================================================================
@torch.no_grad()
def top_k_batch(model, histories: Sequence[np.ndarray], state_len: int, k: int, head: str, exclude_seen: bool,
                beta: float = 0.0, rerank_top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each history of internal ids: its last `state_len` items (left-padded), or all of them
    with state_len 0 -> (item ids [B, k'], scores [B, k']), k' = min(k, N); a row with fewer than k'
    rankable items (the rest seen) ends in score -inf. Head `mix` reranks with `beta`, `rerank_top`.
    A UserError if the head's scores hold NaN (a NaN would be ranked first)."""
    model.eval()
    device = model_device(model)
    longest = max(max((len(h) for h in histories), default=1), 1)
    width = state_len or longest
    state = np.zeros((len(histories), width), dtype=np.int64)                 # left-padded
    seen = np.zeros((len(histories), longest), dtype=np.int64)                # every item before, 0 = none
    for row, h in enumerate(histories):
        tail = np.asarray(h, dtype=np.int64)[-width:]
        state[row, width - len(tail):] = tail
        seen[row, :len(h)] = h
    seen = torch.from_numpy(seen).to(device) if exclude_seen else None
    try:                                                      # streamed: memory flat in the catalogue's size
        values, items = model.top_items(model.last_state(torch.from_numpy(state).to(device)), head, k, seen, beta,
                                        rerank_top)
    except NaNScores as e:                                    # topk would put NaN first
        raise UserError(f"the {head} head's scores are NaN ({e}), so it cannot rank; the model diverged "
                        "(lower train.lr) or the head is broken") from None
    return items.cpu().numpy(), values.cpu().numpy()


def top_k(model, history: np.ndarray, state_len: int, k: int, head: str, exclude_seen: bool, beta: float = 0.0,
          rerank_top: int = 1):
    """(internal item ids [k], scores [k]) for one history of internal ids (see top_k_batch)."""
    items, scores = top_k_batch(model, [np.asarray(history, dtype=np.int64)], state_len, k, head, exclude_seen,
                                beta, rerank_top)
    live = np.isfinite(scores[0])
    return items[0][live], scores[0][live]


def length_batches(lengths: np.ndarray, state_len: int, max_rows: int) -> Iterator[slice]:
    """Consecutive slices of rows whose padded batch [rows, width] stays under MAX_CELLS and, for
    attention, MAX_ATTENTION (width: the batch's longest history, or state_len)."""
    start = 0
    while start < len(lengths):
        end, widest = start, 1
        while end < len(lengths) and end - start < max_rows:
            w = max(widest, state_len or int(lengths[end]))
            if end > start and ((end - start + 1) * w > MAX_CELLS or (end - start + 1) * w * w > MAX_ATTENTION):
                break
            widest, end = w, end + 1
        yield slice(start, end)
        start = end


# ================================================================================================
# Every session of a pool, to a CSV
# ================================================================================================
def sessions_of_split(pool, split: str) -> range:
    """Session indices of `split` (train, valid, test) or of the whole pool (all)."""
    if split == "all":
        return range(pool.num_sessions)
    first, last = pool.session_range(split)
    return range(first, last)


def recommend_all(model, pool, out: Path, split: str, state_len: int, k: int, head: str, exclude_seen: bool,
                  beta: float = 0.0, rerank_top: int = 1, batch_size: int = 256) -> int:
    """Write the top k of every session of `split` (from its whole logged history) to the CSV `out`:
    session_id, rank, item_id, score, original ids, best first; streamed batch by batch to a temporary
    name, renamed when complete. With split `all`, the log's sessions the filters removed follow with
    the k items most often in training (score empty: no model scored them), counted on stderr.
    -> rows written."""
    sessions = np.asarray(sessions_of_split(pool, split), dtype=np.int64)
    if len(sessions) == 0:
        raise UserError(f"the {split} split has no sessions; pick another with --split")
    offsets = np.asarray(pool.offsets)
    lengths = offsets[sessions + 1] - offsets[sessions]
    item_ids, session_ids = pool.item_ids, pool.session_ids
    filtered = pool.filtered_sessions()["original_id"].to_numpy() if split == "all" else np.zeros(0, dtype=object)
    popular = item_ids[most_popular(pool, k) - 1]
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with tmp.open("w", newline="") as f, tqdm(total=len(sessions), desc="recommending", unit="session") as bar:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for part in length_batches(lengths, state_len, batch_size):
                batch = sessions[part]
                histories = [pool.session_items(int(s)) for s in batch]
                items, scores = top_k_batch(model, histories, state_len, k, head, exclude_seen, beta, rerank_top)
                for s, row_items, row_scores in zip(batch, items, scores):
                    live = np.isfinite(row_scores)
                    writer.writerows(zip([session_ids[s]] * int(live.sum()), range(1, k + 1),
                                         item_ids[row_items[live] - 1], (f"{v:.6g}" for v in row_scores[live])))
                    written += int(live.sum())
                release_freed_memory()          # memory stays what a batch uses (seqrec/running/allocator.py)
                bar.update(len(batch))
            for session in filtered:
                writer.writerows((session, rank, item, "") for rank, item in enumerate(popular, 1))
            written += len(filtered) * len(popular)

    atomic_write(Path(out), write)
    if len(filtered):
        print(f"note: {len(filtered):,} sessions of the log were filtered out of the pool (data.min_session_len, "
              f"data.min_item_count, data.max_sessions); they got the {len(popular)} items most often in training, "
              "with an empty score", file=sys.stderr)
    return written


def most_popular(pool, k: int) -> np.ndarray:
    """The k items most often in the training events, most first (ties: lower id). [k'] internal ids"""
    return np.argsort(-pool.train_item_counts()[1:], kind="stable")[:k] + 1


# ================================================================================================
# From Python
# ================================================================================================
@dataclass
class Recommender:
    """A trained model with the pool's item ids: rank for histories given as original item ids.

        from model import SeqRecQ
        from seqrec.running.recommend import Recommender
        rec = Recommender.load("runs/default/best.pt", SeqRecQ)   # the checkpoint and item ids, once
        rec.top_k([["941", "79", "679"], []], k=5)                # one DataFrame: query, rank, item_id, score

    The model ranks with `head` (the run's eval.head unless told) from the state the run trained on
    (`state_len`); seen items are left out with `exclude_seen` (recommend.exclude_seen).
    """
    model: torch.nn.Module
    item_ids: np.ndarray          # [N] original ids, of the log's type (loaders.typed_ids); internal id i is item_ids[i - 1]
    state_len: int
    head: str = "ssl"
    exclude_seen: bool = True
    beta: float = 0.0
    rerank_top: int = 1
    unknown_items: str = "error"  # an item the model does not know: error | skip (recommend.unknown_items)

    @classmethod
    def load(cls, checkpoint: str | Path, network, overrides: Sequence[str] = ()) -> "Recommender":
        """The checkpoint's network (`network`: the class, model.SeqRecQ, whose from_checkpoint builds
        it) with the item ids of its pool (the run's pool.dir). `overrides` are --set strings for keys
        that do not define the network, e.g. ["eval.head=mix", "recommend.exclude_seen=false"]."""
        ckpt = load_checkpoint(Path(checkpoint))
        cfg = load_config(overrides=overrides, base=ckpt["config"])
        check_network_unchanged(cfg, ckpt)
        item_ids = read_original_ids(Path(cfg.pool.dir) / "item_ids.csv")
        check_same_items(ckpt, len(item_ids), vocabulary_digest(item_ids), f"the pool in {cfg.pool.dir}", str(checkpoint))
        e = cfg.eval
        return cls(network.from_checkpoint(ckpt, len(item_ids)), typed_ids(pd.Series(item_ids, dtype=str)), cfg.pool.state_len, e.head,
                   cfg.recommend.exclude_seen, e.beta, e.rerank_top, cfg.recommend.unknown_items)

    def top_k(self, histories: Sequence[Sequence], k: int = 10, batch_size: int = 256) -> pd.DataFrame:
        """Top k for each history (a list of original item ids, oldest first; [] for a new user) ->
        DataFrame with columns query (the history's index in `histories`), rank (1 = best), item_id
        (original id, of the log's type), score; rows of one query best first. An unknown item is a
        UserError, or left out with unknown_items `skip`."""
        internal = [internal_ids(self.item_ids, list(h), f"history {q}", self.unknown_items)
                    for q, h in enumerate(histories)]
        lengths = np.array([len(h) for h in internal], dtype=np.int64)
        frames = []
        for part in length_batches(lengths, self.state_len, batch_size):
            items, scores = top_k_batch(self.model, internal[part], self.state_len, k, self.head, self.exclude_seen,
                                        self.beta, self.rerank_top)
            queries = np.repeat(np.arange(part.start, part.stop), items.shape[1])
            ranks = np.tile(np.arange(1, items.shape[1] + 1), len(items))
            frame = pd.DataFrame({"query": queries, "rank": ranks, "item_id": self.item_ids[items.ravel() - 1],
                                  "score": scores.ravel()})
            frames.append(frame[np.isfinite(frame["score"].to_numpy())])
        return (pd.concat(frames, ignore_index=True) if frames else
                pd.DataFrame({"query": [], "rank": [], "item_id": [], "score": []}))


def format_recommendations(pool, who: str, history: np.ndarray, items, scores, head: str) -> str:
    shown = ", ".join(map(str, pool.item_ids[history[-5:] - 1]))
    more = "... " if len(history) > 5 else ""
    lines = [f"top-{len(items)} for {who} (history of {len(history)} items: {more}{shown}), ranked by the {head} head:",
             f"  {'rank':>4s}  {'score':>9s}  item"]
    lines += [f"  {r:4d}  {s:9.4f}  {pool.item_ids[i - 1]}" for r, (i, s) in enumerate(zip(items, scores), 1)]
    return "\n".join(lines)
