"""From a canonical event table to flat, split, id-remapped arrays: the content of the experience pool.

Steps, each a small pure function: order by session and time; iteratively drop rare items and short
sessions; optionally sample sessions; split sessions into train/validation/test; remap item ids to
1..N (0 is padding) keeping the map; lay sessions out contiguously, split after split.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from errors import UserError

SPLITS = ("train", "valid", "test")
LOO_HOLDOUT = 2  # leave-one-out: a session's last event is its test query, the one before its validation query


@dataclass
class Prepared:
    """Flat arrays over all E events (sessions contiguous, train then valid then test sessions)."""
    items: np.ndarray            # [E] int32, item ids 1..N
    rewards: np.ndarray          # [E] float32
    purchase: np.ndarray         # [E] bool
    timestamps: np.ndarray       # [E] float64
    offsets: np.ndarray          # [S+1] int64, session s is events offsets[s]:offsets[s+1]
    split_sessions: dict         # split name -> [first, last) session index
    item_ids: np.ndarray         # [N] original id of item 1..N (item_ids[i - 1])
    session_ids: np.ndarray      # [S] original id of each session

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def prepare(events: pd.DataFrame, data: dict) -> Prepared:
    """The whole preprocessing chain for the `data` config section (a dict)."""
    events = sort_events(events)
    events = filter_events(events, data["min_item_count"], data["min_session_len"])
    if data["max_sessions"] > 0:
        events = sample_sessions(events, data["max_sessions"], data["seed"])
        events = filter_events(events, data["min_item_count"], data["min_session_len"])
    if events.empty:
        raise UserError(f"no events left after filtering (data.min_item_count={data['min_item_count']}, "
                        f"data.min_session_len={data['min_session_len']}); lower them or use more data")
    session_codes, session_ids = pd.factorize(events["session"], sort=True)
    split = split_sessions(session_codes, events["timestamp"].to_numpy(), data["split"],
                           data["split_mode"], data["seed"])
    item_codes, item_ids = remap_items(events["item"].to_numpy())

    # Lay sessions out split after split; inside a split by session id; inside a session by time.
    order = np.lexsort((np.arange(len(events)), session_codes, split[session_codes]))
    codes = session_codes[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    session_seq = codes[starts]
    offsets = np.append(starts, len(codes)).astype(np.int64)
    bounds = np.searchsorted(split[session_seq], np.arange(len(SPLITS) + 1), side="left")
    return Prepared(
        items=item_codes[order].astype(np.int32),
        rewards=events["reward"].to_numpy(np.float32)[order],
        purchase=events["purchase"].to_numpy(bool)[order],
        timestamps=events["timestamp"].to_numpy(np.float64)[order],
        offsets=offsets,
        split_sessions={name: [int(bounds[i]), int(bounds[i + 1])] for i, name in enumerate(SPLITS)},
        item_ids=np.asarray(item_ids),
        session_ids=np.asarray(session_ids)[session_seq],
    )


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Order by session, then time; ties keep the file's order (a stable sort)."""
    return events.sort_values(["session", "timestamp"], kind="stable", ignore_index=True)


def filter_events(events: pd.DataFrame, min_item_count: int, min_session_len: int) -> pd.DataFrame:
    """Drop items seen fewer than `min_item_count` times and sessions shorter than `min_session_len`,
    repeatedly, until neither rule removes anything (dropping one can break the other)."""
    while True:
        item_count = events.groupby("item", sort=False)["item"].transform("size")
        events = events[item_count.to_numpy() >= min_item_count]
        session_len = events.groupby("session", sort=False)["session"].transform("size")
        keep = session_len.to_numpy() >= min_session_len
        if keep.all():  # the item rule just held, and no session went: a fixed point
            return events.reset_index(drop=True)
        events = events[keep]


def sample_sessions(events: pd.DataFrame, max_sessions: int, seed: int) -> pd.DataFrame:
    """A seeded random sample of `max_sessions` sessions (all of them if there are fewer)."""
    sessions = pd.unique(events["session"])
    if len(sessions) <= max_sessions:
        return events
    rng = np.random.default_rng([seed, 7])
    chosen = sessions[rng.choice(len(sessions), size=max_sessions, replace=False)]
    return events[events["session"].isin(chosen)].reset_index(drop=True)


def remap_items(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Original ids -> (codes 1..N in sorted-id order, originals [N] with originals[code - 1] = id)."""
    codes, originals = pd.factorize(items, sort=True)
    return (codes + 1).astype(np.int32), np.asarray(originals)


def split_sessions(session_codes: np.ndarray, timestamps: np.ndarray, shares: list[float], mode: str,
                   seed: int) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each session code. [S] int8

    `random`: a seeded permutation of the sessions. `temporal`: sessions ordered by their last event
    time, the earliest in train and the latest in test. `loo`: every session is in train; its last
    events are held out by `split_events` instead.
    """
    num_sessions = int(session_codes.max()) + 1
    if mode == "loo":
        return np.zeros(num_sessions, dtype=np.int8)
    if mode == "temporal":
        last_time = np.full(num_sessions, -np.inf)
        np.maximum.at(last_time, session_codes, timestamps)
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
