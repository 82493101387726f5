"""Speed and memory figures: pool building, training, evaluation, against the machine's matmul peak.

    python -m benchmarks.bench                   # all figures (about 2 minutes on 2 cores, MovieLens-1M's pool built)
    python -m benchmarks.bench --quick           # smaller sizes, no MovieLens-1M
    python -m benchmarks.bench --device cuda     # training and evaluation on the GPU
    python -m benchmarks.bench --cost            # the full model's step against gru4rec's (results/bench-cost-cpu.csv)

Prints one line per figure as `name=value unit` and writes them to results/bench-<device>.csv.
Pool building runs in a child process per size, so its peak RSS is its own; the input events are
generated there before the clock starts (the simulator's speed is a figure of its own). Training is
timed beside the naive way (benchmarks/naive.py) in the same run; FLOP counts are analytic (the
matmuls of the GRU and the all-item heads), and their rate is compared with a plain torch.matmul.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from replay_buffer import pool_from_events
from seqrec.running.atomic import atomic_write
from seqrec.running.config import load_config
from seqrec.running.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]

FIGURES: list[tuple[str, float, str, str]] = []


def report(name: str, value: float, unit: str, note: str = "") -> None:
    FIGURES.append((name, value, unit, note))
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{name}={shown} {unit}" + (f"  # {note}" if note else ""), flush=True)


# ================================================================================================
# Inputs
# ================================================================================================
def random_log(num_events: int, num_items: int, seed: int = 0) -> pd.DataFrame:
    """Canonical events: sessions of geometric length (mean 6), items half uniform, half Zipf-like."""
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(1 / 6, size=num_events // 3 + 10)
    session = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[:num_events]
    zipf = (rng.zipf(1.3, num_events) - 1) % num_items
    items = np.where(rng.random(num_events) < 0.5, rng.integers(0, num_items, num_events), zipf)
    purchase = rng.random(num_events) < 0.05
    return pd.DataFrame({"session": session, "item": items.astype(np.int64),
                         "timestamp": np.arange(num_events, dtype=np.float64),
                         "reward": np.where(purchase, 1.0, 0.2).astype(np.float32), "purchase": purchase})


# The loss the committed figures were measured with (the double bootstrap's all-item argmax, no Q
# negatives, SQN's linear Q head): the defaults changed since; the logged bootstrap skips the argmax.
MEASURED_LOSS = ["train.bootstrap=double", "train.q_negatives=0", "model.q_head=linear"]
BENCH_OVERRIDES = ["data.min_item_count=1", "data.min_session_len=1", "pool.horizon=3", "model.ssl_steps=3",
                   "model.hidden=64", "pool.state_len=10", "train.batch_size=256", *MEASURED_LOSS]


def bench_config(pool_dir: Path, *extra: str):
    return load_config(overrides=[f"pool.dir={pool_dir}", *BENCH_OVERRIDES, *extra])


def cfg_overrides(cfg) -> list[str]:
    return [f"pool.dir={cfg.pool.dir}", *BENCH_OVERRIDES, f"model.dropout={cfg.model.dropout}"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ================================================================================================
# Pool building (in a child process per size)
# ================================================================================================
def pool_child(num_events: int, folder: Path) -> dict:
    events = random_log(num_events, num_items=100_000)
    rss_input = peak_rss_mb()
    cfg = bench_config(folder)
    t0 = time.perf_counter()
    pool = pool_from_events(events, cfg)
    seconds = time.perf_counter() - t0
    return {"events": pool.meta["num_events"], "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "rss_after_input_mb": rss_input, "disk_bytes": pool.disk_bytes()}


def bench_pool(sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--pool-child", str(n), "--pool-dir",
                                  f"{tmp}/pool"], capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tag = f"{n // 1_000_000}M"
        report(f"pool_build_events_per_s@{tag}", r["events"] / r["seconds"], "events/s",
               f"{r['events']:,} events in {r['seconds']:.2f} s (generation not timed)")
        report(f"pool_peak_rss@{tag}", r["peak_rss_mb"], "MB",
               f"whole process; {r['rss_after_input_mb']:.0f} MB already after generating the input table")
        report(f"pool_bytes_per_event@{tag}", r["disk_bytes"] / r["events"], "B/event", "on disk, id maps included")


def bench_simulator() -> None:
    from seqrec.worlds.simulator import Simulator
    sim = Simulator.from_config(load_config())
    t0 = time.perf_counter()
    log = sim.generate_log()
    report("sim_events_per_s", len(log) / (time.perf_counter() - t0), "events/s",
           f"default simulator, {sim.p.num_sessions:,} sessions, {len(log):,} events")


# ================================================================================================
# Compute: matmul peak, training, evaluation
# ================================================================================================
def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_matmul(torch, device) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(5):
        sync(torch, device)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.matmul(a, b)
        sync(torch, device)
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    report("matmul_gflops", best, "GFLOP/s", f"torch.matmul {n}x{n} fp32, {where}, best of 5")
    return best


def train_step_flops(B: int, L: int, T: int, K: int, H: int, N: int) -> float:
    """Matmul FLOPs of one fast training step: GRU passes (online fwd+bwd, target fwd), K-step CE
    (fwd+bwd), all-item Q of the T next states for the online argmax (no grad; double-Q scores only
    that item with the target net)."""
    gru = 12 * H * H * (L + T) * B
    heads = 2 * B * H * (N + 1)
    return 3 * gru + gru + 3 * K * heads + T * heads


def naive_step_flops(B: int, L: int, T: int, K: int, H: int, N: int) -> float:
    """The same for benchmarks/naive.py: T+1 online GRU passes of L steps (fwd+bwd) and T target passes,
    K-step CE (fwd+bwd), all-item Q of the T+1 states with gradients (fwd+bwd) and of the T next states
    on the target (no grad). Their ratio to train_step_flops bounds the speedup at equal efficiency."""
    gru = 12 * H * H * L * B
    heads = 2 * B * H * (N + 1)
    return (3 * (T + 1) + T) * gru + 3 * K * heads + 3 * (T + 1) * heads + T * heads


def session_step_flops(chunk, K: int, H: int, N: int) -> float:
    """Matmul FLOPs of one session-path step (a seqrec.data.batches.Chunk): the GRU over every lane's
    chunk plus look-ahead (online fwd+bwd, target fwd), the K-step CE of the trained events (fwd+bwd)
    and the all-item argmax at every position inside a session."""
    lanes, W = chunk.items.shape
    gru = 12 * H * H * lanes * W
    heads = 2 * H * (N + 1)
    trained, inside = int(chunk.valid[:, :chunk.train_len].sum()), int(chunk.valid.sum())
    return 3 * gru + gru + 3 * K * heads * trained + heads * inside


def session_samples_per_s(torch, device, cfg, pool, steps: int, K: int = 3) -> tuple[float, float]:
    """(trained events/s, GFLOP/s) of the session path's step (lanes, Learner.update on
    model.compute_losses), over `steps` steps after 2 of warm-up."""
    from model import SeqRecQ, compute_losses
    from seqrec.running.distributed import SINGLE
    from seqrec.running.learner import Learner, session_steps
    torch.manual_seed(0)
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg, device)
    count, step_at = session_steps(learner, pool, cfg, SINGLE, device)
    done = {"events": 0, "flops": 0.0}

    def step(i: int, timed: bool) -> None:
        chunk = step_at(i % count)
        loss, _, learner.carry = compute_losses(learner.model, learner.target_net, chunk, cfg.train)
        learner.update(loss)
        if timed:
            done["events"] += int(chunk.valid[:, :chunk.train_len].sum())
            done["flops"] += session_step_flops(chunk, K, cfg.model.hidden, pool.num_items)

    for i in range(2):
        step(i, False)
    sync(torch, device)
    t0 = time.perf_counter()
    for i in range(2, 2 + steps):
        step(i, True)
    sync(torch, device)
    seconds = time.perf_counter() - t0
    return done["events"] / seconds, done["flops"] / seconds / 1e9


def eval_query_flops(L: int, H: int, N: int) -> float:
    return 12 * H * H * L + 2 * H * (N + 1)


def bench_training(torch, device, items: list[int], peak: float, steps: int, num_events: int = 300_000) -> None:
    """Samples/s of the training step (Learner.update on model.compute_losses, as train_offline.py takes
    it), of the naive step and of a sampled step, on one learner per catalogue size."""
    from benchmarks.naive import naive_losses, replay_table, sample_rows
    from model import SeqRecQ, compute_losses
    from seqrec.data.batches import Batch, candidate_log_inclusion, epoch_order
    from seqrec.running.learner import Learner
    for n_items in items:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = bench_config(Path(tmp) / "pool", "model.dropout=0.0")
            pool = pool_from_events(random_log(max(num_events, 6 * n_items), n_items, seed=1), cfg)
            N, t, B = pool.num_items, cfg.train, cfg.train.batch_size
            L, T = cfg.pool.state_len, cfg.pool.horizon
            events = pool.events("train")
            order = events[epoch_order(len(events), 0, 0)]
            torch.manual_seed(0)
            learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), N), cfg, device)

            def windows(i):
                w = pool.windows(order[(i * B) % (len(order) - B):][:B], L, T, training=True)
                return Batch.from_windows(w, device)

            def fast_step(i):
                learner.update(compute_losses(learner.model, learner.target_net, windows(i), t)[0])

            table = replay_table(pool, order[:min(50_000, len(order))], L, T)
            rng = np.random.default_rng(0)

            def naive_step(i):
                batch = {k: v.to(device) for k, v in sample_rows(table, B, rng).items()}
                learner.update(naive_losses(learner.model, learner.target_net, batch, t))

            fast = samples_per_s(fast_step, B, steps, lambda: sync(torch, device))
            naive = samples_per_s(naive_step, B, max(2, steps // 2), lambda: sync(torch, device))
            sampled_t = load_config(overrides=[*cfg_overrides(cfg), "train.negatives=1024"]).train
            log_q = candidate_log_inclusion(np.bincount(np.asarray(pool.items[events]), minlength=N + 1), B * T, 1024).to(device)

            def sampled_step(i):
                learner.update(compute_losses(learner.model, learner.target_net, windows(i), sampled_t, step=i,
                                              log_inclusion=log_q)[0])

            sampled = samples_per_s(sampled_step, B, steps, lambda: sync(torch, device))
            gflops = fast / B * train_step_flops(B, L, T, 3, 64, N) / 1e9
            flop_ratio = naive_step_flops(B, L, T, 3, 64, N) / train_step_flops(B, L, T, 3, 64, N)
            naive_gflops = naive / B * naive_step_flops(B, L, T, 3, 64, N) / 1e9
            tag = f"{N // 1000}k" if N >= 1000 else str(N)
            report(f"train_samples_per_s@{tag}", fast, "samples/s", f"{N:,} items, hidden 64, L 10, T 3, K 3, batch 256")
            report(f"train_naive_samples_per_s@{tag}", naive, "samples/s", "each state encoded apart, rows via pandas")
            report(f"train_speedup_vs_naive@{tag}", fast / naive, "x",
                   f"the naive step does {flop_ratio:.1f}x the FLOPs (at {naive_gflops:.1f} GFLOP/s)")
            report(f"train_flop_ratio_vs_naive@{tag}", flop_ratio, "x", "the speedup equal matmul efficiency would give")
            report(f"train_gflops@{tag}", gflops, "GFLOP/s", f"{gflops / peak:.0%} of the matmul peak")
            report(f"train_share_of_matmul@{tag}", gflops / peak, "fraction")
            report(f"train_sampled_samples_per_s@{tag}", sampled, "samples/s",
                   f"train.negatives=1024: {sampled / fast:.1f}x full softmax, {sampled / naive:.1f}x naive")
            report_session_path(torch, device, cfg, pool, steps, peak, tag, fast)


def report_session_path(torch, device, cfg, pool, steps: int, peak: float, tag: str, window_rate: float) -> None:
    """The session path's rate (pool.state_len 0, default chunk_len) beside the window path's."""
    session_cfg = load_config(overrides=[*cfg_overrides(cfg), "pool.state_len=0"])
    rate, gflops = session_samples_per_s(torch, device, session_cfg, pool, steps)
    C, B = session_cfg.train.chunk_len, session_cfg.train.batch_size
    report(f"train_session_samples_per_s@{tag}", rate, "samples/s",
           f"whole-session states, {B // C} lanes x chunk {C}; {rate / window_rate:.2f}x the window path")
    report(f"train_session_share_of_matmul@{tag}", gflops / peak, "fraction", f"{gflops:.1f} GFLOP/s")


def bench_movielens_1m(torch, device, peak: float, steps: int) -> None:
    """Both paths on MovieLens-1M (leave-one-out, configs/movielens-1m-loo.yaml; fetched if needed):
    long sessions (165 events on average), 3,706 items."""
    from replay_buffer import ensure_pool
    settings = ["pool.horizon=3", "model.ssl_steps=3", "model.hidden=64", "train.batch_size=256", "model.dropout=0.0",
                *MEASURED_LOSS]
    cfg = load_config(ROOT / "configs" / "movielens-1m-loo.yaml", [*settings, "pool.state_len=10"])
    pool = ensure_pool(cfg)
    N, B, L, T = pool.num_items, cfg.train.batch_size, cfg.pool.state_len, cfg.pool.horizon
    window = window_samples_per_s(torch, device, cfg, pool, steps)
    report("train_samples_per_s@ml-1m", window, "samples/s", f"{N:,} items, L {L}, T 3, K 3, batch 256")
    report("train_share_of_matmul@ml-1m", window / B * train_step_flops(B, L, T, 3, 64, N) / 1e9 / peak, "fraction")
    session_cfg = load_config(ROOT / "configs" / "movielens-1m-loo.yaml", [*settings, "pool.state_len=0"])
    rate, gflops = session_samples_per_s(torch, device, session_cfg, pool, steps)
    report("train_session_samples_per_s@ml-1m", rate, "samples/s",
           f"whole-session states, chunk {session_cfg.train.chunk_len}; {rate / window:.2f}x the window path")
    report("train_session_share_of_matmul@ml-1m", gflops / peak, "fraction", f"{gflops:.1f} GFLOP/s")


def window_samples_per_s(torch, device, cfg, pool, steps: int) -> float:
    """Trained samples/s of the window path's step (Learner.update on model.compute_losses) with the
    config as train_offline.py takes it, over `steps` steps after 2 of warm-up."""
    from model import SeqRecQ, compute_losses
    from seqrec.data.batches import Batch, epoch_order
    from seqrec.running.learner import Learner
    B, L, T = cfg.train.batch_size, cfg.pool.state_len, cfg.pool.horizon
    events = pool.events("train")
    order = events[epoch_order(len(events), 0, 0)]
    torch.manual_seed(0)
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg, device)

    def step(i):
        batch = Batch.from_windows(pool.windows(order[i * B:(i + 1) * B], L, T, training=True), device)
        learner.update(compute_losses(learner.model, learner.target_net, batch, cfg.train, step=i)[0])
    return samples_per_s(step, B, steps, lambda: sync(torch, device))


def sample_flops(L: int, T: int, K: int, H: int, N: int, td: bool, chunk: int = 4) -> float:
    """Matmul FLOPs per trained event of the default loss (logged bootstrap: no all-item argmax): the
    GRU over the items a sample encodes (L + T on a window; on whole sessions (chunk + T - 1) / chunk,
    the look-ahead shared by a chunk), fwd+bwd and with TD the target's fwd, and the K-step CE over all
    items fwd+bwd. The Q side (taken items and 10 negatives, H-long dot products) is under 1% and left out."""
    encoded = L + T if L else (chunk + T - 1) / chunk
    return (3 + td) * 12 * H * H * encoded + 3 * K * 2 * H * (N + 1)


# The models issue 23's and 36's targets compare, as benchmarks/compare.py trains them (that file's recipes).
SPEED_MODELS = ("full", "full-sampled", "gru4rec")


def bench_full_vs_gru4rec(torch, device, steps: int, datasets=(("ml-100k", "movielens-loo.yaml"),
                                                                ("ml-1m", "movielens-1m-loo.yaml"))) -> None:
    """The full model's step against gru4rec's, and SASRec's against the GRU's, on MovieLens-100K and -1M
    leave-one-out, 10-item windows and whole sessions: each rate measured with the configs' settings
    (batch 256, dropout 0.1), one model after the other, beside the ratio the arithmetic alone gives."""
    from benchmarks.recipes import MODELS
    from replay_buffer import ensure_pool
    sasrec = [*MODELS["gru4rec"], "model.encoder=sasrec"]
    for tag, config in datasets:
        for L, path in ((10, "windows"), (0, "sessions")):
            rates = {}
            for name, recipe in [*((m, MODELS[m]) for m in SPEED_MODELS), ("sasrec", sasrec)]:
                cfg = load_config(ROOT / "configs" / config, [*recipe, f"pool.state_len={L}"])
                pool = ensure_pool(cfg)
                measure = window_samples_per_s if L else lambda *a: session_samples_per_s(*a)[0]
                rates[name] = measure(torch, device, cfg, pool, steps)
                report(f"train_{name}_samples_per_s@{tag}-{path}", rates[name], "samples/s",
                       f"{pool.num_items:,} items, batch {cfg.train.batch_size}, {compare_note(name)}")
            N, H = pool.num_items, cfg.model.hidden
            arithmetic = sample_flops(L, 3, 3, H, N, True) / sample_flops(L, 1, 1, H, N, False)
            report(f"full_over_gru4rec@{tag}-{path}", rates["gru4rec"] / rates["full"], "x",
                   f"time per event; the arithmetic alone {arithmetic:.2f}x (issue 23's target 1.5x)")
            report(f"full_sampled_over_gru4rec@{tag}-{path}", rates["gru4rec"] / rates["full-sampled"], "x",
                   "time per event (issue 36's target 1.3x)")
            report(f"sasrec_over_gru4rec@{tag}-{path}", rates["gru4rec"] / rates["sasrec"], "x",
                   "time per event, both next-item CE only (issue 23's target on sessions 3x)")


def compare_note(name: str) -> str:
    return {"full": "T 3, K 3, TD(lambda), 10 negatives", "gru4rec": "T 1, K 1, no TD",
            "full-sampled": "full, steps 2 and 3 against 256 uniform draws (train.ssl_negatives)",
            "sasrec": "gru4rec's loss on SASRec (2 blocks, max_len 50)"}[name]


def samples_per_s(step, batch: int, steps: int, sync=lambda: None) -> float:
    for i in range(2):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(2, 2 + steps):
        step(i)
    sync()
    return batch * steps / (time.perf_counter() - t0)


def bench_eval(torch, device, n_items: int, peak: float, queries: int) -> None:
    from model import HEADS, SeqRecQ
    from seqrec.evaluation.offline import evaluate
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(Path(tmp) / "pool", "data.split=[0.5, 0.5, 0.0]", "model.dropout=0.0")
        pool = pool_from_events(random_log(max(2 * queries, 6 * n_items), n_items, seed=2), cfg)
        N = pool.num_items
        model = SeqRecQ.from_config(cfg.model.to_dict(), N).to(device)
        n = pool.meta["splits"]["valid"]["events"]
        for heads in (HEADS[:1], HEADS):
            evaluate(model, pool, "valid", 10, [5, 10, 20], 1024, False, heads=heads, progress=False, limit=2048)
            sync(torch, device)
            t0 = time.perf_counter()
            evaluate(model, pool, "valid", 10, [5, 10, 20], 1024, False, heads=heads, progress=False, limit=queries)
            sync(torch, device)
            rate = min(queries, n) / (time.perf_counter() - t0)
            tag = f"{N // 1000}k"
            if len(heads) == 1:
                gflops = rate * eval_query_flops(10, 64, N) / 1e9
                report(f"eval_queries_per_s@{tag}", rate, "queries/s", f"{N:,} items, full ranking, one head, batch 1024")
                report(f"eval_gflops@{tag}", gflops, "GFLOP/s", f"{gflops / peak:.0%} of the matmul peak")
                report(f"eval_share_of_matmul@{tag}", gflops / peak, "fraction")
            else:
                report(f"eval_queries_per_s_both_heads@{tag}", rate, "queries/s", "what training's validation runs")
        t0 = time.perf_counter()
        evaluate(model, pool, "valid", 0, [5, 10, 20], 1024, False, heads=HEADS[:1], progress=False, limit=queries)
        sync(torch, device)
        report(f"eval_session_queries_per_s@{tag}", min(queries, n) / (time.perf_counter() - t0), "queries/s",
               "whole-session states (pool.state_len 0): each session read once, one head")


def bench_eval_catalogue(torch, device, n_items: int, queries=(2048, 8192, 16384)) -> None:
    """Evaluation at a large catalogue: a model of `n_items` items (random weights: the cost does not depend
    on them) ranks the validation queries of a small random pool (their targets are ids of the catalogue),
    whole-session states; queries/s of the next-item head alone and of all three heads, and the process's
    peak resident memory after each number of `queries`: flat in the number of queries, or it is a leak."""
    from model import HEADS, SeqRecQ
    from seqrec.evaluation.offline import rank_queries
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(Path(tmp) / "pool", "data.split=[0.5, 0.5, 0.0]", "model.dropout=0.0")
        pool = pool_from_events(random_log(8 * max(queries), 50_000, seed=3), cfg)
        model = SeqRecQ.from_config(cfg.model.to_dict(), n_items).to(device).eval()
        tag = f"{n_items // 1000}k" if n_items < 1_000_000 else f"{n_items // 1_000_000}M"
        for heads in (HEADS[:1], HEADS):
            for n in queries:
                t0 = time.perf_counter()
                rank_queries(model, pool, "valid", 0, 1024, False, heads=heads, progress=False, sample=n, seed=0)
                sync(torch, device)
                rate = n / (time.perf_counter() - t0)
                which = "one head" if len(heads) == 1 else "ssl, q and mix"
                report(f"eval_queries_per_s_{len(heads)}_heads@{tag}-{n}", rate, "queries/s",
                       f"{n_items:,} items, hidden {cfg.model.hidden}, {which}, whole sessions")
                report(f"eval_peak_rss_mb@{tag}-{len(heads)}-heads-{n}", peak_rss_mb(), "MB", f"peak after {n} queries")


# ================================================================================================
# Entry point
# ================================================================================================
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer steps")
    p.add_argument("--out", default=None, help="CSV of the figures (default results/bench-<device>.csv)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where training and evaluation run")
    p.add_argument("--eval-catalogue", type=int, metavar="N", help="only evaluation's speed and memory at a "
                   "catalogue of N items (e.g. 1000000)")
    p.add_argument("--cost", action="store_true", help="only the method's cost: the full model, full-sampled and "
                   "gru4rec (and SASRec) per trained event on MovieLens-100K and -1M, windows and sessions")
    p.add_argument("--pool-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pool-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.pool_child:
        print(json.dumps(pool_child(args.pool_child, Path(args.pool_dir))))
        return

    import torch

    from seqrec.running.allocator import keep_freed_memory
    from seqrec.running.distributed import resolve_device
    keep_freed_memory()                  # as train_offline.py does; the pool children keep the default
    device = resolve_device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    gpu = f"; {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"# machine: {machine()}{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.eval_catalogue:
        bench_eval_catalogue(torch, device, args.eval_catalogue)
    elif args.cost:
        bench_full_vs_gru4rec(torch, device, steps=60)
    else:
        run_all(torch, device, args.quick)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "value", "unit", "note"])
            w.writerow(["machine", machine(), "", f"torch {torch.__version__}"])
            w.writerows(FIGURES)
    default = (f"bench-eval-{args.eval_catalogue}-{device.type}.csv" if args.eval_catalogue else
               f"bench-cost-{device.type}.csv" if args.cost else f"bench-{device.type}.csv")
    out = Path(args.out or ROOT / "results" / default)
    atomic_write(out, write)
    print(f"# written to {out}")


def run_all(torch, device, quick: bool) -> None:
    """Every figure: simulator, pool build, matmul peak, training, evaluation (--quick: small sizes)."""
    bench_simulator()
    bench_pool([1_000_000] if quick else [1_000_000, 10_000_000])
    peak = bench_matmul(torch, device)
    steps = (8 if quick else 20) * (5 if device.type == "cuda" else 1)
    bench_training(torch, device, [1000, 10_000] if quick else [1000, 10_000, 70_000], peak, steps)
    if not quick:
        bench_movielens_1m(torch, device, peak, steps)
        bench_full_vs_gru4rec(torch, device, steps)
    bench_eval(torch, device, 10_000 if quick else 70_000, peak, 4096 if quick else 16_384)


if __name__ == "__main__":
    run_cli(main)
