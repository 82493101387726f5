"""Online evaluation in the user simulator, and "improve over time".

    python online_eval.py                                   # baselines + train.run_dir/best.pt, if it exists
    python online_eval.py --checkpoint runs/a/best.pt --checkpoint runs/b/best.pt
    python online_eval.py --set online.rounds=5             # deploy with exploration, collect, fine-tune, repeat
    python online_eval.py --config configs/sim-delayed.yaml # the clickbait simulator (its run: runs/sim-delayed)
    python online_eval.py --config configs/recsim.yaml      # RecSim's interest evolution (its run: runs/recsim)

Policies: random, popular (most clicked in the training data), static-list (the items whose logged
clicks have the highest mean discounted return, for everyone), logging (the policy that logged the data), oracle (greedy, knows the true preferences), lookahead-oracle (the same, a click's effect one step
on), posterior-oracle (knows the world but infers the preferences from the clicks, as a model must), and each checkpoint ranked by its ssl, q and mix heads (mix: eval.beta, eval.rerank_top).
Every policy meets the same simulated users. Reported per policy: mean return per session with a 95%
confidence interval and as a fraction of the oracle's, click-through rate (clicks per slate),
purchase rate (purchases per click), session length (clicks per session), user-steps (slates) a second,
and slates@10: how many different slates the 10th step showed across users (1: the same list for all).

With `--config configs/recsim.yaml` the world is RecSim's interest evolution: random, popular,
static-list (the items of highest logged return, for everyone), the myopic oracle (most expected watch
time now) and the budget-aware oracle (most watch time per minute of budget; the reference), beside
each checkpoint's heads. static-list and popular join the simulator's policies too.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from model import HEADS, SeqRecQ, compute_losses
from replay_buffer import Pool, append_train_sessions, ensure_pool, stale_reason
from seqrec.running.atomic import atomic_write
from seqrec.running.config import Config, add_config_args, check_trained_here, load_config
from seqrec.running.errors import UserError, run_cli
from seqrec.running.learner import Learner, train_epoch
from seqrec.worlds.online import ModelPolicy, baseline_policies, rollout, sim_to_pool_ids, simulator_for
from seqrec.running.plots import plot_improvement
from seqrec.running.runs import check_network_unchanged, check_pool_kept, check_same_items, claim_run_dir, load_checkpoint
from seqrec.worlds.simulator import Simulator


def model_policies(name: str, ckpt: dict, pool: Pool, sim: Simulator, cfg: Config) -> dict:
    model = SeqRecQ.from_checkpoint(ckpt, pool.num_items)
    return {f"{name}:{head}": ModelPolicy.from_config(model, pool.item_ids, sim.p.num_items, cfg, head) for head in HEADS}


def evaluate_policies(policies: dict, sim: Simulator, cfg: Config) -> pd.DataFrame:
    rows = []
    for name, policy in policies.items():
        started = time.perf_counter()
        run = rollout(sim, policy, cfg.online.sessions, seed=cfg.online.seed, skip_memory=cfg.online.skip_memory)
        rows.append({"policy": name, **run.summary(),
                     "steps_per_s": float(run.slates.sum()) / max(time.perf_counter() - started, 1e-9)})
    table = pd.DataFrame(rows)
    table["of_oracle"] = table["return"] / table.loc[table["policy"] == oracle_name(sim), "return"].iloc[0]
    return table


def oracle_name(sim) -> str:
    """The reference policy a world's returns are divided by: the simulator's greedy oracle, RecSim's budget-aware one."""
    return getattr(sim, "ORACLE", "oracle")


def format_online(table: pd.DataFrame) -> str:
    lines = [f"  {'policy':24s} {'return':>16s} {'of oracle':>9s} {'CTR':>7s} {'buy/click':>9s} {'length':>7s} "
             f"{'steps/s':>8s} {'slates@10':>9s}"]
    for r in table.itertuples():
        lines.append(f"  {r.policy:24s} {r.return_:8.3f} ± {r.return_ci95:5.3f} {r.of_oracle:9.1%} "
                     f"{r.ctr:7.3f} {r.purchase_rate:9.3f} {r.length:7.2f} {r.steps_per_s:8,.0f} {r.distinct_at_10:9d}")
    return "\n".join(lines)


# ================================================================================================
# Improve over time: deploy with exploration, append what users did to the pool, fine-tune
# ================================================================================================
def improve_over_time(ckpt: dict, pool: Pool, sim: Simulator, cfg: Config, run_dir: Path) -> pd.DataFrame:
    o = cfg.online
    if o.rounds > 0 and pool.split_mode == "loo":
        raise UserError("improve over time needs a session split (data.split_mode random or temporal)")
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg)
    learner.restore(ckpt)
    sim_to_pool = sim_to_pool_ids(pool.item_ids, sim.p.num_items)
    rows = []
    for r in range(o.rounds + 1):
        policy = ModelPolicy.from_config(learner.model, pool.item_ids, sim.p.num_items, cfg)
        row = {"round": r, "pool_events": pool.meta["num_events"],
               **rollout(sim, policy, o.sessions, seed=o.seed, skip_memory=o.skip_memory).summary()}
        row.update(ci_low=row["return"] - row["return_ci95"], ci_high=row["return"] + row["return_ci95"])
        print(f"round {r}: greedy return {row['return']:.3f} ± {row['return_ci95']:.3f} "
              f"({row['pool_events']:,} events in the pool)", flush=True)
        rows.append(row)
        if r == o.rounds:
            break
        deployed = rollout(sim, policy, o.round_sessions, seed=1000 + r, explore=o.explore, record=True,
                           skip_memory=o.skip_memory)
        rows[-1]["deployed_return"] = deployed.summary()["return"]
        items, rewards, purchase, lengths, ids, shown, logp = _as_pool_events(deployed.log, sim_to_pool, cfg, r)
        pool = append_train_sessions(pool, items, rewards, purchase, lengths, ids, folder=run_dir / "online-pool",
                                     shown=shown, slate_logp=logp)
        for _ in range(o.round_epochs):   # whole epochs over the grown pool, continuing the epoch count
            learner.batch, learner.sums = 0, {}
            train_epoch(learner, pool, cfg, compute_losses, label=f"round {r + 1}/{o.rounds} fine-tuning")
            learner.epoch += 1
    table = pd.DataFrame(rows)
    first = ["round", "return", "ci_low", "ci_high"]                   # 95% over sessions
    return table[first + [c for c in table.columns if c not in first]]


def _as_pool_events(log: pd.DataFrame, sim_to_pool: np.ndarray, cfg: Config, round_: int):
    """New sessions in pool ids (clicks on items the pool does not know are dropped), with the slates
    they were clicked in (pool ids, 0 = unknown to the pool) and the slates' log-probabilities."""
    items = sim_to_pool[log["item_id"].to_numpy(np.int64)]
    log = log[items > 0].assign(item=items[items > 0])
    purchase, rewards = log["purchase"].to_numpy(bool), log["reward"].to_numpy(np.float64)
    sessions, lengths = np.unique(log["session_id"].to_numpy(), return_counts=True)
    ids = np.array([f"online-r{round_}-{s}" for s in sessions])
    shown = sim_to_pool[log[[c for c in log.columns if c.startswith("shown_")]].to_numpy(np.int64)]
    return log["item"].to_numpy(), rewards, purchase, lengths, ids, shown, log["slate_logp"].to_numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--checkpoint", metavar="PATH", action="append", default=[],
                   help="a trained model to evaluate (repeatable; default train.run_dir/best.pt if it exists)")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.run_dir)
    # The inputs first: a missing checkpoint or a wrong combination is named before any simulation.
    sim = simulator_for(cfg)
    paths = [Path(c) for c in args.checkpoint] or [q for q in [run_dir / "best.pt"] if q.is_file()]
    ckpts = {str(path): load_checkpoint(path) for path in paths}
    for name, ckpt in ckpts.items():
        check_trained_here(name, ckpt, cfg)
    if cfg.online.rounds > 0:
        if not ckpts:
            raise UserError("improve over time starts from a trained model: train first or pass --checkpoint")
        first = next(iter(ckpts.values()))
        tuned = load_config(args.config, args.overrides, base=first["config"])
        check_network_unchanged(tuned, first)
    claim_run_dir(run_dir)                          # online.csv goes there: a user's folder is refused now
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    for name, ckpt in ckpts.items():                # a pool a model was trained on is not rebuilt under it
        check_pool_kept(ckpt, Path(cfg.pool.dir), stale_reason(cfg), name)
    pool = ensure_pool(cfg)
    for name, ckpt in ckpts.items():
        check_same_items(ckpt, pool.num_items, pool.items_digest, f"the pool in {pool.dir}", name)
    policies = baseline_policies(sim, pool, cfg.online.seed, cfg.train.gamma)
    for name, ckpt in ckpts.items():
        policies.update(model_policies(name, ckpt, pool, sim, cfg))
    table = evaluate_policies(policies, sim, cfg)
    print(f"online evaluation: {cfg.online.sessions:,} simulated sessions per policy, slates of {sim.p.slate_size}; "
          f"'of oracle' is of {oracle_name(sim)}'s return")
    print(format_online(table.rename(columns={"return": "return_"})))
    atomic_write(run_dir / "online.csv", lambda tmp: table.to_csv(tmp, index=False))
    if cfg.online.rounds > 0:
        rounds = improve_over_time(first, pool, sim, tuned, run_dir)
        atomic_write(run_dir / "improve.csv", lambda tmp: rounds.to_csv(tmp, index=False))
        oracle = float(table.loc[table["policy"] == oracle_name(sim), "return"].iloc[0])
        plot_improvement(rounds, oracle, run_dir / "improve.png")


if __name__ == "__main__":
    run_cli(main)
