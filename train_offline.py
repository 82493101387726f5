"""Offline RL for session-based recommendation: GRU states, multi-step self-supervision and a TD(lambda) Q head.

    python train_offline.py                          # build the pool if needed, train, test, recommend
    python train_offline.py --resume                 # continue the run in train.run_dir
    python train_offline.py --mode eval              # evaluate the run's best checkpoint, no training
    python train_offline.py --mode recommend --user 42      (or --history "12,7,42")

Loss = sum_k w_k CE(a_{t+k} | s_t)  +  alpha * TD(Q(s_{t+k}, a_{t+k}), G^lambda_k), with G^lambda from
a target network (double-Q by default) over the pool's T-step windows.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from atomic import atomic_write_text
from checkpoint import load_checkpoint, save_checkpoint
from config import Config, add_config_args, load_config, save_config
from errors import UserError, run_cli
from evaluation import evaluate, format_table
from model import SeqRecQ
from recommend import example_user, format_recommendations, history_from_ids, history_of_user, top_k
from replay_buffer import Pool, Windows, ensure_pool, summary
from ssl_heads import multi_step_loss
from td_lambda import lambda_returns


# ================================================================================================
# The algorithm: one batch of T-step windows -> loss
# ================================================================================================
@dataclass
class Batch:
    state: torch.Tensor    # [B, L] items before the event
    actions: torch.Tensor  # [B, T] a_t .. a_{t+T-1}
    rewards: torch.Tensor  # [B, T]
    dones: torch.Tensor    # [B, T] step k ends the session
    valid: torch.Tensor    # [B, T] step k lies inside the session

    @classmethod
    def from_windows(cls, w: Windows) -> "Batch":
        return cls(*(torch.from_numpy(np.ascontiguousarray(getattr(w, f)))
                     for f in ("state", "actions", "rewards", "dones", "valid")))


def next_state_values(online_q: torch.Tensor | None, target_q: torch.Tensor, kind: str) -> torch.Tensor:
    """V(s') [B, T] from Q over all items [B, T, N+1]: `double` = target Q at the online argmax, `max`.

    Column 0 (padding) is never chosen: both work on the view [..., 1:] and shift the index back.
    """
    if kind == "max":
        return target_q[..., 1:].max(-1).values
    best = online_q[..., 1:].argmax(-1, keepdim=True) + 1
    return target_q.gather(-1, best).squeeze(-1)


def compute_losses(model: SeqRecQ, target_net: SeqRecQ, b: Batch, t: Config) -> tuple[torch.Tensor, dict]:
    states = model.window_states(b.state, b.actions)                      # [B, T+1, H]: s_t .. s_{t+T}
    K = model.ssl.steps
    ce = multi_step_loss(model.ssl(states[:, 0]), b.actions[:, :K], b.valid[:, :K],
                         torch.tensor(t.ssl_weights[:K], dtype=states.dtype))

    q_taken = model.q_of(states[:, :-1], b.actions)                       # Q(s_{t+k}, a_{t+k}) [B, T]
    with torch.no_grad():
        online_q = model.q_values(states[:, 1:]) if t.value == "double" else None
        target_q = target_net.q_values(target_net.window_states(b.state, b.actions)[:, 1:])
        next_v = next_state_values(online_q, target_q, t.value)           # V(s_{t+k+1}) [B, T]
        returns = lambda_returns(b.rewards, next_v, b.dones, t.gamma, t.lam)
    td_fn = F.huber_loss if t.td_loss == "huber" else F.mse_loss
    valid = b.valid.to(q_taken.dtype)
    td = (td_fn(q_taken, returns, reduction="none") * valid).sum() / valid.sum().clamp(min=1.0)

    loss = ce + t.alpha * td
    stats = {"loss": loss.item(), "ce": ce.item(), "td": td.item(),
             "q_mean": ((q_taken.detach() * valid).sum() / valid.sum().clamp(min=1.0)).item()}
    return loss, stats


@torch.no_grad()
def update_target(target_net: SeqRecQ, model: SeqRecQ, t: Config, step: int) -> None:
    """Polyak averaging every step, or a hard copy every `target_every` steps."""
    if t.target_update == "polyak":
        for p_t, p in zip(target_net.parameters(), model.parameters()):
            p_t.lerp_(p, t.tau)
    elif step % t.target_every == 0:
        target_net.load_state_dict(model.state_dict())


# ================================================================================================
# Training loop
# ================================================================================================
def epoch_order(num_events: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of an epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    return np.random.default_rng([seed, 100, epoch]).permutation(num_events)


@dataclass
class Learner:
    """What training updates: the online network, its target copy, the optimizer and the step count."""
    model: SeqRecQ
    target_net: SeqRecQ
    opt: torch.optim.Optimizer
    step: int = 0

    @classmethod
    def create(cls, cfg: Config, num_items: int) -> "Learner":
        model = SeqRecQ.from_config(cfg.model.to_dict(), num_items)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        return cls(model, copy.deepcopy(model).eval(), opt)


def train_epoch(learner: Learner, pool: Pool, cfg: Config, epoch: int, progress: bool = True,
                label: str | None = None) -> dict:
    """One pass over the pool's training events in the (seed, epoch) order. Returns mean loss stats."""
    t, L, T = cfg.train, cfg.pool.state_len, cfg.pool.horizon
    model, target_net, opt = learner.model, learner.target_net, learner.opt
    model.train()
    train_events = pool.events("train")
    order = train_events[epoch_order(len(train_events), t.seed, epoch)]
    batches = math.ceil(len(order) / t.batch_size)
    sums = {}
    bar = tqdm(range(batches), desc=label or f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False,
               disable=not progress)
    for i in bar:
        windows = pool.windows(order[i * t.batch_size:(i + 1) * t.batch_size], L, T, training=True)
        loss, stats = compute_losses(model, target_net, Batch.from_windows(windows), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        learner.step += 1
        update_target(target_net, model, t, learner.step)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", td=f"{stats['td']:.3f}")
    return {k: v / max(batches, 1) for k, v in sums.items()}


def train(cfg: Config, pool: Pool, run_dir: Path, resume: bool) -> None:
    """Epochs of training, each followed by validation, a metrics row and checkpoints (best and last)."""
    _check_selectable(cfg, pool)
    learner = Learner.create(cfg, pool.num_items)
    first_epoch, best = 0, {"value": -math.inf, "epoch": -1}
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        _check_compatible(ckpt, cfg, pool)
        learner.model.load_state_dict(ckpt["model"])
        learner.target_net.load_state_dict(ckpt["target"])
        learner.opt.load_state_dict(ckpt["optimizer"])
        learner.step, first_epoch, best = ckpt["step"], ckpt["epoch"] + 1, ckpt["best"]
        torch.set_rng_state(ckpt["rng"])
        _truncate_metrics(run_dir / "metrics.csv", ckpt["epoch"])
        print(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1} (step {learner.step})")
    else:
        (run_dir / "metrics.csv").unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    e = cfg.eval
    for epoch in range(first_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        stats = train_epoch(learner, pool, cfg, epoch)
        valid = evaluate(learner.model, pool, "valid", cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen)
        row = {"epoch": epoch + 1, "step": learner.step, "seconds": round(time.perf_counter() - t0, 2), **stats,
               **{f"valid/{head}/{m}": v for head, ms in valid.items() for m, v in ms.items()}}
        _append_row(run_dir / "metrics.csv", row)
        score = valid[e.head][e.select_metric]
        improved = score > best["value"]
        if improved:
            best = {"value": score, "epoch": epoch}
        state = checkpoint_state(learner, cfg, pool, epoch, best)
        if improved:
            save_checkpoint(run_dir / "best.pt", state)
        save_checkpoint(run_dir / "last.pt", state)
        print(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {row['loss']:.4f} (ce {row['ce']:.4f}, td {row['td']:.4f}, "
              f"Q {row['q_mean']:.3f})  valid {e.select_metric} ssl {valid['ssl'][e.select_metric]:.4f} "
              f"q {valid['q'][e.select_metric]:.4f}{'  *best' if improved else ''}  [{row['seconds']:.0f} s]",
              flush=True)
    _plot_curves(run_dir)


def checkpoint_state(learner: Learner, cfg: Config, pool: Pool, epoch: int, best: dict) -> dict:
    return {"model": learner.model.state_dict(), "target": learner.target_net.state_dict(),
            "optimizer": learner.opt.state_dict(), "step": learner.step, "epoch": epoch, "best": best,
            "config": cfg.to_dict(), "num_items": pool.num_items, "pool_hash": pool.meta["config_hash"],
            "rng": torch.get_rng_state()}


def _check_selectable(cfg: Config, pool: Pool) -> None:
    if cfg.eval.select_metric.startswith("purchase/") and pool.meta["splits"]["valid"]["purchases"] == 0:
        raise UserError("the validation split has no purchase events, so eval.select_metric "
                        f"'{cfg.eval.select_metric}' is undefined; set eval.select_metric=click/NDCG@10")
    if pool.meta["splits"]["valid"]["events"] == 0:
        raise UserError("the validation split is empty; give it a share in data.split, e.g. [0.8, 0.1, 0.1]")


def _check_compatible(ckpt: dict, cfg: Config, pool: Pool) -> None:
    if ckpt["num_items"] != pool.num_items or ckpt["config"]["model"] != cfg.model.to_dict():
        raise UserError("the checkpoint was trained on another pool or model config "
                        f"(items {ckpt['num_items']} vs {pool.num_items}); use the config it was trained with")


def _append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric rows of epochs after the checkpoint (a run killed after logging, before saving)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) <= last_epoch + 1]
    if rows and len(keep) < len(rows):
        path.unlink()
        for r in keep:
            _append_row(path, r)


def _plot_curves(run_dir: Path) -> None:
    from plots import plot_training_curves
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")


# ================================================================================================
# Testing and recommending with a saved model
# ================================================================================================
def load_model(ckpt: dict, pool: Pool) -> SeqRecQ:
    if ckpt["num_items"] != pool.num_items:
        raise UserError(f"the checkpoint scores {ckpt['num_items']} items but the pool has {pool.num_items}; "
                        "use the data config the model was trained with")
    model = SeqRecQ.from_config(ckpt["config"]["model"], ckpt["num_items"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def test(cfg: Config, pool: Pool, ckpt: dict, run_dir: Path | None) -> dict:
    model = load_model(ckpt, pool)
    e = cfg.eval
    valid = evaluate(model, pool, "valid", cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen)
    tested = evaluate(model, pool, "test", cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen)
    print(format_table(valid, e.ks, f"validation (best epoch {ckpt['best']['epoch'] + 1}):"))
    print(format_table(tested, e.ks, "test:"))
    final = {"head": e.head, **tested[e.head], "best_epoch": ckpt["best"]["epoch"] + 1, "step": ckpt["step"],
             "exclude_seen": e.exclude_seen, "heads": tested, "valid": valid}
    if run_dir is not None:
        atomic_write_text(run_dir / "final.json", json.dumps(_json_safe(final), indent=2) + "\n")
    return final


def recommend(cfg: Config, pool: Pool, ckpt: dict, user: str | None, history: str | None) -> None:
    model = load_model(ckpt, pool)
    if history is not None:
        who, items = "the given history", history_from_ids(pool, history)
    else:
        user = user if user is not None else example_user(pool)
        who, items = f"user {user}", history_of_user(pool, user)
    r = cfg.recommend
    ids, scores = top_k(model, items, cfg.pool.state_len, r.k, cfg.eval.head, r.exclude_seen)
    print(format_recommendations(pool, who, items, ids, scores, cfg.eval.head))


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


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
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.run_dir)
    if args.mode != "train" or args.resume:
        # A saved run carries its own config; the command line still overrides it.
        path = Path(args.checkpoint) if args.checkpoint else run_dir / ("last.pt" if args.resume else "best.pt")
        cfg = load_config(args.config, args.overrides, base=load_checkpoint(path)["config"])
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)

    pool = ensure_pool(cfg)
    print(summary(pool))
    if args.mode == "train":
        run_dir.mkdir(parents=True, exist_ok=True)
        train(cfg, pool, run_dir, args.resume)
    ckpt = load_checkpoint(Path(args.checkpoint) if args.checkpoint else run_dir / "best.pt")
    if args.mode in ("train", "eval"):
        test(cfg, pool, ckpt, run_dir if args.mode == "train" else None)
    if args.mode in ("train", "recommend"):
        recommend(cfg, pool, ckpt, args.user, args.history)


if __name__ == "__main__":
    run_cli(main)
