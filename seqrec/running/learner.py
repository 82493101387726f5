"""What training updates, and one epoch of it: the online network, its target copy, the optimizer and
the counters that say where training stands.

`Learner.update(loss)` is the one optimisation step (zero_grad, backward, clip, step, target update)
that training, fine-tuning and every benchmark step take. `train_epoch` walks an epoch's batches with
any loss function of the form `loss_fn(model, target_net, batch, train_cfg, dist, step, log_inclusion, reward_scale)
-> (loss, stats, the encoders' carry after a session chunk or None)` (model.compute_losses).
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._pytree import tree_map
from tqdm import tqdm

from seqrec.data.batches import Batch, Chunk, candidate_log_inclusion, epoch_order, lane_schedule
from seqrec.running.distributed import SINGLE, Dist, model_device
from seqrec.running.errors import UserError
from seqrec.nn.streamed import compile_kernels
from seqrec.evaluation.value import reward_scale


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
    carry: tuple | None = None            # session path: the encoders' (online, target) state per lane
    twin_opt: torch.optim.Optimizer | None = None   # train.bootstrap = swap: the target net learns too (SQN)

    @classmethod
    def create(cls, net: torch.nn.Module, cfg, device: torch.device | str = "cpu", dist: Dist = SINGLE) -> "Learner":
        net = net.to(device)
        t = cfg.train
        if t.compile:
            compile_kernels(device)
        # fused: one kernel over all parameters; the per-tensor Adam was 14% of a sampled step at 10k items
        opt = torch.optim.Adam(net.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
        model, twin = net, copy.deepcopy(net).eval()
        twin_opt = None
        if t.bootstrap == "swap":
            if dist.world > 1:
                raise UserError("train.bootstrap=swap trains two networks in turn and runs in one process; "
                                "use double (or logged) under torchrun")
            twin_opt = torch.optim.Adam(twin.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
        if dist.world > 1:
            device = torch.device(device)
            # alpha = 0 leaves the Q head out of the loss: DDP must not wait for its gradients
            model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                                              find_unused_parameters=t.alpha == 0)
        return cls(model, twin, opt, t, twin_opt=twin_opt)

    @property
    def net(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def swapped(self) -> bool:
        """train.bootstrap = swap (SQN's double Q): whether this step's learner is the twin (the target
        net), with the online net as its target. A fair coin, a pure function of (seed, step)."""
        return self.twin_opt is not None and np.random.default_rng([self.train_cfg.seed, 300, self.step]).random() < 0.5

    def roles(self, swapped: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(the network that learns this step, the one that gives its targets), in train and eval mode."""
        learns, targets = (self.target_net, self.model) if swapped else (self.model, self.target_net)
        return learns.train(), targets.eval()

    def update(self, loss: torch.Tensor, swapped: bool = False) -> None:
        """One optimisation step on `loss`: gradients, clipping (train.grad_clip), Adam, target update
        (none under swap: there the twin is trained on the steps its coin picks, `swapped`)."""
        params = (self.target_net if swapped else self.model).parameters()
        opt = self.twin_opt if swapped else self.opt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.train_cfg.grad_clip)
        opt.step()
        self.step += 1
        if self.twin_opt is None:
            update_target(self.target_net, self.net, self.train_cfg, self.step)

    def state(self, cfg, pool, best: dict) -> dict:
        """The checkpoint dict: everything a resumed run needs to continue bit for bit."""
        return {"model": self.net.state_dict(), "target": self.target_net.state_dict(),
                "optimizer": self.opt.state_dict(), "step": self.step, "epoch": self.epoch, "batch": self.batch,
                "sums": self.sums, "best": best, "config": cfg.to_dict(), "num_items": pool.num_items,
                "pool_hash": pool.meta["config_hash"], "items_digest": pool.items_digest,
                "rng": torch.get_rng_state(), "carry": self.carry,
                "twin_optimizer": self.twin_opt.state_dict() if self.twin_opt is not None else None}

    def restore(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.target_net.load_state_dict(ckpt["target"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch, self.batch, self.sums = ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["sums"]
        self.carry = ckpt.get("carry")
        fresh = tuple(enc.start(1) for enc in (self.net.encoder, self.target_net.encoder))   # before the RNG is set
        if self.carry is not None and [len(c) if isinstance(c, tuple) else 1 for c in self.carry] != \
                [len(c) if isinstance(c, tuple) else 1 for c in fresh]:
            raise UserError("this checkpoint stopped mid-epoch carrying an older version's encoder state (SASRec now "
                            "carries keys and values between chunks), so it cannot be resumed; train again without --resume")
        torch.set_rng_state(ckpt["rng"])
        if self.twin_opt is not None and ckpt.get("twin_optimizer") is not None:
            self.twin_opt.load_state_dict(ckpt["twin_optimizer"])


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

    Window path (pool.state_len > 0): batches of train.batch_size windows. Session path (0): steps
    of session-parallel lanes, train.chunk_len events each, carrying the encoders' state from one
    step to the next (in `learner.carry`, so a resumed run continues exactly).
    `on_step(learner)` runs after every step (checkpointing).
    """
    t = cfg.train
    device = model_device(learner.net)
    batches, batch_at = (session_steps if cfg.pool.state_len == 0 else window_batches)(learner, pool, cfg, dist, device)
    scale = reward_scale(pool, t.gamma, t.reward_scale)
    log_inclusion = None
    if t.negatives:                                   # sampled softmax: each item's chance to be a candidate
        log_inclusion = candidate_log_inclusion(pool.train_item_counts(), actions_per_step(cfg, dist),
                                                t.negatives).to(device)
    bar = tqdm(range(learner.batch, batches), desc=label or f"epoch {learner.epoch + 1}/{t.epochs}", unit="batch",
               leave=False, disable=not (progress and dist.main))
    for i in bar:
        if t.max_steps and learner.step >= t.max_steps:
            return False
        batch = batch_at(i)
        swapped = learner.swapped()
        if swapped and isinstance(batch, Chunk):                # each network keeps its own carry
            batch.carry = batch.carry[::-1]
        loss, stats, carry = loss_fn(*learner.roles(swapped), batch, t, dist, learner.step, log_inclusion, scale)
        learner.update(loss, swapped)
        learner.batch = i + 1
        if carry is not None:
            learner.carry = carry[::-1] if swapped else carry
        for k, v in stats.items():
            learner.sums[k] = learner.sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", td=f"{stats['td']:.3f}")
        if on_step is not None:
            on_step(learner)
    learner.carry = None
    return True


def lanes(cfg, dist: Dist = SINGLE) -> int:
    """Session-parallel lanes of the session path: train.batch_size events per step in all."""
    return max(cfg.train.batch_size // cfg.train.chunk_len, dist.world)


def actions_per_step(cfg, dist: Dist = SINGLE) -> int:
    """Actions a rank's step reads (its candidates under sampled softmax): T per window, or each
    lane's chunk plus look-ahead."""
    T = cfg.pool.horizon
    if cfg.pool.state_len == 0:
        return math.ceil(lanes(cfg, dist) / dist.world) * (cfg.train.chunk_len + T - 1)
    return math.ceil(cfg.train.batch_size / dist.world) * T


def reads_exposures(cfg) -> bool:
    """Whether training reads what was shown: the Q head's negatives or the next-item softmax use the logged slates."""
    return (cfg.train.q_negatives > 0 and cfg.train.negatives_from == "exposures") or cfg.train.ssl_softmax == "shown"


def window_batches(learner: Learner, pool, cfg, dist: Dist, device):
    """(number of batches, batch i -> Batch) of the window path's epoch `learner.epoch`."""
    t = cfg.train
    train_events = pool.events("train")
    order = train_events[epoch_order(len(train_events), t.seed, learner.epoch)]

    def batch_at(i: int) -> Batch:
        shard = dist.shard(order[i * t.batch_size:(i + 1) * t.batch_size])
        return Batch.from_windows(pool.windows(shard, cfg.pool.state_len, cfg.pool.horizon, training=True,
                                               shown=reads_exposures(cfg)), device)
    return math.ceil(len(order) / t.batch_size), batch_at


def session_steps(learner: Learner, pool, cfg, dist: Dist, device):
    """(number of steps, step i -> Chunk) of the session path's epoch `learner.epoch`: this rank's
    lanes of lane_schedule, each reading train.chunk_len events plus T - 1 of look-ahead."""
    t, C = cfg.train, cfg.train.chunk_len
    width = lanes(cfg, dist)
    lengths = pool.train_lengths()
    session, start = lane_schedule(lengths, width, C, t.seed, learner.epoch)
    balanced = math.ceil(np.sum(-(-lengths // C)) / width)
    if dist.main and learner.batch == 0 and len(session) > 1.25 * balanced:
        print(f"warning: the longest session takes {len(session)} steps of train.chunk_len={C} events, the "
              f"others {balanced}: the epoch ends on a few sessions alone; raise train.chunk_len", file=sys.stderr)
    mine = dist.shard(np.arange(width))
    encoders = learner.net.encoder, learner.target_net.encoder
    if learner.carry is None:
        learner.carry = tuple(enc.start(len(mine)) for enc in encoders)
    learner.carry = tree_map(lambda x: x.to(device), learner.carry)      # a resumed carry comes from the CPU

    def step_at(i: int) -> Chunk:
        fresh = torch.from_numpy(start[i, mine] == 0).to(device)
        carry = tuple(enc.restart(c, fresh) for enc, c in zip(encoders, learner.carry))
        spans = pool.spans(session[i, mine], start[i, mine], C + cfg.pool.horizon - 1, training=True,
                           shown=reads_exposures(cfg))
        return Chunk.from_spans(spans, C, carry, device)
    return len(session), step_at


def epoch_means(learner: Learner, dist: Dist = SINGLE) -> dict:
    """Mean loss stats of the epoch, over all ranks and batches."""
    keys = sorted(learner.sums)
    totals = dist.sum(torch.tensor([learner.sums[k] for k in keys], dtype=torch.float64))
    return {k: v / max(learner.batch, 1) for k, v in zip(keys, totals.tolist())}


def patience_spent(epochs_done: int, best: dict, patience: int, dist: Dist = SINGLE) -> bool:
    """Early stopping: the last `patience` epochs brought no better validation score (never with
    patience 0). Rank 0 alone validates, so its decision is summed over the ranks."""
    spent = dist.main and patience > 0 and epochs_done - 1 - best["epoch"] >= patience
    return bool(dist.sum(torch.tensor(float(spent))) > 0)
