"""Offline RL for session-based recommendation: GRU states, multi-step self-supervision and a TD(lambda) Q head.

    python train_offline.py                          # build the pool if needed, train, test, recommend
    python train_offline.py --resume                 # continue the run in train.run_dir
    python train_offline.py --mode eval              # evaluate the run's best checkpoint, no training
    python train_offline.py --mode recommend --user 42      (or --history "12,7,42")
    python train_offline.py --mode recommend --all --out recs.csv   # every session's top-k, to a CSV
    torchrun --nproc_per_node=2 train_offline.py     # DistributedDataParallel, one shard of each batch per rank

What happens, and where each part lives:
  log -> pool        replay_buffer.py: ensure_pool builds the flat experience pool; Pool.windows cuts
                     each batch's T-step windows (state, actions, rewards, ends) out of it
  the loss           model.py: compute_losses = sum_k w_k CE(a_{t+k} | s_t) (ssl_heads.py)
                     + alpha * TD(Q(s_{t+k}, a_{t+k}), G^lambda_k) (td_lambda.py; target net, train.bootstrap)
                     + SNQN negatives (train.q_negatives); validation also scores Q against returns
  the loop           below: epochs of seqrec.running.learner.train_epoch (batches -> loss -> Learner.update),
                     each followed by validation, a metrics row and checkpoints (seqrec/running/runs.py)
  test, recommend    below: the best epoch's test metrics (seqrec/evaluation/offline.py) and top-k for a user
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import numpy as np
import torch

from model import HEADS, SeqRecQ, compute_losses
from replay_buffer import Pool, ensure_pool, stale_reason, summary
from seqrec.worlds import online
from seqrec.running import runs
from seqrec.running.allocator import keep_freed_memory, release_freed_memory
from seqrec.running.atomic import check_writable
from seqrec.running.config import WORLDS, Config, add_config_args, load_config
from seqrec.running.distributed import SINGLE, Dist
from seqrec.running.distributed import setup as setup_distributed
from seqrec.running.distributed import teardown as teardown_distributed
from seqrec.running.errors import UserError, run_cli
from seqrec.evaluation.offline import evaluate, format_selection, format_table, format_value, selection_score
from seqrec.running.learner import Learner, epoch_means, patience_spent, train_epoch
from seqrec.running.recommend import (
    SPLITS,
    example_user,
    format_recommendations,
    history_from_ids,
    history_of_user,
    recommend_all,
    top_k,
)
from seqrec.evaluation.value import ValueReference, reward_scale, value_reference


# ================================================================================================
# The loop: epochs of training, each followed by validation, a metrics row and checkpoints
# ================================================================================================
def train(cfg: Config, pool: Pool, run_dir: Path, resume: bool, device: torch.device | str = "cpu",
          dist: Dist = SINGLE) -> None:
    """Train cfg.train.epochs epochs (from where last.pt stands with `resume`). Rank 0 alone validates
    and writes; with `train.checkpoint_every` it also writes last.pt every that many steps."""
    runs.check_trainable(cfg, pool)
    learner = Learner.create(SeqRecQ.from_config(cfg.model.to_dict(), pool.num_items), cfg, device, dist)
    best = {"value": float("-inf"), "epoch": -1}
    if resume:
        ckpt = runs.load_checkpoint(run_dir / "last.pt")
        runs.check_resumable(ckpt, cfg, pool)
        learner.restore(ckpt)
        best = ckpt["best"]
        if dist.main:
            print(f"resuming {run_dir} after {learner.epoch} epochs and {learner.batch} batches (step {learner.step})")
    if dist.main:
        runs.start_run(run_dir, cfg, learner.epoch if resume else None)

    every, e = cfg.train.checkpoint_every, cfg.eval
    board = runs.tensorboard_writer(run_dir) if cfg.train.tensorboard and dist.main else None
    reference = value_reference_of(cfg, pool) if dist.main else None

    def checkpoint_now(lr: Learner) -> None:
        if dist.main and every and lr.step % every == 0:
            runs.save_checkpoint(run_dir / "last.pt", lr.state(cfg, pool, best))

    early = False
    while learner.epoch < cfg.train.epochs:
        if patience_spent(learner.epoch, best, cfg.train.patience, dist):
            early = True
            break
        t0 = time.perf_counter()
        finished = train_epoch(learner, pool, cfg, compute_losses, dist, on_step=checkpoint_now)
        stats = epoch_means(learner, dist)
        if dist.main:
            valid = evaluate(learner.net, pool, "valid", cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen,
                             heads=HEADS, value=reference, beta=e.beta, rerank_top=e.rerank_top,
                             sample=e.max_valid_queries, seed=cfg.train.seed)
            row = {"epoch": learner.epoch + 1, "step": learner.step, "seconds": round(time.perf_counter() - t0, 2),
                   **stats, **{f"valid/{head}/{m}": v for head, ms in valid.items() for m, v in ms.items()}}
            runs.append_row(run_dir / "metrics.csv", row)
            if board is not None:
                runs.write_scalars(board, row)
            score = selection_score(valid, e.head, e.select_metric)
            improved = score > best["value"]
            if improved:
                best = {"value": score, "epoch": learner.epoch}
                runs.save_checkpoint(run_dir / "best.pt", learner.state(cfg, pool, best))
            print(f"epoch {learner.epoch + 1}/{cfg.train.epochs}{'' if finished else ' (stopped at train.max_steps)'}  "
                  f"loss {row['loss']:.4f} (ce {row['ce']:.4f}, td {row['td']:.4f}, Q {row['q_mean']:.3f})  "
                  f"valid {format_selection(valid, e.select_metric)}"
                  f"  value rmse {valid['value']['rmse']:.3f} bias {valid['value']['bias']:+.3f}"
                  f"{'  *best' if improved else ''}  [{row['seconds']:.0f} s]", flush=True)
        if finished:
            learner.epoch, learner.batch, learner.sums = learner.epoch + 1, 0, {}
        if dist.main:  # stopped mid-epoch, last.pt keeps the position, so --resume continues it
            runs.save_checkpoint(run_dir / "last.pt", learner.state(cfg, pool, best))
        if not finished:
            break
    if dist.main and early:
        print(f"stopped early: no better validation {e.select_metric} in the {cfg.train.patience} epochs after "
              f"epoch {best['epoch'] + 1} (train.patience)", flush=True)
    if dist.main:
        runs.plot_curves(run_dir)
    if board is not None:
        board.close()


# ================================================================================================
# Testing and recommending with a saved model
# ================================================================================================
def test(cfg: Config, pool: Pool, ckpt: dict, run_dir: Path | None, device: torch.device | str = "cpu") -> dict:
    """Validation and test metrics of both heads; with a run_dir, final.json."""
    model, e = SeqRecQ.from_checkpoint(ckpt, pool.num_items).to(device), cfg.eval
    reference = value_reference_of(cfg, pool)
    valid, tested = (evaluate(model, pool, split, cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen, heads=HEADS,
                              value=reference, beta=e.beta, rerank_top=e.rerank_top) for split in ("valid", "test"))
    print(format_table(valid, e.ks, f"validation (best epoch {ckpt['best']['epoch'] + 1}):"))
    print(format_table(tested, e.ks, "test:"))
    print(format_value(tested["value"]))
    final = {"head": e.head, **tested[e.head], "best_epoch": ckpt["best"]["epoch"] + 1, "step": ckpt["step"],
             "exclude_seen": e.exclude_seen, "value": tested.pop("value"), "heads": tested, "valid": valid}
    if run_dir is not None:
        runs.write_final(run_dir, final)
    return final


def value_reference_of(cfg: Config, pool: Pool) -> ValueReference:
    """What Q values are scored against: realized returns and the position-mean baseline, and on
    simulated data the logging policy's true values of some validation and test events."""
    # A world's sessions end when the user leaves; a real log's end may cut them (seqrec/evaluation/value.py).
    cut = cfg.data.source not in WORLDS and not cfg.eval.complete_sessions
    reference = value_reference(pool, cfg.train.gamma, cfg.eval.value_observed if cut else None,
                                reward_scale(pool, cfg.train.gamma, cfg.train.reward_scale))
    truths = [t for t in (online.true_event_values(cfg, pool, split) for split in ("valid", "test")) if t is not None]
    if truths:
        reference.true_events = np.concatenate([events for events, _ in truths])
        reference.true_values = np.concatenate([values for _, values in truths])
    return reference


def recommend(cfg: Config, pool: Pool, ckpt: dict, args: argparse.Namespace, device: torch.device | str = "cpu") -> None:
    """Top-k for one user or history (printed), or with --all for every session of --split (a CSV)."""
    model = SeqRecQ.from_checkpoint(ckpt, pool.num_items).to(device)
    r, e, k = cfg.recommend, cfg.eval, args.k or cfg.recommend.k
    if args.all:
        out = Path(args.out) if args.out else Path(cfg.train.run_dir) / "recommendations.csv"
        rows = recommend_all(model, pool, out, args.split, cfg.pool.state_len, k, e.head, r.exclude_seen, e.beta,
                             e.rerank_top)
        print(f"top-{k} of every session of split '{args.split}' by the {e.head} head: {rows:,} rows in {out}")
        return
    if args.history is not None:
        who, items = "the given history", history_from_ids(pool, args.history, r.unknown_items)
    else:
        user = args.user if args.user is not None else example_user(pool)
        who, items = f"user {user}", history_of_user(pool, user)
    ids, scores = top_k(model, items, cfg.pool.state_len, k, e.head, r.exclude_seen, e.beta, e.rerank_top)
    print(format_recommendations(pool, who, items, ids, scores, e.head))


# ================================================================================================
# Entry point
# ================================================================================================
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--mode", choices=("train", "eval", "recommend"), default="train",
                   help="train (then test and recommend), or only eval / recommend with a saved checkpoint")
    p.add_argument("--resume", action="store_true", help="continue training from train.run_dir/last.pt")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint for eval/recommend (default run_dir/best.pt)")
    p.add_argument("--user", metavar="ID", help="recommend for this user/session id (original id)")
    p.add_argument("--history", metavar="IDS", help='recommend after these original item ids, e.g. "12,7,42"')
    p.add_argument("--all", action="store_true", help="recommend for every session of --split, written to --out")
    p.add_argument("--split", choices=SPLITS, default="all", help="with --all: the sessions to recommend for")
    p.add_argument("--out", metavar="CSV", help="with --all: where to write (default train.run_dir/recommendations.csv)")
    p.add_argument("--k", type=int, metavar="N", help="how many items per list (default recommend.k)")
    args = p.parse_args()
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Combinations that cannot work, refused before any data is read."""
    if args.k is not None and args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    if args.all and (args.user is not None or args.history is not None):
        raise UserError("--all recommends for every session; drop --user / --history")
    if (args.out or args.split != "all") and not args.all:
        raise UserError("--out and --split go with --all (recommend for every session)")
    if (args.all or args.user is not None or args.history is not None) and args.mode != "recommend":
        raise UserError("--all, --user and --history go with --mode recommend")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name, e.g. {Path(args.out) / 'recs.csv'}")


def pool_for(cfg: Config, saved: dict | None, path: Path | None, args: argparse.Namespace) -> Pool:
    """The pool to train, test or recommend on, built if needed, after the places this command will
    write are checked; with a saved checkpoint, one with the items it was trained on (or a UserError,
    before any work: a stale pool it was trained on is not rebuilt under it)."""
    if args.mode == "train":
        runs.claim_run_dir(Path(cfg.train.run_dir))
    elif args.all:
        out = Path(args.out) if args.out else Path(cfg.train.run_dir) / "recommendations.csv"
        check_writable(out.parent, "the folder of --out" if args.out else "train.run_dir")
    if saved is not None:
        runs.check_pool_kept(saved, Path(cfg.pool.dir), stale_reason(cfg), str(path))
    pool = ensure_pool(cfg)
    if saved is not None:
        runs.check_same_items(saved, pool.num_items, pool.items_digest, f"the pool in {pool.dir}", str(path))
    return pool


def main() -> None:
    args = parse_args()
    keep_freed_memory()                               # steps reuse big freed tensors (see seqrec/running/allocator.py)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.run_dir)
    saved = path = None
    if args.mode != "train" or args.resume:
        # A saved run carries its own config; the command line overrides what does not define the net.
        path = Path(args.checkpoint) if args.checkpoint else run_dir / ("last.pt" if args.resume else "best.pt")
        saved = runs.load_checkpoint(path)
        cfg = load_config(args.config, args.overrides, base=saved["config"])
        runs.check_network_unchanged(cfg, saved)
    if args.mode == "train" and cfg.train.tensorboard:
        runs.summary_writer_class()                   # a missing optional package is named before any work
    dist, device = setup_distributed(cfg.device)      # a no-op unless started by torchrun
    try:
        torch.manual_seed(cfg.train.seed)             # the same initial weights on every rank
        # 0 = this process's share of the cores (torchrun starts one process per rank on the same machine)
        torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
        if dist.main:                                 # one rank builds the pool, the others wait for it
            pool = pool_for(cfg, saved, path if saved is not None else None, args)
            print(summary(pool))
        dist.barrier()
        if not dist.main:
            pool = Pool(Path(cfg.pool.dir))
        if args.mode == "train":
            train(cfg, pool, run_dir, args.resume, device, dist)
            # the training's networks and Adam's moments outlive train() in reference cycles until a
            # collection: 2.4 GB at 1M items, freed before testing (seqrec/running/allocator.py)
            gc.collect()
            release_freed_memory()
        if not dist.main:
            dist.barrier()                            # wait for rank 0's test, then leave the group together
            return
        # eval and recommend use the checkpoint read above; training tests the best.pt it just wrote
        ckpt = runs.inference_part(saved if args.mode != "train" else
                                   runs.load_checkpoint(Path(args.checkpoint) if args.checkpoint else run_dir / "best.pt"))
        saved = None                                  # the optimizer and target net it held are not needed now
        if args.mode in ("train", "eval"):
            test(cfg, pool, ckpt, run_dir if args.mode == "train" else None, device)
        if args.mode in ("train", "recommend"):
            recommend(cfg, pool, ckpt, args, device)
        dist.barrier()
    finally:
        teardown_distributed()


if __name__ == "__main__":
    run_cli(main)
