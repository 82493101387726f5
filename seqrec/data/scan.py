"""A CSV or Parquet log (one file, or a folder of part files) read straight into DuckDB's table `log`,
never into Python: cleaned and typed as `loaders.load_csv` cleans and types it in pandas (the readable
version; tests check the two give the same pool), so a log larger than memory can be built from.

Steps, in SQL over the table `raw` (the columns read, in file order), each adding to the condition of
the rows kept: drop rows missing an id or time; drop (or count) exact repeats; map events or a reward
column to (reward, purchase); type the ids (integers when every value is one, else trimmed text); times
to seconds; slates to ids of the items' type. `log` is a view: nothing is copied.
"""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from seqrec.data.loaders import (
    NO_ITEM,
    PLAIN_INTEGER,
    columns_to_read,
    every_row_missing,
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
MISSING_PATTERN = r"[ \t\n\r\x0b\x0c]*([nN][aA][nN])?[ \t\n\r\x0b\x0c]*"  # loaders.MISSING_TEXT once stripped, any case
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
    """View `log` (ord, session, item, timestamp, reward, purchase [, shown_*, slate_logp]) of the CSV or
    Parquet log at data.path, over table `raw` (the columns read, once); rows are dropped by the view's
    condition, never copied."""
    path = Path(data["path"])
    kind = file_format(path, data["source"])
    files = log_files(path, kind)
    where = str(path)
    required, event, reward, slates = columns_to_read(read_header(con, files, kind, where), data["columns"], where)
    read = required + [c for c in (event, reward) if c] + slates
    read_raw(con, files, kind, read, text=[c for c in (event, reward) if c] + slates, where=where)
    if count(con, "raw") == 0:
        raise no_events(where)
    padded = edge_space(con, read)
    keep = present(con, required, where)
    keep = unrepeated(con, read, keep, data["drop_duplicates"], where)
    reward_sql, purchase_sql, keep = rewards(con, event, reward, keep, padded, data, where)
    session_sql, item_sql = typed_id(con, required[0], keep, padded), typed_id(con, required[1], keep, padded)
    time_sql = seconds(con, required[2], keep, padded, where)
    shown = slate_ids(con, slates[:-1], item_sql, keep, padded, where)
    logp = f", {number('slate_logp', padded)} AS slate_logp" if slates else ""
    if slates:
        bad = first_value(con, "slate_logp", f"{keep} AND {number('slate_logp', padded)} IS NULL")
        if bad is not None:
            raise slate_logp_not_a_number(where, bad)
    con.execute(f"CREATE VIEW log AS SELECT rowid AS ord, {session_sql} AS session, {item_sql} AS item, "
                f"{time_sql} AS timestamp, {reward_sql} AS reward, {purchase_sql} AS purchase{shown}{logp} "
                f"FROM raw WHERE {keep}")


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
    """Table `raw`: `columns` in file order (preserve_insertion_order), so a row's rowid is its place in
    the files; it is never changed after. CSV types are sniffed (ids and times as numbers where they
    look it); a file that breaks the sniffed type is read again as text."""
    select = ", ".join(ident(c) for c in columns)
    for all_text in (False, True):
        try:
            con.execute(f"CREATE OR REPLACE TABLE raw AS SELECT {select} FROM {reader(files, kind, text, all_text)}")
            break
        except duckdb.Error as e:
            if all_text or kind == "parquet":
                raise unreadable(where, kind, e) from None


def unreadable(where: str, kind: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"{where} could not be read as {'Parquet' if kind == 'parquet' else 'CSV'} ({first}); "
                     f"check the file's format")


# ------------------------------------------------------------------------------------------------
# cleaning
# ------------------------------------------------------------------------------------------------
def present(con: duckdb.DuckDBPyConnection, columns: list[str], where: str) -> str:
    """SQL condition of the rows with an id and a time: not empty, blank, NaN or the text NaN; says how
    many others there are (loaders._drop_missing)."""
    tests = []
    for c in columns:
        kind = column_type(con, "raw", c)
        tests.append(f"{ident(c)} IS NULL")
        if kind in FLOAT_TYPES:
            tests.append(f"isnan({ident(c)})")
        elif kind not in INTEGER_TYPES:              # blank or NaN, in any case, between whitespace
            tests.append(f"regexp_full_match({ident(c)}::VARCHAR, '{MISSING_PATTERN}')")
    missing = " OR ".join(tests)
    total, dropped = con.execute(f"SELECT count(*), count(*) FILTER ({missing}) FROM raw").fetchone()
    if dropped:
        print(missing_rows_warning(int(dropped), int(total), columns, where), file=sys.stderr)
        if dropped == total:
            raise every_row_missing(where, columns)
        return f"NOT ({missing})"
    return "true"


def unrepeated(con: duckdb.DuckDBPyConnection, columns: list[str], keep: str, drop: bool, where: str) -> str:
    """`keep` and, with `drop`, not a repeat of an earlier row in every column read (the first of each
    stays); says how many repeats there are either way (loaders.drop_duplicates).

    Rows are grouped by a 64-bit hash of the columns first (a DISTINCT over the columns themselves
    cannot spill to disk at 300M rows of text ids): only rows whose hash repeats are compared exactly."""
    names = ", ".join(ident(c) for c in columns)
    con.execute(f"CREATE TABLE repeated_hashes AS SELECT h FROM (SELECT hash({names}) AS h FROM raw WHERE {keep}) "
                f"GROUP BY h HAVING count(*) > 1")
    if not count(con, "repeated_hashes"):
        return keep
    con.execute(f"CREATE TABLE candidates AS SELECT rowid AS row, {names} FROM raw "
                f"WHERE {keep} AND hash({names}) IN (SELECT h FROM repeated_hashes)")
    con.execute(f"CREATE TABLE first_rows AS SELECT min(row) AS row FROM candidates GROUP BY {names}")
    repeats = count(con, "candidates") - count(con, "first_rows")
    if not repeats:                                  # equal hashes of different rows
        return keep
    total = int(con.execute(f"SELECT count(*) FROM raw WHERE {keep}").fetchone()[0])
    print(repeated_rows_warning(repeats, total, drop, where), file=sys.stderr)
    if not drop:
        return keep
    return f"{keep} AND (rowid NOT IN (SELECT row FROM candidates) OR rowid IN (SELECT row FROM first_rows))"


def rewards(con: duckdb.DuckDBPyConnection, event: str | None, reward: str | None, keep: str, padded: set,
            data: dict, where: str) -> tuple[str, str, str]:
    """SQL of each row's reward (FLOAT) and purchase flag, and `keep` without data.drop_events' rows."""
    if event is not None:
        kind = f"coalesce({text(event, padded)}, 'nan')"
        if data["drop_events"]:
            keep = f"{keep} AND {kind} NOT IN ({', '.join(quote(str(e)) for e in data['drop_events'])})"
        names = ", ".join(quote(str(e)) for e in data["purchase_events"])
        purchase = f"({kind} IN ({names}))" if names else "false"
        value = f"CASE WHEN {purchase} THEN {float(data['reward_purchase'])!r} ELSE {float(data['reward_click'])!r} END"
        for v in (data["reward_click"], data["reward_purchase"]):
            if not abs(float(v)) <= FLOAT32_MAX:
                raise reward_not_finite(where, None, float(v))
        return f"({value})::FLOAT", purchase, keep
    if reward is None:
        if not abs(float(data["reward_click"])) <= FLOAT32_MAX:
            raise reward_not_finite(where, None, float(data["reward_click"]))
        return f"{float(data['reward_click'])!r}::FLOAT", "false", keep
    value = number(reward, padded)
    bad = first_value(con, reward, f"{keep} AND ({value} IS NULL OR isnan({value}))")
    if bad is not None:
        raise not_a_reward(where, reward, bad)
    too_big = first_value(con, reward, f"{keep} AND NOT abs({value}) <= {FLOAT32_MAX!r}", shown=value)
    if too_big is not None:
        raise reward_not_finite(where, reward, too_big)
    purchase = f"({value} >= {float(data['reward_purchase'])!r})"
    purchases, total = con.execute(f"SELECT count(*) FILTER ({purchase}), count(*) FROM raw WHERE {keep}").fetchone()
    print(reward_purchases_note(int(purchases), int(total), reward, data["reward_purchase"], where), file=sys.stderr)
    return f"({value})::FLOAT", purchase, keep


# ------------------------------------------------------------------------------------------------
# typing
# ------------------------------------------------------------------------------------------------
def typed_id(con: duckdb.DuckDBPyConnection, column: str, keep: str, padded: set) -> str:
    """SQL of an id column as BIGINT when every value is an integer (numbers, or text written as a
    plain integer), else as trimmed text (loaders.typed_ids)."""
    kind, c = column_type(con, "raw", column), ident(column)
    if kind in INTEGER_TYPES:
        return f"{c}::BIGINT"
    if kind in FLOAT_TYPES:
        fraction = exists(con, f"{keep} AND NOT (isfinite({c}) AND {c} = floor({c}) AND abs({c}) < 2.0 ^ 62)")
        return f"{c}::VARCHAR" if fraction else f"{c}::BIGINT"
    value = text(column, padded)
    return value if exists(con, f"{keep} AND NOT regexp_full_match({value}, '{PLAIN_INTEGER}')") else f"{value}::BIGINT"


def seconds(con: duckdb.DuckDBPyConnection, column: str, keep: str, padded: set, where: str) -> str:
    """SQL of the time column as seconds (DOUBLE): numbers as they are, ISO-8601 times since the epoch
    (loaders.parse_timestamps)."""
    kind, c = column_type(con, "raw", column), ident(column)
    if kind in INTEGER_TYPES or kind in FLOAT_TYPES or kind.startswith("DECIMAL"):
        return f"{c}::DOUBLE"
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"epoch_us({c}::TIMESTAMPTZ) / 1e6"
    written = text(column, padded)
    value = f"coalesce(TRY_CAST({written} AS DOUBLE), epoch_us(TRY_CAST({written} AS TIMESTAMPTZ)) / 1e6)"
    bad = first_value(con, column, f"{keep} AND {value} IS NULL", shown=written)
    if bad is not None:
        raise not_a_time(where, column, bad)
    return value


def slate_ids(con: duckdb.DuckDBPyConnection, shown: list[str], item_sql: str, keep: str, padded: set,
              where: str) -> str:
    """SQL selecting each shown_* column as ids of the items' type (NO_ITEM or '' where the slate is
    shorter), after checking them (loaders.exposure_ids)."""
    integers = item_sql.endswith("::BIGINT")
    out = ""
    for column in shown:
        written = text(column, padded)
        present = f"({ident(column)} IS NOT NULL AND {written} <> '')"
        if integers:
            as_int = f"coalesce(TRY_CAST({written} AS BIGINT), TRY_CAST(TRY_CAST({written} AS DOUBLE) AS BIGINT))"
            whole = f"TRY_CAST({written} AS DOUBLE) = floor(TRY_CAST({written} AS DOUBLE))"
            bad = first_value(con, column, f"{keep} AND {present} AND NOT coalesce({whole}, false)")
            if bad is not None:
                raise slate_not_item_ids(where, column, bad)
            ids = f"CASE WHEN {present} THEN {as_int} ELSE {NO_ITEM} END"
        else:
            ids = f"CASE WHEN {present} THEN {written} ELSE '' END"
        known = con.execute(f"SELECT count(*) FILTER ({present}), count(*) FILTER ({present} AND {ids} IN "
                            f"(SELECT {item_sql} FROM raw WHERE {keep})) FROM raw WHERE {keep}").fetchone()
        if known[0] and not known[1]:
            raise slate_names_no_item(where, column, first_value(con, column, f"{keep} AND {present}"))
        out += f", {ids} AS {ident(column)}"
    return out


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def number(column: str, padded: set) -> str:
    """SQL of a column as DOUBLE, NULL where it is not a number (pandas.to_numeric, errors='coerce')."""
    return f"TRY_CAST({text(column, padded)} AS DOUBLE)"


def text(column: str, padded: set) -> str:
    """SQL of a column as text without surrounding whitespace (str.strip): trimmed only if it is one of
    the `padded` columns (trim with a character list is 5x slower than a scan)."""
    value = f"{ident(column)}::VARCHAR"
    return f"trim({value}, {quote(WHITESPACE)})" if column in padded else value


def edge_space(con: duckdb.DuckDBPyConnection, columns: list[str]) -> set[str]:
    """The text columns of `raw` with a value that starts or ends with whitespace (one scan)."""
    texts = [c for c in columns if column_type(con, "raw", c) == "VARCHAR"]
    if not texts:
        return set()
    space = ", ".join(f"chr({ord(ch)})" for ch in WHITESPACE)
    counts = con.execute("SELECT " + ", ".join(f"count(*) FILTER ({ident(c)}[1] IN ({space}) OR {ident(c)}[-1] IN ({space}))"
                                               for c in texts) + " FROM raw").fetchone()
    return {c for c, n in zip(texts, counts) if n}


def first_value(con, column: str, condition: str, shown: str | None = None):
    """The first value (in file order) of `column` (or the SQL `shown`) in `raw` where `condition` holds,
    or None (NaN for an empty cell)."""
    row = con.execute(f"SELECT {shown or ident(column)} FROM raw WHERE {condition} ORDER BY rowid LIMIT 1").fetchone()
    return None if row is None else (row[0] if row[0] is not None else float("nan"))


def exists(con, condition: str) -> bool:
    """Whether a row of `raw` meets `condition` (stops at the first)."""
    return con.execute(f"SELECT 1 FROM raw WHERE {condition} LIMIT 1").fetchone() is not None


def column_type(con, table: str, column: str) -> str:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()}[column]


def count(con, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"
