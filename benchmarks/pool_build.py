"""How long the pool build takes and how much memory it holds, on generated logs of 10M to 300M events.

    python -m benchmarks.pool_build                                  # 10M, 100M, 300M; int and text ids; CSV and Parquet
    python -m benchmarks.pool_build --events 10M --out /tmp/pool.csv  # one size (about a minute)

Each log is generated once into --data-dir (git-ignored; a 300M-event CSV of text ids is ~15 GB), chunk
by chunk in bounded memory: sessions of 2-40 events, interleaved in time; items half uniform, half
Zipf(1.2) over 1M ids; integer ids, or 16-hex-digit hashes as text (`--ids text`). CSV is one
file, Parquet a folder of part files. Each build is `python replay_buffer.py` in a child process with
the project's defaults (filters, random split), timed from its start to its exit; its peak RSS is the
child's own (wait4). Rows already in --out are kept and not run again, so a killed run resumes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from tqdm import tqdm

from seqrec.running.atomic import atomic_write
from seqrec.running.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["size", "events", "ids", "format", "input_mb", "build_s", "events_per_s", "peak_rss_mb", "pool_mb",
          "pool_events", "pool_sessions", "pool_items", "build_memory"]
SESSIONS_PER_CHUNK = 400_000            # ~8.4M events: each chunk is ordered by time in memory
MEAN_SESSION = 21                       # sessions are 2..40 events long


def parse_count(text: str) -> int:
    """10M -> 10_000_000; 2.5k -> 2_500."""
    scale = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def log_chunk(first: int, last: int, seed: int = 0, num_items: int = 1_000_000) -> pd.DataFrame:
    """The events of sessions first..last-1 as integers (k: session, item, timestamp), ordered by time;
    a pure function of (first, seed)."""
    rng = np.random.default_rng([seed, first])
    lengths = rng.integers(2, 41, last - first)
    k = np.repeat(np.arange(first, last), lengths)
    j = np.arange(len(k)) - np.repeat(np.cumsum(lengths) - lengths, lengths)      # position inside the session
    zipf = rng.zipf(1.2, len(k)) % num_items
    item = np.where(rng.random(len(k)) < 0.5, rng.integers(0, num_items, len(k)), zipf)
    timestamp = 1_600_000_000 + k * 7 + j * 60                   # sessions overlap: the log interleaves them
    order = np.argsort(timestamp, kind="stable")
    return pd.DataFrame({"k": k[order], "item": item[order], "timestamp": timestamp[order]})


def generate(path: Path, num_events: int, text_ids: bool, fmt: str) -> None:
    """The log of about `num_events` events at `path` (CSV: one file; Parquet: a folder of parts),
    written beside it first and renamed, chunk of sessions by chunk, in bounded memory. Text ids are
    16-hex-digit hashes of the integers."""
    sessions = max(num_events // MEAN_SESSION, 1)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    columns = ("to_hex(hash(k)) AS session_id, to_hex(hash(item)) AS item_id" if text_ids
               else "k AS session_id, item AS item_id")
    chunks = range(0, sessions, SESSIONS_PER_CHUNK)
    if fmt == "parquet":
        tmp.mkdir(parents=True)
    else:
        tmp.write_text("session_id,item_id,timestamp\n")
    for n, first in enumerate(tqdm(chunks, desc=f"generating {path.name}", unit="chunk")):
        con.register("chunk", log_chunk(first, min(first + SESSIONS_PER_CHUNK, sessions)))
        query = f"SELECT {columns}, timestamp FROM chunk"
        if fmt == "parquet":
            con.execute(f"COPY ({query}) TO '{tmp / f'part-{n:05d}.parquet'}' (FORMAT parquet)")
        else:
            part = tmp.with_name(tmp.name + ".chunk")
            con.execute(f"COPY ({query}) TO '{part}' (HEADER false)")
            with open(tmp, "ab") as out, open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
            part.unlink()
        con.unregister("chunk")
    os.replace(tmp, path)


def run_build(log: Path, fmt: str, pool: Path, memory: str) -> tuple[float, float]:
    """`python replay_buffer.py` on the log in a child -> (seconds, peak RSS in MB of the child)."""
    cmd = [sys.executable, "replay_buffer.py", "--set", f"data.source={fmt}", "--set", f"data.path={log}",
           "--set", f"pool.dir={pool}", "--set", f"pool.build_memory={memory}"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the build of {log} failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 1024


def size_label(num_events: int) -> str:
    return f"{num_events // 10 ** 6}M" if num_events >= 10 ** 6 else str(num_events)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def measure(num_events: int, ids: str, fmt: str, data_dir: Path, memory: str) -> dict:
    label = size_label(num_events)
    log = data_dir / f"log-{label}-{ids}.{fmt}"
    if not log.exists():
        generate(log, num_events, ids == "text", fmt)
    pool = data_dir / f"pool-{label}-{ids}-{fmt}"
    seconds, rss = run_build(log, fmt, pool, memory)
    meta = json.loads((pool / "meta.json").read_text())
    rows = int(duckdb.connect().execute(f"SELECT count(*) FROM {'read_parquet' if fmt == 'parquet' else 'read_csv'}"
                          f"('{log / '*.parquet' if fmt == 'parquet' else log}')").fetchone()[0])
    row = {"size": label, "events": rows, "ids": ids, "format": fmt, "input_mb": round(size_mb(log), 1),
           "build_s": round(seconds, 1), "events_per_s": round(rows / seconds), "peak_rss_mb": round(rss),
           "pool_mb": round(size_mb(pool), 1), "pool_events": meta["num_events"], "pool_sessions": meta["num_sessions"],
           "pool_items": meta["num_items"], "build_memory": memory}
    shutil.rmtree(pool)                      # ours: written by the build above
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", default="10M,100M,300M", help="comma-separated sizes (10M, 2.5k, ...)")
    ap.add_argument("--ids", default="int,text", help="int, text or both")
    ap.add_argument("--formats", default="csv,parquet", help="csv, parquet or both")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "big", help="where the logs are generated")
    ap.add_argument("--memory", default="2GB", help="pool.build_memory of each build")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-pool.csv")
    args = ap.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(args.out.open())) if args.out.is_file() else []
    done = {(r["size"], r["ids"], r["format"], r["build_memory"]) for r in rows}
    for size in map(parse_count, args.events.split(",")):
        for ids in args.ids.split(","):
            for fmt in args.formats.split(","):
                if (size_label(size), ids, fmt, args.memory) in done:
                    continue
                row = measure(size, ids, fmt, args.data_dir, args.memory)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                rows.append(row)
                atomic_write(args.out, lambda tmp: write_rows(tmp, rows))


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    run_cli(main)
