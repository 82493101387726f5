"""The pool's content built out of core: DuckDB filters, samples, splits, renumbers and orders the log
in a database on disk under a memory limit, and the arrays stream into the pool's files chunk by chunk,
so a log of any length builds in bounded memory (docs/speed.md has the figures).

What it computes is `preprocess.prepare` + `replay_buffer.write_pool`, byte for byte: the NumPy version
is the readable specification, tested against this one on every source's fixtures.

Tables, as the build goes (one database, `build.duckdb`, in a temporary folder):
    log       ord, session, item, timestamp, reward, purchase [, shown_*, slate_logp]: the canonical events
    ev        ord, s, i, t, reward, purchase: session and item codes (ranks of the original ids)
    filtered  (a view) ev after the item and session-length filters, iterated: its sessions filtered_s,
              its items filtered_i; kept, kept_s, kept_i: after the sample too
    sessions  s, pos: the kept sessions in pool order (split after split, by code inside a split)
    items     i, id: the kept items and their pool ids 1..N (in original-id order)
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
from tqdm import tqdm

from seqrec.data.preprocess import SPLITS, split_of_sessions
from seqrec.running.errors import UserError

INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT"}
CHUNK_VECTORS = 256           # rows per streamed chunk: 256 DuckDB vectors of 2,048 = 524,288 events


@contextmanager
def database(folder: Path, memory_limit: str, threads: int = 0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB database in `folder` (a temporary folder the caller owns) that spills to it past
    `memory_limit` (e.g. "2GB")."""
    con = duckdb.connect(str(Path(folder) / "build.duckdb"))
    try:
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{Path(folder) / 'spill'}'")
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET TimeZone = 'UTC'")
        if threads > 0:
            con.execute(f"SET threads = {int(threads)}")
        yield con
    except duckdb.OutOfMemoryException as e:
        raise UserError(f"the pool build ran out of memory ({str(e).splitlines()[0]}); "
                        "raise pool.build_memory or free memory") from None
    finally:
        con.close()


def load_frame(con: duckdb.DuckDBPyConnection, events: pd.DataFrame) -> None:
    """A loader's canonical event table (loaders.CANONICAL, and exposures) as table `log`."""
    con.register("frame", events.assign(ord=np.arange(len(events), dtype=np.int64)))
    con.execute("CREATE TABLE log AS SELECT * FROM frame")
    con.unregister("frame")


# ================================================================================================
# From table `log` to the pool's files
# ================================================================================================
def build(con: duckdb.DuckDBPyConnection, data: dict, folder: Path) -> dict:
    """Filter, sample, split and lay out table `log` into the pool's files in `folder` (the data config
    section as a dict). Returns the layout meta.json needs (`lay_out`)."""
    with tqdm(total=5, desc="pool: coding ids", unit="step", leave=False) as steps:
        names = encode(con)
        steps.set_description("pool: filtering")
        steps.update()
        filter_events(con, "filtered", data["min_item_count"], data["min_session_len"])
        if not count(con, "filtered_s"):
            raise UserError(f"no events left after filtering (data.min_item_count={data['min_item_count']}, "
                            f"data.min_session_len={data['min_session_len']}); lower them or use more data")
        sample(con, data)
        write_filtered(con, data["min_session_len"], names["s"], folder / "filtered_sessions.csv")
        steps.set_description("pool: splitting")
        steps.update()
        layout = lay_out(con, data)
        steps.set_description("pool: writing ids")
        steps.update()
        (join_i, item), (join_s, session) = names["i"], names["s"]
        write_ids(con, f"SELECT {item} AS original_id FROM items{join_i} ORDER BY id", folder / "item_ids.csv")
        write_ids(con, f"SELECT {session} AS original_id FROM sessions{join_s} ORDER BY pos",
                  folder / "session_ids.csv")
        steps.set_description("pool: ordering events")
        steps.update()
        write_events(con, layout, names["i"], folder)
        steps.update()
    return layout


def encode(con: duckdb.DuckDBPyConnection) -> dict:
    """`ev`: the events by session and item code, the rank of each original id among all the log's
    (sorted as NumPy sorts: numbers by value, text by code point). Integer ids are their own codes (same
    order), so `ev` is a view of `log`; text ids are coded once (tables s_codes, i_codes) into table `ev`.
    Returns, for "s" and "i", the SQL that joins a table with that code column to its original id and
    the SQL of that id."""
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE log)").fetchall())
    if types["session"] in INTEGERS and types["item"] in INTEGERS:
        con.execute("CREATE VIEW ev AS SELECT ord, session AS s, item AS i, timestamp AS t, reward, purchase FROM log")
        return {"s": ("", "s"), "i": ("", "i")}
    for codes, column in (("s_codes", "session"), ("i_codes", "item")):   # sorted in, so rowid is the rank
        con.execute(f"CREATE TABLE {codes}_sorted AS SELECT DISTINCT {column} FROM log ORDER BY {column}")
        con.execute(f"CREATE TABLE {codes} AS SELECT {column}, rowid::INTEGER AS {column[0]} FROM {codes}_sorted")
    con.execute("CREATE TABLE ev AS SELECT ord, s, i, timestamp AS t, reward, purchase "
                "FROM log JOIN s_codes USING (session) JOIN i_codes USING (item)")
    return {"s": (" JOIN s_codes c USING (s)", "c.session"), "i": (" JOIN i_codes c USING (i)", "c.item")}


def filter_events(con: duckdb.DuckDBPyConnection, name: str, min_item_count: int, min_session_len: int,
                  sessions: str | None = None, items: str | None = None) -> None:
    """View `name`: the events of `ev` (of the sessions in table `sessions` and the items in `items`, if
    given) without items seen fewer than `min_item_count` times and sessions shorter than
    `min_session_len`, repeatedly, until neither rule removes anything (preprocess.filter_mask).

    The events are never copied: each round counts over `ev` with the sets kept so far, tables
    `{name}_s` (sessions) and `{name}_i` (items); the view is `ev` restricted to both."""
    def within(s_table, i_table):
        parts = ([f"s IN (SELECT s FROM {s_table})"] if s_table else []) + ([f"i IN (SELECT i FROM {i_table})"] if i_table else [])
        return f"WHERE {' AND '.join(parts)}" if parts else ""

    while True:
        con.execute(f"CREATE OR REPLACE TABLE {name}_i AS SELECT i FROM ev {within(sessions, items)} "
                    f"GROUP BY i HAVING count(*) >= {int(min_item_count)}")
        con.execute(f"CREATE OR REPLACE TABLE {name}_n AS SELECT s, count(*) AS n, max(t) AS last "
                    f"FROM ev {within(sessions, name + '_i')} GROUP BY s")
        con.execute(f"CREATE OR REPLACE TABLE {name}_s AS SELECT s FROM {name}_n WHERE n >= {int(min_session_len)}")
        items = name + "_i"
        if count(con, f"{name}_s") == count(con, f"{name}_n"):        # no session was short: a fixed point
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM ev {within(name + '_s', items)}")
            return
        sessions = name + "_s"


def sample(con: duckdb.DuckDBPyConnection, data: dict) -> None:
    """View `kept` (tables kept_s, kept_i): a seeded sample of data.max_sessions of the filtered sessions
    (all with 0 or fewer sessions), filtered again (preprocess.sample_mask)."""
    present = con.execute("SELECT s FROM filtered_s ORDER BY s").fetchnumpy()["s"]
    if data["max_sessions"] <= 0 or len(present) <= data["max_sessions"]:
        for suffix in ("", "_s", "_i", "_n"):
            con.execute(f"CREATE VIEW kept{suffix} AS SELECT * FROM filtered{suffix}")
        return
    chosen = np.random.default_rng([data["seed"], 7]).choice(present, size=data["max_sessions"], replace=False)
    con.register("chosen_frame", pd.DataFrame({"s": chosen}))
    con.execute("CREATE TABLE chosen AS SELECT * FROM chosen_frame")
    con.unregister("chosen_frame")
    filter_events(con, "kept", data["min_item_count"], data["min_session_len"], sessions="chosen", items="filtered_i")


def lay_out(con: duckdb.DuckDBPyConnection, data: dict) -> dict:
    """Tables `sessions` (pool order) and `items` (pool ids); returns the layout: session offsets
    [S+1], split ranges, item count."""
    per = con.execute("SELECT s, last, n FROM kept_n ORDER BY s").fetchnumpy()     # the filter's last count
    split = split_of_sessions(np.asarray(per["last"], dtype=np.float64), data["split"], data["split_mode"],
                              data["seed"])
    order = np.argsort(split, kind="stable")                  # split after split, by code inside a split
    con.register("placed", pd.DataFrame({"s": np.asarray(per["s"])[order], "pos": np.arange(len(order))}))
    con.execute("CREATE TABLE sessions AS SELECT * FROM placed")
    con.unregister("placed")
    con.execute("CREATE TABLE items AS SELECT i, row_number() OVER (ORDER BY i)::INTEGER AS id FROM kept_i")
    bounds = np.searchsorted(split[order], np.arange(len(SPLITS) + 1), side="left")
    lengths = np.asarray(per["n"], dtype=np.int64)[order]
    return {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "splits_sessions": {name: [int(bounds[k]), int(bounds[k + 1])] for k, name in enumerate(SPLITS)},
            "num_items": count(con, "items")}


def write_filtered(con: duckdb.DuckDBPyConnection, min_session_len: int, names: tuple[str, str], path: Path) -> None:
    """filtered_sessions.csv: the log's sessions none of whose events is kept, in code order, with the
    preprocess.FILTERED key of why (preprocess.why_filtered)."""
    join, original = names
    write_ids(con, f"""
        SELECT {original} AS original_id,
               CASE WHEN raw.n < {int(min_session_len)} THEN 'short'
                    WHEN s IN (SELECT s FROM filtered_s) THEN 'sample' ELSE 'rare' END AS filter
        FROM (SELECT s, count(*) AS n FROM ev GROUP BY s) raw{join}
        WHERE s NOT IN (SELECT s FROM kept_s) ORDER BY s""", path)


def write_ids(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    """A query's rows as CSV, chunk by chunk, written as pandas writes the whole table (write_pool)."""
    result = con.execute(query)
    with open(path, "w", newline="") as f:
        pd.DataFrame(columns=[c[0] for c in result.description]).to_csv(f, index=False)
        while len(chunk := result.fetch_df_chunk(CHUNK_VECTORS)):
            chunk.to_csv(f, index=False, header=False)


def write_events(con: duckdb.DuckDBPyConnection, layout: dict, names: tuple[str, str], folder: Path) -> None:
    """items, rewards, purchase (and the exposures, where the log has them) streamed in pool order;
    offsets.npy from the layout. `names`: encode's join and SQL of an item code's original id."""
    E = int(layout["offsets"][-1])
    shown = [c for c in columns(con, "log") if c.startswith("shown_")]
    if shown:
        con.execute(f"CREATE TABLE pool_ids AS SELECT {names[1]} AS item, id FROM items{names[0]}")
    joins = "".join(f" LEFT JOIN pool_ids x{k} ON x{k}.item = l.{c}" for k, c in enumerate(shown))
    exposures = "".join(f", coalesce(x{k}.id, 0) AS {c}" for k, c in enumerate(shown))
    query = (f"SELECT it.id AS item, k.reward, k.purchase{exposures}{', l.slate_logp' if shown else ''} "
             f"FROM ev k JOIN sessions USING (s) JOIN items it USING (i) "
             f"{'JOIN log l USING (ord)' if shown else ''}{joins} ORDER BY sessions.pos, k.t, k.ord")
    files = ["items", "rewards", "purchase"] + (["shown_offsets", "slate_logp"] if shown else [])
    dtypes = [np.int32, np.float32, np.bool_] + ([np.int64, np.float32] if shown else [])
    sizes = [E, E, E] + ([E + 1, E] if shown else [])
    with NpyWriters(folder, files, dtypes, sizes) as out:
        shown_items = open(folder / "shown_items.part", "wb") if shown else None
        total = 0
        if shown:
            out["shown_offsets"].write(np.zeros(1, dtype=np.int64))
        for chunk in tqdm(chunks(con, query), total=-(-E // (CHUNK_VECTORS * 2048)), desc="pool: writing events",
                          unit="chunk", leave=False):
            out["items"].write(chunk["item"].to_numpy())
            out["rewards"].write(chunk["reward"].to_numpy())
            out["purchase"].write(chunk["purchase"].to_numpy())
            if shown:
                slates = chunk[shown].to_numpy(np.int64)                       # [n, k], 0: not a pool item
                known = slates > 0
                slates[known].astype(np.int32).tofile(shown_items)
                out["shown_offsets"].write(total + np.cumsum(known.sum(1)))
                total += int(known.sum())
                out["slate_logp"].write(chunk["slate_logp"].to_numpy())
    if shown:
        shown_items.close()
        with NpyWriters(folder, ["shown_items"], [np.int32], [total]) as out, open(folder / "shown_items.part", "rb") as f:
            while block := f.read(1 << 24):
                out["shown_items"].write(np.frombuffer(block, dtype=np.int32))
        (folder / "shown_items.part").unlink()
    np.save(folder / "offsets.npy", layout["offsets"])


class NpyWriters:
    """`.npy` files of known length written chunk by chunk (the header np.save writes, then the data):
    `with NpyWriters(folder, names, dtypes, sizes) as out: out[name].write(array)`. Checks each file got
    exactly its length."""

    def __init__(self, folder: Path, names: list[str], dtypes: list, sizes: list[int]):
        self.files = {n: _NpyFile(Path(folder) / f"{n}.npy", np.dtype(d), int(s)) for n, d, s in zip(names, dtypes, sizes)}

    def __enter__(self) -> dict:
        return self.files

    def __exit__(self, kind, *_) -> None:
        for f in self.files.values():
            f.close(check=kind is None)


class _NpyFile:
    def __init__(self, path: Path, dtype: np.dtype, size: int):
        self.path, self.dtype, self.size, self.written = path, dtype, size, 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                         "fortran_order": False, "shape": (size,)})

    def write(self, values: np.ndarray) -> None:
        np.ascontiguousarray(values, dtype=self.dtype).tofile(self.file)
        self.written += len(values)

    def close(self, check: bool) -> None:
        self.file.close()
        if check and self.written != self.size:
            raise RuntimeError(f"{self.path.name}: wrote {self.written} of {self.size} values")


# ================================================================================================
# Small helpers
# ================================================================================================
def chunks(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[pd.DataFrame]:
    """A query's result as DataFrames of about CHUNK_VECTORS * 2,048 rows, in order."""
    result = con.execute(query)
    while len(chunk := result.fetch_df_chunk(CHUNK_VECTORS)):
        yield chunk


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
