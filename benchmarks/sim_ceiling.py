"""How well can anyone predict the next click in the simulated data? An upper bound for offline metrics.

A predictor that knows each user's hidden state (preferences and interest) and the logging policy
estimates the distribution of the next click by Monte Carlo (replaying the logging policy's slate and
the user's choice `--replicas` times) and ranks items by it. Its HR@k / NDCG@k on fresh sessions of
the default simulator bound what a model that sees only the click history can reach.

    python -m benchmarks.sim_ceiling [--sessions 1000] [--replicas 200] [--set sim.key=value ...]
"""
from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from seqrec.running.config import add_config_args, load_config
from seqrec.running.errors import run_cli
from seqrec.evaluation.metrics import rank_of_targets, summarize
from seqrec.worlds.simulator import NO_CLICK, Simulator, Users, run_sessions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--replicas", type=int, default=200)
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    sim = Simulator.from_config(cfg)
    rng = np.random.default_rng([cfg.sim.seed, 99])           # sessions unseen by the data set's seeds
    users = sim.start_sessions(args.sessions, rng)
    counts = []

    def replay_then_log(sub: Users, active: np.ndarray) -> np.ndarray:
        """Count what the logging policy's slate and the user's choice give, over `replicas` replays
        of this step from the user's true state; then show the real slate."""
        n = np.zeros((len(active), sim.p.num_items))
        for _ in range(args.replicas):
            ghost = copy.deepcopy(sub)
            res = sim.step(ghost, sim.logging_slates(ghost, rng), rng)
            hit = res.click != NO_CLICK
            np.add.at(n, (np.nonzero(hit)[0], res.click[hit]), 1.0)
        counts.append(n)
        return sim.logging_slates(sub, rng)

    higher, ties, purchase = [], [], []
    for _, _, _, res in run_sessions(sim, users, replay_then_log, rng):
        hit = res.click != NO_CLICK
        # A tiny appeal term breaks ties between items drawn equally often the way the logging policy
        # would (otherwise they would count as ties, metrics.py).
        scores = torch.from_numpy(counts[-1][hit] + 1e-6 * sim.item_appeal)
        h, t = rank_of_targets(scores, torch.from_numpy(res.click[hit]))
        higher.append(h)
        ties.append(t)
        purchase.append(torch.from_numpy(res.purchase[hit]))
    out = summarize(torch.cat(higher), torch.cat(ties), torch.cat(purchase), cfg.eval.ks)
    n = sum(len(h) for h in higher)
    print(f"next-click ceiling over {n:,} events of {args.sessions:,} fresh sessions ({args.replicas} replicas):")
    for key, value in out.items():
        print(f"  {key:18s} {value:.4f}")


if __name__ == "__main__":
    run_cli(main)
