"""Evaluation and recommendations are flat in memory in the number of queries, at a catalogue large
enough that one [B, N+1] score matrix per batch shows (29k items): each head is streamed over items.

Measured in a child process (peak RSS is per process), with the allocator tuned as training tunes it
(freed memory kept for reuse), where kept matrices of varying size grew the heap query after query:
before streaming, 651 MB after 1,000 validation queries and 1,047 MB after 8,000; streamed, 351 and
381 MB."""
import subprocess
import sys

from test_train_integration import ROOT

PROBE = """
import resource, sys
sys.path.insert(0, {root!r})
import numpy as np, pandas as pd, torch
from pathlib import Path
from model import HEADS, SeqRecQ
from replay_buffer import pool_from_events
from seqrec.running.allocator import keep_freed_memory
from seqrec.running.config import load_config
from seqrec.evaluation.offline import evaluate
from seqrec.running.recommend import recommend_all

keep_freed_memory()
torch.set_num_threads(1)
cfg = load_config(overrides=["data.min_item_count=1", "pool.dir={pool}"])
rng = np.random.default_rng(0)
lengths = rng.integers(3, 31, 6000)
E = int(lengths.sum())
pool = pool_from_events(pd.DataFrame({{
    "session": np.repeat(np.arange(len(lengths)), lengths), "item": rng.zipf(1.1, E) % 50000 + 1,
    "timestamp": np.arange(E, dtype=float), "reward": np.float32(0.2), "purchase": rng.random(E) < 0.1}}), cfg)
torch.manual_seed(0)
net = SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items)
peaks = []
for queries in (1000, 8000):
    evaluate(net, pool, "valid", 0, [10], 512, False, heads=HEADS, progress=False, limit=queries)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
for head in ("ssl", "mix"):
    recommend_all(net, pool, Path("{pool}") / "recs.csv", "all", 0, 10, head, True, beta=4.0, rerank_top=20)
peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
print(pool.num_items, len(pool.events("valid")), *peaks)
"""


def test_memory_is_flat_in_the_number_of_queries(tmp_path):
    code = PROBE.format(root=str(ROOT), pool=str(tmp_path / "pool"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items, queries, first, eight_times, recommending = map(int, proc.stdout.split())
    assert items > 25_000 and queries >= 8000
    assert eight_times - first < 100, f"peak RSS {first} MB after 1,000 queries, {eight_times} MB after 8,000"
    assert recommending - first < 100, f"peak RSS {recommending} MB after --all over {items:,} items"
