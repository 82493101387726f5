"""Evaluation's memory after training at a million items, query by query: resident memory and what
glibc's malloc holds (in use, free), as `train_offline.py` trains and then validates.

    python -m benchmarks.eval_memory                      # 10M events over 1M item ids, 60 steps (~15 minutes)
    python -m benchmarks.eval_memory --as-before          # as before issue 36's fix, for the comparison

The log is benchmarks.pool_build's 10M-event integer log (generated into data/big/ if missing); the
run is train_offline.py's training (train.negatives=1024, train.max_steps) and then its final
validation over every validation query (or the first `--queries`), with resident memory sampled
every `--every` batches. Rows go to results/bench-eval-memory.csv (one per sample and mode).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import tempfile
import time
from pathlib import Path

import torch

import seqrec.evaluation.offline as offline
from benchmarks.pool_build import generate, parse_count
from model import HEADS, SeqRecQ, compute_losses
from replay_buffer import ensure_pool
from seqrec.running import runs
from seqrec.running.allocator import glibc, keep_freed_memory, release_freed_memory
from seqrec.running.atomic import atomic_write
from seqrec.running.config import load_config
from seqrec.running.errors import run_cli
from seqrec.running.learner import Learner, train_epoch

ROOT = Path(__file__).resolve().parents[1]


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def memory() -> dict:
    """Resident memory and glibc's malloc: bytes in use and bytes it holds free, in GB."""
    libc = glibc()
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    resident = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    return {"rss_gb": round(resident / 2 ** 30, 3), "malloc_used_gb": round(info.uordblks / 2 ** 30, 3),
            "malloc_free_gb": round(info.fordblks / 2 ** 30, 3)}


def watched(states, every: int, rows: list[dict], mode: str):
    """offline.session_query_states, sampling memory every `every` batches."""
    def states_watched(*args, **kwargs):
        queries, t0 = 0, time.perf_counter()
        for i, (batch, h) in enumerate(states(*args, **kwargs)):
            if i % every == 0 and i:
                row = {"mode": mode, "queries": queries, "queries_per_s": round(queries / (time.perf_counter() - t0), 1),
                       **memory()}
                rows.append(row)
                print(row, flush=True)
            queries += len(batch)
            yield batch, h
    return states_watched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", default="10M", help="size of the generated log (10M, 2M, ...)")
    p.add_argument("--steps", type=int, default=60, help="training steps before the validation")
    p.add_argument("--every", type=int, default=10, help="sample memory every this many evaluation batches")
    p.add_argument("--queries", type=int, default=0, help="validate the first this many queries (0: all)")
    p.add_argument("--as-before", action="store_true", help="as before issue 36's fix: no collection after "
                   "training, best.pt loaded whole (optimizer and target net), freed pages kept")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench-eval-memory.csv")
    args = p.parse_args()
    events = parse_count(args.events)
    log = ROOT / "data" / "big" / f"log-{args.events}-int.csv"
    if not log.exists():
        log.parent.mkdir(parents=True, exist_ok=True)
        generate(log, events, False, "csv")
    mode = "before" if args.as_before else "now"
    if args.as_before:
        offline.release_freed_memory = lambda: False
    keep_freed_memory()                                         # as train_offline.py does
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(ROOT / "config.yaml", [
            "data.source=csv", f"data.path={log}", "data.split=[0.98, 0.01, 0.01]", "train.negatives=1024",
            f"train.max_steps={args.steps}", f"pool.dir={ROOT / 'data' / f'pool-eval-memory-{args.events}'}"])
        pool = ensure_pool(cfg)
        # train_offline.py's training and test, in this process (an entry script is not imported)
        learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg)
        train_epoch(learner, pool, cfg, compute_losses)                       # stops at train.max_steps
        best = Path(run_dir) / "best.pt"
        runs.save_checkpoint(best, learner.state(cfg, pool, {"value": 0.0, "epoch": 0}))
        del learner
        if not args.as_before:
            gc.collect()                                        # as train_offline.main does
            release_freed_memory()
        rows = [{"mode": mode, "queries": 0, "queries_per_s": "", **memory()}]
        print(rows[0], flush=True)
        ckpt = runs.load_checkpoint(best)
        ckpt = ckpt if args.as_before else runs.inference_part(ckpt)
        model, e = SeqRecQ.from_checkpoint(ckpt, pool.num_items), cfg.eval
        offline.session_query_states = watched(offline.session_query_states, args.every, rows, mode)
        offline.evaluate(model, pool, "valid", 0, e.ks, e.batch_size, e.exclude_seen, heads=HEADS,
                         beta=e.beta, rerank_top=e.rerank_top, limit=args.queries or None)
    kept = []
    if args.out.exists():                                       # the other mode's rows stay
        with args.out.open() as f:
            kept = [r for r in csv.DictReader(f) if r["mode"] != mode]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(kept + rows)
    atomic_write(args.out, write)
    print(f"# written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
