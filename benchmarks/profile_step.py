"""Where a training step's time goes: batch building, the loss's forward, backward, and the optimizer
with the target update, each timed apart over a run of steps, then the operators that take the most time
(torch.profiler). For the before/after of a speed change (docs/speed.md).

    python -m benchmarks.profile_step --config configs/movielens-1m-loo.yaml          # the full model, windows
    python -m benchmarks.profile_step --config configs/movielens-1m-loo.yaml --set pool.state_len=0

The config's own training settings are used (the full model unless --set says otherwise); `--threads`
as the training runs would have them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from model import SeqRecQ, compute_losses
from replay_buffer import ensure_pool
from seqrec.running.allocator import keep_freed_memory
from seqrec.running.config import load_config
from seqrec.running.distributed import SINGLE
from seqrec.running.errors import run_cli
from seqrec.running.learner import Learner, session_steps, update_target, window_batches

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("batch", "forward", "backward", "optimizer")


def timed_steps(learner: Learner, cfg, pool, steps: int, warmup: int = 3) -> dict:
    """Mean milliseconds per step of each phase over `steps` steps after `warmup`."""
    sessions = cfg.pool.state_len == 0
    count, make = (session_steps if sessions else window_batches)(learner, pool, cfg, SINGLE, "cpu")
    totals = dict.fromkeys(PHASES, 0.0)
    for i in range(warmup + steps):
        marks = [time.perf_counter()]
        batch = make(i % count)
        marks.append(time.perf_counter())
        loss, _, carry = compute_losses(learner.model, learner.target_net, batch, cfg.train)
        marks.append(time.perf_counter())
        learner.opt.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        if cfg.train.grad_clip > 0:                    # the rest of Learner.update, apart from backward
            torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cfg.train.grad_clip)
        learner.opt.step()
        learner.step += 1
        update_target(learner.target_net, learner.net, cfg.train, learner.step)
        if sessions:
            learner.carry = carry
        marks.append(time.perf_counter())
        if i >= warmup:
            for phase, a, b in zip(PHASES, marks, marks[1:]):
                totals[phase] += (b - a) * 1000 / steps
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 of warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="operators listed")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    pool = ensure_pool(cfg)
    torch.manual_seed(cfg.train.seed)
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg, "cpu")
    path = "whole sessions" if cfg.pool.state_len == 0 else f"{cfg.pool.state_len}-item windows"
    print(f"# {pool.num_items:,} items, {path}, batch {cfg.train.batch_size}, T {cfg.pool.horizon}, "
          f"K {cfg.model.ssl_steps}, encoder {cfg.model.encoder}, {args.threads} threads")
    totals = timed_steps(learner, cfg, pool, args.steps)
    step = sum(totals.values())
    for phase in PHASES:
        print(f"{phase:>10}: {totals[phase]:8.1f} ms  {totals[phase] / step:6.1%}")
    print(f"{'step':>10}: {step:8.1f} ms")
    with torch.profiler.profile() as prof:
        timed_steps(learner, cfg, pool, 5, warmup=0)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    run_cli(main)
