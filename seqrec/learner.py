"""What training updates, and one epoch of it: the online network, its target copy, the optimizer and
the counters that say where training stands.

`Learner.update(loss)` is the one optimisation step (zero_grad, backward, clip, step, target update)
that training, fine-tuning and every benchmark step take. `train_epoch` walks an epoch's batches with
any loss function of the form `loss_fn(model, target_net, batch, train_cfg, dist, step, log_inclusion)
-> (loss, stats)` (model.compute_losses).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from seqrec.batches import Batch, candidate_log_inclusion, epoch_order
from seqrec.distributed import SINGLE, Dist, model_device


@dataclass
class Learner:
    """The online network (DDP-wrapped under torchrun), its target copy, the optimizer, and where
    training stands: steps taken, epochs completed, batches done in the next epoch and that epoch's
    running loss sums (so a run killed mid-epoch resumes exactly)."""
    model: torch.nn.Module
    target_net: torch.nn.Module
    opt: torch.optim.Optimizer
    train_cfg: object                     # the config's `train` section (grad_clip, target update)
    step: int = 0
    epoch: int = 0
    batch: int = 0
    sums: dict = field(default_factory=dict)

    @classmethod
    def create(cls, net: torch.nn.Module, cfg, device: torch.device | str = "cpu", dist: Dist = SINGLE) -> "Learner":
        net = net.to(device)
        t = cfg.train
        # fused: one kernel over all parameters; the per-tensor Adam was 14% of a sampled step at 10k items
        opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
        model = net
        if dist.world > 1:
            device = torch.device(device)
            # alpha = 0 leaves the Q head out of the loss: DDP must not wait for its gradients
            model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                                              find_unused_parameters=t.alpha == 0)
        return cls(model, copy.deepcopy(net).eval(), opt, t)

    @property
    def net(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def update(self, loss: torch.Tensor) -> None:
        """One optimisation step on `loss`: gradients, clipping (train.grad_clip), Adam, target update."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip)
        self.opt.step()
        self.step += 1
        update_target(self.target_net, self.net, self.train_cfg, self.step)

    def state(self, cfg, pool, best: dict) -> dict:
        """The checkpoint dict: everything a resumed run needs to continue bit for bit."""
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


@torch.no_grad()
def update_target(target_net: torch.nn.Module, net: torch.nn.Module, t, step: int) -> None:
    """Polyak averaging every step (rate train.tau), or a hard copy every train.target_every steps."""
    if t.target_update == "polyak":
        for p_t, p in zip(target_net.parameters(), net.parameters()):
            p_t.lerp_(p, t.tau)
    elif step % t.target_every == 0:
        target_net.load_state_dict(net.state_dict())


def train_epoch(learner: Learner, pool, cfg, loss_fn, dist: Dist = SINGLE, on_step=None,
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
        batch = Batch.from_windows(pool.windows(shard, L, T, training=True), device)
        loss, stats = loss_fn(learner.model, learner.target_net, batch, t, dist, learner.step, log_inclusion)
        learner.update(loss)
        learner.batch = i + 1
        for k, v in stats.items():
            learner.sums[k] = learner.sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", td=f"{stats['td']:.3f}")
        if on_step is not None:
            on_step(learner)
    return True


def epoch_means(learner: Learner, dist: Dist = SINGLE) -> dict:
    """Mean loss stats of the epoch, over all ranks and batches."""
    keys = sorted(learner.sums)
    totals = dist.sum(torch.tensor([learner.sums[k] for k in keys], dtype=torch.float64))
    return {k: v / max(learner.batch, 1) for k, v in zip(keys, totals.tolist())}
