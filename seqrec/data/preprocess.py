"""From a canonical event table to flat, split, id-remapped arrays: the content of the experience pool.

Steps, each a small pure function: ids to codes; iteratively drop rare items and short sessions;
optionally sample sessions; split sessions into train/validation/test; remap item ids to 1..N (0 is
padding) keeping the map; order by session and time and lay sessions out split after split.

`prepare` is the specification, in memory: pools are built by `outofcore.py` (the same steps in
DuckDB, out of core), which tests/test_outofcore.py checks writes exactly what `prepare` and
`replay_buffer.write_pool` write. The split (`split_of_sessions`) and the held-out events
(`held_out`, `split_events`) are shared by both and by the pool's readers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from seqrec.running.errors import UserError

SPLITS = ("train", "valid", "test")
REBUILD = "rebuild it with: python replay_buffer.py --force (with the --config/--set of your run)"
LOO_HOLDOUT = 2  # leave-one-out: a session's last event is its test query, the one before its validation query


@dataclass
class Prepared:
    """Flat arrays over all E events (sessions contiguous, train then valid then test sessions)."""
    items: np.ndarray            # [E] int32, item ids 1..N
    rewards: np.ndarray          # [E] float32
    purchase: np.ndarray         # [E] bool
    offsets: np.ndarray          # [S+1] int64, session s is events offsets[s]:offsets[s+1]
    split_sessions: dict         # split name -> [first, last) session index
    item_ids: np.ndarray         # [N] original id of item 1..N (item_ids[i - 1])
    session_ids: np.ndarray      # [S] original id of each session
    shown_items: np.ndarray | None = None    # [X] int32, the items shown beside each event, event after event (None: not logged)
    shown_offsets: np.ndarray | None = None  # [E+1] int64, event e's slate is shown_items[shown_offsets[e]:shown_offsets[e+1]]
    slate_logp: np.ndarray | None = None     # [E] float32, log-probability of event e's slate under the logging policy
    filtered_ids: np.ndarray | None = None   # [D] original ids of the log's sessions the filters removed
    filtered_why: np.ndarray | None = None   # [D] which filter removed each (a FILTERED key)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def prepare(events: pd.DataFrame, data: dict) -> Prepared:
    """The whole preprocessing chain for the `data` config section (a dict), in memory: the reference
    the out-of-core build is tested against.

    Works on int32 codes and boolean masks (no per-event Python, no pandas group-by), so 10M events
    take seconds and a few hundred MB beside the input table.
    """
    sessions, session_ids = _codes(events["session"])
    items, item_ids = _codes(events["item"])
    times = events["timestamp"].to_numpy(np.float64)
    keep = filtered = filter_mask(sessions, items, data["min_item_count"], data["min_session_len"])
    if data["max_sessions"] > 0:
        keep = filtered & sample_mask(sessions, filtered, data["max_sessions"], data["seed"])
        keep = filter_mask(sessions, items, data["min_item_count"], data["min_session_len"], keep)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise UserError(f"no events left after filtering (data.min_item_count={data['min_item_count']}, "
                        f"data.min_session_len={data['min_session_len']}); lower them or use more data")
    filtered_ids, filtered_why = why_filtered(sessions, filtered, keep, session_ids, data["min_session_len"])
    sessions, session_ids = _compact(sessions[rows], session_ids)
    items, item_ids = _compact(items[rows], item_ids)
    split = split_sessions(sessions, times[rows], data["split"], data["split_mode"], data["seed"])

    # Sessions split after split, inside a split by session id, inside a session by time; lexsort is
    # stable, so events at the same time keep the file's order.
    order = np.lexsort((times[rows], sessions, split[sessions]))
    sessions = sessions[order]
    starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]])
    session_seq = sessions[starts]
    bounds = np.searchsorted(split[session_seq], np.arange(len(SPLITS) + 1), side="left")
    rows = rows[order]
    shown = [c for c in events.columns if c.startswith("shown_")]
    exposures = flat_exposures(events[shown].to_numpy()[rows], np.asarray(item_ids)) if shown else (None, None)
    return Prepared(
        items=(items[order] + 1).astype(np.int32),
        rewards=events["reward"].to_numpy(np.float32)[rows],
        purchase=events["purchase"].to_numpy(bool)[rows],
        offsets=np.append(starts, len(rows)).astype(np.int64),
        split_sessions={name: [int(bounds[i]), int(bounds[i + 1])] for i, name in enumerate(SPLITS)},
        item_ids=np.asarray(item_ids),
        session_ids=np.asarray(session_ids)[session_seq],
        shown_items=exposures[0], shown_offsets=exposures[1],
        slate_logp=events["slate_logp"].to_numpy(np.float32)[rows] if shown else None,
        filtered_ids=filtered_ids, filtered_why=filtered_why,
    )


# Why a session of the log is not in the pool: the filter that removed it, as said to a user
FILTERED = {"short": "shorter than data.min_session_len",
            "rare": "shorter than data.min_session_len once the items seen fewer than data.min_item_count times "
                    "were dropped",
            "sample": "not drawn in the data.max_sessions sample"}


def why_filtered(sessions: np.ndarray, filtered: np.ndarray, kept: np.ndarray, session_ids: np.ndarray,
                 min_session_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The sessions no event of which is kept, with the FILTERED key of why: sessions [E] codes;
    filtered [E] the events the item and length filters keep, kept [E] those the pool keeps (after
    the sample) -> (original ids [D], keys [D])."""
    count = len(session_ids)
    raw = np.bincount(sessions, minlength=count)
    after_filters = np.bincount(sessions[filtered], minlength=count) > 0
    gone = np.flatnonzero(np.bincount(sessions[kept], minlength=count) == 0)
    why = np.where(raw[gone] < min_session_len, "short", np.where(after_filters[gone], "sample", "rare"))
    return np.asarray(session_ids)[gone], why.astype(object)


def flat_exposures(shown: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slates of original ids [E, k] -> (pool ids [X] of the shown items the pool kept, event after event;
    offsets [E+1]). item_ids [N] are the pool's original ids, sorted; a shown item not among them
    (filtered out) is left out of its slate."""
    at = np.minimum(np.searchsorted(item_ids, shown), len(item_ids) - 1)
    known = item_ids[at] == shown
    return (at[known] + 1).astype(np.int32), np.concatenate([[0], np.cumsum(known.sum(1))]).astype(np.int64)


def _codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Original ids -> (int32 codes in sorted-id order [E], the sorted unique ids)."""
    codes, uniques = pd.factorize(column.to_numpy(), sort=True)
    return codes.astype(np.int32), np.asarray(uniques)


def _compact(codes: np.ndarray, originals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes still in use as 0..n-1, keeping their order; drop unused originals."""
    used = np.zeros(len(originals), dtype=bool)
    used[codes] = True
    return (np.cumsum(used, dtype=np.int64) - 1).astype(np.int32)[codes], originals[used]


def filter_mask(sessions: np.ndarray, items: np.ndarray, min_item_count: int, min_session_len: int,
                keep: np.ndarray | None = None) -> np.ndarray:
    """Events to keep: drop items seen fewer than `min_item_count` times and sessions shorter than
    `min_session_len`, repeatedly, until neither rule removes anything (dropping one can break the
    other). sessions, items [E] int codes; keep [E] bool (a starting mask) -> [E] bool."""
    keep = np.ones(len(sessions), dtype=bool) if keep is None else keep.copy()
    while True:
        item_count = np.bincount(items[keep])
        keep[keep] = item_count[items[keep]] >= min_item_count
        session_len = np.bincount(sessions[keep])
        short = session_len[sessions[keep]] < min_session_len
        if not short.any():  # the item rule just held, and no session went: a fixed point
            return keep
        keep[keep] = ~short


def sample_mask(sessions: np.ndarray, keep: np.ndarray, max_sessions: int, seed: int) -> np.ndarray:
    """A seeded random sample of `max_sessions` of the sessions still kept (all if there are fewer). [E]"""
    present = np.unique(sessions[keep])
    if len(present) <= max_sessions:
        return np.ones(len(sessions), dtype=bool)
    chosen = np.zeros(int(sessions.max()) + 1, dtype=bool)
    chosen[np.random.default_rng([seed, 7]).choice(present, size=max_sessions, replace=False)] = True
    return chosen[sessions]


def split_sessions(session_codes: np.ndarray, timestamps: np.ndarray, shares: list[float], mode: str,
                   seed: int) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each session code, from the events' session codes
    and times [E]. [S] int8 (see `split_of_sessions`)."""
    num_sessions = int(session_codes.max()) + 1
    last_time = np.full(num_sessions, -np.inf)
    if mode == "temporal":
        np.maximum.at(last_time, session_codes, timestamps)
    return split_of_sessions(last_time, shares, mode, seed)


def split_of_sessions(last_time: np.ndarray, shares: list[float], mode: str, seed: int) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each session, from each one's last event time [S]
    (sessions in code order). [S] int8

    `random`: a seeded permutation of the sessions. `temporal`: sessions ordered by their last event
    time, the earliest in train and the latest in test. `loo`: every session is in train; its last
    events are held out by `split_events` instead.
    """
    num_sessions = len(last_time)
    if mode == "loo":
        return np.zeros(num_sessions, dtype=np.int8)
    if mode == "temporal":
        order = np.lexsort((np.arange(num_sessions), last_time))
    else:
        order = np.random.default_rng([seed, 11]).permutation(num_sessions)
    cuts = np.round(np.cumsum(shares)[:2] * num_sessions).astype(int)
    rank = np.empty(num_sessions, dtype=np.int64)
    rank[order] = np.arange(num_sessions)
    split = np.searchsorted(cuts, rank, side="right").astype(np.int8)
    for i, name in enumerate(SPLITS):
        if shares[i] > 0 and not (split == i).any():
            raise UserError(f"only {num_sessions} sessions after filtering: too few to give the {name} split "
                            f"any; lower data.min_session_len / data.min_item_count or use more data")
    return split


def held_out(offsets: np.ndarray, split_mode: str) -> np.ndarray:
    """Trailing events of each session that training must not see (leave-one-out only). [S] int64

    Sessions of LOO_HOLDOUT events or fewer have no validation/test query and are trained on whole.
    """
    lengths = np.diff(offsets)
    return np.where((split_mode == "loo") & (lengths > LOO_HOLDOUT), LOO_HOLDOUT, 0).astype(np.int64)


def split_events(offsets: np.ndarray, split_sessions: dict, split_mode: str, split: str) -> np.ndarray:
    """Indices of the events of `split` in the flat layout. [n] int64

    By session (random/temporal): the events of the split's contiguous sessions. Leave-one-out: test
    is each session's last event, validation the one before, train everything else.
    """
    if split_mode != "loo":
        first, last = split_sessions[split]
        return np.arange(offsets[first], offsets[last], dtype=np.int64)
    ends = np.asarray(offsets[1:], dtype=np.int64)[held_out(offsets, split_mode) > 0]
    if split == "test":
        return ends - 1
    if split == "valid":
        return ends - 2
    keep = np.ones(int(offsets[-1]), dtype=bool)
    keep[ends - 1] = keep[ends - 2] = False
    return np.flatnonzero(keep)


def vocabulary_digest(item_ids) -> str:
    """A short hash of the item vocabulary: the original ids of items 1..N, in order, as text. Two
    pools with the same digest map every internal id to the same original item. [N] -> str"""
    return hashlib.sha256("\n".join(map(str, item_ids)).encode()).hexdigest()[:16]


def read_original_ids(path) -> np.ndarray:
    """A pool's item_ids.csv or session_ids.csv: the original id (as text) of each item or session, in
    pool order. [N] A UserError if the file is missing or not one of ours."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)["original_id"].to_numpy()
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"the pool's {path.name} in {path.parent} is unreadable ({type(e).__name__}: {reason}); "
                        f"{REBUILD}") from None
