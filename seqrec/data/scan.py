"""A CSV or Parquet log (one file, or a folder of part files) read straight into DuckDB's table `log`,
never into Python: cleaned and typed as `loaders.load_csv` cleans and types it in pandas (the readable
version; tests check the two give the same pool), so a log larger than memory can be built from.

Steps, in SQL over the table `raw` (the columns read, in file order): drop rows missing an id or time;
drop (or count) exact repeats; map events or a reward column to (reward, purchase); type the ids (integers
when every value is one, else trimmed text); times to seconds; slates to ids of the items' type.
"""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from seqrec.data.loaders import (
    MISSING_TEXT,
    NO_ITEM,
    PLAIN_INTEGER,
    every_row_missing,
    exposure_columns,
    missing_rows_warning,
    no_events,
    not_a_reward,
    not_a_time,
    repeated_rows_warning,
    reward_not_finite,
    reward_purchases_note,
    slate_logp_not_a_number,
    slate_names_no_item,
    slate_not_item_ids,
)
from seqrec.running.errors import UserError

FLOAT32_MAX = 3.4028234663852886e38
WHITESPACE = " \t\n\r\x0b\x0c"            # what Python's str.strip() removes (ASCII): trimmed from ids
INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "HUGEINT"}
FLOAT_TYPES = {"FLOAT", "DOUBLE"}


def log_files(path: Path, source: str) -> list[Path]:
    """The file, or a folder's part files (`*.csv` or `*.parquet` at any depth, in name order)."""
    if path.is_dir():
        parts = sorted(p for p in path.rglob(f"*.{source}") if p.is_file())
        if not parts:
            raise UserError(f"{path} holds no .{source} files; point data.path at a {source} file or a folder of them")
        return parts
    if not path.is_file():
        raise UserError(f"data file {path} not found; check data.path")
    return [path]


def file_format(path: Path, source: str) -> str:
    """`parquet` for data.source parquet, or a csv source whose path is a .parquet file or a folder of
    them; else `csv`."""
    if source == "parquet" or path.suffix == ".parquet":
        return "parquet"
    if source == "csv" and path.is_dir() and not any(path.rglob("*.csv")) and any(path.rglob("*.parquet")):
        return "parquet"
    return "csv"


def read_log(con: duckdb.DuckDBPyConnection, data: dict) -> None:
    """Table `log` (ord, session, item, timestamp, reward, purchase [, shown_*, slate_logp]) from the
    CSV or Parquet log at data.path."""
    path = Path(data["path"])
    kind = file_format(path, data["source"])
    files = log_files(path, kind)
    where = str(path)
    cols = data["columns"]
    header = read_header(con, files, kind, where)
    required = [cols["session_id"], cols["item_id"], cols["timestamp"]]
    missing = [c for c in required if c not in header]
    if missing:
        names = {cols["session_id"]: "session_id", cols["item_id"]: "item_id", cols["timestamp"]: "timestamp"}
        raise UserError(f"{where} has no column {missing[0]!r} (columns: {', '.join(map(repr, header)) or 'none'}); "
                        f"rename it or set data.columns.{names[missing[0]]}")
    event = cols["event"] if cols["event"] in header else None
    reward = cols["reward"] if event is None and cols["reward"] in header else None
    slates = exposure_columns(header, where)
    read_raw(con, files, kind, required + [c for c in (event, reward) if c] + slates,
             text=[c for c in (event, reward) if c] + slates, where=where)
    if count(con, "raw") == 0:
        raise no_events(where)
    drop_missing(con, required, where)
    drop_repeats(con, required + [c for c in (event, reward) if c] + slates, data["drop_duplicates"], where)
    reward_sql, purchase_sql = rewards(con, event, reward, data, where)
    session_sql, item_sql = typed_id(con, required[0]), typed_id(con, required[1])
    time_sql = seconds(con, required[2], where)
    shown = slate_ids(con, slates[:-1], item_sql, where)
    logp = f", {number('slate_logp')} AS slate_logp" if slates else ""
    if slates:
        bad = first_value(con, "raw", "slate_logp", f"{number('slate_logp')} IS NULL")
        if bad is not None:
            raise slate_logp_not_a_number(where, bad)
    con.execute(f"CREATE TABLE log AS SELECT ord, {session_sql} AS session, {item_sql} AS item, {time_sql} AS timestamp, "
                f"{reward_sql} AS reward, {purchase_sql} AS purchase{shown}{logp} FROM raw")
    con.execute("DROP TABLE raw")


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def reader(files: list[Path], kind: str, text: list[str] = (), all_text: bool = False) -> str:
    """DuckDB's table function reading `files`; CSV as pandas reads it (comma, double quotes, header,
    only an empty field missing), the columns `text` (or all) as text."""
    paths = "[" + ", ".join(quote(str(f)) for f in files) + "]"
    if kind == "parquet":
        return f"read_parquet({paths}, union_by_name = true)"
    types = "{" + ", ".join(f"{quote(c)}: 'VARCHAR'" for c in text) + "}"
    return (f"read_csv({paths}, header = true, delim = ',', quote = '\"', escape = '\"', "
            f"{'all_varchar = true' if all_text else f'types = {types}'}, union_by_name = true)")


def read_header(con: duckdb.DuckDBPyConnection, files: list[Path], kind: str, where: str) -> list[str]:
    if kind == "csv" and all(f.stat().st_size == 0 for f in files):
        raise UserError(f"{where} is empty; it needs a header line and events")
    try:
        return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {reader(files, kind, all_text=True)}").fetchall()]
    except duckdb.Error as e:
        raise unreadable(where, kind, e) from None


def read_raw(con: duckdb.DuckDBPyConnection, files: list[Path], kind: str, columns: list[str], text: list[str],
             where: str) -> None:
    """Table `raw`: `columns` in file order, with `ord` their row number. CSV types are sniffed (ids
    and times as numbers where they look it); a file that breaks the sniffed type is read again as text."""
    select = ", ".join(ident(c) for c in columns)
    for all_text in (False, True):
        try:
            con.execute(f"CREATE OR REPLACE TABLE read AS SELECT {select} FROM {reader(files, kind, text, all_text)}")
            break
        except duckdb.Error as e:
            if all_text or kind == "parquet":
                raise unreadable(where, kind, e) from None
    # insertion order is kept (preserve_insertion_order), so a row's rowid is its place in the files
    con.execute("CREATE TABLE raw AS SELECT rowid AS ord, * FROM read")
    con.execute("DROP TABLE read")


def unreadable(where: str, kind: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"{where} could not be read as {'Parquet' if kind == 'parquet' else 'CSV'} ({first}); "
                     f"check the file's format")


# ------------------------------------------------------------------------------------------------
# cleaning
# ------------------------------------------------------------------------------------------------
def drop_missing(con: duckdb.DuckDBPyConnection, columns: list[str], where: str) -> None:
    """Drop rows whose id or time is missing: empty, blank, NaN or the text NaN (loaders._drop_missing)."""
    tests = []
    for c in columns:
        kind = column_type(con, "raw", c)
        tests.append(f"{ident(c)} IS NULL")
        if kind in FLOAT_TYPES:
            tests.append(f"isnan({ident(c)})")
        elif kind not in INTEGER_TYPES:
            texts = ", ".join(quote(t) for t in MISSING_TEXT)
            tests.append(f"lower({trimmed(ident(c) + '::VARCHAR')}) IN ({texts})")
    total = count(con, "raw")
    dropped = int(con.execute(f"SELECT count(*) FROM raw WHERE {' OR '.join(tests)}").fetchone()[0])
    if dropped:
        print(missing_rows_warning(dropped, total, columns, where), file=sys.stderr)
        if dropped == total:
            raise every_row_missing(where, columns)
        con.execute(f"DELETE FROM raw WHERE {' OR '.join(tests)}")


def drop_repeats(con: duckdb.DuckDBPyConnection, columns: list[str], drop: bool, where: str) -> None:
    """Count rows that repeat an earlier row in every column read; drop them with `drop` (the first of
    each stays, at its place)."""
    names = ", ".join(ident(c) for c in columns)
    total = count(con, "raw")
    distinct = int(con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {names} FROM raw)").fetchone()[0])
    if distinct == total:
        return
    print(repeated_rows_warning(total - distinct, total, drop, where), file=sys.stderr)
    if drop:
        con.execute(f"CREATE OR REPLACE TABLE raw AS SELECT * FROM raw WHERE ord IN "
                    f"(SELECT min(ord) FROM raw GROUP BY {names}) ORDER BY ord")


def rewards(con: duckdb.DuckDBPyConnection, event: str | None, reward: str | None, data: dict,
            where: str) -> tuple[str, str]:
    """SQL of each row's reward (FLOAT) and purchase flag; drops data.drop_events' rows first."""
    if event is not None:
        kind = f"coalesce({trimmed(ident(event))}, 'nan')"
        if data["drop_events"]:
            con.execute(f"DELETE FROM raw WHERE {kind} IN ({', '.join(quote(str(e)) for e in data['drop_events'])})")
        names = ", ".join(quote(str(e)) for e in data["purchase_events"])
        purchase = f"({kind} IN ({names}))" if names else "false"
        value = f"CASE WHEN {purchase} THEN {float(data['reward_purchase'])!r} ELSE {float(data['reward_click'])!r} END"
        for v in (data["reward_click"], data["reward_purchase"]):
            if not abs(float(v)) <= FLOAT32_MAX:
                raise reward_not_finite(where, None, float(v))
        return f"({value})::FLOAT", purchase
    if reward is None:
        if not abs(float(data["reward_click"])) <= FLOAT32_MAX:
            raise reward_not_finite(where, None, float(data["reward_click"]))
        return f"{float(data['reward_click'])!r}::FLOAT", "false"
    value = number(reward)
    bad = first_value(con, "raw", reward, f"{value} IS NULL OR isnan({value})")
    if bad is not None:
        raise not_a_reward(where, reward, bad if bad is not None else float("nan"))
    too_big = con.execute(f"SELECT {value} FROM raw WHERE NOT abs({value}) <= {FLOAT32_MAX!r} ORDER BY ord LIMIT 1").fetchone()
    if too_big:
        raise reward_not_finite(where, reward, too_big[0])
    purchase = f"({value} >= {float(data['reward_purchase'])!r})"
    purchases, total = con.execute(f"SELECT count(*) FILTER ({purchase}), count(*) FROM raw").fetchone()
    print(reward_purchases_note(int(purchases), int(total), reward, data["reward_purchase"], where), file=sys.stderr)
    return f"({value})::FLOAT", purchase


# ------------------------------------------------------------------------------------------------
# typing
# ------------------------------------------------------------------------------------------------
def typed_id(con: duckdb.DuckDBPyConnection, column: str) -> str:
    """SQL of an id column as BIGINT when every value is an integer (numbers, or text written as a
    plain integer), else as trimmed text (loaders.typed_ids)."""
    kind, c = column_type(con, "raw", column), ident(column)
    if kind in INTEGER_TYPES:
        return f"{c}::BIGINT"
    if kind in FLOAT_TYPES:
        whole = con.execute(f"SELECT bool_and(isfinite({c}) AND {c} = floor({c}) AND abs({c}) < 2.0 ^ 62) "
                            f"FROM raw").fetchone()[0]
        return f"{c}::BIGINT" if whole in (True, None) else f"{c}::VARCHAR"
    text = trimmed(f"{c}::VARCHAR")
    plain = con.execute(f"SELECT bool_and(regexp_full_match({text}, '{PLAIN_INTEGER}')) FROM raw").fetchone()[0]
    return f"{text}::BIGINT" if plain in (True, None) else text


def seconds(con: duckdb.DuckDBPyConnection, column: str, where: str) -> str:
    """SQL of the time column as seconds (DOUBLE): numbers as they are, ISO-8601 times since the epoch
    (loaders.parse_timestamps)."""
    kind, c = column_type(con, "raw", column), ident(column)
    if kind in INTEGER_TYPES or kind in FLOAT_TYPES or kind.startswith("DECIMAL"):
        return f"{c}::DOUBLE"
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"epoch_us({c}::TIMESTAMPTZ) / 1e6"
    text = trimmed(f"{c}::VARCHAR")
    value = f"coalesce(TRY_CAST({text} AS DOUBLE), epoch_us(TRY_CAST({text} AS TIMESTAMPTZ)) / 1e6)"
    bad = first_value(con, "raw", column, f"{value} IS NULL", shown=text)
    if bad is not None:
        raise not_a_time(where, column, bad)
    return value


def slate_ids(con: duckdb.DuckDBPyConnection, shown: list[str], item_sql: str, where: str) -> str:
    """SQL selecting each shown_* column as ids of the items' type (NO_ITEM or '' where the slate is
    shorter), after checking them (loaders.exposure_ids)."""
    integers = item_sql.endswith("::BIGINT")
    out = ""
    for column in shown:
        text = trimmed(f"{ident(column)}::VARCHAR")
        present = f"({ident(column)} IS NOT NULL AND {text} <> '')"
        if integers:
            as_int = f"coalesce(TRY_CAST({text} AS BIGINT), TRY_CAST(TRY_CAST({text} AS DOUBLE) AS BIGINT))"
            whole = f"TRY_CAST({text} AS DOUBLE) = floor(TRY_CAST({text} AS DOUBLE))"
            bad = first_value(con, "raw", column, f"{present} AND NOT coalesce({whole}, false)", shown=ident(column))
            if bad is not None:
                raise slate_not_item_ids(where, column, bad)
            ids = f"CASE WHEN {present} THEN {as_int} ELSE {NO_ITEM} END"
        else:
            ids = f"CASE WHEN {present} THEN {text} ELSE '' END"
        known = con.execute(f"SELECT count(*) FILTER ({present}), count(*) FILTER ({present} AND {ids} IN "
                            f"(SELECT {item_sql} FROM raw)) FROM raw").fetchone()
        if known[0] and not known[1]:
            raise slate_names_no_item(where, column, first_value(con, "raw", column, present, shown=ident(column)))
        out += f", {ids} AS {ident(column)}"
    return out


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def number(column: str) -> str:
    """SQL of a column as DOUBLE, NULL where it is not a number (pandas.to_numeric, errors='coerce')."""
    return f"TRY_CAST({trimmed(ident(column) + '::VARCHAR')} AS DOUBLE)"


def trimmed(sql: str) -> str:
    return f"trim({sql}, {quote(WHITESPACE)})"


def first_value(con, table: str, column: str, condition: str, shown: str | None = None):
    """The first value (in file order) of `column` (or the SQL `shown`) where `condition` holds, or None."""
    row = con.execute(f"SELECT {shown or ident(column)} FROM {table} WHERE {condition} ORDER BY ord LIMIT 1").fetchone()
    return None if row is None else (row[0] if row[0] is not None else float("nan"))


def column_type(con, table: str, column: str) -> str:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()}[column]


def count(con, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"
