"""Offline RL for session-based recommendation: GRU states, multi-step self-supervision and a TD(lambda) Q head.

    python train_offline.py                          # build the pool if needed, train, test, recommend
    python train_offline.py --resume                 # continue the run in train.run_dir
    python train_offline.py --mode eval              # evaluate the run's best checkpoint, no training
    python train_offline.py --mode recommend --user 42      (or --history "12,7,42")
    torchrun --nproc_per_node=2 train_offline.py     # DistributedDataParallel, one shard of each batch per rank

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from seqrec.allocator import keep_freed_memory
from seqrec.atomic import atomic_write_text
from seqrec.checkpoint import load_checkpoint, save_checkpoint
from seqrec.config import Config, add_config_args, load_config, save_config
from seqrec.errors import UserError, run_cli
from seqrec.evaluation import evaluate, format_table
from seqrec.distributed import SINGLE, Dist
from seqrec.distributed import setup as setup_distributed
from seqrec.distributed import teardown as teardown_distributed
from model import SeqRecQ, model_device
from seqrec.recommend import example_user, format_recommendations, history_from_ids, history_of_user, top_k
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
    def from_windows(cls, w: Windows, device: torch.device | str = "cpu") -> "Batch":
        return cls(*(torch.from_numpy(np.ascontiguousarray(getattr(w, f))).to(device, non_blocking=True)
                     for f in ("state", "actions", "rewards", "dones", "valid")))


def next_state_values(net: SeqRecQ, target_net: SeqRecQ, states: torch.Tensor, target_states: torch.Tensor,
                      kind: str, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """V(s') [B, T] from the online and target nets' states of s' [B, T, H]: `double` = the target net's
    Q at the online net's argmax (only that item is scored by the target), `max` = the target's max.
    Over all items 1..N, or over `candidates` [C] (sampled)."""
    if kind == "max":
        return target_net.max_q(target_states, candidates)
    return target_net.q_of(target_states, net.greedy_items(states, candidates))


def candidate_items(actions: torch.Tensor, negatives: int, num_items: int, seed: int, step: int) -> torch.Tensor:
    """The items a sampled step scores: every item acted on in the batch plus `negatives` uniform
    draws, sorted and unique, padding excluded. [C]

    Drawn from a generator seeded by (seed, step): the same on every rank and after a resume, and
    apart from the dropout stream.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    drawn = torch.randint(1, num_items + 1, (negatives,), generator=g).to(actions.device)
    both = torch.cat([actions.flatten(), drawn]).unique()
    return both[both > 0]


def candidate_log_inclusion(item_counts: np.ndarray, actions_per_step: int, negatives: int) -> torch.Tensor:
    """log P(item i is among a step's candidates) [N+1], from training counts [N+1] (index 0 unused).

    i is a candidate if one of the batch's `actions_per_step` actions is i (each drawn at i's training
    frequency f_i, as batches are) or one of the `negatives` uniform draws is:
    P = 1 - (1 - f_i)^actions_per_step * (1 - 1/N)^negatives. Subtracting it from the candidates'
    logits is the logQ correction of sampled softmax: without it, frequent items (nearly always
    candidates, so nearly always pushed down as negatives) are under-ranked.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    miss = (1.0 - freq) ** actions_per_step * (1.0 - 1.0 / (len(counts) - 1)) ** negatives
    return torch.from_numpy(np.log1p(-miss)).float()


def compute_losses(model, target_net: SeqRecQ, b: Batch, t: Config, dist: Dist = SINGLE,
                   step: int = 0, log_inclusion: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """CE of the K self-supervised steps + alpha * TD(lambda) loss of the Q head, on one batch.

    With `train.negatives` > 0 both score a shared candidate set instead of all items (sampled
    softmax, logQ-corrected by `log_inclusion` [N+1] when given; the bootstrap max runs over the
    candidates), which keeps large catalogues cheap.

    Means are taken over the valid steps of the *global* batch (all ranks), and the loss is scaled by
    the number of ranks, so DistributedDataParallel's gradient average is the single-process gradient.
    """
    net = getattr(model, "module", model)                      # the network behind a DDP wrapper
    cand = candidate_items(b.actions, t.negatives, net.num_items, t.seed, step) if t.negatives else None
    states, ssl_ce, q_taken = model(b.state, b.actions, cand, log_inclusion)  # [B, T+1, H], [B, K], [B, T]
    K = ssl_ce.shape[1]
    valid = b.valid.to(q_taken.dtype)
    ce = multi_step_loss(ssl_ce, b.valid[:, :K],
                         torch.tensor(t.ssl_weights[:K], dtype=q_taken.dtype, device=q_taken.device),
                         counts=dist.sum(valid[:, :K].sum(0)))
    with torch.no_grad():                                      # over all items, or over the candidates
        target_states = target_net.window_states(b.state, b.actions)[:, 1:]
        next_v = next_state_values(net, target_net, states[:, 1:], target_states, t.value, cand)  # V(s_{t+k+1})
        returns = lambda_returns(b.rewards, next_v, b.dones, t.gamma, t.lam)
    td_fn = F.huber_loss if t.td_loss == "huber" else F.mse_loss
    count = dist.sum(valid.sum()).clamp(min=1.0)
    td = (td_fn(q_taken, returns, reduction="none") * valid).sum() / count

    loss = ce + t.alpha * td
    # Each rank's stats are its share of the global value: summed over ranks they are exact.
    stats = {"loss": loss.item(), "ce": ce.item(), "td": td.item(),
             "q_mean": ((q_taken.detach() * valid).sum() / count).item()}
    return loss * dist.world, stats


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
    """What training updates: the online network (DDP-wrapped under torchrun), its target copy, the
    optimizer, and where training stands: steps taken, epochs completed, batches done in the next
    epoch and that epoch's running loss sums (so a run killed mid-epoch resumes exactly)."""
    model: torch.nn.Module
    target_net: SeqRecQ
    opt: torch.optim.Optimizer
    step: int = 0
    epoch: int = 0
    batch: int = 0
    sums: dict = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config, num_items: int, device: torch.device | str = "cpu", dist: Dist = SINGLE) -> "Learner":
        net = SeqRecQ.from_config(cfg.model.to_dict(), num_items).to(device)
        # fused: one kernel over all parameters; the per-tensor Adam was 14% of a sampled step at 10k items
        opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
        model = net
        if dist.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        return cls(model, copy.deepcopy(net).eval(), opt)

    @property
    def net(self) -> SeqRecQ:
        return getattr(self.model, "module", self.model)

    def state(self, cfg: Config, pool: Pool, best: dict) -> dict:
        return {"model": self.net.state_dict(), "target": self.target_net.state_dict(),
                "optimizer": self.opt.state_dict(), "step": self.step, "epoch": self.epoch, "batch": self.batch,
                "sums": self.sums, "best": best, "config": cfg.to_dict(), "num_items": pool.num_items,
                "pool_hash": pool.meta["config_hash"], "rng": torch.get_rng_state()}

    def restore(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.target_net.load_state_dict(ckpt["target"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch, self.batch, self.sums = ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["sums"]
        torch.set_rng_state(ckpt["rng"])


def train_epoch(learner: Learner, pool: Pool, cfg: Config, dist: Dist = SINGLE, on_step=None,
                progress: bool = True, label: str | None = None) -> bool:
    """Train epoch `learner.epoch` from batch `learner.batch` on, in the (seed, epoch) order; each rank
    takes its shard of every global batch. Returns False if `train.max_steps` stopped it early.

    `on_step(learner)` runs after every step (checkpointing).
    """
    t, L, T = cfg.train, cfg.pool.state_len, cfg.pool.horizon
    device = model_device(learner.net)
    learner.model.train()
    train_events = pool.events("train")
    order = train_events[epoch_order(len(train_events), t.seed, learner.epoch)]
    batches = math.ceil(len(order) / t.batch_size)
    log_inclusion = None
    if t.negatives:                                   # sampled softmax: each item's chance to be a candidate
        counts = np.bincount(np.asarray(pool.items[train_events]), minlength=pool.num_items + 1)
        log_inclusion = candidate_log_inclusion(counts, math.ceil(t.batch_size / dist.world) * T, t.negatives).to(device)
    bar = tqdm(range(learner.batch, batches), desc=label or f"epoch {learner.epoch + 1}/{t.epochs}", unit="batch",
               leave=False, disable=not (progress and dist.main))
    for i in bar:
        if t.max_steps and learner.step >= t.max_steps:
            return False
        shard = dist.shard(order[i * t.batch_size:(i + 1) * t.batch_size])
        loss, stats = compute_losses(learner.model, learner.target_net,
                                     Batch.from_windows(pool.windows(shard, L, T, training=True), device), t, dist,
                                     step=learner.step, log_inclusion=log_inclusion)
        learner.opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(learner.model.parameters(), t.grad_clip)
        learner.opt.step()
        learner.step += 1
        learner.batch = i + 1
        update_target(learner.target_net, learner.net, t, learner.step)
        for k, v in stats.items():
            learner.sums[k] = learner.sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", td=f"{stats['td']:.3f}")
        if on_step is not None:
            on_step(learner)
    return True


def epoch_means(learner: Learner, dist: Dist) -> dict:
    """Mean loss stats of the epoch, over all ranks and batches."""
    keys = sorted(learner.sums)
    totals = dist.sum(torch.tensor([learner.sums[k] for k in keys], dtype=torch.float64))
    return {k: v / max(learner.batch, 1) for k, v in zip(keys, totals.tolist())}


def train(cfg: Config, pool: Pool, run_dir: Path, resume: bool, device: torch.device | str = "cpu",
          dist: Dist = SINGLE) -> None:
    """Epochs of training, each followed by validation, a metrics row and checkpoints (best and last);
    with `train.checkpoint_every`, last.pt is also written every that many steps inside an epoch."""
    _check_selectable(cfg, pool)
    learner = Learner.create(cfg, pool.num_items, device, dist)
    best = {"value": -math.inf, "epoch": -1}
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        _check_compatible(ckpt, cfg, pool)
        learner.restore(ckpt)
        best = ckpt["best"]
        if dist.main:
            _truncate_metrics(run_dir / "metrics.csv", learner.epoch)
            print(f"resuming {run_dir} after {learner.epoch} epochs and {learner.batch} batches (step {learner.step})")
    elif dist.main:
        (run_dir / "metrics.csv").unlink(missing_ok=True)
    if dist.main:
        save_config(cfg, run_dir / "config.yaml")

    every = cfg.train.checkpoint_every

    def checkpoint_now(lr: Learner) -> None:
        if dist.main and every and lr.step % every == 0:
            save_checkpoint(run_dir / "last.pt", lr.state(cfg, pool, best))

    e = cfg.eval
    while learner.epoch < cfg.train.epochs:
        t0 = time.perf_counter()
        finished = train_epoch(learner, pool, cfg, dist, on_step=checkpoint_now)
        stats = epoch_means(learner, dist)
        if not dist.main:
            if not finished:
                return
            learner.epoch, learner.batch, learner.sums = learner.epoch + 1, 0, {}
            continue
        valid = evaluate(learner.net, pool, "valid", cfg.pool.state_len, e.ks, e.batch_size, e.exclude_seen)
        row = {"epoch": learner.epoch + 1, "step": learner.step, "seconds": round(time.perf_counter() - t0, 2),
               **stats, **{f"valid/{head}/{m}": v for head, ms in valid.items() for m, v in ms.items()}}
        _append_row(run_dir / "metrics.csv", row)
        score = valid[e.head][e.select_metric]
        improved = score > best["value"]
        if improved:
            best = {"value": score, "epoch": learner.epoch}
            save_checkpoint(run_dir / "best.pt", learner.state(cfg, pool, best))
        print(f"epoch {learner.epoch + 1}/{cfg.train.epochs}{'' if finished else ' (stopped at train.max_steps)'}  "
              f"loss {row['loss']:.4f} (ce {row['ce']:.4f}, td {row['td']:.4f}, Q {row['q_mean']:.3f})  "
              f"valid {e.select_metric} ssl {valid['ssl'][e.select_metric]:.4f} q {valid['q'][e.select_metric]:.4f}"
              f"{'  *best' if improved else ''}  [{row['seconds']:.0f} s]", flush=True)
        if not finished:  # stopped mid-epoch: last.pt keeps the position, so --resume continues it
            save_checkpoint(run_dir / "last.pt", learner.state(cfg, pool, best))
            break
        learner.epoch, learner.batch, learner.sums = learner.epoch + 1, 0, {}
        save_checkpoint(run_dir / "last.pt", learner.state(cfg, pool, best))
    _plot_curves(run_dir)


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


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric rows of epochs not completed in the checkpoint (logged, then killed before saving)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) <= epochs_done]
    if len(keep) < len(rows):
        path.unlink()
        for r in keep:
            _append_row(path, r)


def _plot_curves(run_dir: Path) -> None:
    from seqrec.plots import plot_training_curves
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")


# ================================================================================================
# Testing and recommending with a saved model
# ================================================================================================
def load_model(ckpt: dict, pool: Pool, device: torch.device | str = "cpu") -> SeqRecQ:
    if ckpt["num_items"] != pool.num_items:
        raise UserError(f"the checkpoint scores {ckpt['num_items']} items but the pool has {pool.num_items}; "
                        "use the data config the model was trained with")
    model = SeqRecQ.from_config(ckpt["config"]["model"], ckpt["num_items"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def test(cfg: Config, pool: Pool, ckpt: dict, run_dir: Path | None, device: torch.device | str = "cpu") -> dict:
    model = load_model(ckpt, pool, device)
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


def recommend(cfg: Config, pool: Pool, ckpt: dict, user: str | None, history: str | None,
              device: torch.device | str = "cpu") -> None:
    model = load_model(ckpt, pool, device)
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
    keep_freed_memory()                               # steps reuse big freed tensors (see allocator.py)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.run_dir)
    if args.mode != "train" or args.resume:
        # A saved run carries its own config; the command line still overrides it.
        path = Path(args.checkpoint) if args.checkpoint else run_dir / ("last.pt" if args.resume else "best.pt")
        cfg = load_config(args.config, args.overrides, base=load_checkpoint(path)["config"])
    dist, device = setup_distributed(cfg.device)      # a no-op unless started by torchrun
    try:
        torch.manual_seed(cfg.train.seed)             # the same initial weights on every rank
        torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
        if dist.main:                                 # one rank builds the pool, the others wait for it
            pool = ensure_pool(cfg)
            print(summary(pool))
        dist.barrier()
        if not dist.main:
            pool = Pool(Path(cfg.pool.dir))
        if args.mode == "train":
            run_dir.mkdir(parents=True, exist_ok=True)
            train(cfg, pool, run_dir, args.resume, device, dist)
        if not dist.main:
            return
        ckpt = load_checkpoint(Path(args.checkpoint) if args.checkpoint else run_dir / "best.pt")
        if args.mode in ("train", "eval"):
            test(cfg, pool, ckpt, run_dir if args.mode == "train" else None, device)
        if args.mode in ("train", "recommend"):
            recommend(cfg, pool, ckpt, args.user, args.history, device)
    finally:
        teardown_distributed()


if __name__ == "__main__":
    run_cli(main)
