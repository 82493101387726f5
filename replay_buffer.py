"""The T-step experience pool: build it from a log (`python replay_buffer.py`) and read windows from it.

On disk (`pool.dir`) the pool is flat: one item id, reward and purchase flag per event, and the offsets
where sessions start, as memory-mappable `.npy` files, plus `meta.json` and the original ids. Nothing
is stored per (event x window position): the sample for event t (its state, the next T actions,
their rewards and where the session ends) is cut out of the flat arrays per batch by vectorized
indexing, so memory grows with the number of events, not with events x (state_len + T).

A pool is written into a temporary folder and renamed into place, so a reader never sees half of one.
`meta.json` holds a hash of everything the files depend on; `ensure_pool` rebuilds when it changes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from seqrec.running.atomic import atomic_directory, check_replaceable, check_writable
from seqrec.running.config import WORLDS, Config, add_config_args, load_config
from seqrec.running.errors import UserError, run_cli
from seqrec.data import outofcore
from seqrec.data.loaders import load_events
from seqrec.data.scan import file_format, log_files, read_log
from seqrec.data.preprocess import (
    REBUILD,
    SPLITS,
    Prepared,
    held_out,
    read_original_ids,
    split_events,
    vocabulary_digest,
)

FILE_SOURCES = ("csv", "parquet")     # read by DuckDB itself (seqrec/data/scan.py), never into pandas
FORMAT_VERSION = 3     # 3: exposures (what was shown beside each event) where the log has them


# ================================================================================================
# Reading: windows cut out of the flat arrays
# ================================================================================================
@dataclass
class Windows:
    """Samples for B events: state items before each event and the T steps from it on."""
    state: np.ndarray     # [B, L] int64, items before the event, left-padded with 0
    actions: np.ndarray   # [B, T] int64, a_t .. a_{t+T-1}; 0 after the session ends
    rewards: np.ndarray   # [B, T] float32, r_t .. r_{t+T-1}; 0 after the session ends
    purchase: np.ndarray  # [B, T] bool, step k is a purchase
    dones: np.ndarray     # [B, T] bool, step k is the session's last event
    valid: np.ndarray     # [B, T] bool, step k lies inside the session
    truncated: np.ndarray  # [B, T] bool, the data stops after step k but the session goes on (held-out events follow)
    after: np.ndarray     # [B] int64, a_{t+T}, the item after the window (0 past the end of what may be read)
    shown: np.ndarray | None = None  # [B, T, m] int64, the slate each step was clicked in (0: padding), if asked for


@dataclass
class _Cut:
    """Pool._cut: the arrays at a grid of flat positions, masked; all [B, W]."""
    items: np.ndarray
    rewards: np.ndarray
    purchase: np.ndarray
    inside: np.ndarray
    dones: np.ndarray
    truncated: np.ndarray
    pos: np.ndarray


class Pool:
    """A built pool, memory-mapped. `windows(events, L, T)` gives the samples for those events."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        try:
            self.meta = json.loads((self.dir / "meta.json").read_text())
            self.items = self._load("items", np.int32)        # [E] item ids, sessions contiguous
            self.rewards = self._load("rewards", np.float32)  # [E]
            self.purchase = self._load("purchase", np.bool_)  # [E]
            self.offsets = self._load("offsets", np.int64)    # [S+1], session s = events offsets[s]:offsets[s+1]
            # Exposures, where the log has them: event e was clicked in slate shown_items[shown_offsets[e]:...]
            logged = (self.dir / "shown_offsets.npy").is_file()
            self.shown_items = self._load("shown_items", np.int32) if logged else None        # [X]
            self.shown_offsets = self._load("shown_offsets", np.int64) if logged else None    # [E+1]
            self.slate_logp = self._load("slate_logp", np.float32) if logged else None        # [E]
            self.num_items: int = self.meta["num_items"]
            self.num_sessions: int = self.meta["num_sessions"]
            self.split_mode: str = self.meta["split_mode"]
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            raise UserError(f"the pool in {self.dir} is unreadable ({e if isinstance(e, ValueError) else _reason(e)}); "
                            f"{REBUILD}") from None
        problem = self._inconsistency()
        if problem:
            raise UserError(f"the pool in {self.dir} is corrupt ({problem}); {REBUILD}")
        # The most items shown beside one event (0 without exposures): the width of a batch's slates
        self.slate_width = (int(np.diff(np.asarray(self.shown_offsets)).max(initial=0))
                            if self.shown_offsets is not None else 0)
        # Where each session ends for training: leave-one-out hides the held-out events.
        self.train_ends = np.asarray(self.offsets[1:]) - held_out(np.asarray(self.offsets), self.split_mode)
        self._item_ids = self._session_ids = None

    def _load(self, name: str, dtype) -> np.ndarray:
        path = self.dir / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path.name} is not a NumPy array file: {_reason(e)}") from None
        if array.dtype != dtype or array.ndim != 1:
            raise ValueError(f"{path.name} holds {array.dtype} [{', '.join(map(str, array.shape))}], "
                             f"not a flat {np.dtype(dtype).name} array")
        return array

    def _inconsistency(self) -> str | None:
        """What is wrong with the arrays and meta.json together, or None. One pass over the arrays."""
        E, offsets = len(self.items), np.asarray(self.offsets)
        if not isinstance(self.meta.get("splits_sessions"), dict):
            return "meta.json has no split ranges"
        if not len(self.rewards) == len(self.purchase) == E == self.meta.get("num_events", E):
            return "items, rewards and purchase flags differ in length"
        if len(offsets) != self.num_sessions + 1 or offsets[0] != 0 or offsets[-1] != E or (np.diff(offsets) < 0).any():
            return "the session offsets do not cover the events"
        if E and not (1 <= int(np.min(self.items)) and int(np.max(self.items)) <= self.num_items):
            return f"item ids outside 1..{self.num_items}"
        if not np.isfinite(self.rewards).all():
            return "a reward is not finite"
        if self.shown_offsets is not None:
            shown = np.asarray(self.shown_offsets)
            if len(shown) != E + 1 or shown[0] != 0 or shown[-1] != len(self.shown_items) or (np.diff(shown) < 0).any():
                return "the exposure offsets do not cover the shown items"
            if len(self.slate_logp) != E:
                return "slate log-probabilities and events differ in length"
            if len(self.shown_items) and not (1 <= int(np.min(self.shown_items)) and int(np.max(self.shown_items)) <= self.num_items):
                return f"shown item ids outside 1..{self.num_items}"
        return None

    def shown_at(self, pos: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The slates of the events at flat positions pos [B, W] where `inside` [B, W] -> [B, W, m] item ids,
        padded with 0 (m = slate_width)."""
        if self.shown_offsets is None:
            raise UserError(f"the pool in {self.dir} has no exposures (its log did not record what was shown); "
                            "use train.negatives_from=uniform and train.ssl_softmax=items")
        if self.slate_width == 0:
            return np.zeros(pos.shape + (0,), dtype=np.int64)
        safe = np.clip(pos, 0, len(self.items) - 1)
        first, last = np.asarray(self.shown_offsets)[safe], np.asarray(self.shown_offsets)[safe + 1]
        at = first[..., None] + np.arange(self.slate_width)
        ok = (at < last[..., None]) & inside[..., None]
        return np.where(ok, np.asarray(self.shown_items)[np.minimum(at, max(len(self.shown_items) - 1, 0))], 0).astype(np.int64)

    def session_range(self, split: str) -> tuple[int, int]:
        first, last = self.meta["splits_sessions"][split]
        return first, last

    def events(self, split: str) -> np.ndarray:
        """Indices of the events of a split (queries for valid/test, samples for train). [n] int64"""
        return split_events(np.asarray(self.offsets), self.meta["splits_sessions"], self.split_mode, split)

    def windows(self, events: np.ndarray, state_len: int, horizon: int, training: bool = False,
                shown: bool = False) -> Windows:
        """Vectorized: no loop over events. `events` [B] are indices into the flat arrays.

        With `training`, a session ends where training data ends (before leave-one-out's held-out
        events), so no window sees a validation or test item. With `shown`, each step's slate too.
        """
        events = np.asarray(events, dtype=np.int64)
        session = self.session_of(events)
        start = self.offsets[session][:, None]
        pos = events[:, None] + np.arange(-state_len, horizon + 1)              # [B, L+T+1]: one past for `after`
        c, step = self._cut(session, pos, training, start), slice(state_len, -1)
        return Windows(state=c.items[:, :state_len], actions=c.items[:, step], rewards=c.rewards[:, step],
                       purchase=c.purchase[:, step], dones=c.dones[:, step], valid=c.inside[:, step],
                       truncated=c.truncated[:, step], after=c.items[:, -1],
                       shown=self.shown_at(c.pos[:, step], c.inside[:, step]) if shown else None)

    def _cut(self, session: np.ndarray, pos: np.ndarray, training: bool, start=None) -> "_Cut":
        """The events at flat positions pos [B, W] of each row's session [B] (-1: none), masked to what
        may be read (with `training`, up to where training data ends) and from `start` [B, 1] on."""
        s = np.maximum(session, 0)[:, None]
        none = (session < 0)[:, None]
        true_end = np.where(none, 0, self.offsets[s + 1])
        end = np.where(none, 0, self.train_ends[s] if training else true_end)
        inside = (pos < end) if start is None else (pos >= start) & (pos < end)
        safe = np.clip(pos, 0, len(self.items) - 1)
        return _Cut(items=np.where(inside, self.items[safe], 0).astype(np.int64),
                    rewards=np.where(inside, self.rewards[safe], 0).astype(np.float32),
                    purchase=inside & self.purchase[safe], inside=inside, dones=inside & (pos == true_end - 1),
                    truncated=(pos == end - 1) & (end < true_end), pos=pos)

    def spans(self, sessions: np.ndarray, starts: np.ndarray, width: int, training: bool = False,
              shown: bool = False) -> Windows:
        """The session path's chunks: `width` consecutive events of each session from its event
        `starts` [B] on (sessions [B]; -1 = an idle lane). Vectorized like `windows`. Returns Windows
        whose `actions`, `rewards`, `purchase`, `dones`, `valid`, `truncated` are [B, width] (0/False
        past the end), `after` [B] the item after the span, and `state` empty [B, 0]."""
        sessions = np.asarray(sessions, dtype=np.int64)
        first = np.where(sessions < 0, 0, self.offsets[np.maximum(sessions, 0)])
        pos = (first + np.asarray(starts, dtype=np.int64))[:, None] + np.arange(width + 1)    # [B, W+1]
        c, step = self._cut(sessions, pos, training), slice(None, -1)
        return Windows(state=np.zeros((len(sessions), 0), dtype=np.int64), actions=c.items[:, step],
                       rewards=c.rewards[:, step], purchase=c.purchase[:, step], dones=c.dones[:, step],
                       valid=c.inside[:, step], truncated=c.truncated[:, step], after=c.items[:, -1],
                       shown=self.shown_at(c.pos[:, step], c.inside[:, step]) if shown else None)

    def session_of(self, events: np.ndarray) -> np.ndarray:
        """The session of each event: events [n] -> [n] int64."""
        return np.searchsorted(self.offsets, np.asarray(events, dtype=np.int64), side="right") - 1

    def train_item_counts(self) -> np.ndarray:
        """How often each item is in the training events: [N+1] int64, index = item id (0: padding, 0)."""
        return np.bincount(np.asarray(self.items[self.events("train")]), minlength=self.num_items + 1)

    def train_lengths(self) -> np.ndarray:
        """Training events of each session [S] (a prefix of the session; 0 outside the training split)."""
        return np.bincount(self.session_of(self.events("train")), minlength=self.num_sessions)

    def histories(self, events: np.ndarray) -> np.ndarray:
        """Every item before each event in its session (not only the last `state_len`), what
        "already seen" means when ranking. events [B] -> [B, S] int64, left-aligned, 0-padded; S is
        the longest of these histories (at least 1)."""
        events = np.asarray(events, dtype=np.int64)
        start = self.offsets[self.session_of(events)]
        width = max(int((events - start).max(initial=0)), 1)
        pos = start[:, None] + np.arange(width)
        return np.where(pos < events[:, None], self.items[np.minimum(pos, len(self.items) - 1)], 0).astype(np.int64)

    def session_items(self, session: int) -> np.ndarray:
        return np.asarray(self.items[self.offsets[session]:self.offsets[session + 1]], dtype=np.int64)

    # -------------------------------------------------------------- original ids (loaded on demand)
    @property
    def item_ids(self) -> np.ndarray:
        """Original id (as text) of item i at `item_ids[i - 1]`. [N]"""
        if self._item_ids is None:
            self._item_ids = read_original_ids(self.dir / "item_ids.csv")
        return self._item_ids

    @property
    def session_ids(self) -> np.ndarray:
        """Original id (as text) of each session, in pool order. [S]"""
        if self._session_ids is None:
            self._session_ids = read_original_ids(self.dir / "session_ids.csv")
        return self._session_ids

    @property
    def items_digest(self) -> str:
        """vocabulary_digest of the pool's item ids (meta.json's, or computed for older pools)."""
        return self.meta.get("items_digest") or vocabulary_digest(self.item_ids)

    def filtered_sessions(self) -> pd.DataFrame:
        """The log's sessions the filters removed: columns original_id (text) and filter (a
        preprocess.FILTERED key); empty for pools built before this was kept, or made by appending."""
        path = self.dir / "filtered_sessions.csv"
        if not path.is_file():
            return pd.DataFrame({"original_id": [], "filter": []}, dtype=str)
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            raise UserError(f"the pool's filtered_sessions.csv in {self.dir} is unreadable; {REBUILD}") from None

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file())


def _reason(e: Exception) -> str:
    """The first sentence of an exception's message (numpy's run on for lines), with its type."""
    text = str(e).strip().split(". ")[0].splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ================================================================================================
# Building
# ================================================================================================
def pool_fingerprint(cfg: Config) -> str:
    """Hash of everything the pool's files depend on: the data (and simulator) config and the input
    files' sizes and modification times. `pool.state_len` and `pool.horizon` are not in it: windows
    are cut at read time, so changing them needs no rebuild."""
    data = cfg.data.to_dict()
    parts = {"format": FORMAT_VERSION, "data": data,
             "sim": cfg.sim.to_dict() if data["source"] == "synthetic" else None,
             "inputs": [_file_stamp(p) for p in _input_files(data)]}
    if data["source"] == "recsim":
        parts["recsim"] = cfg.recsim.to_dict()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _input_files(data: dict) -> list[Path]:
    if data["source"] in WORLDS or not data["path"]:
        return []
    path = Path(data["path"])
    if data["source"] == "yoochoose":
        return [path / "yoochoose-clicks.dat", path / "yoochoose-buys.dat"]
    if data["source"] in FILE_SOURCES and path.is_dir():          # a folder of part files: each one's stamp
        return log_files(path, file_format(path, data["source"]))
    return [path]


def _file_stamp(path: Path) -> list:
    try:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def build_pool(cfg: Config) -> Pool:
    """Load, preprocess and write the pool atomically to `pool.dir`: DuckDB does the work out of core
    (seqrec/data/outofcore.py), so the log's length is bounded by the disk, not by memory."""
    t0 = time.perf_counter()
    data = cfg.data.to_dict()
    if data["source"] in WORLDS:
        world = cfg[WORLDS[data["source"]]]
        with tqdm(total=world.num_sessions, desc="simulating sessions", unit="session", leave=False) as bar:
            return pool_from_events(load_events(data, world.to_dict(), progress=bar), cfg, started=t0)
    print(f"reading the {data['source']} log {data['path'] or '(cached download)'} ...", flush=True)
    if data["source"] in FILE_SOURCES:
        return write_out_of_core(cfg, lambda con: read_log(con, data), t0)
    return pool_from_events(load_events(data, None), cfg, started=t0)


def pool_from_events(events: pd.DataFrame, cfg: Config, started: float | None = None) -> Pool:
    """Preprocess a canonical event table (loaders.CANONICAL columns) and write it as the pool."""
    return write_out_of_core(cfg, lambda con: outofcore.load_frame(con, events),
                             time.perf_counter() if started is None else started)


def write_out_of_core(cfg: Config, load, started: float) -> Pool:
    """`load(con)` makes DuckDB's table `log`; outofcore.build turns it into the pool's files in a
    temporary folder (its database and spill files in a subfolder, removed before the rename)."""
    data, folder = cfg.data.to_dict(), Path(cfg.pool.dir)
    with atomic_directory(folder, is_pool_folder, POOL_FOLDER) as tmp:
        work = tmp / ".build"
        work.mkdir()
        with outofcore.database(work, cfg.pool.build_memory) as con:
            load(con)
            layout = outofcore.build(con, data, tmp)
        shutil.rmtree(work)
        purchase = np.load(tmp / "purchase.npy", mmap_mode="r")
        meta = describe(layout, purchase, read_original_ids(tmp / "item_ids.csv"), cfg)
        meta["build_seconds"] = round(time.perf_counter() - started, 3)
        del purchase
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Pool(folder)


def split_stats(offsets: np.ndarray, purchase: np.ndarray, split_sessions: dict, split_mode: str) -> dict:
    """Sessions, events (queries for valid/test under leave-one-out) and purchases of each split, from
    the session offsets [S+1] and purchase flags [E] (a memory map is read once, in order)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if split_mode != "loo":
        stats = {}
        for name in SPLITS:
            first, last = split_sessions[name]
            events = slice(int(offsets[first]), int(offsets[last]))
            stats[name] = {"sessions": int(np.count_nonzero(np.diff(offsets[first:last + 1]))),
                           "events": events.stop - events.start,
                           "purchases": int(np.count_nonzero(purchase[events]))}
        return stats
    ends = offsets[1:][held_out(offsets, split_mode) > 0]          # every session is in train, its last events not
    test, valid = {"sessions": len(ends), "events": len(ends), "purchases": int(np.count_nonzero(purchase[ends - 1]))}, \
        {"sessions": len(ends), "events": len(ends), "purchases": int(np.count_nonzero(purchase[ends - 2]))}
    train = {"sessions": int(np.count_nonzero(np.diff(offsets))), "events": int(offsets[-1]) - 2 * len(ends),
             "purchases": int(np.count_nonzero(purchase)) - test["purchases"] - valid["purchases"]}
    return {"train": train, "valid": valid, "test": test}


def describe(layout: dict, purchase: np.ndarray, item_ids: np.ndarray, cfg: Config) -> dict:
    """meta.json: counts over all splits and per split, the config and its hash. layout: offsets
    [S+1], splits_sessions, num_items; purchase [E]; item_ids [N] as text."""
    offsets, split_mode = layout["offsets"], cfg.data.split_mode
    purchases = int(np.count_nonzero(purchase))
    return {
        "format": FORMAT_VERSION, "config_hash": pool_fingerprint(cfg), "split_mode": split_mode,
        "splits_sessions": layout["splits_sessions"],
        "splits": split_stats(offsets, purchase, layout["splits_sessions"], split_mode),
        "num_sessions": len(offsets) - 1, "num_items": layout["num_items"], "items_digest": vocabulary_digest(item_ids),
        "num_events": int(offsets[-1]),
        "num_purchases": purchases, "num_clicks": int(offsets[-1]) - purchases,
        "data": cfg.data.to_dict(),
        "sim": cfg.sim.to_dict() if cfg.data.source == "synthetic" else None,
        **({"recsim": cfg.recsim.to_dict()} if cfg.data.source == "recsim" else {}),
    }


POOL_FOLDER = "an experience pool (pool.dir)"


def is_pool_folder(folder: Path) -> bool:
    """Whether `folder` holds a pool this project wrote (its meta.json), so a rebuild may replace it."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "num_items" in meta and "splits_sessions" in meta


def write_pool(p: Prepared, meta: dict, folder: Path) -> None:
    """Arrays, id maps and meta.json into a temporary folder, then renamed to `folder` (which must be
    missing, empty, or a pool: a user's file or folder there is an error, never replaced)."""
    with atomic_directory(folder, is_pool_folder, POOL_FOLDER) as tmp:
        np.save(tmp / "items.npy", p.items.astype(np.int32))
        np.save(tmp / "rewards.npy", p.rewards.astype(np.float32))
        np.save(tmp / "purchase.npy", p.purchase.astype(bool))
        np.save(tmp / "offsets.npy", p.offsets.astype(np.int64))
        pd.DataFrame({"original_id": p.item_ids}).to_csv(tmp / "item_ids.csv", index=False)
        pd.DataFrame({"original_id": p.session_ids}).to_csv(tmp / "session_ids.csv", index=False)
        if p.filtered_ids is not None:
            pd.DataFrame({"original_id": p.filtered_ids, "filter": p.filtered_why}).to_csv(
                tmp / "filtered_sessions.csv", index=False)
        if p.shown_offsets is not None:
            np.save(tmp / "shown_items.npy", p.shown_items.astype(np.int32))
            np.save(tmp / "shown_offsets.npy", p.shown_offsets.astype(np.int64))
            np.save(tmp / "slate_logp.npy", p.slate_logp.astype(np.float32))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def append_train_sessions(pool: Pool, items: np.ndarray, rewards: np.ndarray, purchase: np.ndarray,
                          lengths: np.ndarray, session_ids: np.ndarray, folder: Path,
                          shown: np.ndarray | None = None, slate_logp: np.ndarray | None = None) -> Pool:
    """A new pool in `folder`: `pool` plus new sessions at the end of its training split.

    items/rewards/purchase [E'] are the new events (pool item ids), session after session, with
    lengths [S'] and original ids session_ids [S']. The item vocabulary stays as it is. If the pool
    has exposures, `shown` [E', k] (pool ids, 0 = none) and `slate_logp` [E'] are the new events'
    (None: nothing recorded, empty slates of unknown probability).
    """
    if pool.split_mode == "loo":
        raise UserError("appending sessions to a leave-one-out pool is not supported; use a session split")
    offsets = np.asarray(pool.offsets)
    cut_s = pool.session_range("train")[1]
    cut_e, added, total = int(offsets[cut_s]), len(lengths), int(np.sum(lengths))

    def spliced(old, new, dtype):
        return np.concatenate([np.asarray(old[:cut_e]), np.asarray(new, dtype), np.asarray(old[cut_e:])]).astype(dtype)

    ranges = {name: [a + (0 if name == "train" else added), b + added]
              for name, (a, b) in pool.meta["splits_sessions"].items()}
    p = Prepared(
        items=spliced(pool.items, items, np.int32), rewards=spliced(pool.rewards, rewards, np.float32),
        purchase=spliced(pool.purchase, purchase, bool),
        offsets=np.concatenate([offsets[:cut_s + 1], cut_e + np.cumsum(lengths), offsets[cut_s + 1:] + total]),
        split_sessions=ranges, item_ids=pool.item_ids,
        session_ids=np.concatenate([pool.session_ids[:cut_s], np.asarray(session_ids, dtype=str),
                                    pool.session_ids[cut_s:]]))
    if pool.shown_offsets is not None:
        new = np.zeros((len(items), 0), dtype=np.int64) if shown is None else np.asarray(shown, dtype=np.int64)
        kept = new > 0
        old_offsets, cut_x = np.asarray(pool.shown_offsets), int(pool.shown_offsets[cut_e])
        p.shown_items = np.concatenate([np.asarray(pool.shown_items[:cut_x]), new[kept],
                                        np.asarray(pool.shown_items[cut_x:])]).astype(np.int32)
        p.shown_offsets = np.concatenate([old_offsets[:cut_e + 1], cut_x + np.cumsum(kept.sum(1)),
                                          old_offsets[cut_e + 1:] + int(kept.sum())]).astype(np.int64)
        p.slate_logp = spliced(pool.slate_logp, np.full(len(items), np.nan) if slate_logp is None else slate_logp,
                               np.float32)
    meta = {**pool.meta, "num_sessions": len(p.session_ids), "num_events": len(p.items),
            "num_purchases": int(p.purchase.sum()), "num_clicks": int((~p.purchase).sum()),
            "splits_sessions": p.split_sessions, "splits": split_stats(p.offsets, p.purchase, p.split_sessions, pool.split_mode),
            "config_hash": f"{pool.meta['config_hash']}+appended",
            "appended_sessions": pool.meta.get("appended_sessions", 0) + added}
    write_pool(p, meta, Path(folder))
    return Pool(Path(folder))


def stale_reason(cfg: Config) -> str | None:
    """Why the pool at `pool.dir` must be (re)built, or None if it is up to date."""
    meta_path = Path(cfg.pool.dir) / "meta.json"
    if not meta_path.is_file():
        return "no pool yet"
    try:
        meta = json.loads(meta_path.read_text())
        stored = meta.get("config_hash") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        stored = None
    return None if stored == pool_fingerprint(cfg) else "data config or input files changed"


def ensure_pool(cfg: Config, force: bool = False) -> Pool:
    """The pool at `pool.dir`, built first if it is missing, stale (config hash changed) or `force`d."""
    reason = "forced" if force else stale_reason(cfg)
    if reason is None:
        return Pool(Path(cfg.pool.dir))
    folder = Path(cfg.pool.dir)                       # a user's file or folder there: refused before any work
    check_replaceable(folder, is_pool_folder, POOL_FOLDER)
    check_writable(folder.parent, "the folder of pool.dir")
    print(f"building pool in {cfg.pool.dir} ({reason}) ...", flush=True)
    pool = build_pool(cfg)
    print(f"built in {pool.meta['build_seconds']:.1f} s", flush=True)
    return pool


def summary(pool: Pool) -> str:
    m = pool.meta
    lines = [f"pool {pool.dir}: {m['num_sessions']:,} sessions, {m['num_items']:,} items, "
             f"{m['num_events']:,} events ({m['num_purchases']:,} purchases), "
             f"{pool.disk_bytes() / 1e6:.1f} MB on disk ({pool.disk_bytes() / max(m['num_events'], 1):.1f} B/event)"]
    for name in SPLITS:
        s = m["splits"][name]
        lines.append(f"  {name:5s}: {s['sessions']:,} sessions, {s['events']:,} events, {s['purchases']:,} purchases")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the experience pool from the configured log.")
    add_config_args(parser)
    parser.add_argument("--force", action="store_true", help="rebuild even if the pool is up to date")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if not args.force and stale_reason(cfg) is None:
        print("pool is up to date (--force rebuilds it)")
    print(summary(ensure_pool(cfg, force=args.force)))


if __name__ == "__main__":
    run_cli(main)
