"""A deeper ceiling for online returns: the rollout oracle beside the greedy and lookahead oracles.

The rollout oracle (Simulator.rollout_scores) rescores the greedy oracle's best 2 slates of items by the
return of a click on each when the greedy oracle shows every later slate, sampled `--rollouts` times from
the user's true state: one step of policy improvement on the greedy oracle, which sees the whole rest of
the session where the lookahead oracle sees one step. All three meet the same users (`online.rollout`'s
users of seeds 0 .. --seeds-1), so their returns compare pairwise.

    python -m benchmarks.rollout_oracle --config configs/sim-delayed.yaml [--users 200] [--seeds 5]
        [--rollouts 32] [--out results/rollout-oracle.csv]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from seqrec.running.atomic import atomic_write
from seqrec.running.config import add_config_args, load_config
from seqrec.running.errors import UserError, run_cli
from seqrec.worlds.online import lookahead_oracle_policy, oracle_policy, rollout, simulator_for


def rollout_oracle_policy(sim, rollouts: int, seed: int, rel_sems: list):
    """The rollout oracle as a policy; each step's relative standard errors go to `rel_sems`."""
    rng = np.random.default_rng([sim.p.seed, 41, seed])

    def policy(histories, users):
        scores, rel_sem = sim.rollout_scores(users, rollouts, rng)
        rel_sems.append(rel_sem.ravel())
        return scores
    return policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--users", type=int, default=200, help="fresh users per seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rollouts", type=int, default=32, help="sampled sessions per candidate item")
    p.add_argument("--out", type=Path, default=Path("results/rollout-oracle.csv"))
    args = p.parse_args()
    if min(args.users, args.seeds, args.rollouts) < 1:
        raise UserError("--users, --seeds and --rollouts must be at least 1")
    cfg = load_config(args.config, args.overrides)
    sim = simulator_for(cfg)
    rows = []
    for seed in tqdm(range(args.seeds), desc="seeds", unit="seed"):
        rel_sems: list = []
        policies = {"oracle": oracle_policy(sim), "lookahead-oracle": lookahead_oracle_policy(sim),
                    "rollout-oracle": rollout_oracle_policy(sim, args.rollouts, seed, rel_sems)}
        for name, policy in policies.items():
            start = time.perf_counter()
            returns = rollout(sim, policy, args.users, seed=seed).returns
            rows.append({"policy": name, "seed": seed, "users": args.users, "return": returns.mean(),
                         "return_sd": returns.std(ddof=1), "seconds": time.perf_counter() - start,
                         "rollouts": args.rollouts if name == "rollout-oracle" else 0,
                         "median_rel_sem": float(np.median(np.concatenate(rel_sems))) if name == "rollout-oracle" else np.nan})
    table = pd.DataFrame(rows)
    atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False))
    # Paired by user: every policy met the same users, so the shares' spread is over seeds.
    per_seed = table.pivot(index="seed", columns="policy", values="return")
    users = args.users * args.seeds
    print(f"{users:,} users ({args.seeds} seeds of {args.users}), {args.rollouts} rollouts per candidate; "
          f"median relative s.e. of a candidate's return {table['median_rel_sem'].median():.3f}")
    for name in policies:
        r = per_seed[name]
        sd = table.loc[table.policy == name, "return_sd"].mean()
        share = per_seed[name] / per_seed["rollout-oracle"]
        print(f"  {name:18s} return {r.mean():.3f} ± {1.96 * sd / np.sqrt(users):.3f} (95% CI over users), "
              f"{share.mean():.1%} ± {share.std(ddof=1) if len(share) > 1 else 0:.1%} of the rollout oracle (seeds)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
